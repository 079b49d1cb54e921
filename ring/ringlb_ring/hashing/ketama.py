"""The ``ring`` strategy: a ketama-style ring of virtual nodes, where removing a member moves only its keys.

One module per algorithm so each can be read alone; registered as "ring" in ``ringlb_ring.hashing``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ringlb_ring.hashing.base import Strategy, distinct, hash64, owner_names

DEFAULT_VNODES = 160
CIRCLE = 2**64


def arcs(points: Sequence[int], owners: Sequence[int]) -> Iterable[tuple[int, int]]:
    """(owner index, arc length) for each ring point: a hash h goes to the point at
    ``bisect_right(points, h)`` (wrapping), so point k owns [points[k-1], points[k]) and
    point 0 owns [points[-1], 2^64) plus [0, points[0])."""
    if not points:
        return
    yield owners[0], CIRCLE - points[-1] + points[0]
    for k in range(1, len(points)):
        yield owners[k], points[k] - points[k - 1]


class Ring:
    """Ketama-style ring with ``vnodes`` points per member.

    A key belongs to the first point clockwise of its hash, so removing a member moves exactly
    that member's keys and nothing else.
    """

    name = "ring"
    affine = True

    def __init__(self, members: Sequence[str], vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes}")
        self.members = tuple(members)
        self.vnodes = vnodes
        points = sorted((hash64(f"{name}#{v}"), i) for i, name in enumerate(self.members) for v in range(vnodes))
        self.points = [p for p, _ in points]
        self.owners = [i for _, i in points]

    def owner(self, key: str) -> int:
        return self.owners[bisect.bisect(self.points, hash64(key)) % len(self.points)]

    def preference(self, key: str) -> Iterator[int]:
        if not self.points:
            return iter(())
        start = bisect.bisect(self.points, hash64(key)) % len(self.points)
        return distinct(self.owners, start, len(self.members))

    def shares(self) -> list[float]:
        """The total length of the arcs ending at a member's points, over 2^64 (exact integers
        until the final division)."""
        if not self.members:
            return []
        counts = [0] * len(self.members)
        for index, length in arcs(self.points, self.owners):
            counts[index] += length
        return [c / CIRCLE for c in counts]

    def position(self, key: str) -> dict[str, Any]:
        h = hash64(key)
        return {"hash": f"{h:016x}", "angle": round(360 * h / CIRCLE, 3)}

    def moved(self, other: Strategy) -> float | None:
        """Length of the circle whose owner changed, over 2^64: both owners are constant
        between two consecutive points of the union of both point sets."""
        if not isinstance(other, Ring):
            return None
        mine, theirs = owner_names(self), owner_names(other)
        bounds = sorted(set(self.points) | set(other.points) | {0})
        changed = 0
        for i, start in enumerate(bounds):
            end = bounds[i + 1] if i + 1 < len(bounds) else CIRCLE
            if mine[self._owner_at(start)] != theirs[other._owner_at(start)]:
                changed += end - start
        return changed / CIRCLE

    def _owner_at(self, h: int) -> int:
        points = self.points
        return self.owners[bisect.bisect(points, h) % len(points)] if points else -1
