"""One reconcile pass: observe, compute (``desired``), apply. Synchronous and self-contained.

The kopf daemon in ``main`` calls ``reconcile_once`` in a worker thread after every relevant
event and on a resync timer; a pass is idempotent, so running it twice, or after a restart, or
concurrently with a half-finished earlier pass of a dead operator, converges to the same state.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ringlb_operator import children, desired, push
from ringlb_operator import constants as c
from ringlb_operator import spec as spec_mod
from ringlb_operator.children import Owner
from ringlb_operator.desired import Event
from ringlb_operator.kube import Kube, KubeError, ensure, owned_by
from ringlb_operator.observe import PodView

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What the daemon does after a pass: post these Events, come back after ``retry_in``."""

    events: list[Event] = field(default_factory=list)
    retry_in: float | None = None  # seconds; None means wait for an event or the resync
    push_failed: bool = False
    floor: int = 0  # lowest ring revision the balancers accept, after a 409; 0 if none
    status: dict[str, Any] = field(default_factory=dict)


def ensure_token(kube: Kube, owner: Owner) -> str:
    """The per-resource token: created once at random, then only ever read back.

    A Secret that exists but is not ours is never overwritten (raises KubeError 409).
    """
    name = children.secret_name(owner.name)
    current = kube.get("Secret", owner.namespace, name)
    if current is None:
        kube.create(children.token_secret(owner, secrets.token_urlsafe(32)))
        current = kube.get("Secret", owner.namespace, name)  # whoever won a create race
        if current is None:
            raise KubeError(404, f"Secret {name} vanished right after creation")
    if not owned_by(current, owner.uid):
        raise KubeError(409, f"Secret {name} exists and is not owned by this resource")
    data = (current.get("data") or {}).get(c.SECRET_TOKEN_KEY)
    if data:
        return base64.b64decode(data).decode()
    text = (current.get("stringData") or {}).get(c.SECRET_TOKEN_KEY)  # only fakes return this
    if not text:
        raise KubeError(422, f"Secret {name} has no {c.SECRET_TOKEN_KEY!r} key")
    return str(text)


def reconcile_once(
    kube: Kube,
    pusher: push.Pusher,
    resource: Mapping[str, Any],
    pods: Sequence[PodView],
    now: str,
    floor: int = 0,
) -> Outcome:
    """Bring one resource's children to its spec and report what happened in its status.

    ``pods`` are the resource's pods from the operator's index (replicas and balancer pods);
    ``floor`` is the lowest ring revision a balancer will accept (after a 409), else 0.
    """
    meta = resource.get("metadata") or {}
    owner = Owner(meta["name"], meta["namespace"], meta["uid"])
    generation = int(meta.get("generation") or 0)
    old_status = dict(resource.get("status") or {})
    outcome = Outcome()

    spec = spec_mod.parse(resource.get("spec"))
    problems = spec_mod.problems(owner.name, spec)
    if problems:
        new = desired.invalid_status(old_status, problems, generation, now)
        if desired.status_differs(old_status, new):
            kube.patch_status(owner.namespace, owner.name, new)
            outcome.events.append(Event("Warning", c.Reason.INVALID_SPEC, "; ".join(problems)[:1000]))
        outcome.status = new
        return outcome

    replica_pods = [p for p in pods if p.component == c.COMPONENT_REPLICA]
    balancer_pods = [p for p in pods if p.component == c.COMPONENT_BALANCER]
    conflicts: list[str] = []
    api_errors: list[str] = []

    # 1. The balancer's objects. Without the token nothing can be pushed, but replica pods are
    #    still managed, so an RBAC or quota problem here shows up in status, not as a crash.
    token = ""
    try:
        token = ensure_token(kube, owner)
    except KubeError as exc:
        (conflicts if exc.status == 409 else api_errors).append(str(exc))
    for obj in children.balancer_objects(owner, spec):
        try:
            conflict = ensure(kube, obj, owner.uid)
        except KubeError as exc:
            api_errors.append(f"{obj['kind']} {obj['metadata']['name']}: {exc}")
            continue
        if conflict:
            conflicts.append(conflict)

    # 2. Replica pods: create the missing, delete the dead (they come back next pass).
    plan = desired.plan_pods(owner, spec, replica_pods, desired.previous_members(old_status))
    outcome.events += plan.events
    for pod in plan.create:
        try:
            kube.create(pod)
        except KubeError as exc:
            api_errors.append(f"pod {pod['metadata']['name']}: {exc}")
    for name in plan.delete_now:
        try:
            kube.delete("Pod", owner.namespace, name)
        except KubeError as exc:
            api_errors.append(f"pod {name}: {exc}")

    # 3. The ring: Ready pods minus retiring ones; its revision is saved before any push.
    members = desired.members(owner, spec, replica_pods, plan.retire)
    ring = desired.ring(old_status, members, spec, floor)
    if ring.bumped:
        kube.patch_status(owner.namespace, owner.name, {"ringRevision": ring.revision, "ringHash": ring.hash})
        old_status.update(ringRevision=ring.revision, ringHash=ring.hash)

    # 4. Push to every balancer pod that does not hold it yet.
    states: list[desired.PushState] = []
    pods_to_push = push.targets(balancer_pods)
    if token and pods_to_push:
        states = pusher.push_all(pods_to_push, ring.document(members, spec), token)
    failed = [s for s in states if not s.acknowledged]
    if failed:
        outcome.push_failed = True
        refused = push.highest_refused(states)
        outcome.retry_in = c.PUSH_BACKOFF_MIN
        if refused:  # bump past it at once: the next pass pushes a revision they accept
            outcome.retry_in = 0.0
            outcome.floor = refused + 1
        outcome.events.append(
            Event(
                "Warning",
                c.Reason.PUSH_FAILED,
                f"revision {ring.revision} refused or unanswered by "
                + ", ".join(f"{s.pod} ({s.error})" for s in failed[:5]),
            )
        )
    elif states and ring.bumped:
        outcome.events.append(
            Event("Normal", c.Reason.PUSHED, f"revision {ring.revision} with {len(members)} member(s) held by {len(states)} balancer pod(s)")
        )

    # 5. Retire: every serving balancer pod must hold a ring without them first.
    acked = {s.pod for s in states if s.acknowledged}
    serving = [p.name for p in balancer_pods if p.alive and p.ready and p.ip]
    if plan.retire and all(name in acked for name in serving):
        for name in plan.retire:
            try:
                kube.delete("Pod", owner.namespace, name)
            except KubeError as exc:
                api_errors.append(f"pod {name}: {exc}")

    # 6. Status, written only when it says something new.
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
    )
    new = desired.status(old_status, seen, now)
    if desired.status_differs(old_status, new):
        kube.patch_status(owner.namespace, owner.name, new)
    if (api_errors or conflicts) and outcome.retry_in is None:
        outcome.retry_in = c.PUSH_BACKOFF_MIN
    if plan.retire and outcome.retry_in is None:
        outcome.retry_in = c.PUSH_BACKOFF_MIN  # retiring waits for acknowledgements; look again soon
    outcome.status = new
    return outcome
