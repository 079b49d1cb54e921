"""End-to-end tests that need two worker nodes: `make kind-up` (kind-config.yaml: one control
plane, two workers). On a cluster with fewer schedulable workers they fail, naming what is missing.

Traffic for the drain and the stopped node goes through the balancer Service as a NodePort on
the control-plane node (kind nodes are containers on a docker network this host can reach), so
kube-proxy, not a port-forward pinned to one pod, picks the balancer pod of each connection.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from .conftest import (
    OPERATOR_NS,
    active_operator,
    apply,
    balancer_pods,
    condition,
    kubectl,
    kubectl_json,
    load,
    pod_ready,
    replica_pods,
    resource,
    sample,
    wait_for,
    wait_ready,
)

pytestmark = [pytest.mark.e2e, pytest.mark.multinode]
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
# A stopped node turns NotReady after ~40 s; ringlb's pods on it are replaced after their 30 s
# not-ready/unreachable tolerations (unreachableNodeSeconds).
RECOVERY_TIMEOUT = 420.0


def nodes() -> list[dict[str, Any]]:
    return kubectl_json("get", "nodes")["items"]


def node_ready(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def workers() -> list[str]:
    """Ready, schedulable nodes without the control-plane role."""
    return sorted(
        n["metadata"]["name"]
        for n in nodes()
        if CONTROL_PLANE_LABEL not in n["metadata"].get("labels", {})
        and not n["spec"].get("unschedulable")
        and node_ready(n)
    )


def node_address(name: str) -> str:
    node = kubectl_json("get", "node", name)
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


def control_plane() -> str:
    return next(n["metadata"]["name"] for n in nodes() if CONTROL_PLANE_LABEL in n["metadata"].get("labels", {}))


@pytest.fixture(autouse=True)
def two_workers() -> None:
    found = workers()
    if len(found) < 2:
        pytest.fail(f"these tests need two Ready workers (make kind-up); found {found}")


@pytest.fixture
def web_nodeport(namespace: str) -> Iterator[tuple[str, str]]:
    """The sample with its balancer Service as a NodePort, Ready; yields (namespace, url) where
    url is the NodePort on the control-plane node."""
    doc = sample()
    doc["spec"].setdefault("balancer", {})["serviceType"] = "NodePort"
    apply(namespace, doc)
    wait_ready(namespace, 3)
    svc = kubectl_json("-n", namespace, "get", "service", "web-balancer")
    port = next(p["nodePort"] for p in svc["spec"]["ports"] if p["name"] == "http")
    url = f"http://{node_address(control_plane())}:{port}"
    wait_for(lambda: requests.get(url + "/rep", timeout=5).ok, what="the NodePort to answer", timeout=60)
    yield namespace, url


def node_of(pod: dict[str, Any]) -> str:
    return pod["spec"].get("nodeName", "")


def serving_identities(namespace: str) -> set[str]:
    """Identities whose replica pod is Ready."""
    return {
        p["metadata"]["annotations"].get("ringlb.io/identity", p["metadata"]["name"])
        for p in replica_pods(namespace)
        if pod_ready(p)
    }


def test_balancer_and_replica_pods_are_spread_over_both_workers(web: str) -> None:
    wanted = resource(web)["spec"]["balancer"]["replicas"]
    assert wanted >= 2, f"the sample runs {wanted} balancer pod(s); spreading needs two"
    pods = wait_for(
        lambda: ready if len(ready := [p for p in balancer_pods(web) if pod_ready(p)]) >= wanted else None,
        what=f"{wanted} Ready balancer pods",
    )
    placed = {p["metadata"]["name"]: node_of(p) for p in pods}
    replicas = {p["metadata"]["name"]: node_of(p) for p in replica_pods(web)}
    print(f"balancer pods: {placed}; replica pods: {replicas}")
    assert len(set(placed.values())) >= 2, f"balancer pods share one node: {placed}"
    # A soft constraint, but on two empty workers the scheduler honours it: one stopped worker
    # must not take every identity with it.
    assert len(set(replicas.values())) >= 2, f"replica pods share one node: {replicas}"


@pytest.mark.exclusive
def test_drain_of_a_worker_under_load_fails_no_request(web_nodeport: tuple[str, str]) -> None:
    namespace, url = web_nodeport
    # the worker holding the most of this resource's pods
    pods = balancer_pods(namespace) + replica_pods(namespace)
    counts: dict[str, int] = {}
    for p in pods:
        counts[node_of(p)] = counts.get(node_of(p), 0) + 1
    target = max((n for n in counts if n in workers()), key=lambda n: counts[n])
    stop = threading.Event()
    results: list[Any] = []
    loader = threading.Thread(target=lambda: results.append(load(url, 10**7, threads=8, seconds=420, stop=stop)))
    loader.start()
    try:
        time.sleep(3)
        t0 = time.monotonic()
        drain = kubectl(
            "drain",
            target,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=300s",
            check=False,
            timeout=330,
        )
        assert drain.returncode == 0, f"kubectl drain {target} failed: {drain.stderr.strip()}"
        wait_ready(namespace, 3)
        drained_in = time.monotonic() - t0
        time.sleep(3)
    finally:
        stop.set()
        loader.join(60)
        kubectl("uncordon", target, check=False)
    result = results[0]
    moved = {p["metadata"]["name"]: node_of(p) for p in balancer_pods(namespace) + replica_pods(namespace)}
    print(f"drained {target} in {drained_in:.0f}s; {result.sent} requests, {result.failed} failed; pods now on {moved}")
    assert result.sent > 100
    assert not result.failed, (
        f"{result.failed} of {result.sent} requests failed during the drain: {result.failure_examples}"
    )
    assert target not in moved.values()


@pytest.mark.exclusive
def test_stopped_worker_identities_serve_again(web_nodeport: tuple[str, str]) -> None:
    """A worker container stopped (`docker stop`): what the resource's status says, and how long
    until every identity it held serves again on the other worker."""
    namespace, url = web_nodeport
    replicas = replica_pods(namespace)
    counts: dict[str, int] = {}
    for p in replicas:
        counts[node_of(p)] = counts.get(node_of(p), 0) + 1
    target = max(counts, key=lambda n: counts[n])
    lost = {
        p["metadata"]["annotations"].get("ringlb.io/identity", p["metadata"]["name"])
        for p in replicas
        if node_of(p) == target
    }
    subprocess.run(["docker", "stop", "-t", "0", target], check=True, capture_output=True, timeout=60)
    t0 = time.monotonic()
    statuses: list[str] = []
    try:

        def back() -> bool | None:
            obj = resource(namespace)
            ready = condition(obj, "Ready")
            said = f"Ready={ready.get('status')} {ready.get('reason', '')}: {ready.get('message', '')}"
            if not statuses or not statuses[-1].endswith(said):
                statuses.append(f"{time.monotonic() - t0:5.0f}s {said}")
            serving = serving_identities(namespace)
            on_target = [p for p in replica_pods(namespace) if node_of(p) == target and pod_ready(p)]
            return True if lost <= serving and not on_target and ready.get("status") == "True" else None

        try:
            wait_for(
                back,
                what=f"identities {sorted(lost)} of {target} to serve again elsewhere",
                timeout=RECOVERY_TIMEOUT,
                interval=2,
            )
        except AssertionError as exc:
            pods = {
                p["metadata"]["name"]: (
                    node_of(p),
                    p["status"].get("phase"),
                    bool(p["metadata"].get("deletionTimestamp")),
                )
                for p in replica_pods(namespace)
            }
            raise AssertionError(
                f"{exc}\nstatus over time:\n" + "\n".join(statuses) + f"\nreplica pods (node, phase, deleting): {pods}"
            ) from None
        recovered_in = time.monotonic() - t0
        result = load(url, 300, threads=8, seconds=60)
    finally:
        subprocess.run(["docker", "start", target], capture_output=True, timeout=120)
        wait_for(
            lambda: node_ready(kubectl_json("get", "node", target)) or None,
            what=f"{target} Ready again",
            timeout=180,
            interval=2,
        )
    print(f"{target} stopped; identities {sorted(lost)} served again after {recovered_in:.0f}s; status over time:")
    print("\n".join(statuses))
    print(json.dumps(dict(result.per_replica)))
    assert not result.failed, f"requests failed after recovery: {result.failure_examples}"
    assert len(result.per_replica) == 3


@pytest.mark.exclusive
def test_hung_active_operator_is_taken_over_when_its_peering_record_expires(web: str) -> None:
    """The active operator process frozen (SIGSTOP through its node's container runtime): it
    neither works nor removes its peering record, so the standby takes over only when the record
    expires (PEERING_LIFETIME, 30 s after its last refresh); a scale made meanwhile converges
    while the frozen process is still frozen and not yet restarted by its liveness probe."""
    active = wait_for(active_operator, what="two operator pods in the peering", timeout=180)
    pod = kubectl_json("-n", OPERATOR_NS, "get", "pod", active)
    node, status = pod["spec"]["nodeName"], pod["status"]["containerStatuses"][0]
    container = status["containerID"].split("://", 1)[1]
    inspect = subprocess.run(
        ["docker", "exec", node, "crictl", "inspect", container], capture_output=True, text=True, timeout=30, check=True
    )
    pid = str(json.loads(inspect.stdout)["info"]["pid"])
    record = kubectl_json("get", "clusterkopfpeering", "ringlb")["status"][active]
    subprocess.run(["docker", "exec", node, "kill", "-STOP", pid], check=True, capture_output=True, timeout=30)
    frozen = time.monotonic()
    deadline = datetime.fromisoformat(record["lastseen"]) + timedelta(seconds=record["lifetime"])
    expires_in = (deadline - datetime.now(UTC)).total_seconds()
    try:
        kubectl("-n", web, "scale", "lbrs/web", "--replicas=4")
        wait_ready(web, 4)
        took = time.monotonic() - frozen
        restarts = kubectl_json("-n", OPERATOR_NS, "get", "pod", active)["status"]["containerStatuses"][0][
            "restartCount"
        ]
    finally:
        subprocess.run(["docker", "exec", node, "kill", "-CONT", pid], capture_output=True, timeout=30)
    print(
        f"{active} frozen on {node}, its peering record due to expire in {expires_in:.0f}s; the scale converged after "
        f"{took:.1f}s"
    )
    assert restarts == status["restartCount"], "the frozen operator was restarted first: the standby did not take over"
    wait_for(
        lambda: (
            kubectl(
                "-n", OPERATOR_NS, "rollout", "status", "deployment/ringlb-operator", "--timeout=5s", check=False
            ).returncode
            == 0
        ),
        what="the operator Deployment whole again",
        timeout=180,
    )
