"""The ``ring`` strategy: a ketama-style ring of virtual nodes, where removing a member moves only its keys.

One module per algorithm so each can be read alone; registered as "ring" in ``ringlb_ring.hashing``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from ringlb_ring.hashing.base import distinct, hash64

DEFAULT_VNODES = 160


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
        return distinct(self.owners, start, len(self.members))
