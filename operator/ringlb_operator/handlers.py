"""The kopf-facing glue: settings, the pod index, wake-ups and the per-resource daemon loop.

``main`` only registers these. Reconciliation follows kopf's ``docs/reconciliation.rst``: child
pods are indexed by their owner; one daemon per resource runs an idempotent pass whenever the
resource or one of its pods changes (a wake-up event), and every ``RESYNC_SECONDS`` regardless.
Daemons serialize the passes of one resource and stop while a higher-priority peer is active.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import os
import random
import time
from collections.abc import Mapping
from typing import Any

import kopf

from ringlb_operator import constants as c
from ringlb_operator import push
from ringlb_operator.kube import ClusterKube, Kube, KubeError, ensure_peering
from ringlb_operator.observe import PodView, pod_view
from ringlb_operator.reconcile import reconcile_once

Key = tuple[str, str]  # (namespace, resource name)
EVENT_REPEAT_SECONDS = 300.0  # the same Event message is not posted again sooner than this


WAKEUP_HANDLERS = ("pod_changed", "resource_changed")


class QuietWakeups(logging.Filter):
    """Drops kopf's "Handler 'pod_changed' succeeded." lines: the wake-up handlers run on every
    pod event, and their success lines would drown what the reconciler says."""

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
    # Peering: several operator pods join the "ringlb" peering (ClusterKopfPeering in
    # manifests/); the highest priority one works, the others wait. Random priorities keep
    # two pods from sharing one (which would pause both). --peering/--priority on the CLI win.
    if not settings.peering.mandatory:
        settings.peering.name = os.environ.get("RINGLB_PEERING", "ringlb")
    if settings.peering.priority == 0:
        settings.peering.priority = int(os.environ.get("RINGLB_PRIORITY") or random.randint(1, 32767))
    memo.wakeups = {}
    memo.kube = kube
    if memo.kube is None:
        ClusterKube.load_config()
        memo.kube = ClusterKube()
        if settings.peering.clusterwide and not settings.peering.standalone:
            ensure_peering(settings.peering.name)


def index_pod(body: Mapping[str, Any]) -> dict[Key, PodView]:
    """Index entry of one of our pods: keyed by its owning resource."""
    view = pod_view(body)
    return {(view.namespace, view.resource): view}


def wake(memo: kopf.Memo, namespace: str | None, name: str | None) -> None:
    """Make the resource's daemon run a pass now (no-op if it has no daemon yet)."""
    event = getattr(memo, "wakeups", {}).get((namespace or "", name or ""))
    if event is not None:
        event.set()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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


async def run(
    *,
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    pods: Mapping[Key, Any],
    pusher: push.Pusher | None = None,
) -> None:
    """The daemon of one resource: pass, sleep until woken, repeat until stopped."""
    key = (namespace, name)
    wakeup = memo.wakeups.setdefault(key, asyncio.Event())
    pusher = pusher or push.Pusher()
    backoff = c.PUSH_BACKOFF_MIN
    floor = 0
    posted: dict[tuple[str, str], float] = {}
    try:
        while not stopped:
            resource = copy.deepcopy(dict(body))  # the live body, frozen for this pass
            observed = list(pods.get(key, []))
            delay = c.RESYNC_SECONDS
            try:
                outcome = await asyncio.to_thread(reconcile_once, memo.kube, pusher, resource, observed, _now(), floor)
            except KubeError as exc:
                logger.warning(f"reconcile pass failed, retrying in {backoff:g}s: {exc}")
                delay, backoff = backoff, min(backoff * 2, c.PUSH_BACKOFF_MAX)
            except Exception as exc:  # a bug must not kill the daemon: report it and retry
                logger.exception(f"reconcile pass crashed, retrying in {backoff:g}s: {exc}")
                delay, backoff = backoff, min(backoff * 2, c.PUSH_BACKOFF_MAX)
            else:
                floor = outcome.floor
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
            await _sleep(stopped, wakeup, delay)
    finally:
        if memo.wakeups.get(key) is wakeup:
            del memo.wakeups[key]
