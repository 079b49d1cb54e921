"""kopf registrations only; each delegates to ``handlers`` (``kopf run -m ringlb_operator.main``)."""

from __future__ import annotations

from typing import Any

import kopf

from ringlb_operator import constants as c
from ringlb_operator import handlers

OURS = {c.LABEL_RESOURCE: kopf.PRESENT, c.LABEL_MANAGED_BY: c.MANAGER}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    handlers.configure(settings, memo)


@kopf.index("pods", labels=OURS)
def ringlb_pods(body: kopf.Body, **_: Any) -> dict[handlers.Key, Any]:
    return handlers.index_pod(body)


@kopf.on.event("pods", labels=OURS)
async def pod_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    handlers.wake(memo, namespace, labels.get(c.LABEL_RESOURCE))


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
async def resource_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    handlers.wake(memo, namespace, name)


@kopf.daemon(c.GROUP, c.VERSION, c.PLURAL, cancellation_timeout=10.0)
async def reconciler(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    logger: Any,
    ringlb_pods: kopf.Index[handlers.Key, Any],
    **_: Any,
) -> None:
    await handlers.run(stopped=stopped, body=body, namespace=namespace, name=name, memo=memo, logger=logger, pods=ringlb_pods)
