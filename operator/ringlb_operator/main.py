"""kopf registrations only; each delegates to ``handlers`` (``kopf run -m ringlb_operator.main``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from ringlb_operator import constants as c
from ringlb_operator import handlers

OURS: Mapping[str, Any] = {c.LABEL_RESOURCE: kopf.PRESENT, c.LABEL_MANAGED_BY: c.MANAGER}  # kopf's label filter


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    handlers.configure(settings, memo)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    handlers.cleanup(memo)


@kopf.index("v1", "pods", labels=OURS)
def ringlb_pods(body: kopf.Body, **_: Any) -> dict[handlers.Key, Any]:
    return handlers.index_pod(body)


@kopf.on.event("v1", "pods", labels=OURS)
async def pod_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    handlers.wake(memo, namespace, labels.get(c.LABEL_RESOURCE))


def _index_child(body: kopf.Body, **_: Any) -> dict[handlers.Key, Any]:
    return handlers.index_child(body)


async def _child_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    handlers.wake(memo, namespace, labels.get(c.LABEL_RESOURCE))


# Every other owned kind: indexed (passes read from memory) and watched (a deleted or edited
# child wakes its resource's daemon within the debounce, not at the resync).
for _group, _version, _plural, _kind in handlers.OWNED_KINDS:
    _selector = (_group, _version, _plural) if _group else (_version, _plural)
    kopf.index(*_selector, labels=OURS, id=handlers.index_id(_plural))(_index_child)
    kopf.on.event(*_selector, labels=OURS, id=f"{_plural}_changed")(_child_changed)


# Nodes (cluster-scoped, read-only): a pass reads the nodes of its pods from this index; a node
# turning lost or back wakes the resources with a pod on it at once.
@kopf.index("v1", "nodes")
def ringlb_nodes(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return handlers.index_node(body)


@kopf.on.event("v1", "nodes")  # type: ignore[arg-type]  # kopf passes an index by its name: WatchingFn has no parameter for it
async def node_changed(
    body: kopf.Body, type: str | None, memo: kopf.Memo, ringlb_pods: kopf.Index[handlers.Key, Any], **_: Any
) -> None:
    handlers.node_changed(memo, body, type, ringlb_pods)


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
async def resource_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    handlers.wake(memo, namespace, name)


@kopf.daemon(c.GROUP, c.VERSION, c.PLURAL, cancellation_timeout=10.0)  # type: ignore[arg-type]  # kopf passes indexes by name (DaemonFn has no parameter for them); a namespaced kind's namespace, never None
async def reconciler(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    logger: Any,
    ringlb_pods: kopf.Index[handlers.Key, Any],
    ringlb_nodes: kopf.Index[str, Any],
    **kwargs: Any,
) -> None:
    indexes = {handlers.index_id(plural): kwargs[handlers.index_id(plural)] for _, _, plural, _ in handlers.OWNED_KINDS}
    await handlers.run(
        stopped=stopped,
        body=body,
        namespace=namespace,
        name=name,
        memo=memo,
        logger=logger,
        pods=ringlb_pods,
        indexes=indexes,
        nodes=ringlb_nodes,
    )
