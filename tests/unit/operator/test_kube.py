"""ClusterKube's requests on the wire (the client's HTTP layer replaced): server-side apply,
dry-run probes and uid-preconditioned deletes."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import kubernetes.client as kc

from ringlb_operator import constants as c
from ringlb_operator.kube import PROBE_MANAGER, ClusterKube


def requests_made(actions: Any) -> list[tuple[str, str, str | None, Any]]:
    kube = ClusterKube(kc.ApiClient(kc.Configuration(host="http://127.0.0.1:1")))
    calls: list[tuple[str, str, str | None, Any]] = []

    def request(method: str, url: str, **kw: Any) -> Any:
        calls.append(
            (method, url, kw.get("headers", {}).get("Content-Type"), json.loads(kw["body"]) if kw.get("body") else None)
        )
        reply = mock.Mock(status=200, data=b"{}", reason="OK", headers={})
        reply.getheaders = lambda: {}
        reply.getheader = lambda *a: None
        return reply

    with mock.patch.object(kube.api_client.rest_client.pool_manager, "request", side_effect=request):
        actions(kube)
    return calls


def test_apply_is_server_side_with_our_field_manager_and_force() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}, "data": {"a": "b"}}
    [(method, url, ctype, body)] = requests_made(lambda k: k.apply(cm))
    assert method == "PATCH" and ctype == "application/apply-patch+yaml" and body == cm
    assert url.endswith(f"/api/v1/namespaces/ns/configmaps/c?fieldManager={c.MANAGER}&force=true")


def test_probe_is_a_dry_run_under_another_manager() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}}
    [(_, url, _, _)] = requests_made(lambda k: k.apply(secret, force=False, dry_run=True, manager=PROBE_MANAGER))
    assert "dryRun=All" in url and f"fieldManager={PROBE_MANAGER}" in url and "force=false" in url


def test_delete_carries_the_uid_precondition() -> None:
    [(method, url, _, body)] = requests_made(lambda k: k.delete("Pod", "ns", "p", uid="u1"))
    assert method == "DELETE" and url.endswith("/api/v1/namespaces/ns/pods/p")
    assert body == {"preconditions": {"uid": "u1"}}  # JSON; the API server reads a body without Content-Type as JSON


def test_force_delete_is_grace_period_zero_with_the_uid_precondition() -> None:
    [(method, url, _, body)] = requests_made(lambda k: k.delete("Pod", "ns", "p", uid="u1", grace_seconds=0))
    assert method == "DELETE" and url.endswith("/api/v1/namespaces/ns/pods/p")
    assert body == {"preconditions": {"uid": "u1"}, "gracePeriodSeconds": 0}
    [(_, _, _, plain)] = requests_made(lambda k: k.delete("Pod", "ns", "p"))
    assert plain is None  # no precondition, the pod's own grace period


def test_list_pods_reads_the_api_with_the_label_selector() -> None:
    out: list[Any] = []
    [(method, url, _, body)] = requests_made(lambda k: out.append(k.list_pods("ns", "a=b,c=d")))
    assert method == "GET" and url.endswith("/api/v1/namespaces/ns/pods?labelSelector=a%3Db%2Cc%3Dd")
    assert body is None and out == [[]]  # the reply {} holds no items
