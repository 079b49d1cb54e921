"""The kopf-facing glue: settings, the indexes, wake-ups and the per-resource daemon loop.

``main`` only registers these. Reconciliation follows kopf's ``docs/reconciliation.rst``: child
pods and every other owned kind are indexed by their owning resource; one daemon per resource
runs an idempotent pass whenever the resource or one of its children changes (a wake-up event),
and every ``RESYNC_SECONDS`` regardless. Nodes are indexed too (by name): a node that is lost or
back wakes the daemons of the resources with a pod on it, and a pass reads the nodes of its pods
from memory (no API call). Passes run on the operator's own threads (never kopf's shared
executor). Peering is mandatory: a new operator pod waits until it is the chosen one.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from ringlb_operator import constants as c
from ringlb_operator import metrics, push
from ringlb_operator.kube import ClusterKube, Kube, KubeError, ensure_peering, operator_key
from ringlb_operator.observe import NodeView, PodView, node_view, pod_view
from ringlb_operator.reconcile import reconcile_once

Key = tuple[str, str]  # (namespace, resource name)
EVENT_REPEAT_SECONDS = 300.0  # the same Event message is not posted again sooner than this

# Owned kinds other than pods and Secrets: (group, version, plural, Kind). Each is watched (a
# change wakes its resource's daemon) and indexed (a pass reads them from memory, not the API).
# Secrets are not: the operator may create and apply them, never list or read them.
OWNED_KINDS: tuple[tuple[str, str, str, str], ...] = (
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "services", "Service"),
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("apps", "v1", "deployments", "Deployment"),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
)


def index_id(plural: str) -> str:
    return f"owned_{plural}"


WAKEUP_HANDLERS = ("pod_changed", "resource_changed", "node_changed") + tuple(
    f"{plural}_changed" for _, _, plural, _ in OWNED_KINDS
)


class QuietWakeups(logging.Filter):
    """Drops kopf's "Handler 'pod_changed' succeeded." lines: the wake-up handlers run on every
    child event, and their success lines would drown what the reconciler says."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.endswith(" succeeded.") and any(f"'{h}'" in message for h in WAKEUP_HANDLERS))


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, kube: Kube | None = None) -> None:
    """Operator-wide settings, in one place (``@kopf.on.startup``)."""
    logging.getLogger("kopf.objects").addFilter(QuietWakeups())
    # kopf's bookkeeping goes to annotations under our prefix; the CRD's status schema is ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=c.GROUP)
    settings.persistence.finalizer = f"{c.GROUP}/daemon"
    # Only warnings become Events; our own Events are posted explicitly with kopf.event().
    settings.posting.level = logging.WARNING
    # Watches that hang silently are re-established.
    settings.watching.server_timeout = 10 * 60
    settings.watching.client_timeout = 11 * 60
    settings.watching.connect_timeout = 60
    # Peering is mandatory: a new operator pod starts paused and works only once the peering
    # shows no live peer of higher priority (two operators never both work). The peering is
    # the ClusterKopfPeering "ringlb" (kopf cannot keep a namespaced peering for a cluster-wide
    # operator). Random priorities keep two pods from sharing one (which would pause both).
    # --standalone on the CLI turns peering off (one operator, on a laptop).
    if not settings.peering.standalone:
        if settings.peering.name == "default" or not settings.peering.mandatory:
            settings.peering.name = os.environ.get("RINGLB_PEERING", c.PEERING_NAME)
        settings.peering.mandatory = True
        settings.peering.lifetime = c.PEERING_LIFETIME
        settings.peering.stealth = True  # keep-alives every 20-25 s would flood the log
    if settings.peering.priority == 0:
        settings.peering.priority = int(os.environ.get("RINGLB_PRIORITY") or random.randint(1, 32767))
    memo.wakeups = {}
    memo.node_states = {}
    memo.passes = ThreadPoolExecutor(c.PASS_WORKERS, thread_name_prefix="ringlb-pass")
    memo.kube = kube
    if memo.kube is None:
        ClusterKube.load_config()
        memo.kube = ClusterKube()
        if settings.peering.clusterwide and not settings.peering.standalone:
            ensure_peering(settings.peering.name)
        metrics.serve(c.METRICS_PORT)
    if getattr(memo, "key", None) is None:
        memo.key = operator_key(memo.kube)


def cleanup(memo: kopf.Memo) -> None:
    """``@kopf.on.cleanup``: let running passes finish, start no new ones."""
    passes = getattr(memo, "passes", None)
    if passes is not None:
        passes.shutdown(wait=False, cancel_futures=True)


def index_pod(body: Mapping[str, Any]) -> dict[Key, PodView]:
    """Index entry of one of our pods: keyed by its owning resource."""
    view = pod_view(body)
    return {(view.namespace, view.resource): view}


def index_child(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    """Index entry of an owned object: keyed by its owning resource, without managedFields."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    slim = {k: copy.deepcopy(v) for k, v in body.items() if k not in ("metadata", "status")}
    slim["metadata"] = copy.deepcopy(meta)
    resource = (meta.get("labels") or {}).get(c.LABEL_RESOURCE, "")
    return {(meta.get("namespace") or "", resource): slim}


def owned_children(key: Key, indexes: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) → object, for one resource, from the owned-kind indexes."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for _, _, plural, kind in OWNED_KINDS:
        index = indexes.get(index_id(plural))
        if index is None:
            continue
        for obj in index.get(key, []):
            out[(kind, obj["metadata"]["name"])] = obj
    return out


def index_node(body: Mapping[str, Any]) -> dict[str, NodeView]:
    """Index entry of a node: keyed by its name."""
    view = node_view(body)
    return {view.name: view}


def nodes_of(pods: Sequence[PodView], nodes: Mapping[str, Any] | None) -> dict[str, NodeView] | None:
    """The indexed views of the nodes ``pods`` run on (None without a node index)."""
    if nodes is None:
        return None
    found: dict[str, NodeView] = {}
    for pod in pods:
        if pod.node and pod.node not in found:
            view = next(iter(nodes.get(pod.node, ())), None)
            if view is not None:
                found[pod.node] = view
    return found


def node_changed(
    memo: kopf.Memo, body: Mapping[str, Any], event_type: str | None, pods: Mapping[Key, Any]
) -> list[Key]:
    """A node event: when the node turned lost, or back, or its lost-since time moved, wake the
    daemons of the resources with a pod on it (the others' passes would find nothing to do).
    Heartbeat-free status updates of healthy nodes wake nobody. Returns the resources woken."""
    view = node_view(body)
    states: dict[str, Any] | None = getattr(memo, "node_states", None)
    if states is None:
        memo.node_states = states = {}
    state = (view.down, view.silent, view.since)
    before = states.pop(view.name, None)
    if event_type != "DELETED":
        states[view.name] = state
    if state == before or (before is None and not view.down):
        return []
    woken = [key for key, views in pods.items() if any(getattr(p, "node", "") == view.name for p in views)]
    for namespace, name in woken:
        wake(memo, namespace, name)
    return woken


def wake(memo: kopf.Memo, namespace: str | None, name: str | None) -> None:
    """Make the resource's daemon run a pass now (no-op if it has no daemon yet)."""
    event = getattr(memo, "wakeups", {}).get((namespace or "", name or ""))
    if event is not None:
        event.set()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


async def _sleep(stopped: kopf.DaemonStopped, wakeup: asyncio.Event, timeout: float) -> None:
    """Until a wake-up, the daemon's stop, or ``timeout``; then a short debounce for bursts."""

    async def stop() -> None:
        await stopped.wait()

    tasks = {asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stop())}
    try:
        await asyncio.wait(tasks, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    if wakeup.is_set() and not stopped:
        await asyncio.sleep(c.DEBOUNCE_SECONDS)
    wakeup.clear()


def _timed_pass(*args: Any, **kwargs: Any) -> Any:
    with metrics.PASS_SECONDS.time():
        return reconcile_once(*args, **kwargs)


async def run(
    *,
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    pods: Mapping[Key, Any],
    indexes: Mapping[str, Any] | None = None,
    pusher: push.Pusher | None = None,
    nodes: Mapping[str, Any] | None = None,
) -> None:
    """The daemon of one resource: pass, sleep until woken, repeat until stopped."""
    key = (namespace, name)
    wakeup = memo.wakeups.setdefault(key, asyncio.Event())
    pusher = pusher or push.Pusher()
    backoff = c.PUSH_BACKOFF_MIN
    floor = 0
    posted: dict[tuple[str, str], float] = {}
    loop = asyncio.get_running_loop()
    passes = getattr(memo, "passes", None)
    try:
        while not stopped:
            resource = copy.deepcopy(dict(body))  # the live body, frozen for this pass
            observed = list(pods.get(key, []))
            owned = owned_children(key, indexes) if indexes is not None else None
            where = nodes_of(observed, nodes)
            delay = c.RESYNC_SECONDS
            try:
                outcome = await loop.run_in_executor(
                    passes,
                    lambda: _timed_pass(memo.kube, pusher, resource, observed, _now(), floor, owned, memo.key, where),  # noqa: B023 - awaited in this pass
                )
            except KubeError as exc:
                metrics.PASS_ERRORS.labels("api").inc()
                logger.warning(f"reconcile pass failed, retrying in {backoff:g}s: {exc}")
                delay, backoff = backoff, min(backoff * 2, c.PUSH_BACKOFF_MAX)
            except Exception as exc:  # a bug must not kill the daemon: report it and retry
                metrics.PASS_ERRORS.labels("crash").inc()
                logger.exception(f"reconcile pass crashed, retrying in {backoff:g}s: {exc}")
                delay, backoff = backoff, min(backoff * 2, c.PUSH_BACKOFF_MAX)
            else:
                floor = outcome.floor
                _record(namespace, name, outcome)
                for event in outcome.events:
                    last = posted.get((event.reason, event.message))
                    if last is None or time.monotonic() - last > EVENT_REPEAT_SECONDS:
                        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
                        posted[(event.reason, event.message)] = time.monotonic()
                if len(posted) > 256:
                    posted.clear()
                if outcome.push_failed:
                    delay = outcome.retry_in if outcome.retry_in == 0.0 else backoff
                    backoff = min(backoff * 2, c.PUSH_BACKOFF_MAX)
                else:
                    backoff = c.PUSH_BACKOFF_MIN
                    delay = outcome.retry_in if outcome.retry_in is not None else c.RESYNC_SECONDS
                if outcome.due_in is not None:  # a pod on a lost node is due: not later than that
                    delay = min(delay, outcome.due_in)
            await _sleep(stopped, wakeup, delay)
    finally:
        if memo.wakeups.get(key) is wakeup:
            del memo.wakeups[key]
        metrics.forget(namespace, name)


def _record(namespace: str, name: str, outcome: Any) -> None:
    st = outcome.status or {}
    if "ringRevision" in st:
        metrics.RING_REVISION.labels(namespace, name).set(st["ringRevision"])
    balancer = st.get("balancer") or {}
    metrics.ACKNOWLEDGED.labels(namespace, name).set(balancer.get("acknowledged", 0))
    metrics.BALANCER_PODS.labels(namespace, name).set(balancer.get("replicas", 0))
    if outcome.api_errors:
        metrics.PASS_ERRORS.labels("child").inc()
