"""Warm-up on Kubernetes: which step of a gradual membership change is due now.

With ``spec.hashing.warmupSeconds`` a change of the ring is not published at once: the keys
that change owner move a slice at a time (``ringlb_ring.hashing.warmup``), so a joining replica's
cache fills as its share grows and a replica removed by scale-down hands its keys over before its
pod goes. The operator is level-based, so the change in progress is state in the resource's
status (``status.transition``: from, to, startedAt) and each pass derives the step due from it
and the clock; each step is a membership document of its own, with its own revision, so every
balancer pod routes alike at every step. Pure: no API calls (``reconcile.py`` applies).

A member that fails (not Ready) leaves at once, as without a warm-up: a step may only name
members that can serve. When the wanted ring changes during a warm-up, the warm-up goes on,
from the same start and the same ``from`` (less any failed member), towards the new ring.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ringlb_operator import children
from ringlb_operator import constants as c
from ringlb_operator.children import Owner
from ringlb_operator.events import Event
from ringlb_operator.observe import PodView
from ringlb_operator.spec import Spec
from ringlb_operator.timestamps import format_time, parse_time
from ringlb_ring import hashing
from ringlb_ring.hashing import HashingConfig, Transition
from ringlb_ring.hashing.warmup import WARMUP_STRATEGIES, Schedule
from ringlb_ring.membership import format_address

JOINING = "Joining"
DRAINING = "Draining"


def schedule(warmup_seconds: int) -> Schedule:
    """A published step every ``WARMUP_STEP_SECONDS`` or so, 2 at least (a first slice at once,
    the final table at the end), ``WARMUP_MAX_STEPS`` at most (each step is one push to every
    balancer pod)."""
    return Schedule(warmup_seconds, c.WARMUP_STEP_SECONDS, 2, c.WARMUP_MAX_STEPS)


@dataclass(frozen=True)
class Ramp:
    """A warm-up in progress, as ``status.transition`` records it: keys on their way from the
    table of ``source`` to the table of ``target`` since ``started_at`` (RFC 3339)."""

    source: tuple[str, ...]
    target: tuple[str, ...]
    started_at: str


def read(status: Mapping[str, Any] | None) -> Ramp | None:
    """The warm-up the status records, or None (none, or a record this code cannot use)."""
    raw = (status or {}).get("transition")
    if not isinstance(raw, Mapping):
        return None
    source, target, started = raw.get("from"), raw.get("to"), raw.get("startedAt")
    if not (isinstance(source, list) and isinstance(target, list) and isinstance(started, str)):
        return None
    if parse_time(started) is None or not all(isinstance(n, str) for n in source + target):
        return None
    return Ramp(tuple(source), tuple(target), started)


def published(status: Mapping[str, Any] | None) -> list[str]:
    """The members of the last direct ring (no warm-up in progress): the status rows in the
    ring, in ring order; each pass writes them for the ring it published."""
    return [m["name"] for m in (status or {}).get("members") or [] if m.get("ready") and isinstance(m.get("name"), str)]


@dataclass(frozen=True)
class Due:
    """What to publish in this pass: a membership of ``names`` with ``transition`` (None: a
    direct table), and the warm-up to record (``ramp`` None: none in progress)."""

    names: tuple[str, ...]
    transition: Transition | None = None
    ramp: Ramp | None = None
    step: int = 0  # 1 .. steps-1 while a ramp is in progress
    steps: int = 0
    next_at: datetime.datetime | None = None  # when the next step is due

    @property
    def joining(self) -> tuple[str, ...]:
        if self.ramp is None:
            return ()
        return tuple(n for n in self.ramp.target if n not in self.ramp.source)

    @property
    def draining(self) -> tuple[str, ...]:
        if self.ramp is None:
            return ()
        return tuple(n for n in self.ramp.source if n not in self.ramp.target)

    def next_in(self, now: str) -> float | None:
        """Seconds from ``now`` until the next step is due (None: nothing is)."""
        at = parse_time(now)
        if self.next_at is None or at is None:
            return None
        return max(0.0, (self.next_at - at).total_seconds())


def due(
    status: Mapping[str, Any] | None,
    target: Sequence[str],
    servable: Collection[str],
    warmup_seconds: int,
    strategy: str,
    now: str,
) -> Due:
    """The step of the change towards ``target`` that is due at ``now``.

    ``target``: the ring wanted (Ready replicas of the wanted identities, in ring order);
    ``servable``: the names that may still be routed to (``target`` and the Ready replicas that
    leave by scale-down). Step k of S (1-based) is due ``(k-1) * warmupSeconds / (S-1)`` after
    the start: the first slice moves at once, the last step, the direct table of ``target``,
    comes ``warmupSeconds`` after the start.
    """
    wanted = tuple(target)
    at = parse_time(now)
    if warmup_seconds <= 0 or strategy not in WARMUP_STRATEGIES or at is None:
        return Due(wanted)
    ramp = read(status)
    if ramp is None:
        before = tuple(n for n in published(status) if n in servable)
        ramp = Ramp(before, wanted, format_time(at))
    else:
        ramp = Ramp(tuple(n for n in ramp.source if n in servable), wanted, ramp.started_at)
    started = parse_time(ramp.started_at)
    assert started is not None  # read() and format_time() give parseable times
    found = schedule(warmup_seconds).due(ramp.source, ramp.target, (at - started).total_seconds())
    if found is None:
        return Due(wanted)  # nothing to warm from, no one to hand over to, nothing changes, or over
    current = found.current
    next_at = started + datetime.timedelta(seconds=found.next_in)
    return Due(current.members, current.transition, ramp, found.step, found.steps, next_at)


def leaving(owner: Owner, spec: Spec, pods: Sequence[PodView], retiring: Collection[str]) -> dict[str, str]:
    """Identity → address of the replicas that leave by scale-down and can still serve: retiring
    pods of identities no longer wanted that are live and Ready. They may drain; others (failed,
    or replaced by a rolling update) leave at once."""
    wanted = set(spec.identities())
    found = {}
    for pod in pods:
        if pod.name not in retiring or pod.identity in wanted or not pod.identity:
            continue
        if pod.alive and pod.ready and pod.ip and pod.owner_uid == owner.uid:
            found[pod.identity] = format_address(pod.ip, c.PORT)
    return found


def shares(names: Sequence[str], transition: Transition | None, config: HashingConfig) -> dict[str, float]:
    """Each member's exact share of the key space in the table of this step: what every
    balancer pod builds from the document, and what its status page shows."""
    table = hashing.build(list(names), replace(config, transition=transition))
    return dict(zip(table.members, table.shares()))


def status_block(
    step: Due, previous: Mapping[str, Any] | None, owner: Owner, config: HashingConfig
) -> dict[str, Any] | None:
    """``status.transition`` for this step (None: no warm-up in progress). The shares are
    computed once per step (a table build): the previous block is kept when it is this step's."""
    ramp = step.ramp
    if ramp is None:
        return None
    assert step.next_at is not None and step.transition is not None
    block: dict[str, Any] = {
        "from": list(ramp.source),
        "to": list(ramp.target),
        "startedAt": ramp.started_at,
        "step": step.step,
        "steps": step.steps,
        "fraction": round(step.transition.fraction, 6),
        "nextStepAt": format_time(
            step.next_at + datetime.timedelta(microseconds=-step.next_at.microsecond % 1_000_000)
        ),
    }
    if previous and all(previous.get(k) == v for k, v in block.items()) and isinstance(previous.get("members"), list):
        return {**block, "members": previous["members"]}
    share = shares(step.names, step.transition, config)
    block["members"] = [
        {
            "name": name,
            "pod": children.pod_name(owner.name, name),
            "state": state,
            "share": round(share.get(name, 0.0), 6),
        }
        for state, names in ((JOINING, step.joining), (DRAINING, step.draining))
        for name in names
    ]
    return block


def progress(block: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """The Progressing reason and message of a warm-up in progress (None: none): Draining while
    a member hands its keys over, else WarmingUp."""
    if not block:
        return None
    rows = block.get("members") or []
    draining = [m for m in rows if m.get("state") == DRAINING]
    head = f"step {block.get('step')}/{block.get('steps')}, next at {block.get('nextStepAt')}"
    if draining:
        who = ", ".join(f"{m['name']} ({m['pod']}) share {m['share']:.1%}" for m in draining)
        return c.Reason.DRAINING, f"handing keys over before the pod goes, {head}: {who}"
    who = ", ".join(f"{m['name']} share {m['share']:.1%}" for m in rows)
    return c.Reason.WARMING_UP, f"joining replicas' shares grow, {head}: {who}"


def events(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, names: Collection[str], revision: int
) -> list[Event]:
    """The Events of a pass that published a new step (``before`` and ``after``: the status
    blocks of the previous and of this step; ``names``: the members this pass publishes).

    One per changing member with its share; when a warm-up ends, a leaving member's share 0
    (its pod is deleted once every balancer pod holds ``revision``) and a joining one's full share.
    """
    key = ("from", "to", "startedAt", "step", "steps")
    if after is not None:
        if before is not None and all(before.get(k) == after.get(k) for k in key):
            return []
        step = f"step {after['step']}/{after['steps']} at revision {revision}"
        return [
            Event(
                "Normal",
                c.Reason.DRAINING if m["state"] == DRAINING else c.Reason.WARMING_UP,
                f"{m['name']} (pod {m['pod']}) {'hands its keys over' if m['state'] == DRAINING else 'joins'}: "
                f"share {m['share']:.1%}, {step}",
            )
            for m in after.get("members") or []
        ]
    if not before:
        return []
    found = []
    for m in before.get("members") or []:
        if m.get("state") == DRAINING and m.get("name") not in names:
            found.append(
                Event(
                    "Normal",
                    c.Reason.DRAINING,
                    f"{m['name']} (pod {m['pod']}): share 0 at revision {revision}; its pod is deleted once every "
                    "balancer pod holds it",
                )
            )
        elif m.get("state") == JOINING and m.get("name") in names:
            found.append(
                Event("Normal", c.Reason.WARMING_UP, f"{m['name']} (pod {m['pod']}): full share at revision {revision}")
            )
    return found
