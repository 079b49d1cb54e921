"""Membership push: ``PUT /membership`` to every balancer pod by pod IP, with a bearer token.

A pod already holding the revision (``GET /membership``) is left alone, so a pass that changes
nothing costs one GET per pod; a new pod (revision 0) gets the current document even when the
ring did not change. Each pod gets a few quick attempts per pass; the reconciler retries failed
pods on later passes with exponential backoff and reports them in status and Events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from ringlb_operator import constants as c
from ringlb_operator.desired import PushState
from ringlb_operator.observe import PodView


@dataclass(frozen=True)
class Target:
    pod: str
    ip: str

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{c.PORT}/membership"


def targets(balancer_pods: Sequence[PodView]) -> list[Target]:
    """Every live balancer pod with an IP, Ready or not: a new pod needs the push to get Ready."""
    return [Target(p.name, p.ip) for p in balancer_pods if p.alive and p.ip]


class Pusher:
    """Pushes one document to many pods; ``session`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        session: requests.Session | None = None,
        timeout: float = c.PUSH_TIMEOUT,
        attempts: int = c.PUSH_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session = session or requests.Session()
        self.timeout = timeout
        self.attempts = attempts
        self.sleep = sleep

    def push_all(self, pods: Sequence[Target], document: Mapping[str, Any], token: str) -> list[PushState]:
        return [self.push_one(target, document, token) for target in pods]

    def push_one(self, target: Target, document: Mapping[str, Any], token: str) -> PushState:
        headers = {"Authorization": f"Bearer {token}"}
        revision = int(document["revision"])
        error = ""
        held = 0
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(0.2 * 2 ** (attempt - 1))
            try:
                current = self.session.get(target.url, timeout=self.timeout)
                if current.status_code == 200:
                    held = int(current.json().get("revision") or 0)
                    if held == revision and _same(current.json(), document):
                        return PushState(target.pod, True, held)
                reply = self.session.put(target.url, json=dict(document), headers=headers, timeout=self.timeout)
            except (requests.RequestException, ValueError) as exc:
                error = f"unreachable: {type(exc).__name__}"
                continue
            if reply.status_code == 200:
                return PushState(target.pod, True, revision)
            if reply.status_code == 409:
                # It holds a newer revision than ours (a status write lost); retrying the same
                # document cannot help: report it so the next pass bumps past ``held``.
                return PushState(target.pod, False, max(held, revision), f"409 {_message(reply)}")
            error = f"{reply.status_code} {_message(reply)}"
            if reply.status_code in (400, 401):
                break  # the same request will be refused again
        return PushState(target.pod, False, held, error or "no answer")


def _same(held: Mapping[str, Any], document: Mapping[str, Any]) -> bool:
    """The balancer echoes the document; compare the parts we set (it may add defaults)."""
    return [m.get("name") for m in held.get("members", [])] == [m["name"] for m in document["members"]] and [
        m.get("address") for m in held.get("members", [])
    ] == [m["address"] for m in document["members"]]


def _message(reply: requests.Response) -> str:
    try:
        return str(reply.json().get("message", ""))[:200]
    except ValueError:
        return reply.text[:200]


def highest_refused(states: Sequence[PushState]) -> int:
    """The highest revision a balancer refused ours in favour of (0 if none)."""
    return max((s.revision for s in states if s.error.startswith("409")), default=0)
