"""Consistent-hashing strategies: pure functions of a member list, no I/O.

Every strategy is built once per membership change and then answers lookups from a precomputed
table, because lookups sit on the balancer's per-request path and membership changes are rare.
A strategy maps a key to a *preference order* of member indexes: the first is the owner, the rest
are where a request goes when the owner is ejected or over its bounded load.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

STRATEGIES = ("maglev", "ring", "seed")
DEFAULT_STRATEGY = "maglev"
DEFAULT_MAGLEV_TABLE_SIZE = 65537
DEFAULT_VNODES = 160
SEED_SLOTS = 512
SEED_VIRTUAL_SERVERS = 9  # K = log2(512)


def hash64(data: str) -> int:
    """Stable 64-bit hash of a string: the same in every process and on every machine.

    Python's ``hash()`` is salted per process, so two balancer workers would disagree.
    BLAKE2b with an 8-byte digest is in the standard library and costs well under a microsecond.
    """
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "little")


class Strategy(Protocol):
    """What the balancer needs from a hashing strategy."""

    name: str
    members: tuple[str, ...]

    def owner(self, key: str) -> int:
        """Index into ``members`` of the member that owns ``key``."""

    def preference(self, key: str) -> Iterator[int]:
        """Every member index exactly once, owner first, in this strategy's fallback order."""


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


class Maglev:
    """Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table filled from per-member
    permutations, giving near-perfect balance and O(1) lookups.

    Removing a member moves its own keys plus a small fraction of the others (the paper's
    "minimal disruption" is approximate); the tests report the figure.
    """

    name = "maglev"

    def __init__(self, members: Sequence[str], table_size: int = DEFAULT_MAGLEV_TABLE_SIZE) -> None:
        if not _is_prime(table_size):
            raise ValueError(f"maglev table size must be prime, got {table_size}")
        if len(members) > table_size:
            raise ValueError("maglev table size must be at least the number of members")
        self.members = tuple(members)
        self.table_size = table_size
        self.table = self._populate()

    def _populate(self) -> list[int]:
        m = self.table_size
        n = len(self.members)
        table = [-1] * m
        if n == 0:
            return table
        offsets = [hash64("offset:" + name) % m for name in self.members]
        skips = [hash64("skip:" + name) % (m - 1) + 1 for name in self.members]
        nexts = [0] * n
        filled = 0
        while True:
            for i in range(n):
                c = (offsets[i] + nexts[i] * skips[i]) % m
                while table[c] >= 0:
                    nexts[i] += 1
                    c = (offsets[i] + nexts[i] * skips[i]) % m
                table[c] = i
                nexts[i] += 1
                filled += 1
                if filled == m:
                    return table

    def owner(self, key: str) -> int:
        return self.table[hash64(key) % self.table_size]

    def preference(self, key: str) -> Iterator[int]:
        # Walking the table from the key's entry visits members in a key-dependent order, so the
        # load of an ejected member spreads over all the others instead of one neighbour.
        return _distinct(self.table, hash64(key) % self.table_size, len(self.members))


class Ring:
    """Ketama-style ring with ``vnodes`` points per member.

    A key belongs to the first point clockwise of its hash, so removing a member moves exactly
    that member's keys and nothing else.
    """

    name = "ring"

    def __init__(self, members: Sequence[str], vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes}")
        self.members = tuple(members)
        self.vnodes = vnodes
        points = sorted(
            (hash64(f"{name}#{v}"), i) for i, name in enumerate(self.members) for v in range(vnodes)
        )
        self.points = [p for p, _ in points]
        self.owners = [i for _, i in points]

    def owner(self, key: str) -> int:
        return self.owners[bisect.bisect(self.points, hash64(key)) % len(self.points)]

    def preference(self, key: str) -> Iterator[int]:
        if not self.points:
            return iter(())
        start = bisect.bisect(self.points, hash64(key)) % len(self.points)
        return _distinct(self.owners, start, len(self.members))


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
    return 100_000 + hash64(key) % 900_000


class Seed:
    """The original assignment's scheme, reproduced exactly: M = 512 slots, K = 9 virtual
    servers per server at Φ(i, j), linear probing on collision, a request at H(i) goes clockwise
    to the nearest occupied slot. H and Φ are parameters because analysis A-4 swaps them."""

    name = "seed"

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
        return _distinct(self.ring_order, self._position[slot], len(self.members))


def _distinct(sequence: Sequence[int], start: int, count: int) -> Iterator[int]:
    """Walk ``sequence`` cyclically from ``start``, yielding each value the first time seen,
    until ``count`` distinct values have been yielded."""
    seen: set[int] = set()
    size = len(sequence)
    for step in range(size):
        value = sequence[(start + step) % size]
        if value >= 0 and value not in seen:
            seen.add(value)
            yield value
            if len(seen) == count:
                return


@dataclass(frozen=True)
class HashingConfig:
    """The hashing settings the operator or supervisor pushes with a membership."""

    strategy: str = DEFAULT_STRATEGY
    table_size: int = DEFAULT_MAGLEV_TABLE_SIZE
    vnodes: int = DEFAULT_VNODES
    seed_formulas: str = "original"  # "original" or "reissue"
    bounded_load: float = 0.0  # 0 disables; otherwise c >= 1, e.g. 1.25

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if self.seed_formulas not in ("original", "reissue"):
            raise ValueError("seed_formulas must be 'original' or 'reissue'")
        if self.bounded_load and not 1.0 <= self.bounded_load <= 10.0:
            raise ValueError("bounded_load must be 0 (off) or between 1.0 and 10.0")
        if not 1 <= self.vnodes <= 1000:
            raise ValueError("vnodes must be between 1 and 1000")
        if not (_is_prime(self.table_size) and 257 <= self.table_size <= 1_000_003):
            raise ValueError("table_size must be a prime between 257 and 1000003")


def build(members: Sequence[str], config: HashingConfig = HashingConfig()) -> Strategy:
    """Build the strategy ``config`` names over ``members`` (in the given order)."""
    config.validate()
    if config.strategy == "maglev":
        return Maglev(members, config.table_size)
    if config.strategy == "ring":
        return Ring(members, config.vnodes)
    if config.seed_formulas == "reissue":
        return Seed(members, reissue_request_slot, reissue_virtual_slot)
    return Seed(members)


def bounded_choice(preference: Iterable[int], inflight: Sequence[int], factor: float) -> int:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2018).

    The first member in preference order whose in-flight count is below
    ceil(factor × mean), where the mean counts the request being placed. Some member always
    qualifies because the cap is at least the mean.
    """
    total = sum(inflight) + 1
    cap = math.ceil(factor * total / len(inflight))
    first = -1
    for index in preference:
        if first < 0:
            first = index
        if inflight[index] < cap:
            return index
    return first


def keys_moved(before: Strategy, after: Strategy, keys: Iterable[str]) -> list[str]:
    """The keys whose owner (by name) differs between two strategies."""
    return [
        key
        for key in keys
        if before.members[before.owner(key)] != after.members[after.owner(key)]
    ]
