"""The ``seed`` strategy: the original assignment's 512-slot scheme with its H and Φ formulas, reproduced exactly.

Kept so the seed contract's behaviour (and its skew, analysis A-1..A-4) can be served and measured;
one module per algorithm so each can be read alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from ringlb_ring.hashing.base import Strategy, distinct, hash64, owner_names

SEED_SLOTS = 512
SEED_VIRTUAL_SERVERS = 9  # K = log2(512)
REQUEST_IDS = (100_000, 1_000_000)  # the request ids keys become: [low, high), the seed's 6-digit ids

SlotFunction = Callable[[int], int]
VirtualSlotFunction = Callable[[int, int], int]


def seed_request_slot(i: int) -> int:
    """H(i) = i² + 2i + 17, the original assignment's request hash (mod 512 applied by caller)."""
    return i * i + 2 * i + 17


def seed_virtual_slot(i: int, j: int) -> int:
    """Φ(i, j) = i² + j² + 2j + 25, the original assignment's virtual-server hash."""
    return i * i + j * j + 2 * j + 25


def reissue_request_slot(i: int) -> int:
    """H(i) = i + 2i² + 17, from the assignment's later re-issue (analysis A-4 swaps it in)."""
    return i + 2 * i * i + 17


def reissue_virtual_slot(i: int, j: int) -> int:
    """Φ(i, j) = i + j + 2j² + 25, from the assignment's later re-issue."""
    return i + j + 2 * j * j + 25


FORMULAS: dict[str, tuple[SlotFunction, VirtualSlotFunction]] = {
    "original": (seed_request_slot, seed_virtual_slot),
    "reissue": (reissue_request_slot, reissue_virtual_slot),
}
"""The (H, Φ) pairs that ``HashingConfig.seed_formulas`` names."""
DEFAULT_FORMULAS: Final = "original"

_TRAILING_INT = re.compile(r"(\d+)$")


def seed_server_ids(members: Sequence[str]) -> list[int]:
    """Integer server ids for the seed formulas, derived from names deterministically.

    A name ending in digits uses them (``Server 3`` → 3, ``S10`` → 10), which reproduces the
    original's ids for its own names. Any other name, or a name whose number is already taken,
    gets ``1000 + hash64(name) % 1_000_000``; collisions there are resolved by probing the
    virtual slots anyway, so ids need not be unique.
    """
    ids: list[int] = []
    taken: set[int] = set()
    for name in members:
        match = _TRAILING_INT.search(name)
        sid = int(match.group(1)) if match else -1
        if sid < 0 or sid in taken:
            sid = 1000 + hash64(name) % 1_000_000
        taken.add(sid)
        ids.append(sid)
    return ids


def seed_request_id(key: str) -> int:
    """The integer request id the seed formulas take: the key itself when it is a number (the
    seed sent random 6-digit ids), otherwise a 6-digit number derived from a stable hash."""
    if key.isascii() and key.isdigit() and len(key) <= 18:
        return int(key)
    return REQUEST_IDS[0] + hash64(key) % (REQUEST_IDS[1] - REQUEST_IDS[0])


def id_weights(slots: int) -> Iterable[tuple[int, int]]:
    """(residue r, how many request ids in REQUEST_IDS are congruent to r mod ``slots``).

    H is an integer polynomial, so ``H(id) % slots`` depends only on ``id % slots``: weighting
    each residue by its ids gives exact shares of the id space without visiting 900,000 ids.
    """
    low, high = REQUEST_IDS
    for r in range(slots):
        first = low + (r - low) % slots  # the smallest id >= low with id % slots == r
        yield r, 0 if first >= high else (high - 1 - first) // slots + 1


class Seed:
    """The original assignment's scheme, reproduced exactly: M = 512 slots, K = 9 virtual
    servers per server at Φ(i, j), linear probing on collision, a request at H(i) goes clockwise
    to the nearest occupied slot. H and Φ are parameters because analysis A-4 swaps them."""

    name = "seed"
    affine = True

    def __init__(
        self,
        members: Sequence[str],
        request_slot: SlotFunction = seed_request_slot,
        virtual_slot: VirtualSlotFunction = seed_virtual_slot,
        slots: int = SEED_SLOTS,
        virtual_servers: int = SEED_VIRTUAL_SERVERS,
    ) -> None:
        if len(members) * virtual_servers > slots:
            raise ValueError(
                f"seed strategy holds at most {slots // virtual_servers} members "
                f"({slots} slots / {virtual_servers} virtual servers each)"
            )
        self.members = tuple(members)
        self.slots = slots
        self.request_slot = request_slot
        self.server_ids = seed_server_ids(self.members)
        occupied: list[int] = [-1] * slots
        for index, sid in enumerate(self.server_ids):
            for j in range(virtual_servers):
                slot = virtual_slot(sid, j) % slots
                while occupied[slot] >= 0:  # linear probing
                    slot = (slot + 1) % slots
                occupied[slot] = index
        self.occupied = occupied
        # next_owner[s]: the member at the first occupied slot at or clockwise of s, precomputed
        # so a lookup is one table read.
        self.next_slot = [0] * slots
        nxt = -1
        for s in range(2 * slots - 1, -1, -1):
            if occupied[s % slots] >= 0:
                nxt = s % slots
            if s < slots:
                self.next_slot[s] = nxt
        self.ring_order = [occupied[s] for s in range(slots) if occupied[s] >= 0]
        self._position = {}
        pos = 0
        for s in range(slots):
            if occupied[s] >= 0:
                self._position[s] = pos
                pos += 1

    def slot_of(self, key: str) -> int:
        return self.request_slot(seed_request_id(key)) % self.slots

    def owner(self, key: str) -> int:
        slot = self.next_slot[self.slot_of(key)]
        return self.occupied[slot] if slot >= 0 else -1

    def preference(self, key: str) -> Iterator[int]:
        slot = self.next_slot[self.slot_of(key)]
        if slot < 0:
            return iter(())
        return distinct(self.ring_order, self._position[slot], len(self.members))

    def residue_owner(self, residue: int) -> int:
        """The owner of every request id congruent to ``residue`` mod ``slots`` (-1: none)."""
        slot = self.next_slot[self.request_slot(residue) % self.slots]
        return self.occupied[slot] if slot >= 0 else -1

    def shares(self) -> list[float]:
        """Shares of the request-id space (a key becomes an id, then a slot). Counting occupied
        slots instead would be wrong: H is quadratic and never lands on most slots, so slot
        counts say little about where requests go."""
        if not self.members:
            return []
        counts = [0] * len(self.members)
        for residue, weight in id_weights(self.slots):
            index = self.residue_owner(residue)
            if index >= 0:
                counts[index] += weight
        return [c / (REQUEST_IDS[1] - REQUEST_IDS[0]) for c in counts]

    def position(self, key: str) -> dict[str, Any]:
        return {"slot": self.slot_of(key)}

    def moved(self, other: Strategy) -> float | None:
        """Request ids whose owner changed, over the id space (tables of one slot count only)."""
        if not isinstance(other, Seed) or other.slots != self.slots:
            return None
        mine, theirs = owner_names(self), owner_names(other)
        changed = sum(
            weight
            for residue, weight in id_weights(self.slots)
            if mine[self.residue_owner(residue)] != theirs[other.residue_owner(residue)]
        )
        return changed / (REQUEST_IDS[1] - REQUEST_IDS[0])
