"""One reconcile pass: observe, compute (``desired``), apply. Synchronous and self-contained.

The kopf daemon in ``handlers`` calls ``reconcile_once`` on the operator's own pass threads after
every relevant event and on a resync timer; a pass is idempotent, so running it twice, or after a
restart, or concurrently with a half-finished earlier pass of a dead operator, converges to the
same state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ringlb_operator import children, desired, push, warmup
from ringlb_operator import constants as c
from ringlb_operator import spec as spec_mod
from ringlb_operator.children import Owner
from ringlb_operator.desired import Event
from ringlb_operator.kube import Ensured, Kube, KubeError, ensure, ensure_blind, foreign, owned_by
from ringlb_operator.observe import CONTAINER_CREATING, FAILED_MOUNT, NodeView, PodView, pod_view, tls_mount_problem

log = logging.getLogger(__name__)

ChildKey = tuple[str, str]  # (kind, name)
MAX_FLOOR = 2**62  # far below int64: status.ringRevision always fits
DUE_MARGIN = 0.25  # seconds past a due time before the next pass (timers may fire a little early)


@dataclass
class Outcome:
    """What the daemon does after a pass: post these Events, come back after ``retry_in``."""

    events: list[Event] = field(default_factory=list)
    retry_in: float | None = None  # seconds; None means wait for an event or the resync
    push_failed: bool = False
    floor: int = 0  # lowest ring revision the balancers accept, after a 409; 0 if none
    status: dict[str, Any] = field(default_factory=dict)
    api_errors: int = 0
    due_in: float | None = None  # seconds until a pod on a lost node or a warm-up step is due (even while backing off)


def derive_token(key: bytes, owner: Owner, purpose: str) -> str:
    """A per-resource token: HMAC of the operator's key over the resource's uid and the purpose.

    Deterministic, so the operator never reads a Secret back; different per resource (and per
    incarnation of a name) and per purpose, so the /add token says nothing of the push token.
    """
    mac = hmac.new(key, f"{purpose}/{owner.namespace}/{owner.name}/{owner.uid}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def reconcile_once(
    kube: Kube,
    pusher: push.Pusher,
    resource: Mapping[str, Any],
    pods: Sequence[PodView],
    now: str,
    floor: int = 0,
    owned: Mapping[ChildKey, Mapping[str, Any]] | None = None,
    key: bytes = b"",
    nodes: Mapping[str, NodeView] | None = None,
) -> Outcome:
    """Bring one resource's children to its spec and report what happened in its status.

    ``pods`` are the resource's pods from the operator's index (replicas and balancer pods);
    ``owned`` the other children as the watches last saw them (None: read each from the API);
    ``floor`` is the lowest ring revision a balancer will accept (after a 409), else 0;
    ``key`` the operator's key the tokens derive from; ``nodes`` the nodes of those pods from the
    operator's node index (None: unknown, so no pod is treated as lost).
    """
    meta = resource.get("metadata") or {}
    owner = Owner(meta["name"], meta["namespace"], meta["uid"])
    generation = int(meta.get("generation") or 0)
    old_status = dict(resource.get("status") or {})
    outcome = Outcome()

    try:
        spec = spec_mod.parse(resource.get("spec"))
        problems = spec_mod.problems(owner.name, spec)
    except spec_mod.SpecError as exc:
        problems = [str(exc)]
    if problems:
        new = desired.invalid_status(old_status, problems, generation, now)
        if desired.status_differs(old_status, new):
            kube.patch_status(owner.namespace, owner.name, new)
            outcome.events.append(Event("Warning", c.Reason.INVALID_SPEC, "; ".join(problems)[:1000]))
        outcome.status = new
        return outcome

    replica_pods = [p for p in pods if p.component == c.COMPONENT_REPLICA]
    balancer_pods = [p for p in pods if p.component == c.COMPONENT_BALANCER]
    if desired.unseen_members(old_status, replica_pods):
        selector = children.selector_string(children.replica_selector(owner.name))
        replica_pods = [pod_view(body) for body in kube.list_pods(owner.namespace, selector)]
        pods = replica_pods + balancer_pods
    conflicts: list[str] = []
    api_errors: list[str] = []

    def live(kind: str, name: str) -> Any:
        if owned is None:
            from ringlb_operator.kube import _UNKNOWN

            return _UNKNOWN
        found = owned.get((kind, name))
        return dict(found) if found is not None else None

    def apply(obj: dict[str, Any], blind: bool = False) -> bool:
        """ensure() one child, recording conflicts and errors; True when it is ours and in place."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            result: Ensured = (
                ensure_blind(kube, obj, owner.uid) if blind else ensure(kube, obj, owner.uid, live(kind, name))
            )
        except KubeError as exc:
            api_errors.append(f"{kind} {name}: {exc}")
            return False
        if result.conflict:
            conflicts.append(result.conflict)
            return False
        return True

    # 1. The balancer's objects. Without the tokens nothing can be pushed, but replica pods are
    #    still managed, so an RBAC or quota problem here shows up in status, not as a crash.
    add_token = derive_token(key, owner, "add")
    push_token = derive_token(key, owner, "membership")
    tokens_ok = apply(children.token_secret(owner, children.secret_name(owner.name), add_token), blind=True)
    tokens_ok &= apply(
        children.token_secret(owner, children.membership_secret_name(owner.name), push_token), blind=True
    )
    for obj in children.applied_objects(owner, spec):
        if obj["kind"] == "Deployment":
            # Pods roll when a token changes (env from a Secret is read at container start only).
            annotations = obj["spec"]["template"]["metadata"].setdefault("annotations", {})
            annotations[c.ANNOTATION_TOKEN_HASH] = children.digest([add_token, push_token])
        apply(obj)

    # 2. Replica pods on lost nodes: once due, deleted (force-deleted when the kubelet is silent),
    #    so that the plan below recreates their identities at once, on a healthy node.
    nodes = nodes or {}
    stranded = desired.stranded_replicas(owner, spec, replica_pods, nodes, now)
    removed = _clear_stranded(kube, owner, stranded, outcome, api_errors)
    waits = [left for s in stranded if (left := s.seconds_left(now)) is not None]
    if waits:
        outcome.due_in = min(waits) + DUE_MARGIN
    if removed:
        replica_pods = [p for p in replica_pods if p.name not in removed]

    # 3. Replica pods: create the missing, delete the dead (they come back next pass).
    plan = desired.plan_pods(owner, spec, replica_pods, desired.previous_members(old_status))
    outcome.events += plan.events
    by_name = {p.name: p for p in pods}
    for pod in plan.create:
        name = pod["metadata"]["name"]
        try:
            if kube.create(pod) is not None:
                outcome.events.append(plan.created_events[name])
                continue
            holder = kube.get("Pod", owner.namespace, name)  # 409: whose is it?
        except KubeError as exc:
            api_errors.append(f"Pod {name}: {exc}")
            continue
        if holder is not None and not owned_by(holder, owner.uid):
            conflicts.append(foreign("Pod", holder))
    for name in plan.delete_now:
        _delete_pod(kube, owner, by_name.get(name), api_errors)

    # 4. The ring: Ready pods minus retiring ones, or with spec.hashing.warmupSeconds the step
    #    of the way there that is due now (warmup.py; members leaving by scale-down drain until
    #    the last step). Its revision and warm-up are saved in status first, then the document in
    #    the snapshot ConfigMap (what a starting balancer pod loads), then pushed.
    members = desired.members(owner, spec, replica_pods, plan.retire)
    leaving = warmup.leaving(owner, spec, replica_pods, plan.retire)
    addresses = {m["name"]: m["address"] for m in members} | leaving
    step = warmup.due(
        old_status, [m["name"] for m in members], addresses, spec.hashing.warmup_seconds, spec.hashing.strategy, now
    )
    routed = [{"name": name, "address": addresses[name]} for name in step.names]
    ramp_before = old_status.get("transition")
    ramp = warmup.status_block(step, ramp_before, owner, spec.hashing.config())
    ring = desired.ring(old_status, routed, spec, min(floor, MAX_FLOOR), step.transition)
    if ring.bumped:
        saved: dict[str, Any] = {"ringRevision": ring.revision, "ringHash": ring.hash}
        if ramp or ramp_before:
            saved["transition"] = ramp  # null when the warm-up is over: a merge patch removes it
        kube.patch_status(owner.namespace, owner.name, saved)
        old_status.update(saved)
        outcome.events += warmup.events(ramp_before, ramp, step.names, ring.revision)
    if (next_step := step.next_in(now)) is not None:
        next_step += DUE_MARGIN
        outcome.due_in = next_step if outcome.due_in is None else min(outcome.due_in, next_step)
    document = ring.document(routed, spec, step.transition)
    published = apply(children.membership_configmap(owner, document))

    # 5. Push to every balancer pod that does not hold it yet (none on a lost node: it would only
    #    time out, and Kubernetes evicts it there).
    states: list[desired.PushState] = []
    pods_to_push = push.targets(balancer_pods, skip=desired.unserviceable(balancer_pods, nodes))
    if tokens_ok and published and pods_to_push:
        states = pusher.push_all(pods_to_push, document, push_token)
    failed = [s for s in states if not s.acknowledged]
    if failed:
        outcome.push_failed = True
        outcome.retry_in = c.PUSH_BACKOFF_MIN
        # A balancer ahead of us by a plausible margin (a status write lost): jump past it at
        # once. One absurdly far ahead holds a foreign ring: reset it (a new pod loads the
        # snapshot) instead of following it towards the end of int64.
        poisoned = [s for s in failed if s.error.startswith("409") and s.revision - ring.revision > c.ADOPT_JUMP_LIMIT]
        for state in poisoned:
            _delete_pod(kube, owner, by_name.get(state.pod), api_errors)
            outcome.events.append(
                Event(
                    "Warning",
                    c.Reason.BALANCER_RESET,
                    f"balancer pod {state.pod} held revision {state.revision}, far beyond {ring.revision}; deleted it "
                    "so its replacement loads the published ring",
                )
            )
        refused = push.highest_refused([s for s in failed if s not in poisoned])
        if refused:  # bump past it at once: the next pass pushes a revision they accept
            outcome.retry_in = 0.0
            outcome.floor = min(refused + 1, MAX_FLOOR)
        outcome.events.append(
            Event(
                "Warning",
                c.Reason.PUSH_FAILED,
                f"revision {ring.revision} refused or unanswered by "
                + ", ".join(f"{s.pod} ({s.error})" for s in failed[:5]),
            )
        )
    elif states and ring.bumped:
        warm = f" (warm-up step {step.step}/{step.steps})" if step.transition else ""
        outcome.events.append(
            Event(
                "Normal",
                c.Reason.PUSHED,
                f"revision {ring.revision}{warm} with {len(routed)} member(s) held by {len(states)} balancer pod(s)",
            )
        )

    # 6. Retire: every serving balancer pod must hold a ring without them first (a draining
    #    member is still in it: its pod stays until the last step of its warm-up).
    acked = {s.pod for s in states if s.acknowledged}
    serving = [p.name for p in balancer_pods if p.alive and p.ready and p.ip]
    retire = [name for name in plan.retire if name not in by_name or by_name[name].identity not in step.names]
    if retire and all(name in acked for name in serving):
        for name in retire:
            _delete_pod(kube, owner, by_name.get(name), api_errors)
            if name in plan.retired_events:
                outcome.events.append(plan.retired_events[name])

    # 7. Status, written only when it says something new.
    mount = _tls_mount_problem(kube, owner, spec, balancer_pods, api_errors)
    seen = desired.Observed(
        owner=owner,
        spec=spec,
        generation=generation,
        replica_pods=replica_pods,
        balancer_pods=balancer_pods,
        ring=ring,
        members=members,
        plan=plan,
        pushes=states,
        conflicts=conflicts,
        api_errors=api_errors,
        stranded=stranded,
        nodes=nodes,
        transition=ramp,
        warming=warmup.progress(ramp),
    )
    new = desired.status(old_status, seen, now)
    if mount:
        _degraded_first(new, old_status, FAILED_MOUNT, mount, now, generation, outcome)
    if desired.status_differs(old_status, new):
        kube.patch_status(owner.namespace, owner.name, new)
    if (api_errors or conflicts) and outcome.retry_in is None:
        outcome.retry_in = c.PUSH_BACKOFF_MIN
    if retire and outcome.retry_in is None:
        outcome.retry_in = c.PUSH_BACKOFF_MIN  # retiring waits for acknowledgements; look again soon
    if outcome.due_in is not None and (outcome.retry_in is None or outcome.due_in < outcome.retry_in):
        outcome.retry_in = outcome.due_in
    outcome.status = new
    outcome.api_errors = len(api_errors)
    return outcome


def _tls_mount_problem(
    kube: Kube, owner: Owner, spec: spec_mod.Spec, pods: Sequence[PodView], api_errors: list[str]
) -> str:
    """Why balancer pods wait in ContainerCreating when their TLS Secret cannot be mounted
    (missing, most often). Only the kubelet's FailedMount Events say so: they are listed for one
    waiting pod (``list`` on events; Secrets are never read). "" without TLS or such an Event."""
    tls = spec.balancer.tls
    waiting = sorted((p for p in pods if p.alive and p.waiting_reason == CONTAINER_CREATING), key=lambda p: p.name)
    if tls is None or not waiting:
        return ""
    pod = waiting[0]
    selector = (
        f"involvedObject.kind=Pod,involvedObject.name={pod.name},involvedObject.uid={pod.uid},reason={FAILED_MOUNT}"
    )
    try:
        events = kube.list_events(owner.namespace, selector)
    except KubeError as exc:
        api_errors.append(f"Events of pod {pod.name}: {exc}")
        return ""
    return tls_mount_problem(pod.name, events, owner.namespace, tls.secret_name)


def _degraded_first(
    new: dict[str, Any],
    old_status: Mapping[str, Any],
    reason: str,
    message: str,
    now: str,
    generation: int,
    outcome: Outcome,
) -> None:
    """Put a problem first in the Degraded condition ``desired.status`` computed, keeping its
    other problems; a Warning Event when the problem is news."""
    conditions = new["conditions"]
    index = next(i for i, cond in enumerate(conditions) if cond["type"] == c.DEGRADED)
    others = conditions[index]["message"] if conditions[index]["status"] == "True" else ""
    combined = "; ".join(m for m in (message, others) if m)[:1000]
    previous = old_status.get("conditions") or []
    conditions[index] = desired.condition(previous, c.DEGRADED, True, reason, combined, now, generation)
    old: Mapping[str, Any] = next((cond for cond in previous if cond.get("type") == c.DEGRADED), {})
    if old.get("reason") != reason or message not in str(old.get("message") or ""):
        outcome.events.append(Event("Warning", reason, message[:1000]))


def _clear_stranded(
    kube: Kube, owner: Owner, stranded: Sequence[desired.Stranded], outcome: Outcome, api_errors: list[str]
) -> set[str]:
    """Delete the replica pods on lost nodes that are due (uid precondition: only the pod that was
    looked at); the names of those now gone, so the same pass recreates them."""
    gone: set[str] = set()
    for s in stranded:
        if s.action not in (desired.DELETE, desired.FORCE):
            continue
        force = s.action == desired.FORCE
        try:
            kube.delete("Pod", owner.namespace, s.pod, uid=s.uid, grace_seconds=0 if force else None)
        except KubeError as exc:
            api_errors.append(f"Pod {s.pod}: {exc}")
            continue
        where = f"node {s.node} {s.state} since {s.since}"
        if force:
            gone.add(s.pod)
            message = f"force-deleted pod {s.pod} of {s.identity or s.pod!r}: {where}; recreating it on a healthy node"
        else:
            message = (
                f"deleting pod {s.pod} of {s.identity or s.pod!r}: {where}; force-deleted once its grace period is over"
            )
        outcome.events.append(Event("Warning", c.Reason.NODE_UNREACHABLE, message))
    if any(s.action == desired.DELETE for s in stranded) and outcome.retry_in is None:
        outcome.retry_in = c.PUSH_BACKOFF_MIN  # its deletionTimestamp decides when to look again
    return gone


def _delete_pod(kube: Kube, owner: Owner, pod: PodView | None, api_errors: list[str]) -> None:
    """Delete one of our pods, only the incarnation we saw (uid precondition). Balancer pods
    are the Deployment's; they are ours through the resource label."""
    if pod is None:
        return
    ours = pod.owner_uid == owner.uid or (pod.component == c.COMPONENT_BALANCER and pod.resource == owner.name)
    if not ours:
        return
    try:
        kube.delete("Pod", owner.namespace, pod.name, uid=pod.uid)
    except KubeError as exc:
        api_errors.append(f"Pod {pod.name}: {exc}")
