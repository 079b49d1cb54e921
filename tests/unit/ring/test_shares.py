"""Each strategy reports its own share of the key space (``Strategy.shares``) and where a key lands
(``Strategy.position``): exact figures from its table, checked against routing real keys."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from ringlb_ring import hashing as h
from ringlb_ring.hashing.ketama import Ring
from ringlb_ring.hashing.maglev import Maglev
from ringlb_ring.hashing.seed import REQUEST_IDS

SMALL_TABLE = 4099  # prime: cheap Maglev builds
CONFIGS = {
    "maglev": h.HashingConfig("maglev", table_size=SMALL_TABLE),
    "maglev-default": h.HashingConfig("maglev"),
    "ring": h.HashingConfig("ring"),
    "ring-few-points": h.HashingConfig("ring", vnodes=3),
    "seed": h.HashingConfig("seed"),
    "seed-reissue": h.HashingConfig("seed", seed_formulas="reissue"),
    "round-robin": h.HashingConfig("round-robin"),
    "random": h.HashingConfig("random"),
}


def names(n: int) -> list[str]:
    return [f"Server {i}" for i in range(1, n + 1)]


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("n", [1, 2, 3, 7, 20])
def test_shares_sum_to_one(config: h.HashingConfig, n: int) -> None:
    share = h.build(names(n), config).shares()
    assert len(share) == n
    assert all(s >= 0 for s in share)
    assert math.isclose(sum(share), 1.0, abs_tol=1e-12)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_no_members_no_shares(config: h.HashingConfig) -> None:
    assert h.build([], config).shares() == []


def test_maglev_share_is_table_entries_over_size() -> None:
    strategy = Maglev(["a", "b", "c"], 5)
    strategy.table = [0, 0, 1, 2, 1]
    assert strategy.shares() == [2 / 5, 2 / 5, 1 / 5]


def test_ring_share_is_arc_length_ending_at_each_point() -> None:
    # b's point at 2^63 owns [2^62, 2^63): a quarter; a's point at 2^62 owns the rest (wrapping).
    strategy = Ring(["a", "b"], 1)
    strategy.points, strategy.owners = [2**62, 2**63], [0, 1]
    assert strategy.shares() == [0.75, 0.25]


@pytest.mark.parametrize("config", [CONFIGS["maglev"], h.HashingConfig("ring", vnodes=5)], ids=["maglev", "ring"])
def test_shares_agree_with_routing_real_keys(config: h.HashingConfig) -> None:
    strategy = h.build(names(4), config)
    keys = [f"k{i}" for i in range(40_000)]
    counts = Counter(strategy.owner(key) for key in keys)
    for index, share in enumerate(strategy.shares()):
        assert abs(share - counts[index] / len(keys)) < 0.01  # ~4 sigma at 40k keys


@pytest.mark.parametrize("formulas", ["original", "reissue"])
def test_seed_shares_count_every_request_id_exactly(formulas: str) -> None:
    """Brute force over every id the seed strategy sees: the residue shortcut is exact."""
    strategy = h.build(names(5), h.HashingConfig("seed", seed_formulas=formulas))
    counts = [0] * 5
    slot_owner = [strategy.occupied[strategy.next_slot[s]] for s in range(strategy.slots)]
    for rid in range(*REQUEST_IDS):
        counts[slot_owner[strategy.request_slot(rid) % strategy.slots]] += 1
    total = REQUEST_IDS[1] - REQUEST_IDS[0]
    assert strategy.shares() == [c / total for c in counts]


def test_seed_shares_follow_the_keys_not_the_slot_count() -> None:
    """The seed's quadratic H reaches few slots, so a member owning a third of the slots need
    not own a third of the keys: the page shows where keys go."""
    strategy = h.build(names(3), h.HashingConfig("seed"))
    assert [strategy.occupied.count(i) / 27 for i in range(3)] == [1 / 3] * 3  # 9 virtual servers each
    assert max(strategy.shares()) > 0.5


@pytest.mark.parametrize("strategy", ["round-robin", "random"])
def test_baselines_share_evenly_and_route_evenly(strategy: str) -> None:
    built = h.build(names(4), h.HashingConfig(strategy))
    assert built.shares() == [0.25] * 4
    counts = Counter(built.owner("the same key") for _ in range(8000))
    assert set(counts) == {0, 1, 2, 3}
    # Round-robin is exact; random within ~6 sigma of 2000 (sigma ~ 39).
    assert all(abs(c - 2000) < (1 if strategy == "round-robin" else 240) for c in counts.values()), counts


def test_positions() -> None:
    key = "424242"
    hashed = f"{h.hash64(key):016x}"
    assert h.build(names(3), CONFIGS["maglev"]).position(key) == {"hash": hashed, "entry": h.hash64(key) % SMALL_TABLE}
    assert h.build(names(3), CONFIGS["ring"]).position(key) == {
        "hash": hashed,
        "angle": round(360 * h.hash64(key) / 2**64, 3),
    }
    seed = h.build(names(3), CONFIGS["seed"])
    assert seed.position(key) == {"slot": seed.slot_of(key)} == {"slot": (424242**2 + 2 * 424242 + 17) % 512}
    assert h.build(names(3), CONFIGS["random"]).position(key) == {}


@pytest.mark.parametrize("strategy", ["round-robin", "random"])
def test_baseline_preference_is_every_member_once_owner_first(strategy: str) -> None:
    built = h.build(names(5), h.HashingConfig(strategy))
    assert not built.affine
    for _ in range(50):
        order = list(built.preference("k"))
        assert sorted(order) == list(range(5))
        assert order == [(order[0] + i) % 5 for i in range(5)]  # the rest in rotation after the owner
    assert list(h.build([], h.HashingConfig(strategy)).preference("k")) == []


def test_round_robin_ignores_the_key() -> None:
    built = h.build(names(3), h.HashingConfig("round-robin"))
    assert [built.owner(key) for key in ["a", "a", "b", "c", "a", "a"]] == [0, 1, 2, 0, 1, 2]
    assert next(built.preference("a")) == 0  # preference takes the next owner too
