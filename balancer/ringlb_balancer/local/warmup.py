"""Warm-up in local mode: which membership the supervisor pushes at a given moment.

``ringlb dev --warmup S`` plays the operator's part of ``spec.hashing.warmupSeconds``: a change
of the ring is carried out as the steps of ``ringlb_ring.hashing.warmup.plan``, one membership
per step, each pushed with a revision of its own, the first at once and the last (the direct
table of the new ring) S seconds later. A joining replica's share grows step by step; a replica
removed by ``/rm`` stays in the document, routable, until its share reaches 0, and only then is
its process stopped. A replica that dies is no longer servable and leaves at once, as without a
warm-up. The semantics are the operator's (``ringlb_operator.warmup.due``), with the ramp held in
the supervisor's memory instead of the resource's status and a monotonic clock instead of
RFC 3339 times.

Pure: the supervisor passes what it knows and the clock, pushes what ``due`` returns and keeps
the returned ramp once that push is in force.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ringlb_ring.hashing import Transition
from ringlb_ring.hashing.warmup import WARMUP_STRATEGIES, Schedule

MAX_SECONDS = 3600.0  # as the operator's spec.hashing.warmupSeconds
STEP_SECONDS = 1.0  # about one push a second: local mode has one balancer to push to, not a fleet
MIN_STEPS = 4  # a first slice, two in between, the final table: fewer is hardly gradual


def schedule(seconds: float) -> Schedule:
    return Schedule(seconds, STEP_SECONDS, MIN_STEPS)


@dataclass(frozen=True)
class Ramp:
    """A warm-up in progress: keys on their way from the table of ``source`` to the table of
    ``target`` since ``started`` (the supervisor's ``time.monotonic()``)."""

    source: tuple[str, ...]
    target: tuple[str, ...]
    started: float


@dataclass(frozen=True)
class Due:
    """What to push now: the members ``names`` with ``transition`` (None: a direct table), and
    the warm-up to keep once it is in force (``ramp`` None: none in progress)."""

    names: tuple[str, ...]
    transition: Transition | None = None
    ramp: Ramp | None = None
    step: int = 0  # 1 .. steps-1 while a ramp is in progress
    steps: int = 0
    next_at: float | None = None  # when the next step is due (monotonic)


def due(
    ramp: Ramp | None,
    published: Sequence[str],
    target: Sequence[str],
    servable: Collection[str],
    seconds: float,
    strategy: str,
    now: float,
) -> Due:
    """The step of the change towards ``target`` that is due at ``now``.

    ``ramp``: the warm-up in force (None: none); ``published``: the members of the last direct
    table in force; ``target``: the ring wanted (ready replicas of the desired list, in order);
    ``servable``: the names that may still be routed to (``target`` and the live replicas that
    leave by ``/rm``). Step k of S (1-based) is due ``(k-1) * seconds / (S-1)`` after the start.
    When ``target`` changes during a warm-up, the warm-up goes on from the same start and the
    same source (less any member that can no longer serve) towards the new target.
    """
    wanted = tuple(target)
    if seconds <= 0 or strategy not in WARMUP_STRATEGIES:
        return Due(wanted)
    if ramp is None:
        ramp = Ramp(tuple(n for n in published if n in servable), wanted, now)
    else:
        ramp = Ramp(tuple(n for n in ramp.source if n in servable), wanted, ramp.started)
    found = schedule(seconds).due(ramp.source, ramp.target, now - ramp.started)
    if found is None:
        return Due(wanted)  # nothing to warm from, no one to hand over to, nothing changes, or over
    current = found.current
    return Due(current.members, current.transition, ramp, found.step, found.steps, ramp.started + found.next_in)
