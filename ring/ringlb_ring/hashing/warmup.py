"""Warm-up tables: a membership change carried out a slice at a time, so caches follow the keys.

Consistent hashing keeps a key on one replica so that replica's per-key state stays warm; a
change of members moves every key it moves at once, and each lands cold. Here a change from
the member list ``source`` to ``target`` is split into steps: at fraction f, a fixed first f of
the key space that changes owner has moved to its final owner and the rest is still with its old
one. A joining member's share grows step by step; a leaving member hands its keys over the same
way (it stays in the document's members, routable, until the last step).

Each intermediate table is a table of the strategy's own kind (a Maglev lookup table, a ring of
points), blended from the old and the final table: lookups cost what they always cost, and the
status page computes its exact shares and moved fractions from it as from any other table. The
order in which the changing part moves is a hash of the table position (a Maglev entry, a ring
arc's end point): the same in every process, so every balancer pod routes alike at every step.

Pure: the operator or supervisor calls ``plan`` and pushes one membership per step; the balancer
builds each step's table through ``ringlb_ring.hashing.build``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ringlb_ring.hashing.base import Strategy, hash64
from ringlb_ring.hashing.ketama import CIRCLE, Ring
from ringlb_ring.hashing.maglev import Maglev

MAX_STEPS = 100
WARMUP_STRATEGIES = ("maglev", "ring")  # the ones where a key has one final owner to move toward


@dataclass(frozen=True)
class Transition:
    """The ``hashing.transition`` of a membership document: keys on their way from the table of
    ``source`` (``"from"``) to the table of ``target`` (``"to"``), ``fraction`` of the way.

    The document's members are then every member of either list (a leaving member still
    serves the keys it has not handed over yet).
    """

    source: tuple[str, ...]
    target: tuple[str, ...]
    fraction: float

    def validate(self) -> None:
        for field, names in (("from", self.source), ("to", self.target)):
            if not names:
                raise ValueError(f"transition.{field}: at least one member")
            if len(set(names)) != len(names):
                raise ValueError(f"transition.{field}: member names must be unique")
        if set(self.source) == set(self.target):
            raise ValueError("transition: from and to are the same members; push the table without a transition")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(
                "transition.fraction: strictly between 0 and 1 "
                "(the last step is the table of 'to', without a transition)"
            )

    def check_members(self, members: Sequence[str]) -> None:
        """The members a step routes to must be exactly those of ``from`` and ``to``."""
        expected = set(self.source) | set(self.target)
        if set(members) != expected or len(members) != len(expected):
            missing = sorted(expected - set(members))
            extra = sorted(set(members) - expected)
            raise ValueError(
                "transition: members must be exactly the members of from and to"
                + (f"; missing {missing}" if missing else "")
                + (f"; not in from or to {extra}" if extra else "")
            )


@dataclass(frozen=True)
class Step:
    """One push of a warm-up: route to ``members`` with ``transition`` (None: the final table)."""

    members: tuple[str, ...]
    transition: Transition | None


def plan(old_members: Sequence[str], new_members: Sequence[str], steps: int) -> list[Step]:
    """The ``steps`` memberships that take the ring from ``old_members`` to ``new_members``.

    Step k (1-based) of S moves k/S of the changing key space; the last step is the direct
    table of ``new_members`` with no transition, so a warm-up ends exactly where a one-shot
    change would have. ``steps=1`` is the one-shot change itself. The members of the
    intermediate steps are ``new_members`` followed by those leaving, in their old order.
    """
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    old, new = tuple(old_members), tuple(new_members)
    Transition(old, new, 0.5).validate()  # the two lists themselves: non-empty, unique, different
    staying = set(new)
    union = new + tuple(m for m in old if m not in staying)
    out = []
    for k in range(1, steps):
        out.append(Step(union, Transition(old, new, k / steps)))
    out.append(Step(new, None))
    return out


@dataclass(frozen=True)
class Schedule:
    """When each step of a warm-up of ``seconds`` is due: one push every ``step_seconds`` or
    so, ``min_steps`` to ``max_steps`` of them; step k of S (1-based) is due
    ``(k-1) * seconds / (S-1)`` after the start, so the first slice moves at once and the
    final table comes ``seconds`` after it. The operator and the local supervisor differ only
    in the step length (one push reaches a fleet of balancer pods, or one balancer)."""

    seconds: float
    step_seconds: float
    min_steps: int = 2
    max_steps: int = MAX_STEPS

    @property
    def steps(self) -> int:
        return max(self.min_steps, min(self.max_steps, 1 + int(self.seconds // self.step_seconds)))

    def due(self, source: Sequence[str], target: Sequence[str], elapsed: float) -> Due | None:
        """The step of the change from ``source`` to ``target`` due ``elapsed`` seconds after it
        began (a clock that went back counts as the start). None when there is nothing to
        ramp (no source, no target, the same members) or the ramp is over: the direct table
        of ``target`` is then what to push."""
        if self.seconds <= 0 or not source or not target or set(source) == set(target):
            return None
        if elapsed >= self.seconds:  # not left to the division below: k * s / (S-1) rounds
            return None
        steps = self.steps
        step = min(steps, 1 + int(max(0.0, elapsed) * (steps - 1) // self.seconds))
        if step >= steps:
            return None
        return Due(plan(source, target, steps)[step - 1], step, steps, step * self.seconds / (steps - 1))


@dataclass(frozen=True)
class Due:
    """A step of a warm-up in progress: what to push (``current``), which step of how many,
    and ``next_in``: seconds from the start of the warm-up until the next step is due."""

    current: Step
    step: int
    steps: int
    next_in: float


def blend(members: Sequence[str], old: Strategy, new: Strategy, fraction: float) -> Maglev | Ring:
    """The intermediate table over ``members`` (old's and new's members, in the document's
    order): the first ``fraction`` of what changes owner between ``old`` and ``new`` moved."""
    if isinstance(old, Maglev) and isinstance(new, Maglev):
        return MaglevWarmup(members, old, new, fraction)
    if isinstance(old, Ring) and isinstance(new, Ring):
        return RingWarmup(members, old, new, fraction)
    raise ValueError(f"transition: only for strategies {', '.join(WARMUP_STRATEGIES)}")


def _index_map(members: tuple[str, ...], names: Sequence[str]) -> list[int]:
    index = {name: i for i, name in enumerate(members)}
    return [index[name] for name in names]


class _Blended:
    """The failover order of an intermediate table: the owner first, then the final table's
    order (where the keys are going), then the members that are leaving."""

    members: tuple[str, ...]
    final: Maglev | Ring
    final_index: list[int]
    leaving: tuple[int, ...]

    if TYPE_CHECKING:  # the table class's own lookup (Maglev's or Ring's): later in the MRO

        def owner(self, key: str) -> int: ...

    def _init_blend(self, new: Maglev | Ring) -> None:
        self.final = new
        self.final_index = _index_map(self.members, new.members)
        target = set(new.members)
        self.leaving = tuple(i for i, name in enumerate(self.members) if name not in target)

    def preference(self, key: str) -> Iterator[int]:
        owner = self.owner(key)
        yield owner
        final_index = self.final_index
        for i in self.final.preference(key):
            if final_index[i] != owner:
                yield final_index[i]
        for i in self.leaving:
            if i != owner:
                yield i


class MaglevWarmup(_Blended, Maglev):
    """A Maglev table whose entries are the old table's, except the first ``fraction`` of the
    entries that change owner (ordered by a hash of the entry's index), which hold the final
    owner. Built from two tables instead of from permutations, so ``Maglev.__init__`` is not
    run; lookups, shares and positions are Maglev's own."""

    def __init__(self, members: Sequence[str], old: Maglev, new: Maglev, fraction: float) -> None:
        if old.table_size != new.table_size:
            raise ValueError("transition: both tables must have the same size")
        self.members = tuple(members)
        self.table_size = new.table_size
        self.fraction = fraction
        self._init_blend(new)
        old_index = _index_map(self.members, old.members)
        table = [old_index[x] for x in old.table]
        final = [self.final_index[x] for x in new.table]
        changing = [s for s in range(self.table_size) if table[s] != final[s]]
        changing.sort(key=lambda s: hash64(f"warmup:{s}"))
        for s in changing[: round(fraction * len(changing))]:
            table[s] = final[s]
        self.table = table


class RingWarmup(_Blended, Ring):
    """A ring whose points are the union of the old and the final ring's: between two
    consecutive points both owners are constant, so each such arc is either moved whole to its
    final owner or not. Arcs that change owner move in the order of a hash of their end point,
    as long as the moved length stays within ``fraction`` of the changing length. Built from
    two rings, so ``Ring.__init__`` is not run; lookups, shares and positions are Ring's own."""

    def __init__(self, members: Sequence[str], old: Ring, new: Ring, fraction: float) -> None:
        self.members = tuple(members)
        self.vnodes = new.vnodes
        self.fraction = fraction
        self._init_blend(new)
        old_index = _index_map(self.members, old.members)
        points = sorted(set(old.points) | set(new.points))
        owners = []
        changing = []  # (order, arc index, arc length)
        total = 0
        for j, end in enumerate(points):
            start = points[j - 1]  # j = 0: the arc that wraps through 2^64, from the last point
            before = old_index[old.owners[bisect.bisect(old.points, start) % len(old.points)]]
            after = self.final_index[new.owners[bisect.bisect(new.points, start) % len(new.points)]]
            owners.append(before)
            if before != after:
                length = (end - start) % CIRCLE or CIRCLE
                changing.append((hash64(f"warmup:{end}"), j, length, after))
                total += length
        changing.sort()
        budget = fraction * total
        moved = 0
        for _, j, length, after in changing:
            if moved + length > budget:
                break
            moved += length
            owners[j] = after
        self.points = points
        self.owners = owners
