"""Membership push: ``PUT /membership`` to every balancer pod's admin port, with a bearer token.

All balancer pods of a resource are pushed at once (at most ``PUSH_CONCURRENCY`` in flight),
within one overall deadline, on the operator's own push threads (never kopf's executor), so a
few hung pods cost one deadline, not a sum of timeouts. A pod already holding the revision
(``GET /membership``) is left alone, so a pass that changes nothing costs one GET per pod; a new
pod gets the current document even when the ring did not change. Failed pods are retried on
later passes with backoff and reported in status and Events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import requests

from ringlb_operator import constants as c
from ringlb_operator import metrics
from ringlb_operator.observe import PodView
from ringlb_operator.status import PushState
from ringlb_ring.membership import format_address

_EXECUTOR: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The push threads, shared by all resources, created on first use."""
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(c.PUSH_WORKERS, thread_name_prefix="ringlb-push")
    return _EXECUTOR


@dataclass(frozen=True)
class Target:
    pod: str
    ip: str

    @property
    def url(self) -> str:
        return f"http://{format_address(self.ip, c.ADMIN_PORT)}/membership"


def targets(balancer_pods: Sequence[PodView], skip: Collection[str] = ()) -> list[Target]:
    """Every live balancer pod with an IP, Ready or not (a new pod may need the push to get Ready),
    but those named in ``skip``: not Ready on a lost node, where a push could only time out."""
    return [Target(p.name, p.ip) for p in balancer_pods if p.alive and p.ip and p.name not in skip]


class Pusher:
    """Pushes one document to many pods; ``session``, ``sleep`` and ``pool`` are injectable."""

    def __init__(
        self,
        session: Any = None,
        timeout: float = c.PUSH_TIMEOUT,
        attempts: int = c.PUSH_ATTEMPTS,
        deadline: float = c.PUSH_DEADLINE,
        concurrency: int = c.PUSH_CONCURRENCY,
        sleep: Callable[[float], None] = time.sleep,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.session = session
        self.timeout = timeout
        self.attempts = attempts
        self.deadline = deadline
        self.concurrency = concurrency
        self.sleep = sleep
        self.pool = pool

    def push_all(self, pods: Sequence[Target], document: Mapping[str, Any], token: str) -> list[PushState]:
        """One state per target, in target order, within ``deadline`` seconds overall."""
        pool = self.pool or executor()
        end = time.monotonic() + self.deadline
        results: dict[str, PushState] = {}
        waiting = list(pods)
        running: dict[Future[PushState], Target] = {}
        while waiting or running:
            while waiting and len(running) < self.concurrency:
                target = waiting.pop(0)
                running[pool.submit(self.push_one, target, document, token, end)] = target
            left = end - time.monotonic()
            if left <= 0:
                break
            done, _ = wait(running, timeout=left, return_when=FIRST_COMPLETED)
            for future in done:
                target = running.pop(future)
                try:
                    results[target.pod] = future.result()
                except Exception as exc:  # noqa: BLE001 - a bug in push_one must not lose the other pods
                    results[target.pod] = PushState(target.pod, False, 0, f"error: {type(exc).__name__}")
        for target in list(running.values()) + waiting:
            results[target.pod] = PushState(target.pod, False, 0, f"deadline: no answer within {self.deadline:g}s")
        states = [results[t.pod] for t in pods]
        for state in states:
            if not state.acknowledged:
                metrics.PUSH_FAILURES.labels(metrics.failure_reason(state.error)).inc()
        return states

    def push_one(self, target: Target, document: Mapping[str, Any], token: str, end: float | None = None) -> PushState:
        started = time.monotonic()
        try:
            return self._push_one(target, document, token, end if end is not None else started + self.deadline)
        finally:
            metrics.PUSH_SECONDS.observe(time.monotonic() - started)

    def _push_one(self, target: Target, document: Mapping[str, Any], token: str, end: float) -> PushState:
        session = self.session or requests.Session()
        headers = {"Authorization": f"Bearer {token}"}
        revision = int(document["revision"])
        error = ""
        held = 0
        for attempt in range(self.attempts):
            if attempt:
                pause = 0.2 * 2 ** (attempt - 1)
                if time.monotonic() + pause >= end:
                    break
                self.sleep(pause)
            timeout = min(self.timeout, max(end - time.monotonic(), 0.05))
            try:
                current = session.get(target.url, timeout=timeout)
                if current.status_code == 200:
                    body = current.json()
                    held = int(body.get("revision") or 0)
                    if held == revision and _same(body, document):
                        return PushState(target.pod, True, held)
                    if held > revision:
                        # It holds a newer revision than ours (a status write lost, or a foreign
                        # push): the same document would be refused; report what it holds.
                        return PushState(target.pod, False, held, f"409 holds revision {held}")
                timeout = min(self.timeout, max(end - time.monotonic(), 0.05))
                reply = session.put(target.url, json=dict(document), headers=headers, timeout=timeout)
            except (requests.RequestException, ValueError) as exc:
                error = f"unreachable: {type(exc).__name__}"
                continue
            if reply.status_code == 200:
                return PushState(target.pod, True, revision)
            if reply.status_code == 409:
                return PushState(target.pod, False, max(held, revision), f"409 {_message(reply)}")
            error = f"{reply.status_code} {_message(reply)}"
            if reply.status_code in (400, 401, 403):
                break  # the same request will be refused again
        return PushState(target.pod, False, held, error or "no answer")


def _same(held: Mapping[str, Any], document: Mapping[str, Any]) -> bool:
    """The balancer echoes the document; compare the parts we set (it may add defaults)."""
    return [(m.get("name"), m.get("address")) for m in held.get("members", [])] == [
        (m["name"], m["address"]) for m in document["members"]
    ]


def _message(reply: Any) -> str:
    try:
        return str(reply.json().get("message", ""))[:200]
    except ValueError:
        return str(reply.text)[:200]


def highest_refused(states: Sequence[PushState]) -> int:
    """The highest revision a balancer refused ours in favour of (0 if none)."""
    return max((s.revision for s in states if s.error.startswith("409")), default=0)
