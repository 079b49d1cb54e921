"""Desired state as a pure function of the spec and the observed children.

Nothing here talks to the cluster: ``reconcile.py`` observes, calls these functions, and applies
what they return. That is what makes the operator level-based (the same inputs give the same
plan, however many times and after however many restarts) and testable without a cluster.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ringlb_operator import children
from ringlb_operator import constants as c
from ringlb_operator.children import Owner
from ringlb_operator.observe import NodeView, PodView
from ringlb_operator.spec import Spec
from ringlb_ring import membership
from ringlb_ring.hashing import Transition
from ringlb_ring.membership import format_address

Reason = c.Reason


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclass
class PodPlan:
    """What to do with replica pods in this pass."""

    create: list[dict[str, Any]] = field(default_factory=list)
    created_events: dict[str, Event] = field(default_factory=dict)  # posted only if the create succeeds
    delete_now: list[str] = field(default_factory=list)  # not serving: safe to delete at once
    retire: list[str] = field(default_factory=list)  # serving: delete once the ring drops them
    retired_events: dict[str, Event] = field(default_factory=dict)  # posted when the retired pod is deleted
    conflicts: list[str] = field(default_factory=list)  # a same-named pod we do not own
    events: list[Event] = field(default_factory=list)
    progress: str = ""  # a Progressing reason, "" when nothing moves


def previous_members(status: Mapping[str, Any] | None) -> set[str]:
    """Identities the last status already listed: a missing pod of one of them is a
    replacement (its pod may have shown as gone already while it was terminating)."""
    return {m.get("name", "") for m in (status or {}).get("members") or []}


def unseen_members(status: Mapping[str, Any] | None, pods: Sequence[PodView]) -> set[str]:
    """Pods the last status listed as members that the pod index does not hold at all.

    The index is a cache filled by a watch, and a watch that has just (re)started (a standby
    promoted, an operator shutting down) can hold nothing yet: before such an absence takes
    identities out of the published ring, it is confirmed against the API.
    """
    listed = {m.get("pod", "") for m in (status or {}).get("members") or []}
    return listed - {p.name for p in pods} - {""}


def plan_pods(owner: Owner, spec: Spec, pods: Sequence[PodView], known: set[str]) -> PodPlan:
    """One pod per identity, named after it; everything else of ours goes.

    A missing pod is created (a replacement when ``known`` lists its identity); a failed one is
    deleted and comes back on the next pass; a pod built from an older template is replaced one
    at a time, only while every other pod is Ready; pods of identities no longer wanted are
    retired: first dropped from the ring, then deleted.
    """
    plan = PodPlan()
    by_name = {p.name: p for p in pods}
    identities = spec.identities()
    wanted = {children.pod_name(owner.name, i): i for i in identities}
    outdated: list[str] = []
    for name, identity in wanted.items():
        pod = by_name.get(name)
        if pod is None:
            plan.create.append(children.replica_pod(owner, spec, identity))
            if identity in known:
                plan.created_events[name] = Event(
                    "Normal", Reason.REPLACED, f"pod {name} of {identity!r} was gone; recreated with the same identity"
                )
                plan.progress = plan.progress or Reason.REPLACING
            else:
                plan.created_events[name] = Event("Normal", Reason.CREATED, f"created pod {name} for {identity!r}")
                plan.progress = plan.progress or Reason.SCALING_UP
            continue
        if pod.owner_uid != owner.uid:
            plan.conflicts.append(f"Pod {name} exists and is not controlled by this resource")
            continue
        if pod.terminating:
            plan.progress = plan.progress or Reason.REPLACING
            continue
        if not pod.alive:
            plan.delete_now.append(name)
            plan.events.append(
                Event("Normal", Reason.REPLACED, f"pod {name} of {identity!r} ended ({pod.phase}); replacing it")
            )
            plan.progress = plan.progress or Reason.REPLACING
            continue
        if pod.template_hash != children.replica_template_hash(owner, spec, identity):
            outdated.append(name)
    for pod in pods:
        if pod.name in wanted or pod.owner_uid != owner.uid or pod.component != c.COMPONENT_REPLICA:
            continue
        if not pod.terminating:
            plan.retire.append(pod.name)
            plan.retired_events[pod.name] = Event(
                "Normal", Reason.DELETED, f"deleting pod {pod.name}: {pod.identity or pod.name!r} is no longer wanted"
            )
        plan.progress = plan.progress or Reason.SCALING_DOWN
    if outdated:
        plan.progress = plan.progress or Reason.ROLLING
        others_ready = all(
            by_name[n].ready and not by_name[n].terminating for n in wanted if n in by_name and n not in outdated
        )
        if not plan.create and not plan.delete_now and others_ready:
            victim = outdated[0]
            plan.retire.append(victim)
            plan.events.append(Event("Normal", Reason.ROLLING, f"replacing pod {victim}: its template changed"))
    return plan


# --- pods on lost nodes ------------------------------------------------------------------------
# A pod on a node whose kubelet no longer reports stays Terminating for ever once deleted (only
# the kubelet confirms a deletion), and the pod of an identity has a fixed name: its replacement
# can only be created once the old object is gone. Replica pods are stateless and the balancer
# has ejected them by heartbeats long before, so the operator removes such a pod itself, after
# ``unreachableNodeSeconds``. StatefulSets never do this (at most one pod per identity, for
# storage); here two processes of one identity for a while are harmless: the ring holds the
# address of one pod only.
WAIT = "wait"  # not yet: the node has been lost for less than the delay (or a grace period runs)
DELETE = "delete"  # delete now, gracefully: its node is NotReady but the kubelet still reports
FORCE = "force-delete"  # delete now with grace period 0: nothing on the node will confirm it
KEEP = "keep"  # never: the user's tolerations keep the pod on a lost node without a limit


@dataclass(frozen=True)
class Stranded:
    """A replica pod on a lost node, and what the operator does about it in this pass."""

    pod: str
    uid: str
    identity: str
    node: str
    state: str  # "unreachable" (kubelet silent) or "not ready"
    since: str  # when the node was first seen lost (RFC 3339)
    action: str  # WAIT, DELETE, FORCE or KEEP
    due: str = ""  # when the operator acts (WAIT) or acted; "" for KEEP
    taint: str = ""  # the taint the user's toleration covers (KEEP)

    def seconds_left(self, now: str) -> float | None:
        """Until ``due`` (WAIT only), never below 0."""
        if self.action != WAIT:
            return None
        due, at = parse_time(self.due), parse_time(now)
        return max(0.0, (due - at).total_seconds()) if due and at else None


def parse_time(value: str) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def format_time(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def stranded_replicas(
    owner: Owner, spec: Spec, pods: Sequence[PodView], nodes: Mapping[str, NodeView], now: str
) -> list[Stranded]:
    """Our replica pods on lost nodes that no longer serve, and what to do with each.

    A pod counts when its node is down (Ready Unknown or False) and the pod is being deleted or
    not Ready; a pod whose node is not known (index not filled, node object deleted: Kubernetes'
    pod GC handles those) is left alone. The operator acts ``unreachableNodeSeconds`` after the
    node was first seen lost, or after the user's own tolerationSeconds for that taint when their
    template names it and the pod is not being deleted yet (no limit there: KEEP). When the
    kubelet is silent the pod is force-deleted; when it still reports (Ready False) the pod is
    deleted gracefully and force-deleted only once its grace period is over.
    """
    template = spec.replica_template
    at = parse_time(now)
    found: list[Stranded] = []
    for pod in pods:
        if pod.component != c.COMPONENT_REPLICA or pod.owner_uid != owner.uid or not pod.node:
            continue
        node = nodes.get(pod.node)
        since = parse_time(node.since) if node is not None and node.down else None
        if node is None or since is None or at is None or (pod.ready and not pod.terminating):
            continue
        seen = Stranded(pod.name, pod.uid, pod.identity, node.name, node.state, format_time(since), WAIT)
        delay = float(template.unreachable_node_seconds)
        if not pod.terminating:
            covered, tolerated = children.tolerated_seconds(template.tolerations, node.taint_key)
            if covered and tolerated is None:
                found.append(replace(seen, action=KEEP, taint=node.taint_key))
                continue
            if covered and tolerated is not None:
                delay = max(delay, tolerated)
        due = since + datetime.timedelta(seconds=delay)
        grace_end = parse_time(pod.deleting_at)
        if not node.silent and pod.terminating and grace_end is not None:
            due = max(due, grace_end)  # a kubelet that still reports gets the whole grace period
        if at < due:
            action = WAIT
        elif node.silent or pod.terminating:
            action = FORCE
        else:
            action = DELETE
        found.append(replace(seen, action=action, due=format_time(due)))
    return found


def stranded_problems(
    stranded: Sequence[Stranded], balancer_pods: Sequence[PodView], nodes: Mapping[str, NodeView], spec: Spec
) -> list[tuple[str, str]]:
    """Degraded ``NodeUnreachable`` messages: replica pods on lost nodes and what happens to them,
    and balancer pods there (the Deployment replaces those once Kubernetes evicts them). Times
    are absolute, so the message, and the status, do not change from pass to pass."""
    found = []
    for s in stranded:
        head = f"replica pod {s.pod} ({s.identity or s.pod!r}): node {s.node} {s.state} since {s.since}"
        tail = {
            WAIT: f"replaced from {s.due}",
            DELETE: f"due since {s.due}: deleting it, force-deleting it once its grace period is over",
            FORCE: f"due since {s.due}: force-deleting it to recreate it on a healthy node",
            KEEP: f"kept there: spec.template.tolerations tolerate {s.taint} without a limit",
        }[s.action]
        found.append((Reason.NODE_UNREACHABLE, f"{head}; {tail}"))
    limit = float(spec.balancer.template.unreachable_node_seconds)
    for pod in balancer_pods:
        node = nodes.get(pod.node)
        if node is None or not node.down or not node.since or pod.ready or not pod.alive:
            continue
        covered, tolerated = children.tolerated_seconds(spec.balancer.template.tolerations, node.taint_key)
        if covered and tolerated is None:
            when = f"never: spec.balancer.tolerations tolerate {node.taint_key} without a limit"
        else:
            when = f"once Kubernetes evicts it, {tolerated if covered else limit:g}s after {node.since}"
        found.append(
            (
                Reason.NODE_UNREACHABLE,
                f"balancer pod {pod.name}: node {node.name} {node.state} since {node.since}; the Deployment replaces "
                f"it {when}",
            )
        )
    return found


def unserviceable(pods: Sequence[PodView], nodes: Mapping[str, NodeView]) -> set[str]:
    """Pods that cannot be reached: not Ready on a lost node (no push is sent to them)."""
    return {p.name for p in pods if not p.ready and p.node in nodes and nodes[p.node].down}


def members(owner: Owner, spec: Spec, pods: Sequence[PodView], retiring: Sequence[str]) -> list[dict[str, str]]:
    """The ring: Ready, live pods of the wanted identities, in identity order."""
    by_name = {p.name: p for p in pods}
    ring = []
    for identity in spec.identities():
        pod = by_name.get(children.pod_name(owner.name, identity))
        if pod and pod.alive and pod.ready and pod.ip and pod.owner_uid == owner.uid and pod.name not in retiring:
            ring.append({"name": identity, "address": format_address(pod.ip, c.PORT)})
    return ring


@dataclass(frozen=True)
class Ring:
    revision: int
    hash: str
    bumped: bool

    def document(
        self, members: list[dict[str, str]], spec: Spec, transition: Transition | None = None
    ) -> dict[str, Any]:
        return {"revision": self.revision, **ring_content(members, spec, transition)}


def ring_content(members: list[dict[str, str]], spec: Spec, transition: Transition | None = None) -> dict[str, Any]:
    """The membership document minus its revision (what the revision versions); ``transition``:
    a warm-up step (``warmup.py``), so each step is content of its own with a revision of its own."""
    return membership.content(members, replace(spec.hashing.config(), transition=transition), spec.hashing.key())


def ring(
    status: Mapping[str, Any] | None,
    members: list[dict[str, str]],
    spec: Spec,
    floor: int = 0,
    transition: Transition | None = None,
) -> Ring:
    """The revision of this content: unchanged if the status already versions it, else the next.

    The status is written before any push, so the revision survives operator restarts and never
    goes back. ``floor`` is the lowest revision acceptable (one above what a balancer that refused
    us with 409 holds), so the next push wins.
    """
    status = status or {}
    content_hash = children.digest(ring_content(members, spec, transition))
    current = int(status.get("ringRevision") or 0)
    if current >= 1 and status.get("ringHash") == content_hash and current >= floor:
        return Ring(current, content_hash, bumped=False)
    return Ring(max(current + 1, floor), content_hash, bumped=True)


# --- status ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PushState:
    """How one balancer pod answered this pass's push."""

    pod: str
    acknowledged: bool
    revision: int = 0
    error: str = ""


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


@dataclass
class Observed:
    """Everything ``status`` summarizes, gathered by one reconcile pass."""

    owner: Owner
    spec: Spec
    generation: int
    replica_pods: Sequence[PodView]
    balancer_pods: Sequence[PodView]
    ring: Ring
    members: list[dict[str, str]]
    plan: PodPlan
    pushes: Sequence[PushState] = ()
    conflicts: Sequence[str] = ()
    api_errors: Sequence[str] = ()
    stranded: Sequence[Stranded] = ()
    nodes: Mapping[str, NodeView] = field(default_factory=dict)
    transition: Mapping[str, Any] | None = None  # status.transition: a warm-up in progress
    warming: tuple[str, str] | None = None  # its Progressing (reason, message)


def status(previous: Mapping[str, Any] | None, seen: Observed, now: str) -> dict[str, Any]:
    """The whole status stanza: counts, members, ring revision and the three conditions."""
    previous = previous or {}
    old_conditions = previous.get("conditions") or []
    identities = seen.spec.identities()
    by_name = {p.name: p for p in seen.replica_pods}
    in_ring = {m["name"] for m in seen.members}
    member_rows = []
    for identity in identities:
        pod = by_name.get(children.pod_name(seen.owner.name, identity))
        member_rows.append(
            {"name": identity, "pod": pod.name if pod and pod.alive else "", "ready": identity in in_ring}
        )
    alive = [p for p in seen.replica_pods if p.alive and p.owner_uid == seen.owner.uid]
    balancer_alive = [p for p in seen.balancer_pods if p.alive]
    balancer_ready = [p for p in balancer_alive if p.ready]
    acked = [p for p in seen.pushes if p.acknowledged]
    failed = [p for p in seen.pushes if not p.acknowledged]

    problems: list[tuple[str, str]] = [(Reason.CHILD_CONFLICT, m) for m in list(seen.conflicts) + seen.plan.conflicts]
    problems += stranded_problems(seen.stranded, balancer_alive, seen.nodes, seen.spec)
    wanted_pods = [
        by_name[children.pod_name(seen.owner.name, i)]
        for i in identities
        if children.pod_name(seen.owner.name, i) in by_name
    ]
    problems += pod_problems(wanted_pods, "replica")
    problems += pod_problems(balancer_alive, "balancer")
    if failed:
        detail = "; ".join(f"{p.pod}: {p.error}" for p in failed[:3])
        problems.append(
            (
                Reason.NOT_ACKNOWLEDGING,
                f"{len(failed)} balancer pod(s) did not take revision {seen.ring.revision}: {detail}",
            )
        )
    problems += [(Reason.API_ERROR, m) for m in seen.api_errors]

    g = seen.generation
    if problems:
        degraded = condition(
            old_conditions, c.DEGRADED, True, problems[0][0], "; ".join(m for _, m in problems)[:1000], now, g
        )
    else:
        degraded = condition(old_conditions, c.DEGRADED, False, Reason.AS_EXPECTED, "all children as expected", now, g)

    n_ready = len(seen.members)
    if n_ready < len(identities):
        ready = condition(
            old_conditions,
            c.READY,
            False,
            Reason.REPLICAS_NOT_READY,
            f"{n_ready}/{len(identities)} replicas ready",
            now,
            g,
        )
    elif not balancer_ready:
        ready = condition(
            old_conditions,
            c.READY,
            False,
            Reason.BALANCER_NOT_READY,
            f"0/{seen.spec.balancer.replicas} balancer pods ready",
            now,
            g,
        )
    elif failed or not seen.pushes:
        ready = condition(
            old_conditions,
            c.READY,
            False,
            Reason.NOT_ACKNOWLEDGED,
            f"revision {seen.ring.revision} not yet held by every balancer pod",
            now,
            g,
        )
    else:
        reason = Reason.SCALED_TO_ZERO if not identities else Reason.ALL_READY
        ready = condition(
            old_conditions,
            c.READY,
            True,
            reason,
            f"{n_ready}/{len(identities)} replicas in the ring at revision {seen.ring.revision}",
            now,
            g,
        )

    moving = seen.warming[0] if seen.warming else seen.plan.progress
    if not moving and any(s.action != KEEP for s in seen.stranded):
        moving = Reason.REPLACING
    if not moving and (failed or not seen.pushes) and balancer_alive:
        moving = Reason.PUSHING
    if not moving and n_ready < len(identities):
        moving = Reason.SCALING_UP
    if not moving and len(balancer_ready) < seen.spec.balancer.replicas:
        moving = Reason.BALANCER_NOT_READY
    if moving:
        progressing = condition(old_conditions, c.PROGRESSING, True, moving, _progress_message(moving, seen), now, g)
    else:
        progressing = condition(old_conditions, c.PROGRESSING, False, Reason.RECONCILED, "nothing to do", now, g)

    ramp = (
        {"transition": dict(seen.transition) if seen.transition else None}
        if seen.transition or previous.get("transition")
        else {}
    )
    return {
        **ramp,  # a warm-up in progress; null (a merge patch's removal) once it is over
        "observedGeneration": g,
        "replicas": len(alive),
        "readyReplicas": n_ready,
        "members": member_rows,
        "ringRevision": seen.ring.revision,
        "ringHash": seen.ring.hash,
        "selector": children.selector_string(children.replica_selector(seen.owner.name)),
        "balancer": {
            "replicas": len(balancer_alive),
            "readyReplicas": len(balancer_ready),
            "acknowledged": len(acked),
        },
        "conditions": [ready, progressing, degraded],
    }


def _progress_message(reason: str, seen: Observed) -> str:
    if seen.warming and reason == seen.warming[0]:
        return seen.warming[1]
    plan = seen.plan
    return {
        Reason.SCALING_UP: f"waiting for {len(seen.spec.identities()) - len(seen.members)} replica(s) to be ready",
        Reason.REPLACING: "replacing replica pod(s) with the same identity",
        Reason.SCALING_DOWN: f"retiring {len(plan.retire)} pod(s) no longer wanted",
        Reason.ROLLING: "replacing pods built from an older template, one at a time",
        Reason.PUSHING: f"pushing revision {seen.ring.revision} to the balancer pods",
        Reason.BALANCER_NOT_READY: "waiting for the balancer pods",
    }.get(reason, reason)


def invalid_status(
    previous: Mapping[str, Any] | None, problems: Sequence[str], generation: int, now: str
) -> dict[str, Any]:
    """The status of a spec that cannot be reconciled: children are left as they are."""
    previous = dict(previous or {})
    old = previous.get("conditions") or []
    message = "; ".join(problems)[:1000]
    previous.update(
        observedGeneration=generation,
        conditions=[
            condition(old, c.READY, False, Reason.INVALID_SPEC, message, now, generation),
            condition(
                old,
                c.PROGRESSING,
                False,
                Reason.INVALID_SPEC,
                "fix the spec; nothing is changed until then",
                now,
                generation,
            ),
            condition(old, c.DEGRADED, True, Reason.INVALID_SPEC, message, now, generation),
        ],
    )
    return previous


def status_differs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` changes anything (no write, no watch event, no extra pass)."""
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())
