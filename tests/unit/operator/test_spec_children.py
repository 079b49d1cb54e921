"""Spec parsing, checks the schema cannot make, and the pure builders of child objects."""

from __future__ import annotations

import pytest

from ringlb_operator import children, spec
from ringlb_operator import constants as c

from .conftest import OWNER


def test_defaults_match_the_seed() -> None:
    s = spec.parse({})
    assert s.replicas == 3
    assert s.identities() == ["Server 1", "Server 2", "Server 3"]
    assert s.hashing.strategy == "maglev" and s.hashing.vnodes == 160
    assert s.balancer.replicas == 2 and s.balancer.service_type == "ClusterIP"
    assert s.template.image == c.REPLICA_IMAGE and s.balancer.template.image == c.BALANCER_IMAGE
    assert spec.problems("web", s) == []


def test_hostnames_first_then_generated() -> None:
    s = spec.parse({"replicas": 4, "hostnames": ["S5", "S4"]})
    assert s.identities() == ["S5", "S4", "Server 1", "Server 2"]


@pytest.mark.parametrize(
    "name,raw,field",
    [
        ("web", {"hostnames": ["S5", "s5"]}, "spec.hostnames"),
        ("web", {"hostnames": ["a b", "a-b"]}, "spec.hostnames"),
        ("web", {"hashing": {"tableSize": 65536}}, "spec.hashing"),
        ("web", {"hashing": {"boundedLoad": 0.5}}, "spec.hashing"),
        ("web", {"replicas": 57}, "spec.replicas"),
        ("Web", {}, "metadata.name"),
        ("a" * 41, {}, "metadata.name"),
        ("1web", {}, "metadata.name"),
    ],
)
def test_problems_name_the_field(name: str, raw: dict, field: str) -> None:
    found = spec.problems(name, spec.parse(raw))
    assert found and found[0].startswith(field), found


def test_replica_pod_is_restricted_and_identified() -> None:
    s = spec.parse({"template": {"env": [{"name": "SERVER_ID", "value": "spoof"}, {"name": "A", "value": "1"}]}})
    pod = children.replica_pod(OWNER, s, "Server 1")
    meta, podspec = pod["metadata"], pod["spec"]
    assert meta["name"] == "web-server-1" and meta["namespace"] == "ns"
    assert meta["annotations"][c.ANNOTATION_IDENTITY] == "Server 1"
    assert meta["labels"][c.LABEL_RESOURCE] == "web" and meta["labels"][c.LABEL_IDENTITY] == "server-1"
    ref = meta["ownerReferences"][0]
    assert ref["uid"] == OWNER.uid and ref["controller"] is True and ref["kind"] == "ReplicaSet"
    container = podspec["containers"][0]
    assert container["env"][-1] == {"name": "SERVER_ID", "value": "Server 1"}  # last wins
    assert container["livenessProbe"]["httpGet"]["path"] == "/heartbeat"
    assert container["readinessProbe"]["httpGet"]["path"] == "/heartbeat"
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert podspec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["imagePullPolicy"] == "IfNotPresent" and container["resources"]["requests"]


def test_template_hash_changes_with_the_template_only() -> None:
    a = children.replica_template_hash(OWNER, spec.parse({}), "Server 1")
    assert a == children.replica_template_hash(OWNER, spec.parse({"replicas": 5}), "Server 1")
    assert a != children.replica_template_hash(OWNER, spec.parse({"template": {"image": "x:1"}}), "Server 1")


def test_balancer_objects() -> None:
    s = spec.parse({"balancer": {"replicas": 3, "serviceType": "NodePort"}})
    sa, role, binding, deploy, svc = children.balancer_objects(OWNER, s)
    assert role["rules"] == [
        {"apiGroups": ["ringlb.io"], "resources": ["replicasets"], "resourceNames": ["web"], "verbs": ["get", "patch"]}
    ]
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "web-balancer", "namespace": "ns"}
    pod = deploy["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["RINGLB_SCALER"]["value"] == "kubernetes" and env["RINGLB_RESOURCE"]["value"] == "ns/web"
    assert env["RINGLB_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "web-balancer-token", "key": "token"}
    assert env["RINGLB_MEMBERSHIP_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "web-balancer-token"
    assert env["RINGLB_STATE_DIR"]["value"].startswith("/tmp/")
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["serviceAccountName"] == "web-balancer" and deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["selector"]["matchLabels"] == children.balancer_selector("web")
    assert svc["spec"]["type"] == "NodePort" and svc["spec"]["ports"][0]["port"] == 5000
    for obj in (sa, role, binding, deploy, svc):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        assert c.ANNOTATION_SPEC_HASH in obj["metadata"]["annotations"]


def test_patch_for_replaces_what_we_own() -> None:
    svc = children.service(OWNER, spec.parse({}))
    patch = children.patch_for(svc)
    assert patch["spec"] == svc["spec"] and "ownerReferences" not in patch["metadata"]
    binding = children.patch_for(children.role_binding(OWNER))
    assert "roleRef" not in binding and binding["subjects"]


def test_token_secret_and_selector() -> None:
    secret = children.token_secret(OWNER, "t0k")
    assert secret["stringData"] == {"token": "t0k"} and secret["metadata"]["name"] == "web-balancer-token"
    assert children.selector_string(children.replica_selector("web")) == (
        "app.kubernetes.io/component=replica,ringlb.io/resource=web"
    )
