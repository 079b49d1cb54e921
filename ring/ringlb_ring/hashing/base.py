"""What every hashing strategy shares: the stable 64-bit hash, the ``Strategy`` protocol, the preference walk.

Kept apart from the strategy modules so that each of them, and the registry in ``__init__``,
can import it without a cycle.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol


def hash64(data: str) -> int:
    """Stable 64-bit hash of a string: the same in every process and on every machine.

    Python's ``hash()`` is salted per process, so two balancer workers would disagree.
    BLAKE2b with an 8-byte digest is in the standard library and costs well under a microsecond.
    """
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "little")


class Strategy(Protocol):
    """What the balancer and the status page need from a hashing strategy.

    Each strategy reports its own shares and key positions (as Envoy's MaglevTable reports its
    per-host share), so callers never read a table's internals or branch on a strategy's name.
    """

    name: str
    members: tuple[str, ...]
    affine: bool  # False: the key does not choose the member (round-robin, random baselines)

    def owner(self, key: str) -> int:
        """Index into ``members`` of the member that owns ``key``."""

    def preference(self, key: str) -> Iterator[int]:
        """Every member index exactly once, owner first, in this strategy's fallback order."""

    def shares(self) -> list[float]:
        """Each member's share of the key space, index-aligned with ``members``; sums to 1 (to
        float rounding) with at least one member, ``[]`` with none."""

    def position(self, key: str) -> dict[str, Any]:
        """Where ``key`` lands in this strategy's table, for the status page to show."""

    def moved(self, other: Strategy) -> float | None:
        """The exact fraction of the key space whose owner (by member name) differs in
        ``other``, when ``other`` is a table this one compares entry by entry (same kind, same
        size); None otherwise, and callers measure on sample keys. A key without an owner (no
        members) counts as moved when the other side has one."""


def owner_names(strategy: Strategy) -> dict[int, str | None]:
    """Member index -> name, -1 (no owner) -> None: what two tables' entries are compared by."""
    names: dict[int, str | None] = dict(enumerate(strategy.members))
    names[-1] = None
    return names


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def distinct(sequence: Sequence[int], start: int, count: int) -> Iterator[int]:
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
