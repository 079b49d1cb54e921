"""The status page's documents (ringlb_balancer.status): shares, moved fractions, rates, lookups."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from importlib import resources

import jsonschema
import pytest

from ringlb_balancer import status
from ringlb_balancer.status import model
from ringlb_ring import hashing as h
from ringlb_ring.hashing import warmup
from ringlb_ring.hashing.ketama import Ring
from ringlb_ring.hashing.maglev import Maglev
from ringlb_ring.membership import KeyConfig, Member, Membership

SMALL_TABLE = 4099  # prime: cheap Maglev builds
CONFIGS = {
    "maglev": h.HashingConfig("maglev", table_size=SMALL_TABLE),
    "maglev-default": h.HashingConfig("maglev"),
    "ring": h.HashingConfig("ring"),
    "ring-few-points": h.HashingConfig("ring", vnodes=3),
    "seed": h.HashingConfig("seed"),
    "seed-reissue": h.HashingConfig("seed", seed_formulas="reissue"),
}


def names(n: int, prefix: str = "Server ") -> list[str]:
    return [f"{prefix}{i}" for i in range(1, n + 1)]


def maglev_with(members: list[str], table: list[int]) -> Maglev:
    """A real Maglev of ``members`` whose (prime-sized) table is set by hand."""
    strategy = Maglev(members, len(table))
    strategy.table = table
    return strategy


def ring_with(members: list[str], points: list[int], owners: list[int]) -> Ring:
    """A real Ring of ``members`` whose points are set by hand."""
    strategy = Ring(members, 1)
    strategy.points, strategy.owners = points, owners
    return strategy


# -- moved fraction --------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_identical_memberships_move_nothing(config: h.HashingConfig) -> None:
    assert model.moved_fraction(h.build(names(4), config), h.build(names(4), config)) == 0.0
    assert model.moved_is_exact(h.build(names(4), config), h.build(names(4), config))


def test_maglev_moved_counts_entries_whose_owner_name_changed() -> None:
    before = maglev_with(["a", "b", "c"], [0, 0, 1, 2, 1])  # a a b c b
    after = maglev_with(["a", "c"], [0, 1, 1, 1, 0])  # a c c c a
    assert model.moved_fraction(before, after) == 3 / 5


def test_moved_compares_members_by_name_not_index() -> None:
    before = maglev_with(["a", "b", "c"], [0, 0, 1, 2, 1])
    reordered = maglev_with(["c", "a", "b"], [1, 1, 2, 0, 2])  # the same owners by name
    assert model.moved_fraction(before, reordered) == 0.0


def test_ring_moved_is_the_arc_taken_over() -> None:
    before = ring_with(["a", "b"], [2**62, 2**63], [0, 1])
    # c's point at 3*2^62 takes [2^63, 3*2^62) from a: a quarter of the circle.
    after = ring_with(["a", "b", "c"], [2**62, 2**63, 3 * 2**62], [0, 1, 2])
    assert model.moved_fraction(before, after) == 0.25
    assert model.moved_fraction(after, before) == 0.25


def test_ring_removal_moves_exactly_the_removed_share() -> None:
    config = h.HashingConfig("ring")
    before = h.build(names(5), config)
    after = h.build(names(5)[:2] + names(5)[3:], config)
    assert math.isclose(model.moved_fraction(before, after), before.shares()[2], rel_tol=1e-12)


def test_from_or_to_an_empty_ring_everything_moves() -> None:
    for config in CONFIGS.values():
        empty, full = h.build([], config), h.build(names(3), config)
        assert model.moved_fraction(empty, empty) == 0.0
        assert model.moved_fraction(empty, full) == 1.0
        assert model.moved_fraction(full, empty) == 1.0


CHANGES = {
    "add one": (names(3), names(4)),
    "remove one": (names(5), names(5)[:1] + names(5)[2:]),
    "replace two": (names(6), names(4) + ["S7", "S8"]),
}


SAMPLED = {k: v for k, v in CONFIGS.items() if k != "maglev-default"}  # same code, 16x the build time


@pytest.mark.parametrize("config", SAMPLED.values(), ids=SAMPLED.keys())
@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_moved_fraction_matches_keys_moved_on_a_large_sample(config, change) -> None:
    before, after = h.build(change[0], config), h.build(change[1], config)
    rng = random.Random(7)
    if config.strategy == "seed":  # the seed's own keys: random 6-digit request ids
        keys = [str(rng.randint(100_000, 999_999)) for _ in range(30_000)]
    else:
        keys = [f"user-{rng.getrandbits(64):x}" for _ in range(30_000)]
    sampled = len(h.keys_moved(before, after, keys)) / len(keys)
    exact = model.moved_fraction(before, after)
    sigma = math.sqrt(max(exact * (1 - exact), 1e-4) / len(keys))
    assert abs(exact - sampled) < 5 * sigma, (exact, sampled)


def test_strategy_switch_is_measured_and_flagged_inexact() -> None:
    before = h.build(names(3), h.HashingConfig("maglev", table_size=SMALL_TABLE))
    after = h.build(names(3), h.HashingConfig("ring"))
    assert not model.moved_is_exact(before, after)
    fraction = model.moved_fraction(before, after)
    keys = model.sample_keys()
    assert fraction == len(h.keys_moved(before, after, keys)) / len(keys)
    assert 0.4 < fraction < 0.9  # two unrelated assignments over three members: about 2/3


def test_change_entry_names_added_and_removed_members() -> None:
    config = h.HashingConfig("maglev", table_size=SMALL_TABLE)
    entry = model.change(h.build(names(3), config), h.build(["Server 1", "Server 3", "S4"], config), 7, 1700.5)
    assert entry["revision"] == 7 and entry["at"] == 1700.5
    assert entry["added"] == ["S4"] and entry["removed"] == ["Server 2"]
    assert entry["exact"] is True and entry["strategy"] == "maglev"
    assert 1 / 3 < entry["moved"] < 0.7  # Server 2's third, plus what S4 takes from the others


# -- rates -----------------------------------------------------------------------------------
def test_series_turns_cumulative_counters_into_rates() -> None:
    samples = [
        (100.0, {"a": (0, 0), "b": (10, 0)}),
        (101.0, {"a": (50, 5), "b": (10, 0)}),
        (103.0, {"a": (150, 5), "b": (30, 10)}),
    ]
    out = model.series(samples)
    assert out["a"] == {"at": [101.0, 103.0], "rps": [50.0, 50.0], "errorRate": [0.1, 0.0]}
    assert out["b"] == {"at": [101.0, 103.0], "rps": [0.0, 10.0], "errorRate": [None, 0.5]}


def test_series_counts_missing_members_as_zero_and_leaves_gaps_at_counter_resets() -> None:
    samples = [
        (0.0, {"a": (100, 1)}),
        (1.0, {"a": (110, 1), "new": (3, 0)}),  # new's counters appear with its first requests
        (2.0, {"a": (5, 0), "new": (7, 0)}),  # a's counters restarted
    ]
    out = model.series(samples, names=["idle"])
    assert out["a"]["rps"] == [10.0, None]
    assert out["new"]["rps"] == [3.0, 4.0]
    assert out["idle"] == {"at": [1.0, 2.0], "rps": [0.0, 0.0], "errorRate": [None, None]}
    assert model.series([], names=["idle"]) == {"idle": {"at": [], "rps": [], "errorRate": []}}


def test_series_keeps_the_last_window_only() -> None:
    samples = [(float(t), {"a": (10 * t, 0)}) for t in range(0, 200)]
    out = model.series(samples, now=199.0, window=60.0)
    assert out["a"]["at"][0] == 139.0 and out["a"]["at"][-1] == 199.0
    assert set(out["a"]["rps"]) == {10.0}


def test_keep_samples_keeps_one_sample_before_the_window() -> None:
    samples: list = []
    for t in range(100):
        samples = model.keep_samples(samples, (float(t), {"a": (t, 0)}), window=60.0)
    assert samples[0][0] == 39.0 and samples[-1][0] == 99.0
    assert len(model.series(samples, window=60.0)["a"]["at"]) == 60


# -- documents -------------------------------------------------------------------------------
def membership(n: int, config: h.HashingConfig, revision: int = 3) -> Membership:
    members = tuple(Member(name, "127.0.0.1", 6000 + i) for i, name in enumerate(names(n)))
    return Membership(revision, members, config, KeyConfig("header", "X-Request-ID"))


def openapi() -> dict:
    return json.loads(resources.files("ringlb_balancer").joinpath("openapi.json").read_text())


def schema_of(name: str) -> dict:
    """A component schema of openapi.json as JSON Schema (OpenAPI 3.0's ``nullable`` spelled
    as a type list), resolving its ``#/components/...`` references against the whole file."""

    def convert(node):
        if isinstance(node, dict):
            node = {k: convert(v) for k, v in node.items()}
            if node.pop("nullable", False):
                node["type"] = [node["type"], "null"]
            return node
        if isinstance(node, list):
            return [convert(v) for v in node]
        return node

    doc = convert(openapi())
    return {**doc, "$ref": f"#/components/schemas/{name}"}


def test_data_document() -> None:
    config = h.HashingConfig("maglev", table_size=SMALL_TABLE, bounded_load=1.25)
    m = membership(3, config)
    strategy = h.build(m.names, config)
    samples = [(10.0, {"Server 1": (0, 0)}), (11.0, {"Server 1": (20, 2), "Server 2": (0, 0)})]
    changes = [
        {"revision": 2, "at": 5.0, "added": ["Server 3"], "removed": [], "moved": 0.3, "exact": True},
        {"revision": 3, "at": 6.0, "added": [], "removed": ["S9"], "moved": 0.1, "exact": True},
    ]
    doc = model.data(
        m, strategy, ejected={"Server 2": "heartbeat"}, inflight=[1, 0, 4], samples=samples, changes=changes, now=11.5
    )
    jsonschema.validate(json.loads(json.dumps(doc)), schema_of("StatusData"))
    assert doc["revision"] == 3 and doc["strategy"] == "maglev" and doc["boundedLoad"] == 1.25
    assert doc["key"] == {"source": "header", "name": "X-Request-ID"}
    assert [x["name"] for x in doc["members"]] == names(3)
    assert math.isclose(sum(x["share"] for x in doc["members"]), 1.0)
    one, two, three = doc["members"]
    assert (one["health"], one["reason"], one["inflight"]) == ("healthy", "", 1)
    assert (two["health"], two["reason"]) == ("ejected", "heartbeat")
    assert three["inflight"] == 4 and three["rps"] == 0.0 and three["errorRate"] is None
    assert one["rps"] == 20.0 and one["errorRate"] == 0.1 and one["series"]["at"] == [11.0]
    assert [c["revision"] for c in doc["changes"]] == [3, 2]  # newest first
    assert one["address"] == "127.0.0.1:6000"
    assert doc["transition"] is None  # no warm-up in progress


@pytest.mark.parametrize("strategy", ["maglev", "ring"])
def test_data_during_a_warm_up_shows_the_ramp(strategy: str) -> None:
    """A joining member a quarter of the way: its final share, the key space still to move."""
    base = CONFIGS[strategy]
    old, new = tuple(names(3)), tuple(names(4))
    config = replace(base, transition=warmup.Transition(old, new, 0.25))
    step = h.build(new, config)
    doc = model.data(membership(4, config), step, now=1.0)
    jsonschema.validate(json.loads(json.dumps(doc)), schema_of("StatusData"))
    ramp = doc["transition"]
    assert (ramp["from"], ramp["to"], ramp["fraction"]) == (list(old), list(new), 0.25)
    final = h.build(new, base)
    assert ramp["finalShares"] == dict(zip(new, final.shares(), strict=True))
    whole = model.moved_fraction(h.build(old, base), final)
    assert math.isclose(ramp["remaining"], 0.75 * whole, rel_tol=0.05)
    now = {m["name"]: m["share"] for m in doc["members"]}
    assert now["Server 4"] < ramp["finalShares"]["Server 4"]  # still growing


def test_a_leaving_member_s_final_share_is_zero() -> None:
    base = CONFIGS["maglev"]
    old, new = tuple(names(4)), tuple(names(3))
    config = replace(base, transition=warmup.Transition(old, new, 0.5))
    ramp = model.data(membership(4, config), h.build(old, config), now=1.0)["transition"]
    assert ramp["finalShares"]["Server 4"] == 0.0
    assert math.isclose(sum(ramp["finalShares"].values()), 1.0)


def test_data_before_any_membership() -> None:
    m = Membership(0)
    doc = model.data(m, h.build([], m.hashing))
    jsonschema.validate(doc, schema_of("StatusData"))
    assert doc["members"] == [] and doc["revision"] == 0


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_lookup_routes_as_the_strategy_does(config: h.HashingConfig) -> None:
    strategy = h.build(names(5), config)
    for key in ["424242", "user-17", "10.0.0.1", "ключ"]:
        doc = model.lookup(strategy, key)
        jsonschema.validate(doc, schema_of("StatusLookup"))
        assert doc["owner"] == strategy.members[strategy.owner(key)] == doc["route"]
        assert doc["preference"] == [strategy.members[i] for i in strategy.preference(key)]
        assert sorted(doc["preference"]) == sorted(names(5))


def test_lookup_skips_an_ejected_owner_like_the_balancer() -> None:
    strategy = h.build(names(4), h.HashingConfig("ring"))
    doc = model.lookup(strategy, "424242")
    owner, second, third = doc["preference"][:3]
    down = model.lookup(strategy, "424242", ejected={owner, second})
    assert down["owner"] == owner and down["route"] == third
    assert down["ejected"] == [owner, second]


def test_lookup_with_bounded_loads_uses_bounded_choice() -> None:
    config = h.HashingConfig("maglev", table_size=SMALL_TABLE, bounded_load=1.25)
    strategy = h.build(names(3), config)
    owner = strategy.owner("424242")
    inflight = [0, 0, 0]
    inflight[owner] = 10  # far above 1.25 x the mean
    doc = model.lookup(strategy, "424242", inflight=inflight, bounded_load=1.25)
    expected = h.bounded_choice(strategy.preference("424242"), inflight, 1.25)
    assert doc["route"] == strategy.members[expected] != doc["owner"]


def test_lookup_refuses_an_empty_key_and_handles_no_members() -> None:
    with pytest.raises(ValueError):
        model.lookup(h.build(names(3), h.HashingConfig("ring")), "")
    doc = model.lookup(h.build([], h.HashingConfig("ring")), "k")
    assert doc["owner"] is None and doc["preference"] == []


# -- the page --------------------------------------------------------------------------------
def test_page_is_one_self_contained_document() -> None:
    html = status.page().decode()
    assert html.startswith("<!doctype html>")
    assert "<style>" in html and "<script>" in html
    assert 'src="' not in html and 'href="' not in html, "no external assets"
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    assert 'base + "data"' in html and 'base + "lookup?key="' in html


def test_openapi_documents_the_status_endpoints() -> None:
    paths = openapi()["paths"]
    assert "text/html" in paths["/status"]["get"]["responses"]["200"]["content"]
    assert paths["/status/data"]["get"]["responses"]["200"]["content"]["application/json"]
    assert paths["/status/lookup"]["get"]["parameters"][0]["name"] == "key"


# -- non-affine baselines and warm-up tables ---------------------------------------------------
@pytest.mark.parametrize("strategy", ["round-robin", "random"])
def test_non_affine_strategies_move_no_keys_and_share_evenly(strategy: str) -> None:
    baseline = h.build(names(4), h.HashingConfig(strategy))
    affine = h.build(names(4), CONFIGS["ring"])
    assert model.moved_fraction(affine, baseline) is None and model.moved_fraction(baseline, affine) is None
    assert model.change(affine, baseline, 2, 1.0)["moved"] is None
    doc = model.data(membership(4, h.HashingConfig(strategy)), baseline)
    assert [m["share"] for m in doc["members"]] == [0.25] * 4
    lookup = model.lookup(baseline, "k")
    assert lookup["owner"] == lookup["route"] == lookup["preference"][0] and lookup["position"] == {}


def test_a_warm_up_step_is_compared_exactly_like_any_table() -> None:
    config = CONFIGS["maglev"]
    old, new = names(3), names(4)
    half = h.build(new, replace(config, transition=warmup.Transition(tuple(old), tuple(new), 0.5)))
    before, after = h.build(old, config), h.build(new, config)
    assert model.moved_is_exact(before, half)
    assert math.isclose(
        model.moved_fraction(before, half), model.moved_fraction(before, after) / 2, abs_tol=1 / SMALL_TABLE
    )
