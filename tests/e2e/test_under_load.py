"""Disruptions under load from inside the cluster: no idempotent request may fail.

Each test starts a client pod (``incluster.InClusterLoad``) that sends GET /home with random keys
to the balancer Service's ClusterIP (some connections renewed every 50 requests, some kept
alive until the balancer closes them) and directly to the balancer pods that outlive the
disruption; then disrupts, waits until the disruption is over (old pods gone, not just
terminating), lets the load run a few seconds more, and asserts that not one request of N
failed. The figures are printed (``pytest -s``): ``failed 0 of N ...`` per target.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from .conftest import (
    apply,
    balancer_pods,
    kubectl,
    kubectl_json,
    pod_ready,
    replica_pods,
    sample,
    wait_for,
    wait_ready,
)
from .incluster import InClusterLoad, LoadReport, balancer_ips

pytestmark = pytest.mark.e2e
SERVERS = {"Server 1", "Server 2", "Server 3"}
SETTLE = 3.0  # seconds of load after the disruption is over


def _check(report: LoadReport, servers: set[str], what: str) -> None:
    print(f"\n{what}\n{report.summary()}")
    assert report.failed == 0, (report.summary(), report.samples[:5])
    assert report.sent > 1000, report.summary()  # the load really ran
    assert set(report.servers) == servers, report.servers
    for name, target in report.targets.items():
        assert target["ok"] > 0, f"no request through {name}"


def test_balancer_pod_deleted_under_load(web: str) -> None:
    ips = balancer_ips(web)
    assert len(ips) == 2, ips
    victim, survivor = sorted(ips)
    load = InClusterLoad(web, seconds=40, pods={survivor: ips[survivor]}).start()
    try:
        time.sleep(SETTLE)
        started = time.monotonic()
        kubectl("-n", web, "delete", "pod", victim, "--wait=false")

        def replaced() -> bool:
            pods = balancer_pods(web)
            names = {p["metadata"]["name"] for p in pods}
            return victim not in names and len([p for p in pods if pod_ready(p)]) == 2

        wait_for(replaced, what=f"{victim} gone and a Ready replacement", timeout=60, interval=0.5)
        took = time.monotonic() - started
        time.sleep(SETTLE)
    finally:
        load.stop()
    report = load.result()
    _check(report, SERVERS, f"{victim} deleted: gone and replaced after {took:.1f}s")


def test_balancer_template_rollout_under_load(web: str) -> None:
    before = {p["metadata"]["name"] for p in balancer_pods(web)}
    replicas_before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in replica_pods(web)}
    generation = kubectl_json("-n", web, "get", "deployment", "web-balancer")["metadata"]["generation"]
    stamp = uuid.uuid4().hex[:8]
    load = InClusterLoad(web, seconds=40).start()
    try:
        time.sleep(SETTLE)
        started = time.monotonic()
        patch = {"spec": {"balancer": {"annotations": {"e2e.ringlb.io/rollout": stamp}}}}
        kubectl("-n", web, "patch", "lbrs", "web", "--type=merge", "-p", json.dumps(patch))

        def rolled() -> bool:
            deploy = kubectl_json("-n", web, "get", "deployment", "web-balancer")
            pods = balancer_pods(web)
            return (
                deploy["metadata"]["generation"] > generation
                and deploy["spec"]["template"]["metadata"].get("annotations", {}).get("e2e.ringlb.io/rollout") == stamp
                and not before & {p["metadata"]["name"] for p in pods}  # every old pod gone
                and len(pods) == 2
                and all(
                    pod_ready(p) and p["metadata"]["annotations"].get("e2e.ringlb.io/rollout") == stamp for p in pods
                )
            )

        wait_for(rolled, what="the balancer Deployment rolled, old pods gone", timeout=90, interval=0.5)
        took = time.monotonic() - started
        time.sleep(SETTLE)
    finally:
        load.stop()
    report = load.result()
    _check(report, SERVERS, f"balancer Deployment rolled: 2 new pods Ready, old ones gone after {took:.1f}s")
    # A balancer template change leaves the replica pods alone.
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in replica_pods(web)} == replicas_before


def test_replicaset_scale_down_under_load(namespace: str) -> None:
    apply(namespace, sample(replicas=4))
    wait_ready(namespace, 4)
    ips = balancer_ips(namespace)
    assert len(ips) == 2, ips
    load = InClusterLoad(namespace, seconds=40, pods=ips).start()
    try:
        time.sleep(SETTLE)
        started = time.monotonic()
        kubectl("-n", namespace, "scale", "lbrs/web", "--replicas=2")

        def scaled() -> bool:
            names = sorted(p["metadata"]["name"] for p in replica_pods(namespace))
            return names == ["web-server-1", "web-server-2"]

        wait_for(scaled, what="web-server-3 and web-server-4 gone", timeout=90, interval=0.5)
        took = time.monotonic() - started
        wait_ready(namespace, 2)
        time.sleep(SETTLE)
    finally:
        load.stop()
    report = load.result()
    _check(report, SERVERS | {"Server 4"}, f"lbrs scaled 4 -> 2: retired pods gone after {took:.1f}s")
    assert balancer_ips(namespace) == ips  # the balancer pods were not touched
