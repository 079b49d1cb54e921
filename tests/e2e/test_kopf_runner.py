"""The operator run in-process with ``kopf.testing.KopfRunner`` against the cluster.

This replaces the unit test that read kopf's private registry: instead of asserting which
handlers are registered, the real module (``kopf run -m ringlb_operator.main``, the deployed
operator's arguments) runs against the real API and must do the work each registration exists
for. The deployed operator is scaled to 0 meanwhile and restored afterwards, even on failure.

The in-process operator runs on this machine, not in a pod: on kind (and any cluster but
``make local-up``'s single node) this machine has no route to pod IPs, so its membership pushes
(``PUT http://<pod IP>:5001/membership``) could never arrive and the resource would never be
Ready. The test therefore sends each push to the same pod and port through a ``kubectl
port-forward`` (``_pushes_through_port_forwards``): the request, its token and the answer are
unchanged, only the route to the pod differs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from .conftest import (
    OPERATOR_NS,
    PortForward,
    apply,
    kubectl,
    kubectl_json,
    replica_pods,
    sample,
    scale_operator,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.e2e
# Above any random priority the deployed pods take (1..32767): a peering record a killed
# operator pod left behind (it expires after 60 s) cannot make this one pause.
PRIORITY = 100_000
REACT = 10.0  # a watch event wakes the daemon within the debounce; the resync is 30 s


@pytest.fixture
def _pushes_through_port_forwards(namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The in-process operator's pushes to the balancer pods of ``namespace`` go through one
    ``kubectl port-forward pod/<name> :5001`` per pod, started on first use."""
    from ringlb_operator import constants as c
    from ringlb_operator import push

    forwards: dict[str, PortForward] = {}
    lock = threading.Lock()
    original = push.Target.url

    def url(target: push.Target) -> str:
        with lock:
            pf = forwards.get(target.pod)
            if pf is not None and pf.proc.poll() is None:
                return f"{pf.url}/membership"
        if kubectl("-n", namespace, "get", "pod", target.pod, "-o", "name", check=False).returncode != 0:
            return original.fget(target)  # not a pod of this test
        with lock:
            pf = forwards.get(target.pod)
            if pf is None or pf.proc.poll() is not None:
                try:
                    pf = forwards[target.pod] = PortForward(namespace, target=f"pod/{target.pod}", port=c.ADMIN_PORT)
                except AssertionError as exc:  # the pod not running yet: unreachable, retried later
                    raise requests.ConnectionError(f"port-forward to pod/{target.pod}: {exc}") from None
        return f"{pf.url}/membership"

    monkeypatch.setattr(push.Target, "url", property(url))
    try:
        yield
    finally:
        for pf in forwards.values():
            pf.close()


def _uid(kind: str, namespace: str, name: str) -> str:
    return kubectl("-n", namespace, "get", kind, name, "-o", "jsonpath={.metadata.uid}", check=False).stdout


def _recreated(kind: str, namespace: str, name: str, uid: str) -> Callable[[], bool]:
    return lambda: _uid(kind, namespace, name) not in ("", uid)


def _restored(what: str, done: Callable[[], bool]) -> float:
    started = time.monotonic()
    wait_for(done, what=what, timeout=REACT, interval=0.25)
    return time.monotonic() - started


@pytest.mark.exclusive
@pytest.mark.usefixtures("_pushes_through_port_forwards")
def test_operator_in_process_with_kopf_runner(namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from kopf.testing import KopfRunner

    # The operator's /metrics listener on a free port, not the deployed 8081.
    monkeypatch.setenv("RINGLB_OPERATOR_METRICS_PORT", "0")
    deployed = kubectl_json("-n", OPERATOR_NS, "get", "deployment", "ringlb-operator")["spec"]["replicas"]
    args = ["run", "--all-namespaces", "--peering=ringlb", f"--priority={PRIORITY}", "-m", "ringlb_operator.main"]
    timings: dict[str, float] = {}
    try:
        scale_operator(0)
        with KopfRunner(args, timeout=60) as runner:
            started = time.monotonic()
            apply(namespace, sample(replicas=1, balancer={"replicas": 1}))
            wait_ready(namespace, 1)
            timings["Ready"] = time.monotonic() - started

            # Each registration, by what it is for: the resource's watch (a scale)...
            kubectl("-n", namespace, "scale", "lbrs/web", "--replicas=2")
            timings["scale"] = _restored(
                "pod web-server-2 created", lambda: _uid("pod", namespace, "web-server-2") != ""
            )
            # ...the pods' watch and index (a deleted replica pod comes back with its name)...
            uid = _uid("pod", namespace, "web-server-1")
            kubectl("-n", namespace, "delete", "pod", "web-server-1", "--wait=false")
            timings["pod"] = _restored(
                "pod web-server-1 recreated",
                lambda: any(
                    p["metadata"]["name"] == "web-server-1" and p["metadata"]["uid"] != uid
                    for p in replica_pods(namespace)
                ),
            )
            # ...and every other owned kind's watch and index (deleted: recreated; the
            # Deployment hand-scaled: scaled back).
            for kind, name in (
                ("configmap", "web-membership"),
                ("service", "web-balancer"),
                ("serviceaccount", "web-balancer"),
                ("role", "web-balancer"),
                ("rolebinding", "web-balancer"),
                ("networkpolicy", "web-balancer"),
                ("poddisruptionbudget", "web-balancer"),
                ("poddisruptionbudget", "web-replicas"),
            ):
                uid = _uid(kind, namespace, name)
                assert uid, f"{kind} {name} missing"
                kubectl("-n", namespace, "delete", kind, name, "--wait=false")
                timings[f"{kind}/{name}"] = _restored(
                    f"{kind} {name} recreated", _recreated(kind, namespace, name, uid)
                )
            kubectl("-n", namespace, "scale", "deployment/web-balancer", "--replicas=3")
            timings["deployment"] = _restored(
                "Deployment web-balancer back at 1 replica",
                lambda: kubectl_json("-n", namespace, "get", "deployment", "web-balancer")["spec"]["replicas"] == 1,
            )
            wait_ready(namespace, 2)

            started = time.monotonic()
            kubectl("-n", namespace, "delete", "lbrs", "web", "--wait=true", "--timeout=60s", timeout=90)
            timings["deleted"] = time.monotonic() - started
    finally:
        scale_operator(deployed)
    print("\n" + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    assert runner.exit_code == 0 and runner.exception is None, (
        runner.exit_code,
        runner.exception,
        runner.output[-3000:],
    )
    # kopf's log went to the runner's output: started, stopped cleanly, nothing failed.
    for good in ("Activity 'configure' succeeded.", "Activity 'cleanup' succeeded."):
        assert good in runner.output, runner.output[-3000:]
    for bad in ("[ERROR", "Traceback", "reconcile pass crashed", "reconcile pass failed", "failed with an exception"):
        assert bad not in runner.output, runner.output[-3000:]
