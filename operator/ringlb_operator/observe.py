"""What the operator needs to know about a child pod, extracted once from its full body.

The pod index stores these small views instead of whole pod bodies: less memory, and the
desired-state logic gets plain values it can be unit-tested with.
"""

from __future__ import annotations

from collections.abc import Mapping
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
            waiting_message = waiting.get("message") or ""
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
    )
