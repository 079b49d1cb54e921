"""The ``maglev`` strategy (the default): a prime-sized lookup table, near-perfect balance, O(1) lookups.

Maglev hashing, Eisenbud et al., NSDI 2016; one module per algorithm so each can be read alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ringlb_ring.hashing.base import Strategy, distinct, hash64, is_prime, owner_names

DEFAULT_MAGLEV_TABLE_SIZE = 65537


class Maglev:
    """Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table filled from per-member
    permutations, giving near-perfect balance and O(1) lookups.

    Removing a member moves its own keys plus a small fraction of the others (the paper's
    "minimal disruption" is approximate); the tests report the figure.
    """

    name = "maglev"
    affine = True

    def __init__(self, members: Sequence[str], table_size: int = DEFAULT_MAGLEV_TABLE_SIZE) -> None:
        if not is_prime(table_size):
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
        # Member i's candidates are (offset + j * skip) % m for j = 0, 1, ...: walked by
        # addition, round after round, as the table build is most of a push's time (a third of
        # the modulo-per-probe loop's).
        position = [hash64("offset:" + name) % m for name in self.members]
        skips = [hash64("skip:" + name) % (m - 1) + 1 for name in self.members]
        rounds, extra = divmod(m, n)
        everyone = range(n)
        for r in range(rounds + 1):
            for i in everyone if r < rounds else range(extra):
                c = position[i]
                skip = skips[i]
                while table[c] >= 0:
                    c += skip
                    if c >= m:
                        c -= m
                table[c] = i
                c += skip
                position[i] = c - m if c >= m else c
        return table

    def owner(self, key: str) -> int:
        return self.table[hash64(key) % self.table_size]

    def preference(self, key: str) -> Iterator[int]:
        # Walking the table from the key's entry visits members in a key-dependent order, so the
        # load of an ejected member spreads over all the others instead of one neighbour.
        return distinct(self.table, hash64(key) % self.table_size, len(self.members))

    def shares(self) -> list[float]:
        """A member's number of table entries over the table size: exact up to the
        2^64 mod table_size bias of ``hash64 % table_size``, below 1e-14."""
        if not self.members:
            return []
        counts = [0] * len(self.members)
        for index in self.table:
            counts[index] += 1
        return [c / self.table_size for c in counts]

    def position(self, key: str) -> dict[str, Any]:
        h = hash64(key)
        return {"hash": f"{h:016x}", "entry": h % self.table_size}

    def moved(self, other: Strategy) -> float | None:
        """Entries whose owner changed, over the table size (tables of one size only)."""
        if not isinstance(other, Maglev) or other.table_size != self.table_size:
            return None
        mine, theirs = owner_names(self), owner_names(other)
        changed = sum(1 for x, y in zip(self.table, other.table, strict=True) if mine[x] != theirs[y])
        return changed / self.table_size
