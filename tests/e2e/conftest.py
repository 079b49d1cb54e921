"""End-to-end fixtures: the current kube-context, one namespace per test, port-forwards.

Assumes ``make deploy`` ran and the images are in the cluster. Without a reachable cluster every
test fails (never skips): this suite exists to prove the operator on a real cluster.
Traffic goes only to 127.0.0.1 through ``kubectl port-forward``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml

from ringlb_harness.load import LoadResult, run_load
from ringlb_harness.net import wait_until

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "manifests" / "samples" / "web.yaml"
OPERATOR_NS = "ringlb-system"
READY_TIMEOUT = float(os.environ.get("RINGLB_E2E_READY_TIMEOUT", "180"))
T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def kubectl(
    *args: str, input: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, timeout=timeout)
    if check and run.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({run.returncode}): {run.stderr.strip()}")
    return run


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def wait_for(
    fn: Callable[[], T | None], timeout: float = READY_TIMEOUT, what: str = "condition", interval: float = 1.0
) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` after ``timeout``. A
    cluster's "not yet" is an assertion, a failed request or an unreadable answer; anything else
    fails at once."""
    found = wait_until(
        fn, timeout, what, interval=interval, retry_on=(AssertionError, requests.RequestException, ValueError)
    )
    assert found is not None  # None is falsy: wait_until returns only a truthy answer
    return found


@pytest.fixture(scope="session", autouse=True)
def cluster() -> None:
    try:
        run = subprocess.run(
            ["kubectl", "version", "--request-timeout=5s", "-o", "json"], capture_output=True, text=True, timeout=20
        )
        reachable = run.returncode == 0 and "serverVersion" in run.stdout
    except (OSError, subprocess.TimeoutExpired):
        reachable = False
    if not reachable:
        pytest.fail("no reachable cluster in the current kube-context (run make kind-up or make local-up)")
    crd = kubectl("get", "crd", "replicasets.ringlb.io", check=False)
    if crd.returncode != 0:
        pytest.fail("the ReplicaSet CRD is not installed: run make deploy first")


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace; resources are deleted before it (owner references do the rest)."""
    name = f"ringlb-e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        if getattr(request.node, "rep_call_failed", False):
            print(kubectl("-n", name, "get", "lbrs,pods,events", "-o", "wide", check=False).stdout)
        kubectl("-n", name, "delete", "lbrs", "--all", "--wait=true", "--timeout=120s", check=False, timeout=150)
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call_failed = report.failed


def resource(namespace: str, name: str = "web") -> dict[str, Any]:
    return kubectl_json("-n", namespace, "get", "lbrs", name)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def replica_pods(namespace: str, name: str = "web") -> list[dict[str, Any]]:
    selector = f"ringlb.io/resource={name},app.kubernetes.io/component=replica"
    return kubectl_json("-n", namespace, "get", "pods", "-l", selector)["items"]


def pod_ready(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def wait_ready(namespace: str, replicas: int, name: str = "web") -> dict[str, Any]:
    """The resource once Ready with ``replicas`` members at the generation last written, and
    every balancer pod Ready and holding the ring (Ready needs only one: a test that goes on
    through each balancer pod must not start while the second one is still coming up)."""

    def check() -> dict[str, Any] | None:
        obj = resource(namespace, name)
        st = obj.get("status", {})
        balancer = st.get("balancer") or {}
        ok = (
            condition(obj, "Ready").get("status") == "True"
            and st.get("readyReplicas") == replicas
            and balancer.get("replicas", 0) >= 1
            and balancer.get("replicas") == balancer.get("readyReplicas") == balancer.get("acknowledged")
            and st.get("observedGeneration") == obj["metadata"]["generation"]
            and len([p for p in replica_pods(namespace, name) if pod_ready(p)]) == replicas
        )
        return obj if ok else None

    return wait_for(check, what=f"{namespace}/{name} Ready with {replicas} replicas")


def apply(namespace: str, doc: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
    return kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(doc), check=check)


def sample(**spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["spec"].update(spec)
    return doc


@pytest.fixture
def web(namespace: str) -> str:
    """The sample applied and Ready; yields its namespace."""
    kubectl("-n", namespace, "apply", "-f", str(SAMPLE))
    wait_ready(namespace, 3)
    return namespace


def token(namespace: str, name: str = "web", secret: str = "balancer-token") -> str:
    """The /add token (``secret="membership-token"``: the push token)."""
    data = kubectl("-n", namespace, "get", "secret", f"{name}-{secret}", "-o", "jsonpath={.data.token}").stdout
    return base64.b64decode(data).decode()


def balancer_pods(namespace: str, name: str = "web") -> list[dict[str, Any]]:
    selector = f"ringlb.io/resource={name},app.kubernetes.io/component=balancer"
    return kubectl_json("-n", namespace, "get", "pods", "-l", selector)["items"]


def operator_pods() -> list[dict[str, Any]]:
    return [
        p
        for p in kubectl_json("-n", OPERATOR_NS, "get", "pods", "-l", "app.kubernetes.io/component=operator")["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]


def active_operator() -> str | None:
    """The operator pod that works: of the live pods in the peering, the highest priority (None
    until two are there, so that a test of a hand-over has a standby to hand over to)."""
    peering = kubectl_json("get", "clusterkopfpeering", "ringlb")
    live = {p["metadata"]["name"] for p in operator_pods()}
    peers = {k: v for k, v in (peering.get("status") or {}).items() if k in live}
    return max(peers, key=lambda k: peers[k]["priority"]) if len(peers) >= 2 else None


def scale_operator(replicas: int, timeout: float = 180) -> None:
    kubectl("-n", OPERATOR_NS, "scale", "deployment/ringlb-operator", f"--replicas={replicas}")
    if replicas == 0:
        wait_for(
            lambda: (
                not kubectl_json("-n", OPERATOR_NS, "get", "pods", "-l", "app.kubernetes.io/component=operator")[
                    "items"
                ]
            ),
            what="operator pods gone",
            timeout=timeout,
        )
    else:
        wait_for(
            lambda: (
                kubectl(
                    "-n", OPERATOR_NS, "rollout", "status", "deployment/ringlb-operator", "--timeout=5s", check=False
                ).returncode
                == 0
            ),
            what="the operator back",
            timeout=timeout,
        )


class PortForward:
    """``kubectl port-forward`` to the balancer Service (or ``target``, e.g. ``pod/x``, and
    ``port``) on a random local port."""

    def __init__(self, namespace: str, name: str = "web", target: str = "", port: int = 5000) -> None:
        target = target or f"service/{name}-balancer"
        self.proc = subprocess.Popen(
            ["kubectl", "-n", namespace, "port-forward", target, f":{port}", "--address", "127.0.0.1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            match = re.search(r"127\.0\.0\.1:(\d+)", line)
            if match:
                self.url = f"http://127.0.0.1:{match.group(1)}"
                threading.Thread(target=self._drain, daemon=True).start()
                return
            if self.proc.poll() is not None:
                break
        self.close()
        raise AssertionError(
            f"port-forward did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
        )

    def _drain(self) -> None:
        for _ in self.proc.stdout or []:
            pass

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def forward(web: str) -> Iterator[PortForward]:
    pf = PortForward(web)
    try:
        wait_for(lambda: requests.get(pf.url + "/rep", timeout=5).ok, what="the port-forward to answer", timeout=30)
        yield pf
    finally:
        pf.close()


def load(
    url: str, requests_total: int, threads: int = 32, seconds: float = 120.0, stop: threading.Event | None = None
) -> LoadResult:
    """GET /home ``requests_total`` times with random keys from ``threads`` threads, bounded in
    count and time (the harness's closed loop)."""
    return run_load(url + "/home", requests_total, threads, timeout=10, max_seconds=seconds, stop=stop, progress=False)


def rep(url: str) -> list[str]:
    body = requests.get(url + "/rep", timeout=10).json()
    return list(body["message"]["replicas"])
