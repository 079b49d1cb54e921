"""The membership push against the real balancer app (its Flask/WSGI code, no sockets)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.test import Client

from ringlb_balancer.app import create_app
from ringlb_balancer.config import Settings
from ringlb_operator import desired, push, spec
from ringlb_operator.observe import PodView

from .conftest import balancer_pod

TOKEN = "s3cret"


class Reply:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self._body = body
        self.text = str(body)

    def json(self) -> Any:
        return self._body


class BalancerSession:
    """A requests.Session stand-in that routes by IP to in-process balancer apps."""

    def __init__(self, apps: dict[str, Client], down: set[str] | None = None) -> None:
        self.apps = apps
        self.down = down or set()
        self.puts = 0

    def _client(self, url: str) -> tuple[Client, str]:
        parts = urlsplit(url)
        if parts.hostname in self.down:
            import requests

            raise requests.ConnectionError("refused")
        return self.apps[parts.hostname], parts.path

    def get(self, url: str, timeout: float) -> Reply:
        client, path = self._client(url)
        r = client.get(path)
        return Reply(r.status_code, r.get_json())

    def put(self, url: str, json: Any, headers: dict[str, str], timeout: float) -> Reply:
        self.puts += 1
        client, path = self._client(url)
        r = client.put(path, json=json, headers=headers)
        return Reply(r.status_code, r.get_json())


@pytest.fixture
def apps(tmp_path: Any) -> dict[str, Client]:
    out = {}
    for n, ip in enumerate(("10.1.0.1", "10.1.0.2")):
        app = create_app(Settings(state_dir=str(tmp_path / f"b{n}"), token=TOKEN, membership_token=TOKEN))
        out[ip] = Client(app)
    return out


def document(revision: int, n: int = 3, strategy: str = "maglev") -> dict[str, Any]:
    members = [{"name": f"Server {i}", "address": f"10.0.0.{i}:5000"} for i in range(1, n + 1)]
    s = spec.parse({"hashing": {"strategy": strategy}})
    return desired.Ring(revision, "h", True).document(members, s)


def pods() -> list[PodView]:
    return [balancer_pod("b-1", "10.1.0.1", ready=False), balancer_pod("b-2", "10.1.0.2")]


def test_push_is_accepted_and_makes_the_balancer_ready(apps: dict[str, Client]) -> None:
    assert apps["10.1.0.1"].get("/readyz").status_code == 503
    session = BalancerSession(apps)
    states = push.Pusher(session=session, sleep=lambda _: None).push_all(push.targets(pods()), document(1), TOKEN)
    assert [s.acknowledged for s in states] == [True, True]
    assert apps["10.1.0.1"].get("/readyz").status_code == 200
    assert apps["10.1.0.2"].get("/rep").get_json()["message"]["replicas"] == ["Server 1", "Server 2", "Server 3"]
    # An unchanged document is not PUT again: the GET shows the pod already holds it.
    before = session.puts
    push.Pusher(session=session).push_all(push.targets(pods()), document(1), TOKEN)
    assert session.puts == before


def test_every_strategy_document_is_valid_for_the_balancer(apps: dict[str, Client]) -> None:
    session = BalancerSession(apps)
    pusher = push.Pusher(session=session, sleep=lambda _: None)
    for revision, strategy in enumerate(("maglev", "ring", "seed"), start=1):
        states = pusher.push_all(push.targets(pods()), document(revision, strategy=strategy), TOKEN)
        assert all(s.acknowledged for s in states), states
    for source in ({"keySource": "cookie"}, {"keySource": "client-ip"}, {"boundedLoad": 1.25}):
        revision += 1
        members = [{"name": "S5", "address": "10.0.0.5:5000"}]
        doc = desired.Ring(revision, "h", True).document(members, spec.parse({"hashing": source}))
        assert all(s.acknowledged for s in pusher.push_all(push.targets(pods()), doc, TOKEN))


def test_wrong_token_is_not_retried(apps: dict[str, Client]) -> None:
    session = BalancerSession(apps)
    state = push.Pusher(session=session, sleep=lambda _: None).push_one(push.Target("b-1", "10.1.0.1"), document(1), "wrong")
    assert not state.acknowledged and state.error.startswith("401") and session.puts == 1


def test_stale_revision_reports_what_the_balancer_holds(apps: dict[str, Client]) -> None:
    session = BalancerSession(apps)
    pusher = push.Pusher(session=session, sleep=lambda _: None)
    pusher.push_one(push.Target("b-1", "10.1.0.1"), document(5), TOKEN)
    state = pusher.push_one(push.Target("b-1", "10.1.0.1"), document(3, n=2), TOKEN)
    assert not state.acknowledged and state.error.startswith("409") and state.revision == 5
    assert push.highest_refused([state]) == 5


def test_unreachable_pod_is_retried_with_backoff(apps: dict[str, Client]) -> None:
    sleeps: list[float] = []
    session = BalancerSession(apps, down={"10.1.0.1"})
    states = push.Pusher(session=session, sleep=sleeps.append).push_all(push.targets(pods()), document(1), TOKEN)
    assert [s.acknowledged for s in states] == [False, True]
    assert states[0].error.startswith("unreachable") and sleeps == [0.2, 0.4]


def test_targets_skip_pods_without_ip_or_terminating() -> None:
    gone = balancer_pod("b-3", "10.1.0.3")
    gone = PodView(**{**gone.__dict__, "terminating": True})
    assert [t.pod for t in push.targets(pods() + [balancer_pod("b-4", ""), gone])] == ["b-1", "b-2"]
    assert push.Target("b", "fd00::1").url == "http://[fd00::1]:5000/membership"
