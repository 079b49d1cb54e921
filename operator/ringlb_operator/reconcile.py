"""One reconcile pass: observe, compute (the pure modules), apply. Synchronous and self-contained.

The kopf daemon in ``handlers`` calls ``reconcile_once`` on the operator's own pass threads after
every relevant event and on a resync timer; a pass is idempotent, so running it twice, or after a
restart, or concurrently with a half-finished earlier pass of a dead operator, converges to the
same state. ``pod_plan``, ``lost_nodes``, ``membership``, ``warmup`` and ``status`` decide; only
this module talks to the API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ringlb_operator import children, lost_nodes, membership, pod_plan, push, status, warmup
from ringlb_operator import constants as c
from ringlb_operator import spec as spec_mod
from ringlb_operator.children import Owner
from ringlb_operator.events import Event
from ringlb_operator.kube import Ensured, Kube, KubeError, ensure, ensure_blind, foreign, owned_by
from ringlb_operator.lost_nodes import Stranded
from ringlb_operator.membership import RingRevision
from ringlb_operator.observe import CONTAINER_CREATING, FAILED_MOUNT, NodeView, PodView, pod_view, tls_mount_problem
from ringlb_operator.pod_plan import PodPlan
from ringlb_operator.spec import Spec
from ringlb_operator.status import PushState

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
    spec, problems = _parse_spec(owner, resource)
    if spec is None:
        return _report_invalid_spec(kube, owner, old_status, problems, generation, now)

    run = _Pass(kube, owner, spec, now, owned, nodes or {})
    seen = _confirm_pods(run, pods, old_status)
    push_token = _apply_balancer_objects(run, key)
    stranded, replica_pods = _clear_lost_nodes(run, seen.replicas)
    plan = _apply_pod_plan(run, replica_pods, seen, old_status)
    ring = _publish_ring(run, replica_pods, plan, old_status, floor)
    pushes = _push_ring(run, pusher, seen, ring, push_token)
    retiring = _retire_pods(run, plan, seen, ring, pushes)
    new = _write_status(run, old_status, generation, replica_pods, seen, ring, plan, pushes, stranded)
    return run.finish(new, retiring)


@dataclass
class _Pass:
    """One pass's inputs and what its steps record on the way (Events, conflicts, API errors).

    Every step shares these, so each step takes the pass and returns only what a later step
    reads; an API error is recorded, never raised, so one failing call leaves the rest of the
    pass to run and shows up in status.
    """

    kube: Kube
    owner: Owner
    spec: Spec
    now: str
    owned: Mapping[ChildKey, Mapping[str, Any]] | None
    nodes: Mapping[str, NodeView]
    outcome: Outcome = field(default_factory=Outcome)
    conflicts: list[str] = field(default_factory=list)
    api_errors: list[str] = field(default_factory=list)

    def apply(self, obj: dict[str, Any], blind: bool = False) -> bool:
        """ensure() one child, recording conflicts and errors; True when it is ours and in place."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        uid = self.owner.uid
        try:
            if blind:
                result: Ensured = ensure_blind(self.kube, obj, uid)
            elif self.owned is None:
                result = ensure(self.kube, obj, uid)  # not watched: ensure() reads it
            else:
                found = self.owned.get((kind, name))
                result = ensure(self.kube, obj, uid, dict(found) if found is not None else None)
        except KubeError as exc:
            self.api_errors.append(f"{kind} {name}: {exc}")
            return False
        if result.conflict:
            self.conflicts.append(result.conflict)
            return False
        return True

    def delete_pod(self, pod: PodView | None) -> None:
        """Delete one of our pods, only the incarnation we saw (uid precondition). Balancer pods
        are the Deployment's; they are ours through the resource label."""
        if pod is None:
            return
        owner = self.owner
        ours = pod.owner_uid == owner.uid or (pod.component == c.COMPONENT_BALANCER and pod.resource == owner.name)
        if not ours:
            return
        try:
            self.kube.delete("Pod", owner.namespace, pod.name, uid=pod.uid)
        except KubeError as exc:
            self.api_errors.append(f"Pod {pod.name}: {exc}")

    def due_in(self, seconds: float) -> None:
        """Come back by then (a pod on a lost node or a warm-up step is due), backing off or not."""
        due = self.outcome.due_in
        self.outcome.due_in = seconds if due is None else min(due, seconds)

    def finish(self, new_status: dict[str, Any], retiring: Sequence[str]) -> Outcome:
        """When to come back: soon after an error, a conflict or a retirement waiting for
        acknowledgements; no later than anything due."""
        outcome = self.outcome
        if (self.api_errors or self.conflicts) and outcome.retry_in is None:
            outcome.retry_in = c.PUSH_BACKOFF_MIN
        if retiring and outcome.retry_in is None:
            outcome.retry_in = c.PUSH_BACKOFF_MIN  # retiring waits for acknowledgements; look again soon
        if outcome.due_in is not None and (outcome.retry_in is None or outcome.due_in < outcome.retry_in):
            outcome.retry_in = outcome.due_in
        outcome.status = new_status
        outcome.api_errors = len(self.api_errors)
        return outcome


@dataclass(frozen=True)
class _Pods:
    """The resource's pods as this pass saw them, before it deleted any."""

    replicas: list[PodView]
    balancers: list[PodView]
    by_name: dict[str, PodView]


@dataclass(frozen=True)
class _Ring:
    """The ring this pass routes to: what the push, retire and status steps read."""

    members: list[dict[str, str]]  # the wanted ring: Ready pods of wanted identities, none retiring
    step: warmup.Due  # the warm-up step published (the wanted ring itself without a warm-up)
    routed: list[dict[str, str]]  # the members of that step
    ramp: dict[str, Any] | None  # status.transition: None when no warm-up is in progress
    revision: RingRevision
    document: dict[str, Any]
    published: bool  # the snapshot ConfigMap holds the document: only then is it pushed


def _parse_spec(owner: Owner, resource: Mapping[str, Any]) -> tuple[Spec | None, list[str]]:
    """The spec, or None and what is wrong with it: a spec that cannot work changes nothing."""
    try:
        spec = spec_mod.parse(resource.get("spec"))
        problems = spec_mod.problems(owner.name, spec)
    except spec_mod.SpecError as exc:
        return None, [str(exc)]
    return (None, problems) if problems else (spec, [])


def _report_invalid_spec(
    kube: Kube, owner: Owner, old_status: Mapping[str, Any], problems: Sequence[str], generation: int, now: str
) -> Outcome:
    """Say what to fix in status and, once, in a Warning Event; children are left as they are,
    so an edit that breaks the spec never takes down what serves."""
    outcome = Outcome()
    new = status.invalid(old_status, problems, generation, now)
    if status.differs(old_status, new):
        kube.patch_status(owner.namespace, owner.name, new)
        outcome.events.append(Event("Warning", c.Reason.INVALID_SPEC, "; ".join(problems)[: c.MESSAGE_LIMIT]))
    outcome.status = new
    return outcome


def _confirm_pods(run: _Pass, pods: Sequence[PodView], old_status: Mapping[str, Any]) -> _Pods:
    """The index's pods, or the replica pods listed from the API when a member the last status
    listed is missing from the index: a watch that has just started may hold nothing yet, and an
    empty cache must never publish a smaller ring."""
    replicas = [p for p in pods if p.component == c.COMPONENT_REPLICA]
    balancers = [p for p in pods if p.component == c.COMPONENT_BALANCER]
    if membership.unseen_members(old_status, replicas):
        selector = children.selector_string(children.replica_selector(run.owner.name))
        replicas = [pod_view(body) for body in run.kube.list_pods(run.owner.namespace, selector)]
        pods = replicas + balancers
    return _Pods(replicas, balancers, {p.name: p for p in pods})


def _apply_balancer_objects(run: _Pass, key: bytes) -> str | None:
    """Step 1: the token Secrets and the balancer's objects. The push token, or None when its
    Secrets could not be applied: nothing is pushed then, but replica pods are still managed, so
    an RBAC or quota problem here shows up in status, not as a crash."""
    owner = run.owner
    add_token = derive_token(key, owner, "add")
    push_token = derive_token(key, owner, "membership")
    tokens_ok = run.apply(children.token_secret(owner, children.secret_name(owner.name), add_token), blind=True)
    tokens_ok &= run.apply(
        children.token_secret(owner, children.membership_secret_name(owner.name), push_token), blind=True
    )
    for obj in children.applied_objects(owner, run.spec):
        if obj["kind"] == "Deployment":
            # Pods roll when a token changes (env from a Secret is read at container start only).
            annotations = obj["spec"]["template"]["metadata"].setdefault("annotations", {})
            annotations[c.ANNOTATION_TOKEN_HASH] = children.digest([add_token, push_token])
        run.apply(obj)
    return push_token if tokens_ok else None


def _clear_lost_nodes(run: _Pass, replica_pods: list[PodView]) -> tuple[list[Stranded], list[PodView]]:
    """Step 2: replica pods on lost nodes, deleted once due (force-deleted when the kubelet is
    silent), so that the pod plan recreates their identities in the same pass, on a healthy
    node. Returns them and the replica pods still there."""
    stranded = lost_nodes.stranded_replicas(run.owner, run.spec, replica_pods, run.nodes, run.now)
    gone: set[str] = set()
    for s in stranded:
        if s.action in (lost_nodes.DELETE, lost_nodes.FORCE) and _delete_stranded(run, s):
            gone.add(s.pod)
    if any(s.action == lost_nodes.DELETE for s in stranded) and run.outcome.retry_in is None:
        run.outcome.retry_in = c.PUSH_BACKOFF_MIN  # its deletionTimestamp decides when to look again
    waits = [left for s in stranded if (left := s.seconds_left(run.now)) is not None]
    if waits:
        run.due_in(min(waits) + DUE_MARGIN)
    return stranded, [p for p in replica_pods if p.name not in gone]


def _delete_stranded(run: _Pass, s: Stranded) -> bool:
    """Delete one due pod on a lost node (uid precondition: only the pod that was looked at), with
    a Warning Event saying why. True when the pod is gone at once (force-deleted): the pod plan
    recreates it in the same pass; a graceful delete waits for the kubelet."""
    force = s.action == lost_nodes.FORCE
    try:
        run.kube.delete("Pod", run.owner.namespace, s.pod, uid=s.uid, grace_seconds=0 if force else None)
    except KubeError as exc:
        run.api_errors.append(f"Pod {s.pod}: {exc}")
        return False
    where = f"node {s.node} {s.state} since {s.since}"
    if force:
        message = f"force-deleted pod {s.pod} of {s.identity or s.pod!r}: {where}; recreating it on a healthy node"
    else:
        message = (
            f"deleting pod {s.pod} of {s.identity or s.pod!r}: {where}; force-deleted once its grace period is over"
        )
    run.outcome.events.append(Event("Warning", c.Reason.NODE_UNREACHABLE, message))
    return force


def _apply_pod_plan(run: _Pass, replica_pods: list[PodView], seen: _Pods, old_status: Mapping[str, Any]) -> PodPlan:
    """Step 3: create the missing replica pods, delete the dead ones (they come back next pass).
    A create refused with 409 means another object holds the name: reported if it is not ours."""
    owner = run.owner
    plan = pod_plan.plan_pods(owner, run.spec, replica_pods, pod_plan.previous_members(old_status))
    run.outcome.events += plan.events
    for pod in plan.create:
        name = pod["metadata"]["name"]
        try:
            if run.kube.create(pod) is not None:
                run.outcome.events.append(plan.created_events[name])
                continue
            holder = run.kube.get("Pod", owner.namespace, name)  # 409: whose is it?
        except KubeError as exc:
            run.api_errors.append(f"Pod {name}: {exc}")
            continue
        if holder is not None and not owned_by(holder, owner.uid):
            run.conflicts.append(foreign("Pod", holder))
    for name in plan.delete_now:
        run.delete_pod(seen.by_name.get(name))
    return plan


def _publish_ring(
    run: _Pass, replica_pods: list[PodView], plan: PodPlan, old_status: dict[str, Any], floor: int
) -> _Ring:
    """Step 4: the ring, Ready pods minus retiring ones, or with spec.hashing.warmupSeconds the
    step of the way there that is due now (members leaving by scale-down drain until the last
    step). Its revision and warm-up are saved in status first (``old_status`` is updated), so a
    revision never goes back across restarts; then the document goes to the snapshot ConfigMap,
    what a starting balancer pod loads."""
    owner, spec = run.owner, run.spec
    members = membership.members(owner, spec, replica_pods, plan.retire)
    leaving = warmup.leaving(owner, spec, replica_pods, plan.retire)
    addresses = {m["name"]: m["address"] for m in members} | leaving
    step = warmup.due(
        old_status, [m["name"] for m in members], addresses, spec.hashing.warmup_seconds, spec.hashing.strategy, run.now
    )
    routed = [{"name": name, "address": addresses[name]} for name in step.names]
    ramp_before = old_status.get("transition")
    ramp = warmup.status_block(step, ramp_before, owner, spec.hashing.config())
    revision = membership.ring_revision(old_status, routed, spec, min(floor, MAX_FLOOR), step.transition)
    if revision.bumped:
        saved: dict[str, Any] = {"ringRevision": revision.revision, "ringHash": revision.hash}
        if ramp or ramp_before:
            saved["transition"] = ramp  # null when the warm-up is over: a merge patch removes it
        run.kube.patch_status(owner.namespace, owner.name, saved)
        old_status.update(saved)
        run.outcome.events += warmup.events(ramp_before, ramp, step.names, revision.revision)
    if (next_step := step.next_in(run.now)) is not None:
        run.due_in(next_step + DUE_MARGIN)
    document = revision.document(routed, spec, step.transition)
    published = run.apply(children.membership_configmap(owner, document))
    return _Ring(members, step, routed, ramp, revision, document, published)


def _push_ring(run: _Pass, pusher: push.Pusher, seen: _Pods, ring: _Ring, push_token: str | None) -> list[PushState]:
    """Step 5: push the published document to every balancer pod that does not hold it yet, none
    on a lost node (it would only time out, and Kubernetes evicts it there)."""
    states: list[PushState] = []
    targets = push.targets(seen.balancers, skip=lost_nodes.unserviceable(seen.balancers, run.nodes))
    if push_token is not None and ring.published and targets:
        states = pusher.push_all(targets, ring.document, push_token)
    failed = [s for s in states if not s.acknowledged]
    revision = ring.revision.revision
    if failed:
        _after_failed_pushes(run, failed, revision, seen)
    elif states and ring.revision.bumped:
        step = ring.step
        warm = f" (warm-up step {step.step}/{step.steps})" if step.transition else ""
        run.outcome.events.append(
            Event(
                "Normal",
                c.Reason.PUSHED,
                f"revision {revision}{warm} with {len(ring.routed)} member(s) held by {len(states)} balancer pod(s)",
            )
        )
    return states


def _after_failed_pushes(run: _Pass, failed: Sequence[PushState], revision: int, seen: _Pods) -> None:
    """Back off, except past a balancer ahead of us by a plausible margin (a status write lost):
    jump past it at once. One absurdly far ahead holds a foreign ring: reset it (a new pod loads
    the snapshot) instead of following it towards the end of int64."""
    outcome = run.outcome
    outcome.push_failed = True
    outcome.retry_in = c.PUSH_BACKOFF_MIN
    poisoned = [s for s in failed if s.error.startswith("409") and s.revision - revision > c.ADOPT_JUMP_LIMIT]
    for state in poisoned:
        run.delete_pod(seen.by_name.get(state.pod))
        outcome.events.append(
            Event(
                "Warning",
                c.Reason.BALANCER_RESET,
                f"balancer pod {state.pod} held revision {state.revision}, far beyond {revision}; deleted it "
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
            f"revision {revision} refused or unanswered by " + ", ".join(f"{s.pod} ({s.error})" for s in failed[:5]),
        )
    )


def _retire_pods(run: _Pass, plan: PodPlan, seen: _Pods, ring: _Ring, pushes: Sequence[PushState]) -> list[str]:
    """Step 6: delete the pods no longer wanted, once every serving balancer pod holds a ring
    without them (a draining member is still in it: its pod stays until the last step of its
    warm-up). Returns the pods to retire, deleted in this pass or not."""
    acked = {s.pod for s in pushes if s.acknowledged}
    serving = [p.name for p in seen.balancers if p.alive and p.ready and p.ip]
    by_name = seen.by_name
    retire = [name for name in plan.retire if name not in by_name or by_name[name].identity not in ring.step.names]
    if retire and all(name in acked for name in serving):
        for name in retire:
            run.delete_pod(by_name.get(name))
            if name in plan.retired_events:
                run.outcome.events.append(plan.retired_events[name])
    return retire


def _write_status(
    run: _Pass,
    old_status: Mapping[str, Any],
    generation: int,
    replica_pods: list[PodView],
    seen: _Pods,
    ring: _Ring,
    plan: PodPlan,
    pushes: Sequence[PushState],
    stranded: Sequence[Stranded],
) -> dict[str, Any]:
    """Step 7: the status, written only when it says something new (no write, no watch event,
    no extra pass). A TLS Secret the balancer pods cannot mount comes first in Degraded."""
    mount = _tls_mount_problem(run, seen.balancers)
    observed = status.Observed(
        owner=run.owner,
        spec=run.spec,
        generation=generation,
        replica_pods=replica_pods,
        balancer_pods=seen.balancers,
        ring=ring.revision,
        members=ring.members,
        plan=plan,
        pushes=pushes,
        conflicts=run.conflicts,
        api_errors=run.api_errors,
        stranded=stranded,
        nodes=run.nodes,
        transition=ring.ramp,
        warming=warmup.progress(ring.ramp),
    )
    new = status.summarize(old_status, observed, run.now)
    if mount:
        _degraded_first(run, new, old_status, FAILED_MOUNT, mount, generation)
    if status.differs(old_status, new):
        run.kube.patch_status(run.owner.namespace, run.owner.name, new)
    return new


def _tls_mount_problem(run: _Pass, pods: Sequence[PodView]) -> str:
    """Why balancer pods wait in ContainerCreating when their TLS Secret cannot be mounted
    (missing, most often). Only the kubelet's FailedMount Events say so: they are listed for one
    waiting pod (``list`` on events; Secrets are never read). "" without TLS or such an Event."""
    tls = run.spec.balancer.tls
    waiting = sorted((p for p in pods if p.alive and p.waiting_reason == CONTAINER_CREATING), key=lambda p: p.name)
    if tls is None or not waiting:
        return ""
    pod = waiting[0]
    selector = (
        f"involvedObject.kind=Pod,involvedObject.name={pod.name},involvedObject.uid={pod.uid},reason={FAILED_MOUNT}"
    )
    try:
        events = run.kube.list_events(run.owner.namespace, selector)
    except KubeError as exc:
        run.api_errors.append(f"Events of pod {pod.name}: {exc}")
        return ""
    return tls_mount_problem(pod.name, events, run.owner.namespace, tls.secret_name)


def _degraded_first(
    run: _Pass, new: dict[str, Any], old_status: Mapping[str, Any], reason: str, message: str, generation: int
) -> None:
    """Put a problem first in the Degraded condition ``status.summarize`` computed, keeping its
    other problems; a Warning Event when the problem is news."""
    conditions = new["conditions"]
    index = next(i for i, cond in enumerate(conditions) if cond["type"] == c.DEGRADED)
    others = conditions[index]["message"] if conditions[index]["status"] == "True" else ""
    combined = "; ".join(m for m in (message, others) if m)[: c.MESSAGE_LIMIT]
    previous = old_status.get("conditions") or []
    conditions[index] = status.condition(previous, c.DEGRADED, True, reason, combined, run.now, generation)
    old: Mapping[str, Any] = next((cond for cond in previous if cond.get("type") == c.DEGRADED), {})
    if old.get("reason") != reason or message not in str(old.get("message") or ""):
        run.outcome.events.append(Event("Warning", reason, message[: c.MESSAGE_LIMIT]))
