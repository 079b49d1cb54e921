"""TLS on a real cluster: spec.balancer.tls.secretName serves the seed API over TLS,
a replaced Secret reaches new connections without a restart, and a missing one is named in
status. Certificates come from trustme; traffic goes through port-forwards to 127.0.0.1, so
the leaf names 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from .conftest import (
    PortForward,
    apply,
    balancer_pods,
    condition,
    kubectl,
    pod_ready,
    resource,
    sample,
    token,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.e2e
SERVERS = ["Server 1", "Server 2", "Server 3"]
SECRET = "web-tls"
# The kubelet refreshes a Secret volume on its own sync period (about a minute, plus the cache
# TTL), and the balancer stats the files every second: far more than that, never a guess.
ROTATION_TIMEOUT = 300.0


def tls_secret(leaf: trustme.LeafCert) -> dict[str, Any]:
    """A kubernetes.io/tls Secret as cert-manager writes it: the chain and its key."""
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET},
        "data": {
            "tls.crt": base64.b64encode(chain).decode(),
            "tls.key": base64.b64encode(leaf.private_key_pem.bytes()).decode(),
        },
    }


def fingerprint(leaf: trustme.LeafCert) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())).hexdigest()


def served(url: str, ca: Path) -> str:
    """The sha256 of the leaf a new connection to ``url`` gets, verified against ``ca``."""
    host, port = url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


class TlsForward(PortForward):
    """A port-forward spoken to over TLS."""

    def __init__(self, namespace: str, target: str = "") -> None:
        super().__init__(namespace, target=target)
        self.plain = self.url
        self.url = self.url.replace("http://", "https://")


def test_the_seed_api_over_tls_and_a_replaced_secret_reaches_new_connections(namespace: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    first = ca.issue_cert("127.0.0.1", "web-balancer", f"web-balancer.{namespace}.svc")
    apply(namespace, tls_secret(first))
    apply(namespace, sample(balancer={"tls": {"secretName": SECRET}}))
    wait_ready(namespace, 3)
    pods = [p["metadata"]["name"] for p in balancer_pods(namespace) if pod_ready(p)]
    env = {e["name"]: e.get("value") for e in balancer_pods(namespace)[0]["spec"]["containers"][0]["env"]}
    assert env["RINGLB_TLS_CERT"] == "/etc/ringlb/tls/tls.crt", env

    pf = TlsForward(namespace)
    try:
        wait_for(
            lambda: requests.get(pf.url + "/rep", verify=str(ca_file), timeout=10).ok,
            what="the balancer over TLS",
            timeout=60,
        )
        assert served(pf.url, ca_file) == fingerprint(first)
        rep = requests.get(pf.url + "/rep", verify=str(ca_file), timeout=10)
        assert rep.status_code == 200 and rep.json()["message"] == {"N": 3, "replicas": SERVERS}
        home = requests.get(pf.url + "/home", verify=str(ca_file), timeout=10)
        assert home.status_code == 200 and home.json()["message"].startswith("Hello from Server: "), home.text
        unknown = requests.get(pf.url + "/other", verify=str(ca_file), timeout=10)
        assert unknown.status_code == 400 and "'/other' endpoint does not exist" in unknown.json()["message"]
        auth = {"Authorization": f"Bearer {token(namespace)}"}
        added = requests.post(
            pf.url + "/add", json={"n": 1, "hostnames": ["S4"]}, headers=auth, verify=str(ca_file), timeout=90
        )
        assert added.status_code == 200 and added.json()["message"] == {"N": 4, "replicas": SERVERS + ["S4"]}, (
            added.text
        )
        removed = requests.delete(
            pf.url + "/rm", json={"n": 1, "hostnames": ["S4"]}, headers=auth, verify=str(ca_file), timeout=90
        )
        assert removed.status_code == 200 and removed.json()["message"]["replicas"] == SERVERS, removed.text
        # The public port speaks only TLS; a client that does not trust the CA is refused.
        with pytest.raises(requests.ConnectionError):
            requests.get(pf.plain + "/rep", timeout=10)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(pf.url + "/rep", verify=True, timeout=10)
    finally:
        pf.close()
    wait_ready(namespace, 3)

    # A renewal (cert-manager replaces the Secret's data): every balancer pod serves the new
    # leaf to new connections, with no restart.
    second = ca.issue_cert("127.0.0.1", "web-balancer", f"web-balancer.{namespace}.svc")
    assert fingerprint(second) != fingerprint(first)
    apply(namespace, tls_secret(second))
    for pod in pods:
        forward = TlsForward(namespace, target=f"pod/{pod}")
        try:
            wait_for(
                lambda url=forward.url: served(url, ca_file) == fingerprint(second),
                what=f"{pod} to serve the new certificate",
                timeout=ROTATION_TIMEOUT,
                interval=2.0,
            )
            reply = requests.get(forward.url + "/home", verify=str(ca_file), timeout=10)
            assert reply.status_code == 200, reply.text
        finally:
            forward.close()
    after = {p["metadata"]["name"]: p for p in balancer_pods(namespace)}
    assert all(pod in after for pod in pods), (pods, list(after))
    restarts = [cs["restartCount"] for pod in pods for cs in after[pod]["status"]["containerStatuses"]]
    assert restarts == [0] * len(pods), restarts


def test_a_missing_secret_is_named_in_status_and_an_event(namespace: str, tmp_path: Path) -> None:
    """The balancer pods wait in ContainerCreating (the kubelet's FailedMount); Degraded names the
    Secret and what to do, a Warning Event says it once; creating the Secret clears it."""
    apply(namespace, sample(balancer={"tls": {"secretName": SECRET}}))

    def degraded() -> dict[str, Any] | None:
        cond = condition(resource(namespace), "Degraded")
        return (
            cond if cond.get("status") == "True" and f"Secret {namespace}/{SECRET}" in cond.get("message", "") else None
        )

    cond = wait_for(degraded, what="Degraded to name the missing Secret")
    assert cond["reason"] == "FailedMount", cond
    assert "not found" in cond["message"] and "kubectl" in cond["message"] and "create secret tls" in cond["message"], (
        cond
    )

    def warned() -> bool:
        events = kubectl(
            "-n",
            namespace,
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=ReplicaSet,reason=FailedMount",
            "-o",
            "jsonpath={.items[*].message}",
        ).stdout
        return f"Secret {namespace}/{SECRET}" in events

    wait_for(warned, what="a FailedMount Warning Event on the resource", timeout=60)

    ca = trustme.CA()
    apply(namespace, tls_secret(ca.issue_cert("127.0.0.1")))
    wait_ready(namespace, 3)
    cond = condition(resource(namespace), "Degraded")
    assert cond["status"] == "False", cond
