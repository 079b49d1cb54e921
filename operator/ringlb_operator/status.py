"""The resource's status stanza: counts, members, ring revision and the three conditions.

Pure: ``reconcile.py`` gathers what a pass saw into ``Observed`` and writes what ``summarize``
returns, only when ``differs`` says it changed (no write, no watch event, no extra pass).
Ready, Progressing and Degraded follow kubebuilder's vocabulary; each condition's
lastTransitionTime moves only when its status does, so a converged resource's status is stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ringlb_operator import children
from ringlb_operator import constants as c
from ringlb_operator.children import Owner
from ringlb_operator.lost_nodes import KEEP, Stranded, stranded_problems
from ringlb_operator.membership import RingRevision
from ringlb_operator.observe import NodeView, PodView
from ringlb_operator.pod_plan import PodPlan
from ringlb_operator.spec import Spec

Reason = c.Reason


@dataclass(frozen=True)
class PushState:
    """How one balancer pod answered this pass's push."""

    pod: str
    acknowledged: bool
    revision: int = 0
    error: str = ""


@dataclass
class Observed:
    """Everything ``summarize`` summarizes, gathered by one reconcile pass."""

    owner: Owner
    spec: Spec
    generation: int
    replica_pods: Sequence[PodView]
    balancer_pods: Sequence[PodView]
    ring: RingRevision
    members: list[dict[str, str]]
    plan: PodPlan
    pushes: Sequence[PushState] = ()
    conflicts: Sequence[str] = ()
    api_errors: Sequence[str] = ()
    stranded: Sequence[Stranded] = ()
    nodes: Mapping[str, NodeView] = field(default_factory=dict)
    transition: Mapping[str, Any] | None = None  # status.transition: a warm-up in progress
    warming: tuple[str, str] | None = None  # its Progressing (reason, message)

    @property
    def identities(self) -> list[str]:
        return self.spec.identities()

    @property
    def balancer_alive(self) -> list[PodView]:
        return [p for p in self.balancer_pods if p.alive]

    @property
    def balancer_ready(self) -> list[PodView]:
        return [p for p in self.balancer_alive if p.ready]

    @property
    def failed_pushes(self) -> list[PushState]:
        return [p for p in self.pushes if not p.acknowledged]

    @property
    def unacknowledged(self) -> bool:
        """Some balancer pod may not hold the revision: a push failed, or none was made."""
        return bool(self.failed_pushes) or not self.pushes


def condition(
    previous: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int,
) -> dict[str, Any]:
    """A condition whose lastTransitionTime moves only when its status does."""
    value = "True" if status else "False"
    old = next((cond for cond in previous if cond.get("type") == type_), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == value else now
    return {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now,
        "observedGeneration": generation,
    }


def pod_problems(pods: Sequence[PodView], what: str) -> list[tuple[str, str]]:
    """(reason, message) for pods that will not get better on their own."""
    found = []
    for pod in pods:
        if not pod.alive:
            continue
        if pod.waiting_reason in c.STUCK_WAITING_REASONS:
            detail = f": {pod.waiting_message}" if pod.waiting_message else ""
            found.append((pod.waiting_reason, f"{what} pod {pod.name}: {pod.waiting_reason}{detail}"))
        elif pod.unschedulable:
            found.append((Reason.UNSCHEDULABLE, f"{what} pod {pod.name}: {pod.unschedulable}"))
    return found


def summarize(previous: Mapping[str, Any] | None, seen: Observed, now: str) -> dict[str, Any]:
    """The whole status stanza: counts, members, ring revision and the three conditions."""
    previous = previous or {}
    old_conditions = previous.get("conditions") or []
    by_name = {p.name: p for p in seen.replica_pods}
    in_ring = {m["name"] for m in seen.members}
    member_rows = []
    for identity in seen.identities:
        pod = by_name.get(children.pod_name(seen.owner.name, identity))
        member_rows.append(
            {"name": identity, "pod": pod.name if pod and pod.alive else "", "ready": identity in in_ring}
        )
    alive = [p for p in seen.replica_pods if p.alive and p.owner_uid == seen.owner.uid]
    ramp = (
        {"transition": dict(seen.transition) if seen.transition else None}
        if seen.transition or previous.get("transition")
        else {}
    )
    return {
        **ramp,  # a warm-up in progress; null (a merge patch's removal) once it is over
        "observedGeneration": seen.generation,
        "replicas": len(alive),
        "readyReplicas": len(seen.members),
        "members": member_rows,
        "ringRevision": seen.ring.revision,
        "ringHash": seen.ring.hash,
        "selector": children.selector_string(children.replica_selector(seen.owner.name)),
        "balancer": {
            "replicas": len(seen.balancer_alive),
            "readyReplicas": len(seen.balancer_ready),
            "acknowledged": len([p for p in seen.pushes if p.acknowledged]),
        },
        "conditions": [
            _ready(old_conditions, seen, now),
            _progressing(old_conditions, seen, now),
            _degraded(old_conditions, seen, now),
        ],
    }


def _problems(seen: Observed) -> list[tuple[str, str]]:
    """(reason, message) of everything wrong that waiting will not fix, the first one the
    Degraded reason: conflicts, lost nodes, stuck pods, refused pushes, API errors."""
    by_name = {p.name: p for p in seen.replica_pods}
    problems: list[tuple[str, str]] = [(Reason.CHILD_CONFLICT, m) for m in list(seen.conflicts) + seen.plan.conflicts]
    problems += stranded_problems(seen.stranded, seen.balancer_alive, seen.nodes, seen.spec)
    wanted_pods = [
        by_name[children.pod_name(seen.owner.name, i)]
        for i in seen.identities
        if children.pod_name(seen.owner.name, i) in by_name
    ]
    problems += pod_problems(wanted_pods, "replica")
    problems += pod_problems(seen.balancer_alive, "balancer")
    failed = seen.failed_pushes
    if failed:
        detail = "; ".join(f"{p.pod}: {p.error}" for p in failed[:3])
        problems.append(
            (
                Reason.NOT_ACKNOWLEDGING,
                f"{len(failed)} balancer pod(s) did not take revision {seen.ring.revision}: {detail}",
            )
        )
    problems += [(Reason.API_ERROR, m) for m in seen.api_errors]
    return problems


def _degraded(old: Sequence[Mapping[str, Any]], seen: Observed, now: str) -> dict[str, Any]:
    problems = _problems(seen)
    if problems:
        message = "; ".join(m for _, m in problems)[: c.MESSAGE_LIMIT]
        return condition(old, c.DEGRADED, True, problems[0][0], message, now, seen.generation)
    return condition(old, c.DEGRADED, False, Reason.AS_EXPECTED, "all children as expected", now, seen.generation)


def _ready(old: Sequence[Mapping[str, Any]], seen: Observed, now: str) -> dict[str, Any]:
    """Ready only when every wanted replica is in the ring and every balancer pod holds it: the
    first of those that fails is the reason."""
    wanted, n_ready = len(seen.identities), len(seen.members)
    if n_ready < wanted:
        reason, message = Reason.REPLICAS_NOT_READY, f"{n_ready}/{wanted} replicas ready"
    elif not seen.balancer_ready:
        reason, message = Reason.BALANCER_NOT_READY, f"0/{seen.spec.balancer.replicas} balancer pods ready"
    elif seen.unacknowledged:
        reason, message = Reason.NOT_ACKNOWLEDGED, f"revision {seen.ring.revision} not yet held by every balancer pod"
    else:
        reason = Reason.SCALED_TO_ZERO if not wanted else Reason.ALL_READY
        message = f"{n_ready}/{wanted} replicas in the ring at revision {seen.ring.revision}"
        return condition(old, c.READY, True, reason, message, now, seen.generation)
    return condition(old, c.READY, False, reason, message, now, seen.generation)


def _progressing(old: Sequence[Mapping[str, Any]], seen: Observed, now: str) -> dict[str, Any]:
    """The one change in progress, most specific first: a warm-up step, the pod plan, a pod on a
    lost node, a push, replicas or balancer pods on their way to Ready."""
    moving = seen.warming[0] if seen.warming else seen.plan.progress
    if not moving and any(s.action != KEEP for s in seen.stranded):
        moving = Reason.REPLACING
    if not moving and seen.unacknowledged and seen.balancer_alive:
        moving = Reason.PUSHING
    if not moving and len(seen.members) < len(seen.identities):
        moving = Reason.SCALING_UP
    if not moving and len(seen.balancer_ready) < seen.spec.balancer.replicas:
        moving = Reason.BALANCER_NOT_READY
    if moving:
        return condition(old, c.PROGRESSING, True, moving, _progress_message(moving, seen), now, seen.generation)
    return condition(old, c.PROGRESSING, False, Reason.RECONCILED, "nothing to do", now, seen.generation)


def _progress_message(reason: str, seen: Observed) -> str:
    if seen.warming and reason == seen.warming[0]:
        return seen.warming[1]
    plan = seen.plan
    return {
        Reason.SCALING_UP: f"waiting for {len(seen.identities) - len(seen.members)} replica(s) to be ready",
        Reason.REPLACING: "replacing replica pod(s) with the same identity",
        Reason.SCALING_DOWN: f"retiring {len(plan.retire)} pod(s) no longer wanted",
        Reason.ROLLING: "replacing pods built from an older template, one at a time",
        Reason.PUSHING: f"pushing revision {seen.ring.revision} to the balancer pods",
        Reason.BALANCER_NOT_READY: "waiting for the balancer pods",
    }.get(reason, reason)


def invalid(previous: Mapping[str, Any] | None, problems: Sequence[str], generation: int, now: str) -> dict[str, Any]:
    """The status of a spec that cannot be reconciled: children are left as they are."""
    previous = dict(previous or {})
    old = previous.get("conditions") or []
    message = "; ".join(problems)[: c.MESSAGE_LIMIT]
    fix = "fix the spec; nothing is changed until then"
    previous.update(
        observedGeneration=generation,
        conditions=[
            condition(old, c.READY, False, Reason.INVALID_SPEC, message, now, generation),
            condition(old, c.PROGRESSING, False, Reason.INVALID_SPEC, fix, now, generation),
            condition(old, c.DEGRADED, True, Reason.INVALID_SPEC, message, now, generation),
        ],
    )
    return previous


def differs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` changes anything (no write, no watch event, no extra pass)."""
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())
