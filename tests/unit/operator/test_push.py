"""The membership push against fake balancer pods that follow the balancer's admin contract.

The fake keeps to plan.md's process contract: ``GET|PUT /membership`` on the admin port;
``PUT`` needs ``RINGLB_MEMBERSHIP_TOKEN`` (401 for another token, 403 when none is set); a
revision not above the one in force → 409; a jump of more than 2^32 → 400.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from ringlb_operator import constants as c
from ringlb_operator import membership, push, spec
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


class FakeBalancer:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.document: dict[str, Any] = {"revision": 0, "members": []}

    def get(self) -> Reply:
        return Reply(200, self.document)

    def put(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        if not self.token:
            return Reply(403, {"message": "membership pushes are disabled"})
        if headers.get("Authorization") != f"Bearer {self.token}":
            return Reply(401, {"message": "bad token"})
        held, revision = self.document["revision"], int(body["revision"])
        if revision <= held:
            return Reply(409, {"message": f"stale revision {revision}, holding {held}"})
        if revision - held > 2**32:
            return Reply(400, {"message": "revision jumps too far"})
        self.document = dict(body)
        return Reply(200, self.document)


class BalancerSession:
    """A requests.Session stand-in that routes by IP to fake balancer pods."""

    def __init__(
        self, pods: dict[str, FakeBalancer], down: set[str] | None = None, hang: set[str] | None = None
    ) -> None:
        self.pods = pods
        self.down = down or set()
        self.hang = hang or set()
        self.puts = 0
        self.ports: set[int] = set()
        self.lock = threading.Lock()
        self.released = threading.Event()  # hung pods answer (a timeout) only once it is set
        self.hung_now = self.hung_peak = 0

    def _pod(self, url: str, timeout: float) -> FakeBalancer:
        parts = urlsplit(url)
        self.ports.add(parts.port or 80)
        assert parts.path == "/membership"
        if parts.hostname in self.hang:
            # Hung for good, deaf to the client's timeout: only the pusher's own deadline ends it.
            with self.lock:
                self.hung_now += 1
                self.hung_peak = max(self.hung_peak, self.hung_now)
            self.released.wait()
            with self.lock:
                self.hung_now -= 1
            raise requests.ReadTimeout("hung")
        if parts.hostname in self.down:
            raise requests.ConnectionError("refused")
        return self.pods[parts.hostname or ""]

    def get(self, url: str, timeout: float) -> Reply:
        return self._pod(url, timeout).get()

    def put(self, url: str, json: Any, headers: dict[str, str], timeout: float) -> Reply:
        with self.lock:
            self.puts += 1
        return self._pod(url, timeout).put(json, headers)


@pytest.fixture
def pods() -> dict[str, FakeBalancer]:
    return {"10.1.0.1": FakeBalancer(), "10.1.0.2": FakeBalancer()}


@pytest.fixture
def pool() -> Any:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def document(revision: int, n: int = 3, strategy: str = "maglev") -> dict[str, Any]:
    members = [{"name": f"Server {i}", "address": f"10.0.0.{i}:5000"} for i in range(1, n + 1)]
    s = spec.parse({"hashing": {"strategy": strategy}})
    return membership.RingRevision(revision, "h", True).document(members, s)


def views() -> list[PodView]:
    return [balancer_pod("b-1", "10.1.0.1", ready=False), balancer_pod("b-2", "10.1.0.2")]


def test_push_goes_to_the_admin_port_and_is_skipped_when_held(pods: dict[str, FakeBalancer], pool: Any) -> None:
    session = BalancerSession(pods)
    pusher = push.Pusher(session=session, sleep=lambda _: None, pool=pool)
    states = pusher.push_all(push.targets(views()), document(1), TOKEN)
    assert [s.acknowledged for s in states] == [True, True] and session.ports == {c.ADMIN_PORT}
    assert pods["10.1.0.2"].document["members"][0]["name"] == "Server 1"
    before = session.puts
    pusher.push_all(push.targets(views()), document(1), TOKEN)
    assert session.puts == before  # the GET showed both already hold it


def test_every_strategy_document_is_accepted(pods: dict[str, FakeBalancer], pool: Any) -> None:
    pusher = push.Pusher(session=BalancerSession(pods), sleep=lambda _: None, pool=pool)
    for revision, strategy in enumerate(("maglev", "ring", "seed"), start=1):
        assert all(
            s.acknowledged for s in pusher.push_all(push.targets(views()), document(revision, strategy=strategy), TOKEN)
        )


@pytest.mark.parametrize("token,status", [("wrong", "401"), ("", "403")])
def test_refused_token_is_not_retried(token: str, status: str, pool: Any) -> None:
    fake = FakeBalancer(token=token and TOKEN)
    session = BalancerSession({"10.1.0.1": fake})
    state = push.Pusher(session=session, sleep=lambda _: None, pool=pool).push_one(
        push.Target("b-1", "10.1.0.1"), document(1), token or TOKEN
    )
    assert not state.acknowledged and state.error.startswith(status) and session.puts == 1


def test_stale_revision_reports_what_the_balancer_holds(pods: dict[str, FakeBalancer], pool: Any) -> None:
    session = BalancerSession(pods)
    pusher = push.Pusher(session=session, sleep=lambda _: None, pool=pool)
    pusher.push_one(push.Target("b-1", "10.1.0.1"), document(5), TOKEN)
    puts = session.puts
    state = pusher.push_one(push.Target("b-1", "10.1.0.1"), document(3, n=2), TOKEN)
    assert not state.acknowledged and state.error.startswith("409") and state.revision == 5
    assert session.puts == puts  # known from the GET: no PUT that must fail
    assert push.highest_refused([state]) == 5


def test_unreachable_pod_is_retried_with_backoff(pods: dict[str, FakeBalancer], pool: Any) -> None:
    sleeps: list[float] = []
    session = BalancerSession(pods, down={"10.1.0.1"})
    states = push.Pusher(session=session, sleep=sleeps.append, pool=pool).push_all(
        push.targets(views()), document(1), TOKEN
    )
    assert [s.acknowledged for s in states] == [False, True]
    assert states[0].error.startswith("unreachable") and sleeps == [0.2, 0.4]


def test_hung_pods_cost_one_deadline_not_a_sum(pool: Any) -> None:
    """Three balancer pods hung for good and one good one: all pushed at once (the three hang
    side by side), and push_all returns at its one deadline although the three never answer.
    How long that took is not asserted: the deadline (5 s) is long enough that the good pod
    answers within it on a loaded machine."""
    fakes = {f"10.1.0.{i}": FakeBalancer() for i in range(1, 5)}
    session = BalancerSession(fakes, hang={"10.1.0.1", "10.1.0.2", "10.1.0.3"})
    pusher = push.Pusher(session=session, timeout=0.5, deadline=5.0, sleep=time.sleep, pool=pool)
    targets = [push.Target(f"b-{i}", f"10.1.0.{i}") for i in range(1, 5)]
    try:
        states = pusher.push_all(targets, document(1), TOKEN)
    finally:
        session.released.set()  # let the hung threads go, so the pool can shut down
    assert [s.acknowledged for s in states] == [False, False, False, True]
    assert all(s.error.startswith("deadline") for s in states[:3]), states
    assert session.hung_peak == 3, f"hung pods pushed one after another (at most {session.hung_peak} at once)"


def test_concurrency_is_bounded_per_resource(pool: Any) -> None:
    fakes = {f"10.1.0.{i}": FakeBalancer() for i in range(1, 7)}
    inflight, peak = [0], [0]
    overlap = threading.Condition()

    class Counting(BalancerSession):
        def get(self, url: str, timeout: float) -> Reply:
            with overlap:
                inflight[0] += 1
                peak[0] = max(peak[0], inflight[0])
                overlap.notify_all()
                # The first push waits for a second one to be in flight (60 s at most, so a
                # pusher that sends one at a time fails instead of hanging), then each holds its
                # pod a moment, in which a pusher without a bound would start the others too.
                overlap.wait_for(lambda: peak[0] >= 2, timeout=60)
            time.sleep(0.05)
            with overlap:
                inflight[0] -= 1
            return super().get(url, timeout)

    pusher = push.Pusher(session=Counting(fakes), concurrency=2, pool=pool)
    states = pusher.push_all([push.Target(f"b-{i}", f"10.1.0.{i}") for i in range(1, 7)], document(1), TOKEN)
    assert all(s.acknowledged for s in states) and peak[0] == 2


def test_targets_skip_pods_without_ip_or_terminating() -> None:
    gone = balancer_pod("b-3", "10.1.0.3")
    gone = PodView(**{**gone.__dict__, "terminating": True})
    assert [t.pod for t in push.targets(views() + [balancer_pod("b-4", ""), gone])] == ["b-1", "b-2"]
    assert push.Target("b", "fd00::1").url == f"http://[fd00::1]:{c.ADMIN_PORT}/membership"


def test_push_metrics_count_failures_by_cause(pods: dict[str, FakeBalancer], pool: Any) -> None:
    from ringlb_operator import metrics

    def value(reason: str) -> float:
        return metrics.REGISTRY.get_sample_value("ringlb_operator_push_failures_total", {"reason": reason}) or 0.0

    before = value("unauthorized"), value("unreachable")
    session = BalancerSession(pods, down={"10.1.0.2"})
    push.Pusher(session=session, sleep=lambda _: None, pool=pool).push_all(push.targets(views()), document(1), "wrong")
    assert (value("unauthorized"), value("unreachable")) == (before[0] + 1, before[1] + 1)
    assert (metrics.REGISTRY.get_sample_value("ringlb_operator_push_duration_seconds_count") or 0) >= 2
