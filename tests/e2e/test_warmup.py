"""Warm-up on a cluster (spec.hashing.warmupSeconds): a scale-up moves keys in steps,
each its own revision, that every balancer pod takes alike; a scale-down keeps the leaving pod,
serving, until its share is 0.

Nothing here depends on seeing a step while it is in force: each balancer pod keeps a log of the
revisions it put in force with the fraction of keys each moved (``/status/data`` ``changes``),
which is read once the warm-up is over. What is polled meanwhile is only compared, never waited
for.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import requests

from ringlb_balancer.status.model import moved_fraction
from ringlb_ring import hashing as h

from .conftest import (
    PortForward,
    apply,
    balancer_pods,
    kubectl,
    load,
    pod_ready,
    replica_pods,
    resource,
    sample,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.e2e
THREE = ["Server 1", "Server 2", "Server 3"]
FOUR = THREE + ["Server 4"]


def patch(namespace: str, spec: dict[str, Any]) -> None:
    kubectl("-n", namespace, "patch", "lbrs", "web", "--type=merge", "-p", json.dumps({"spec": spec}))


def settled(namespace: str, replicas: int) -> dict[str, Any]:
    """The resource Ready with ``replicas`` members and no warm-up in progress."""
    wait_ready(namespace, replicas)

    def over() -> dict[str, Any] | None:
        obj = resource(namespace)
        return obj if "transition" not in obj["status"] else None

    return wait_for(over, what="no warm-up in progress")


@contextmanager
def admin_ports(namespace: str) -> Iterator[dict[str, str]]:
    """Balancer pod name -> URL of its admin port (5001), for every Ready balancer pod."""
    with ExitStack() as stack:
        urls = {}
        for pod in (p["metadata"]["name"] for p in balancer_pods(namespace) if pod_ready(p)):
            pf = PortForward(namespace, target=f"pod/{pod}", port=5001)
            stack.callback(pf.close)
            wait_for(
                lambda url=pf.url: requests.get(url + "/readyz", timeout=5).ok, what=f"{pod} admin port", timeout=30
            )
            urls[pod] = pf.url
        assert len(urls) >= 2, f"two balancer pods expected, got {sorted(urls)}"
        yield urls


class Watch:
    """Polls each balancer pod's /status/data in a thread (bounded in time): revision -> the
    shares each pod reported at it. Only compared afterwards; a missed revision is no failure."""

    def __init__(self, urls: dict[str, str], seconds: float = 300.0) -> None:
        self.urls = urls
        self.seen: dict[str, dict[int, dict[str, float]]] = {pod: {} for pod in urls}
        self.stop = threading.Event()
        self.seconds = seconds
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        session = requests.Session()
        deadline = threading.Event()
        timer = threading.Timer(self.seconds, deadline.set)
        timer.start()
        try:
            while not self.stop.is_set() and not deadline.is_set():
                for pod, url in self.urls.items():
                    try:
                        data = session.get(url + "/status/data", timeout=10).json()
                    except (requests.RequestException, ValueError):
                        continue
                    self.seen[pod][data["revision"]] = {m["name"]: m["share"] for m in data["members"]}
                self.stop.wait(0.3)
        finally:
            timer.cancel()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def change_logs(urls: dict[str, str], after: int) -> dict[str, list[dict[str, Any]]]:
    """Each pod's log of the revisions above ``after`` it put in force, oldest first."""
    logs = {}
    for pod, url in urls.items():
        changes = requests.get(url + "/status/data", timeout=10).json()["changes"]
        logs[pod] = sorted((c for c in changes if c["revision"] > after), key=lambda c: c["revision"])
    return logs


def test_scale_up_with_warm_up_moves_keys_in_steps_alike_on_every_balancer_pod(namespace: str) -> None:
    apply(namespace, sample())
    r0 = settled(namespace, 3)["status"]["ringRevision"]
    with admin_ports(namespace) as urls:
        watch = Watch(urls)
        try:
            patch(namespace, {"replicas": 4, "hashing": {"warmupSeconds": 20}})
            ramp = wait_for(
                lambda: resource(namespace)["status"].get("transition"), what="the warm-up to start", timeout=240
            )
            obj = settled(namespace, 4)
            final = obj["status"]["ringRevision"]
            wait_for(
                lambda: all(
                    requests.get(u + "/membership", timeout=5).json()["revision"] == final for u in urls.values()
                ),
                what="every balancer pod to hold the last step",
                timeout=60,
            )
            wait_for(
                lambda: all(final in seen for seen in watch.seen.values()),
                what="the watch to see the last step",
                timeout=60,
            )
        finally:
            watch.close()
        held = [requests.get(u + "/membership", timeout=5).json() for u in urls.values()]
        logs = change_logs(urls, r0)

    assert ramp["from"] == THREE and ramp["to"] == FOUR and ramp["steps"] == 5
    assert all(doc == held[0] for doc in held) and "transition" not in held[0]["hashing"]
    assert [m["name"] for m in held[0]["members"]] == FOUR
    # Keys moved in steps: a first slice, then the rest, each key once and never back, so the
    # fractions moved by the revisions each pod took add up to what a one-shot change moves.
    direct = moved_fraction(h.build(THREE, h.HashingConfig()), h.build(FOUR, h.HashingConfig()))
    for pod, log in logs.items():
        print(f"{pod}: " + ", ".join(f"r{c['revision']} moved {c['moved']:.4f}" for c in log))
        assert log[-1]["revision"] == final and len(log) >= 2, log
        assert log[0]["added"] == ["Server 4"] and all(c["removed"] == [] for c in log)
        assert all(0 < c["moved"] < direct for c in log), (direct, log)
        assert sum(c["moved"] for c in log) == pytest.approx(direct, abs=1e-9)
    # Every pod alike at every revision: what each revision moved, on pods that took it from the
    # same revision, and the shares each pod reported while the revision was in force.
    (a, log_a), (b, log_b) = list(logs.items())[:2]
    came_from = {
        pod: {c["revision"]: prev for prev, c in zip([r0] + [x["revision"] for x in log], log)}
        for pod, log in logs.items()
    }
    common = [c for c in log_a if came_from[b].get(c["revision"]) == came_from[a][c["revision"]]]
    assert common, (log_a, log_b)
    for entry in common:
        other = next(c for c in log_b if c["revision"] == entry["revision"])
        assert (entry["added"], entry["removed"], entry["moved"]) == (other["added"], other["removed"], other["moved"])
    both = sorted(set(watch.seen[a]) & set(watch.seen[b]))
    assert final in both
    for revision in both:
        assert watch.seen[a][revision] == watch.seen[b][revision], revision
    growth = [watch.seen[a][r].get("Server 4", 0.0) for r in sorted(watch.seen[a]) if r >= r0]
    print("Server 4's share by revision on", a, ":", [f"{s:.4f}" for s in growth])
    assert growth == sorted(growth) and growth[-1] == pytest.approx(0.25, abs=0.01)


def test_scale_down_with_warm_up_keeps_the_leaving_pod_until_its_share_is_0(namespace: str) -> None:
    apply(namespace, sample(replicas=4))
    r0 = settled(namespace, 4)["status"]["ringRevision"]
    leaving = "web-server-4"
    with admin_ports(namespace) as urls:
        pf = PortForward(namespace)
        try:
            wait_for(lambda: requests.get(pf.url + "/rep", timeout=5).ok, what="the Service port-forward", timeout=30)
            done = threading.Event()
            traffic: dict[str, Any] = {}
            worker = threading.Thread(
                target=lambda: traffic.update(result=load(pf.url, 40000, threads=4, seconds=240, stop=done))
            )
            worker.start()
            try:
                patch(namespace, {"replicas": 3, "hashing": {"warmupSeconds": 20}})  # 5 steps: short enough for CI
                # Draining: in status, with its share, while its pod is Ready and routed to.
                draining = wait_for(
                    lambda: [
                        m
                        for m in (resource(namespace)["status"].get("transition") or {}).get("members", [])
                        if m["state"] == "Draining"
                    ],
                    what="the leaving pod to drain",
                    timeout=120,
                )
                assert (
                    draining[0]["name"] == "Server 4"
                    and draining[0]["pod"] == leaving
                    and 0 < draining[0]["share"] < 0.25
                )
                assert any(p["metadata"]["name"] == leaving and pod_ready(p) for p in replica_pods(namespace))

                early: list[dict[str, Any]] = []  # rings still routing to it once it was deleted

                def gone() -> bool:
                    pods = {p["metadata"]["name"]: p for p in replica_pods(namespace)}
                    if leaving in pods and not pods[leaving]["metadata"].get("deletionTimestamp"):
                        return False
                    # Deleted: only once every balancer pod holds a ring without it.
                    for url in urls.values():
                        held = requests.get(url + "/membership", timeout=5).json()
                        if "Server 4" in [m["name"] for m in held["members"]]:
                            early.append(held)
                    return True

                wait_for(gone, what=f"{leaving} to be deleted", timeout=240)
                assert early == []
            finally:
                done.set()
                worker.join(300)
            logs = change_logs(urls, r0)
        finally:
            pf.close()
    obj = settled(namespace, 3)
    result = traffic["result"]
    assert result.failed == 0, result.failure_examples
    print(f"{result.sent} requests through the drain, by replica: {dict(result.per_replica)}")
    assert result.sent > 0 and "Server 4" in result.per_replica
    for pod, log in logs.items():
        print(f"{pod}: " + ", ".join(f"r{c['revision']} moved {c['moved']:.4f}" for c in log))
        assert (
            len(log) >= 2
            and log[-1]["removed"] == ["Server 4"]
            and log[-1]["revision"] == obj["status"]["ringRevision"]
        )
        assert all(c["removed"] == [] for c in log[:-1])  # routable until the last step
    events = [
        e
        for e in json.loads(kubectl("-n", namespace, "get", "events", "-o", "json").stdout)["items"]
        if e["involvedObject"].get("apiVersion", "").startswith("ringlb.io/")
    ]
    messages = [e["message"] for e in events if e["reason"] == "Draining"]
    assert any(m.startswith("Server 4 (pod web-server-4) hands its keys over: share") for m in messages), messages
    assert any(m.startswith("Server 4 (pod web-server-4): share 0 at revision") for m in messages), messages
    assert any(e["reason"] == "Deleted" and leaving in e["message"] for e in events)
