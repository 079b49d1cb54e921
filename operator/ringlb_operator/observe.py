"""What the operator needs to know about a child pod, extracted once from its full body.

The pod index stores these small views instead of whole pod bodies: less memory, and the
desired-state logic gets plain values it can be unit-tested with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ringlb_operator import constants as c


@dataclass(frozen=True)
class PodView:
    name: str
    namespace: str
    uid: str
    resource: str  # the owning resource's name (label)
    component: str  # "replica" or "balancer"
    identity: str  # ring identity (replicas only)
    owner_uid: str  # uid of the controlling owner reference, "" if none
    template_hash: str
    ip: str
    phase: str
    ready: bool
    terminating: bool
    waiting_reason: str = ""  # e.g. ImagePullBackOff, from the first waiting container
    waiting_message: str = ""
    unschedulable: str = ""  # the scheduler's message when PodScheduled is False/Unschedulable
    restarts: int = 0
    node: str = ""  # spec.nodeName, "" until scheduled
    deleting_at: str = ""  # metadata.deletionTimestamp: when its grace period ends, "" if not deleted

    @property
    def alive(self) -> bool:
        """Counts as the pod of its identity: not being deleted and not finished for good."""
        return not self.terminating and self.phase not in ("Failed", "Succeeded")


def _controller_uid(meta: Mapping[str, Any]) -> str:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid", ""))
    return ""


def pod_view(body: Mapping[str, Any]) -> PodView:
    """A ``PodView`` of a pod body (a dict, or kopf's ``Body``, which reads like one)."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = body.get("status") or {}
    conditions = {cond.get("type"): cond for cond in status.get("conditions") or []}
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    scheduled = conditions.get("PodScheduled") or {}
    unschedulable = ""
    if scheduled.get("status") == "False" and scheduled.get("reason") == c.Reason.UNSCHEDULABLE:
        unschedulable = scheduled.get("message") or "the pod cannot be scheduled"
    waiting_reason = waiting_message = ""
    restarts = 0
    for cs in list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or []):
        restarts += int(cs.get("restartCount") or 0)
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and not waiting_reason:
            waiting_reason = waiting["reason"]
            # A crash loop's own back-off text says nothing; the last exit's words say why.
            last_words = ((cs.get("lastState") or {}).get("terminated") or {}).get("message") or ""
            waiting_message = (
                (waiting_reason == c.Reason.CRASH_LOOP and last_words.strip()) or waiting.get("message") or ""
            )
    return PodView(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        resource=labels.get(c.LABEL_RESOURCE, ""),
        component=labels.get(c.LABEL_COMPONENT, ""),
        identity=annotations.get(c.ANNOTATION_IDENTITY, ""),
        owner_uid=_controller_uid(meta),
        template_hash=annotations.get(c.ANNOTATION_TEMPLATE_HASH, ""),
        ip=status.get("podIP") or "",
        phase=status.get("phase") or "Pending",
        ready=ready,
        terminating=bool(meta.get("deletionTimestamp")),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        unschedulable=unschedulable,
        restarts=restarts,
        node=(body.get("spec") or {}).get("nodeName") or "",
        deleting_at=meta.get("deletionTimestamp") or "",
    )


# The kubelet's words for a pod whose volumes it cannot mount: the container waits in
# ContainerCreating with no message, and the reason is only in the pod's FailedMount Events.
CONTAINER_CREATING = "ContainerCreating"
FAILED_MOUNT = "FailedMount"  # the kubelet's Event reason; also Degraded's reason and our Event's


def _event_time(event: Mapping[str, Any]) -> str:
    series = event.get("series") or {}
    meta = event.get("metadata") or {}
    return str(
        event.get("lastTimestamp")
        or series.get("lastObservedTime")
        or event.get("eventTime")
        or meta.get("creationTimestamp")
        or ""
    )


def tls_mount_problem(pod: str, events: Sequence[Mapping[str, Any]], namespace: str, secret: str) -> str:
    """What Degraded says when balancer pod ``pod`` cannot mount the TLS Secret, from its
    FailedMount Events (the newest that names the Secret); "" when none does. The kubelet
    reads the Secret, so the operator never has to: it only quotes what the kubelet found."""
    naming = [
        e for e in events if e.get("reason") == FAILED_MOUNT and f'secret "{secret}"' in str(e.get("message") or "")
    ]
    if not naming:
        return ""
    said = str(max(naming, key=_event_time).get("message") or "").strip()
    where = f"Secret {namespace}/{secret} (spec.balancer.tls.secretName)"
    if f'secret "{secret}" not found' in said:
        return (
            f"balancer pod {pod} cannot start: {where} not found; create it (kubectl -n {namespace} create secret tls "
            f"{secret} --cert=chain.pem --key=key.pem, or a cert-manager Certificate with secretName {secret}) or name "
            "an existing one; the pods start once it exists"
        )
    return f"balancer pod {pod} cannot start: {where} cannot be mounted: {said}"


@dataclass(frozen=True)
class NodeView:
    """What the operator needs to know about a node: is it lost, since when, and can its kubelet
    still confirm a pod's deletion."""

    name: str
    ready: str = ""  # status of the Ready condition: "True", "False", "Unknown"; "" without one
    ready_since: str = ""  # that condition's lastTransitionTime
    taints: tuple[tuple[str, str], ...] = ()  # (key, timeAdded) of the NoExecute node-loss taints

    @property
    def down(self) -> bool:
        """Lost: Ready is Unknown or False (or, without a Ready condition, a node-loss taint).
        Ready True wins over a taint the lifecycle controller has not removed yet."""
        if self.ready:
            return self.ready in ("False", "Unknown")
        return bool(self.taints)

    @property
    def silent(self) -> bool:
        """Its kubelet stopped reporting (Ready Unknown, tainted unreachable): nothing on the node
        will act on, or confirm, a pod's deletion."""
        return self.down and (self.ready == "Unknown" or any(k == c.TAINT_UNREACHABLE for k, _ in self.taints))

    @property
    def since(self) -> str:
        """When it was first seen lost: the earliest of the Ready transition and the taints' times."""
        if not self.down:
            return ""
        times = [t for _, t in self.taints if t]
        if self.ready in ("False", "Unknown") and self.ready_since:
            times.append(self.ready_since)
        return min(times, default="")

    @property
    def taint_key(self) -> str:
        """The taint whose toleration decides how long pods may stay."""
        return c.TAINT_UNREACHABLE if self.silent else c.TAINT_NOT_READY

    @property
    def state(self) -> str:
        return "unreachable" if self.silent else "not ready"


def node_view(body: Mapping[str, Any]) -> NodeView:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    ready: Mapping[str, Any] = next(
        (cond for cond in status.get("conditions") or [] if cond.get("type") == "Ready"), {}
    )
    taints = tuple(
        (t.get("key", ""), t.get("timeAdded") or "")
        for t in (body.get("spec") or {}).get("taints") or []
        if t.get("key") in c.NODE_LOSS_TAINTS and t.get("effect") == "NoExecute"
    )
    return NodeView(
        name=meta.get("name", ""),
        ready=ready.get("status") or "",
        ready_since=ready.get("lastTransitionTime") or "",
        taints=taints,
    )
