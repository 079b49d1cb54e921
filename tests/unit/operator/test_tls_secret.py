"""spec.balancer.tls (issue 19): the CRD field, the balancer pods' mount and variables, and a
balancer that refuses its certificate files quoted in status."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ringlb_operator import children, spec
from ringlb_operator import constants as c
from ringlb_operator.observe import pod_view
from ringlb_operator.reconcile import reconcile_once

from .conftest import OWNER, FakeKube, resource, views
from .test_reconcile import NOW, FakePusher, conditions

TLS_SPEC = {"replicas": 1, "balancer": {"tls": {"secretName": "web-tls"}}}


def balancer_container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]


def test_the_field_parses_and_is_refused_when_not_a_secret_name() -> None:
    assert spec.parse(TLS_SPEC).balancer.tls.secret_name == "web-tls"  # type: ignore[union-attr]
    assert spec.parse({}).balancer.tls is None
    for bad in ({"secretName": ""}, {"secretName": "Not_A_Name"}, {}):
        with pytest.raises(spec.SpecError, match="spec.balancer.tls"):
            spec.parse({"balancer": {"tls": bad}})


def test_balancer_pods_mount_the_secret_directory_and_get_the_variables() -> None:
    plain = children.deployment(OWNER, spec.parse({"replicas": 1}))
    assert "RINGLB_TLS_CERT" not in {e["name"] for e in balancer_container(plain)["env"]}
    obj = children.deployment(OWNER, spec.parse(TLS_SPEC))
    container = balancer_container(obj)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RINGLB_TLS_CERT"] == f"{c.TLS_DIR}/tls.crt" and env["RINGLB_TLS_KEY"] == f"{c.TLS_DIR}/tls.key"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": c.TLS_DIR, "readOnly": True}  # no subPath: updates reach it
    volume = next(v for v in obj["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert volume == {"name": "tls", "secret": {"secretName": "web-tls"}}
    # Probes stay on the plain admin port.
    assert container["readinessProbe"]["httpGet"]["port"] == c.ADMIN_PORT_NAME
    assert container["livenessProbe"]["httpGet"]["port"] == c.ADMIN_PORT_NAME


def test_a_balancer_that_refuses_its_tls_files_is_quoted_in_degraded(kube: FakeKube) -> None:
    """A Secret that does not load stops the balancer at start with one line (Settings.check);
    FallbackToLogsOnError keeps it in the pod's status, and Degraded quotes it."""
    container = balancer_container(children.deployment(OWNER, spec.parse(TLS_SPEC)))
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    words = ("balancer settings: /etc/ringlb/tls/tls.crt and /etc/ringlb/tls/tls.key do not load as a PEM "
             "certificate chain and its private key: [SSL] PEM lib (_ssl.c:3905)")
    crashing = pod_view({
        "metadata": {"name": "web-balancer-a", "namespace": OWNER.namespace, "uid": "uid-a",
                     "labels": {c.LABEL_RESOURCE: OWNER.name, c.LABEL_COMPONENT: c.COMPONENT_BALANCER}},
        "spec": {"nodeName": "w1"},
        "status": {"phase": "Running", "podIP": "10.0.0.9", "containerStatuses": [{
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 1, "message": words + "\n"}},
        }]},
    })
    outcome = reconcile_once(kube, FakePusher(), resource(copy.deepcopy(TLS_SPEC)), views(kube) + [crashing], NOW)
    degraded = conditions(outcome.status)[c.DEGRADED]
    assert degraded["status"] == "True" and degraded["reason"] == c.Reason.CRASH_LOOP
    assert f"balancer pod web-balancer-a: CrashLoopBackOff: {words}" in degraded["message"]


def test_a_crash_loop_without_last_words_keeps_the_kubelet_message() -> None:
    view = pod_view({"metadata": {"name": "p"}, "status": {"containerStatuses": [{
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
        "lastState": {"terminated": {"exitCode": 137}}}]}})
    assert view.waiting_message == "back-off 10s"
