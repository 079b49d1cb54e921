"""The operator run in-process with ``kopf.testing.KopfRunner`` against the cluster (issue 10).

This replaces the unit test that read kopf's private registry: instead of asserting which
handlers are registered, the real module (``kopf run -m ringlb_operator.main``, the deployed
operator's arguments) runs against the real API and must do the work each registration exists
for. The deployed operator is scaled to 0 meanwhile and restored afterwards, even on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .conftest import (
    OPERATOR_NS,
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


def _uid(kind: str, namespace: str, name: str) -> str:
    return kubectl("-n", namespace, "get", kind, name, "-o", "jsonpath={.metadata.uid}", check=False).stdout


def _recreated(kind: str, namespace: str, name: str, uid: str) -> Callable[[], bool]:
    return lambda: _uid(kind, namespace, name) not in ("", uid)


def _restored(what: str, done: Callable[[], bool]) -> float:
    started = time.monotonic()
    wait_for(what, done, timeout=REACT, interval=0.25)
    return time.monotonic() - started


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
            timings["scale"] = _restored("pod web-server-2 created", lambda: _uid("pod", namespace, "web-server-2") != "")
            # ...the pods' watch and index (a deleted replica pod comes back with its name)...
            uid = _uid("pod", namespace, "web-server-1")
            kubectl("-n", namespace, "delete", "pod", "web-server-1", "--wait=false")
            timings["pod"] = _restored(
                "pod web-server-1 recreated",
                lambda: any(p["metadata"]["name"] == "web-server-1" and p["metadata"]["uid"] != uid
                            for p in replica_pods(namespace)),
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
                timings[f"{kind}/{name}"] = _restored(f"{kind} {name} recreated", _recreated(kind, namespace, name, uid))
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
    assert runner.exit_code == 0 and runner.exception is None, (runner.exit_code, runner.exception, runner.output[-3000:])
    # kopf's log went to the runner's output: started, stopped cleanly, nothing failed.
    for good in ("Activity 'configure' succeeded.", "Activity 'cleanup' succeeded."):
        assert good in runner.output, runner.output[-3000:]
    for bad in ("[ERROR", "Traceback", "reconcile pass crashed", "reconcile pass failed", "failed with an exception"):
        assert bad not in runner.output, runner.output[-3000:]
