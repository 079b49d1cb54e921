"""The non-affine baselines ``round-robin`` and ``random``: the key chooses nothing.

They exist to be measured against: with a per-key cache on the replicas, the hit rate under
them is what consistent hashing is compared with. Both keep the ``Strategy`` shape (an owner and
a preference order per call) so the balancer routes with them unchanged; registered in
``ringlb_ring.hashing``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from ringlb_ring.hashing.base import Strategy


def _rotation(start: int, n: int) -> Iterator[int]:
    """Every index once, from ``start`` on, wrapping."""
    for step in range(n):
        index = start + step
        yield index - n if index >= n else index


class _Keyless:
    """What both baselines share: every member a 1/N share, a preference order that starts at
    the call's owner and wraps, no position on a ring. Subclasses choose the owner."""

    name = ""
    affine = False

    def __init__(self, members: Sequence[str]) -> None:
        self.members = tuple(members)

    def owner(self, key: str) -> int:
        raise NotImplementedError

    def preference(self, key: str) -> Iterator[int]:
        if not self.members:
            return iter(())
        return _rotation(self.owner(key), len(self.members))

    def shares(self) -> list[float]:
        n = len(self.members)
        return [1 / n] * n if n else []

    def position(self, key: str) -> dict[str, Any]:
        return {}

    def moved(self, other: Strategy) -> float | None:
        return None  # no key has an owner to move


class RoundRobin(_Keyless):
    """Each call's owner is the next member, whatever the key.

    The counter is this object's, so each balancer worker process rotates on its own: cheap (no
    shared memory on the request path), and over many requests every member gets 1/N of them.
    """

    name = "round-robin"

    def __init__(self, members: Sequence[str]) -> None:
        super().__init__(members)
        self._next = 0

    def owner(self, key: str) -> int:
        index = self._next
        self._next = index + 1 if index + 1 < len(self.members) else 0
        return index


class Random(_Keyless):
    """Each call's owner is drawn uniformly, whatever the key.

    The module's generator: Python reseeds it in every forked child, so balancer workers do not
    draw the same sequence.
    """

    name = "random"

    def owner(self, key: str) -> int:
        return int(random.random() * len(self.members))
