"""Pods on lost nodes: which replica pods the operator removes itself, when, and what status says.

A pod on a node whose kubelet no longer reports stays Terminating for ever once deleted (only
the kubelet confirms a deletion), and the pod of an identity has a fixed name: its replacement
can only be created once the old object is gone. Replica pods are stateless and the balancer
has ejected them by heartbeats long before, so the operator removes such a pod itself, after
``unreachableNodeSeconds``. StatefulSets never do this (at most one pod per identity, for
storage); here two processes of one identity for a while are harmless: the ring holds the
address of one pod only. Pure: ``reconcile.py`` deletes what ``stranded_replicas`` says is due.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ringlb_operator import children
from ringlb_operator import constants as c
from ringlb_operator.children import Owner
from ringlb_operator.observe import NodeView, PodView
from ringlb_operator.spec import Spec
from ringlb_operator.timestamps import format_time, parse_time

Reason = c.Reason

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
