"""Manifests, CRD schema and images, checked without a cluster.

The CRD is generated from the spec model (test_crd.py keeps the committed file equal to it); its
openAPIV3Schema is a JSON-Schema dialect: jsonschema validates the samples and the bad resources
the API server must refuse. ``x-kubernetes-list-type: set`` becomes
``uniqueItems`` here (the API server enforces it itself); the one CEL rule (metadata.name) is
checked by mirroring it, since jsonschema cannot evaluate CEL.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ringlb_operator import children, spec
from ringlb_operator import constants as c
from ringlb_ring import naming

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = ROOT / "manifests"
CRD = yaml.safe_load((MANIFESTS / "crd" / "replicasets.ringlb.io.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SAMPLE = yaml.safe_load((MANIFESTS / "samples" / "web.yaml").read_text())


def to_jsonschema(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if node.get("x-kubernetes-list-type") == "set":
            out["uniqueItems"] = True
        return out
    if isinstance(node, list):
        return [to_jsonschema(v) for v in node]
    return node


VALIDATOR = jsonschema.Draft4Validator(to_jsonschema(SCHEMA))


def cel_name_ok(name: str) -> bool:
    """The CRD's CEL rule, transcribed (the test below keeps the two in step)."""
    return len(name) <= 40 and re.fullmatch(c.RESOURCE_NAME_PATTERN, name) is not None


def errors(obj: dict[str, Any]) -> list[str]:
    return ["/".join(map(str, e.absolute_path)) + ": " + e.message for e in VALIDATOR.iter_errors(obj)]


def test_sample_is_valid() -> None:
    assert SAMPLE["kind"] == "ReplicaSet" and SAMPLE["apiVersion"] == "ringlb.io/v1alpha1"
    assert SAMPLE["metadata"]["name"] == "web" and SAMPLE["spec"]["replicas"] == 3
    assert errors(SAMPLE) == [] and cel_name_ok(SAMPLE["metadata"]["name"])
    assert spec.problems("web", spec.parse(SAMPLE["spec"])) == []


def test_full_spec_is_valid() -> None:
    full = copy.deepcopy(SAMPLE)
    full["spec"] = {
        "replicas": 4,
        "hostnames": ["S5", "S4", "S10", "S11"],
        "template": {
            "image": "ringlb/replica:0.1.0",
            "imagePullPolicy": "Never",
            "env": [{"name": "A", "value": "1"}],
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": 1}},
        },
        "hashing": {
            "strategy": "ring",
            "vnodes": 200,
            "tableSize": 257,
            "seedFormulas": "reissue",
            "boundedLoad": 1.25,
            "keySource": "cookie",
            "keyHeader": "X-Key",
            "keyCookie": "k",
        },
        "balancer": {
            "replicas": 1,
            "image": "ringlb/balancer:0.1.0",
            "serviceType": "NodePort",
            "port": 8080,
            "env": [{"name": "RINGLB_SCALE_TIMEOUT", "value": "30"}],
        },
    }
    assert errors(full) == []


BAD = [
    ({"replicas": naming.MAX_REPLICAS + 1}, "spec/replicas"),
    ({"replicas": -1}, "spec/replicas"),
    ({"replicas": "3"}, "spec/replicas"),
    ({"hostnames": ["S5", "S5"]}, "spec/hostnames"),
    ({"hostnames": ["-bad"]}, "spec/hostnames/0"),
    ({"hostnames": ["x" * 41]}, "spec/hostnames/0"),
    ({"hostnames": [f"S{i}" for i in range(naming.MAX_REPLICAS + 1)]}, "spec/hostnames"),
    ({"hashing": {"strategy": "rendezvous"}}, "spec/hashing/strategy"),
    ({"hashing": {"vnodes": 0}}, "spec/hashing/vnodes"),
    ({"hashing": {"vnodes": 1001}}, "spec/hashing/vnodes"),
    ({"hashing": {"boundedLoad": 0.5}}, "spec/hashing/boundedLoad"),
    ({"hashing": {"boundedLoad": 11}}, "spec/hashing/boundedLoad"),
    ({"hashing": {"keySource": "body"}}, "spec/hashing/keySource"),
    ({"balancer": {"replicas": 0}}, "spec/balancer/replicas"),
    ({"balancer": {"serviceType": "ExternalName"}}, "spec/balancer/serviceType"),
    ({"template": {"env": [{"name": "1 bad"}]}}, "spec/template/env/0/name"),
    ({"template": {"imagePullPolicy": "Sometimes"}}, "spec/template/imagePullPolicy"),
]


@pytest.mark.parametrize("spec_patch,field", BAD, ids=[f for _, f in BAD])
def test_bad_resources_are_rejected_naming_the_field(spec_patch: dict[str, Any], field: str) -> None:
    bad = copy.deepcopy(SAMPLE)
    bad["spec"].update(spec_patch)
    found = errors(bad)
    assert found and any(e.startswith(field) for e in found), found


def test_cel_rule_guards_the_name() -> None:
    [rule] = SCHEMA["x-kubernetes-validations"]
    assert "size() <= 40" in rule["rule"] and c.RESOURCE_NAME_PATTERN in rule["rule"]
    assert c.MAX_RESOURCE_NAME == 40 and "metadata.name" in rule["message"]
    assert not cel_name_ok("Web") and not cel_name_ok("1web") and not cel_name_ok("a" * 41)


def apply_defaults(schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server stores: each absent property with a default gets it, recursively."""
    for key, prop in schema.get("properties", {}).items():
        if key not in obj and "default" in prop:
            obj[key] = copy.deepcopy(prop["default"])
        if isinstance(obj.get(key), dict):
            apply_defaults(prop, obj[key])
    return obj


def lookup(obj: Any, json_path: str) -> Any:
    for key in json_path.split(".")[1:]:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def test_an_empty_spec_is_stored_with_the_models_defaults() -> None:
    """The nested objects default to {} so their fields' defaults apply (kubectl's Strategy column
    reads one), and what the API server stores parses to the operator's defaults."""
    stored = apply_defaults(SCHEMA, {"spec": {}})
    assert {"template", "hashing", "balancer"} <= set(stored["spec"])
    for column in VERSION["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".spec."):
            assert lookup(stored, column["jsonPath"]) is not None, column["name"]
    assert spec.parse(stored["spec"]) == spec.defaults()


def test_every_default_passes_its_own_schema() -> None:
    """The API server refuses a CRD whose defaults fail their own schema (e.g. a "" under minLength 1)."""

    def walk(node: dict[str, Any], where: str) -> None:
        if "default" in node:
            found = list(jsonschema.Draft4Validator(to_jsonschema(node)).iter_errors(node["default"]))
            assert not found, (where, found)
        for key, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(SCHEMA, "")


PYDANTIC_ONLY = {"$ref", "$defs", "const", "title"}  # no refs or const in a CRD; titles are noise


def test_structural_schema() -> None:
    """Every node outside anyOf has a type, as the API server requires of a v1 CRD; nothing of
    pydantic's JSON Schema is left that the API server refuses (refs, null types) or that would
    make it prune a free-form object (additionalProperties: true)."""

    def walk(node: dict[str, Any], where: str) -> None:
        assert not PYDANTIC_ONLY & set(node) and node.get("additionalProperties") is not True, where
        assert node.get("type") != "null" and {"type": "null"} not in node.get("anyOf", []), where
        if "x-kubernetes-int-or-string" not in node and "x-kubernetes-preserve-unknown-fields" not in node:
            assert "type" in node, where
        for key, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{where}{{}}")
        for branch in node.get("anyOf", []):
            assert "type" not in branch or node.get("x-kubernetes-int-or-string"), where

    walk(SCHEMA, "")


def test_crd_shape() -> None:
    assert CRD["metadata"]["name"] == c.CRD_NAME and CRD["spec"]["scope"] == "Namespaced"
    assert CRD["spec"]["names"]["shortNames"] == [c.SHORT_NAME] and CRD["spec"]["group"] == c.GROUP
    assert VERSION["name"] == c.VERSION and VERSION["served"] and VERSION["storage"]
    assert VERSION["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "status" in VERSION["subresources"]
    assert [col["name"] for col in VERSION["additionalPrinterColumns"]] == [
        "Desired",
        "Ready",
        "Strategy",
        "Revision",
        "Age",
    ]
    status = SCHEMA["properties"]["status"]["properties"]
    for key in ("replicas", "readyReplicas", "members", "ringRevision", "selector", "observedGeneration", "conditions"):
        assert key in status


def test_status_the_operator_writes_fits_the_schema() -> None:
    from .conftest import FakeKube, balancer_pod, resource
    from .test_reconcile import FakePusher, converge

    res = resource()
    st = converge(FakeKube(), res, FakePusher(), [balancer_pod("b-1", "10.1.0.1")])
    status_schema = to_jsonschema(SCHEMA["properties"]["status"])
    jsonschema.Draft4Validator(status_schema).validate(st)
    assert set(st) <= set(SCHEMA["properties"]["status"]["properties"])  # nothing pruned


def all_docs() -> list[tuple[Path, Any]]:
    docs = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs.append((path, doc))
    docs.append((ROOT / "kind-config.yaml", yaml.safe_load((ROOT / "kind-config.yaml").read_text())))
    return docs


def test_every_yaml_parses() -> None:
    docs = all_docs()
    assert len(docs) >= 12 and all(isinstance(d, dict) for _, d in docs)


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in all_docs() if d.get("kind") == kind]


def test_namespace_enforces_restricted() -> None:
    [ns] = by_kind("Namespace")
    assert ns["metadata"]["name"] == "ringlb-system"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_operator_deployment() -> None:
    [dep] = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "ringlb-operator"]
    assert dep["metadata"]["namespace"] == "ringlb-system"
    pod = dep["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "ringlb/operator:0.1.0" and container["imagePullPolicy"] == "IfNotPresent"
    assert container["args"][:2] == ["run", "--all-namespaces"] and "ringlb_operator.main" in container["args"]
    assert container["securityContext"] == children.CONTAINER_SECURITY
    assert pod["securityContext"] == children.POD_SECURITY and pod["serviceAccountName"] == "ringlb-operator"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RINGLB_BALANCER_IMAGE"] == c.BALANCER_IMAGE and env["RINGLB_REPLICA_IMAGE"] == c.REPLICA_IMAGE
    assert f"--peering={c.PEERING_NAME}" in container["args"]  # mandatory peering (kopf sets it for --peering)
    assert env["RINGLB_OPERATOR_METRICS_PORT"] == str(c.METRICS_PORT)
    assert {"name": "metrics", "containerPort": c.METRICS_PORT, "protocol": "TCP"} in container["ports"]
    valued = {e["name"]: e for e in container["env"]}
    assert valued["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # The balancer NetworkPolicy admits the operator by these labels.
    assert dep["spec"]["template"]["metadata"]["labels"][c.LABEL_COMPONENT] == c.OPERATOR_COMPONENT
    [pdb] = [d for d in by_kind("PodDisruptionBudget") if d["metadata"]["name"] == "ringlb-operator"]
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


def test_operator_rbac_covers_what_the_code_does_and_no_more() -> None:
    [role] = by_kind("ClusterRole")
    rules = role["rules"]
    from ringlb_operator.handlers import OWNED_KINDS

    for group, _, plural, _ in OWNED_KINDS:  # indexed, watched, applied
        for verb in ("get", "list", "watch", "create", "patch"):
            assert allowed(rules, group, plural, verb), (group, plural, verb)
    for group, resource, verbs in [
        ("", "pods", ["get", "list", "watch", "create", "delete"]),
        ("", "secrets", ["create", "patch"]),
        ("ringlb.io", "replicasets", ["get", "list", "watch", "patch"]),
        ("ringlb.io", "replicasets/status", ["patch"]),
        ("kopf.dev", "clusterkopfpeerings", ["list", "watch", "patch", "create"]),
        ("", "events", ["create"]),
    ]:
        for verb in verbs:
            assert allowed(rules, group, resource, verb), (group, resource, verb)
    # Nodes: read through kopf's index (list, watch) to replace pods on lost nodes; never written.
    for verb in ("list", "watch"):
        assert allowed(rules, "", "nodes", verb), verb
    for verb in ("create", "patch", "update", "delete"):
        assert not allowed(rules, "", "nodes", verb), verb
    # No Secret is ever read cluster-wide: tokens derive from the operator's key.
    for verb in ("get", "list", "watch"):
        assert not allowed(rules, "", "secrets", verb), verb
    [peering_rw] = [r for r in rules if "patch" in r["verbs"] and "clusterkopfpeerings" in r["resources"]]
    assert peering_rw["resourceNames"] == [c.PEERING_NAME]
    [ns_role] = [d for d in by_kind("Role") if d["metadata"]["name"] == "ringlb-operator"]
    assert ns_role["metadata"]["namespace"] == "ringlb-system"
    assert ns_role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [c.OPERATOR_KEY_SECRET], "verbs": ["get"]}
    ]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
    # RBAC refuses to let the operator grant what it does not hold itself.
    for rule in children.role(children.Owner("web", "ns", "u"))["rules"]:
        for verb in rule["verbs"]:
            assert allowed(rules, rule["apiGroups"][0], rule["resources"][0], verb)
    [binding] = by_kind("ClusterRoleBinding")
    [ns_binding] = [d for d in by_kind("RoleBinding") if d["metadata"]["name"] == "ringlb-operator"]
    assert ns_binding["subjects"] == binding["subjects"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ringlb-operator", "namespace": "ringlb-system"}]


def test_peering_crd_matches_kopf_and_is_not_ours_to_delete() -> None:
    [peering] = [d for d in by_kind("CustomResourceDefinition") if d["spec"]["group"] == "kopf.dev"]
    assert peering["spec"]["names"]["plural"] == "clusterkopfpeerings" and peering["spec"]["scope"] == "Cluster"
    # Shared by every kopf operator: outside the default kustomization (which undeploy deletes).
    default = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    assert "kopf" not in default and "monitoring" not in default
    assert "kopf-peering.yaml" not in (MANIFESTS / "crd" / "kustomization.yaml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    undeploy = makefile.split("\nundeploy:")[1].split("\n\n")[0]
    assert "manifests/kopf" not in undeploy and "clusterkopfpeering ringlb" in undeploy


def test_balancer_scope_policy() -> None:
    [policy] = by_kind("ValidatingAdmissionPolicy")
    [binding] = by_kind("ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"] and binding["spec"]["validationActions"] == [
        "Deny"
    ]
    [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == [c.GROUP] and rule["resources"] == [c.PLURAL] and rule["operations"] == ["UPDATE"]
    [match] = policy["spec"]["matchConditions"]
    assert "'-balancer'" in match["expression"]  # the per-resource ServiceAccount, children.balancer_name
    assert children.balancer_name("web") == "web-balancer"
    spec_rule = policy["spec"]["validations"][0]["expression"]
    for field in SCHEMA["properties"]["spec"]["properties"]:
        if field not in ("replicas", "hostnames"):
            assert f"object.spec.{field} == oldObject.spec.{field}" in spec_rule, field


def test_monitoring_is_optional() -> None:
    kinds = {d["kind"] for p, d in all_docs() if "monitoring" in p.parts and d["kind"] != "Kustomization"}
    assert kinds == {"Service", "ServiceMonitor", "PodMonitor"}
    [monitor] = by_kind("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    [pods] = by_kind("PodMonitor")
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == c.ADMIN_PORT_NAME


def test_kind_config() -> None:
    cfg = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    roles = [n["role"] for n in cfg["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 1


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_offline() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60, check=True
    )
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout)]
    assert sorted(kinds) == sorted(
        [
            "Namespace",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "Deployment",
            "PodDisruptionBudget",
        ]
    )
    samples = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS / "samples")], capture_output=True, text=True, timeout=60, check=True
    )
    assert [d["kind"] for d in yaml.safe_load_all(samples.stdout)] == ["ReplicaSet"]


@pytest.mark.parametrize("component", ["balancer", "replica", "operator"])
def test_dockerfiles(component: str) -> None:
    text = (ROOT / f"Dockerfile.{component}").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "FROM ${BASE_IMAGE}" in text
    assert "python3 -m venv /opt/venv" in text and "/usr/local/bin/pip" not in text
    assert re.search(r"^USER \d+:\d+$", text, re.M)
    # Dependencies are a cached layer of their own: installed before any source is copied.
    assert (
        text.index("COPY pyproject.toml constraints.txt ./")
        < text.index("-r requirements.txt")
        < text.index("COPY ring ring")
    )
    assert "--no-deps" in text[text.index("COPY ring ring") :]
    assert "latest" not in text
    if component != "operator":
        assert "gunicorn" in text and "5000" in text


def test_images_script_refuses_latest() -> None:
    script = ROOT / "scripts" / "images.sh"
    run = subprocess.run([str(script), "a:latest", "b:1", "c:1"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "never latest" in run.stderr
    assert subprocess.run([str(script)], capture_output=True, timeout=30).returncode == 2
