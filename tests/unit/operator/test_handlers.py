"""The kopf glue: settings, the pod index, wake-ups and the daemon loop against fakes."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from ringlb_operator import constants as c
from ringlb_operator import handlers
from ringlb_operator.children import replica_pod
from ringlb_operator.spec import parse

from .conftest import DEADLINE, OWNER, FakeKube, resource, running, until, views


def test_configure_sets_annotations_storage_and_peering(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGLB_PRIORITY", raising=False)
    settings = kopf.OperatorSettings()
    memo = kopf.Memo()
    handlers.configure(settings, memo, kube=kube)
    assert settings.peering.name == "ringlb" and 1 <= settings.peering.priority <= 32767
    assert settings.peering.mandatory  # a new operator pod waits until it is the chosen one
    assert settings.peering.lifetime == 30  # a killed active pod is taken over after 30 s, not 60
    assert settings.persistence.finalizer == "ringlb.io/daemon"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert memo.kube is kube and memo.wakeups == {}
    # The operator's key: created once in its namespace, then read back by every later start.
    assert len(memo.key) == 32 and kube.count("create", "Secret") == 1
    again = kopf.Memo()
    handlers.configure(kopf.OperatorSettings(), again, kube=kube)
    assert again.key == memo.key and kube.count("create", "Secret") == 1
    explicit = kopf.OperatorSettings()
    explicit.peering.mandatory, explicit.peering.name, explicit.peering.priority = True, "mine", 666
    handlers.configure(explicit, kopf.Memo(), kube=kube)
    assert (explicit.peering.name, explicit.peering.priority) == ("mine", 666)
    standalone = kopf.OperatorSettings()
    standalone.peering.standalone = True
    handlers.configure(standalone, kopf.Memo(), kube=kube)
    assert not standalone.peering.mandatory


def test_index_keys_pods_by_owner() -> None:
    pod = running(replica_pod(OWNER, parse({}), "Server 1"), "10.0.0.1")
    [(key, view)] = handlers.index_pod(pod).items()
    assert key == ("ns", "web") and view.identity == "Server 1" and view.ready and view.owner_uid == OWNER.uid


def test_owned_children_come_from_the_indexes() -> None:
    from ringlb_operator import children

    s = parse({})
    objects = children.applied_objects(OWNER, s)
    index: dict[str, dict] = {}
    for obj in objects:
        plural = next(p for _, _, p, k in handlers.OWNED_KINDS if k == obj["kind"])
        [(key, slim)] = handlers.index_child({**obj, "metadata": {**obj["metadata"], "managedFields": [{}]}}).items()
        assert key == ("ns", "web") and "managedFields" not in slim["metadata"]
        index.setdefault(handlers.index_id(plural), {}).setdefault(key, []).append(slim)
    found = handlers.owned_children(("ns", "web"), index)
    assert set(found) == {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert handlers.owned_children(("ns", "other"), index) == {}


class Stopped:
    """A DaemonStopped stand-in: falsy until set, awaitable wait()."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self, timeout: float | None = None) -> None:
        await self.event.wait()


class Pusher:
    def __init__(self) -> None:
        self.calls = 0

    def push_all(self, targets: Any, document: Any, token: str) -> list:
        self.calls += 1
        return []


def test_daemon_passes_on_wakeup_and_stops(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "event", lambda body, type, reason, message: events.append((type, reason)))
    monkeypatch.setattr(c, "DEBOUNCE_SECONDS", 0.0)
    memo = kopf.Memo()
    memo.kube = kube
    memo.wakeups = {}
    memo.key = b"k" * 32
    body = resource()

    class LiveIndex:  # what kopf's index would hold once the watch events arrived
        def get(self, key: Any, default: Any) -> Any:
            return views(kube) if key == ("ns", "web") else default

    async def scenario() -> None:
        stopped = Stopped()
        task = asyncio.create_task(
            handlers.run(
                stopped=stopped,
                body=body,
                namespace="ns",
                name="web",
                memo=memo,
                logger=_Log(),
                pods=LiveIndex(),
                pusher=Pusher(),
            )
        )
        # A pass creates the pods one by one on a thread: wait for all three, not for the first.
        await until(lambda: len(kube.pods()) == 3, what="three replica pods")
        assert kube.pods() == ["web-server-1", "web-server-2", "web-server-3"]
        creates = kube.count("create", "Pod")
        body["spec"] = {"replicas": 4}
        handlers.wake(memo, "ns", "web")
        await until(lambda: len(kube.pods()) == 4, what="a fourth replica pod")
        assert len(kube.pods()) == 4 and kube.count("create", "Pod") == creates + 1
        stopped.event.set()
        handlers.wake(memo, "ns", "web")
        await asyncio.wait_for(task, DEADLINE)
        assert ("ns", "web") not in memo.wakeups

    asyncio.run(scenario())
    assert ("Normal", c.Reason.CREATED) in events


def test_daemon_survives_api_errors(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)
    kube.fail[("patch_status", c.KIND)] = 500
    memo = kopf.Memo()
    memo.kube, memo.wakeups, memo.key = kube, {}, b"k" * 32
    log = _Log()

    async def scenario() -> None:
        stopped = Stopped()
        task = asyncio.create_task(
            handlers.run(
                stopped=stopped,
                body=resource(),
                namespace="ns",
                name="web",
                memo=memo,
                logger=log,
                pods={},
                pusher=Pusher(),
            )
        )
        await until(lambda: any("retrying" in m for m in log.messages), what="a logged retry")
        stopped.event.set()
        handlers.wake(memo, "ns", "web")
        await asyncio.wait_for(task, DEADLINE)

    asyncio.run(scenario())
    assert any("retrying" in m for m in log.messages)


class _Log:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def warning(self, msg: str) -> None:
        self.messages.append(msg)

    def exception(self, msg: str) -> None:
        self.messages.append(msg)


def test_wakeup_success_lines_are_dropped_and_everything_else_kept() -> None:
    import logging

    quiet = handlers.QuietWakeups()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)

    assert not quiet.filter(record("Handler 'pod_changed' succeeded."))
    assert not quiet.filter(record("Handler 'resource_changed' succeeded."))
    assert quiet.filter(record("Handler 'reconciler' succeeded."))
    assert quiet.filter(record("Handler 'pod_changed' failed with an exception. Will retry."))
