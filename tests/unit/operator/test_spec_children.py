"""Spec parsing, checks the schema cannot make, and the pure builders of child objects."""

from __future__ import annotations

import copy

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
    assert s.replica_template.image == c.REPLICA_IMAGE and s.balancer.template.image == c.BALANCER_IMAGE
    assert spec.problems("web", s) == []


def test_hashing_defaults_are_the_balancers() -> None:
    from ringlb_ring.hashing import HashingConfig

    assert spec.Hashing().config() == HashingConfig()


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"replicas": 57}, "spec.replicas"),
        ({"hashing": {"strategy": "x"}}, "spec.hashing.strategy"),
        ({"balancer": {"replicas": 0}}, "spec.balancer.replicas"),
    ],
)
def test_parse_refuses_what_the_schema_refuses(raw: dict, field: str) -> None:
    with pytest.raises(spec.SpecError, match=field.replace(".", r"\.")):
        spec.parse(raw)


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
    s = spec.parse({"balancer": {"replicas": 3, "serviceType": "NodePort", "drainSeconds": 7}})
    objects = {(o["kind"], o["metadata"]["name"]): o for o in children.applied_objects(OWNER, s)}
    role, binding = objects[("Role", "web-balancer")], objects[("RoleBinding", "web-balancer")]
    deploy, svc = objects[("Deployment", "web-balancer")], objects[("Service", "web-balancer")]
    assert role["rules"] == [
        {"apiGroups": ["ringlb.io"], "resources": ["replicasets"], "resourceNames": ["web"], "verbs": ["get", "patch"]}
    ]
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "web-balancer", "namespace": "ns"}
    pod = deploy["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RINGLB_SCALER"]["value"] == "kubernetes" and env["RINGLB_RESOURCE"]["value"] == "ns/web"
    assert env["RINGLB_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "web-balancer-token", "key": "token"}
    assert env["RINGLB_MEMBERSHIP_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "web-membership-token",
        "key": "token",
    }
    assert env["RINGLB_ADMIN_BIND"]["value"] == "0.0.0.0:5001" and env["RINGLB_DRAIN_SECONDS"]["value"] == "7"
    assert env["RINGLB_SNAPSHOT"]["value"] == "/etc/ringlb/membership/membership.json"
    assert {"name": "admin", "containerPort": 5001, "protocol": "TCP"} in container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert {"name": "membership", "mountPath": "/etc/ringlb/membership", "readOnly": True} in container["volumeMounts"]
    assert {"name": "membership", "configMap": {"name": "web-membership", "optional": True}} in pod["volumes"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(c.PRESTOP_SECONDS)]
    assert pod["terminationGracePeriodSeconds"] > c.PRESTOP_SECONDS + 7 + c.BALANCER_GRACEFUL_SECONDS
    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["labelSelector"][
        "matchLabels"
    ] == children.balancer_selector("web")
    assert pod["serviceAccountName"] == "web-balancer" and deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["selector"]["matchLabels"] == children.balancer_selector("web")
    assert svc["spec"]["type"] == "NodePort" and [p["port"] for p in svc["spec"]["ports"]] == [5000]  # no admin port
    for obj in objects.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        assert obj["metadata"]["labels"][c.LABEL_MANAGED_BY] == c.MANAGER


def test_network_policy_admits_only_the_operator_to_the_admin_port() -> None:
    policy = children.network_policy(OWNER)["spec"]
    public, admin = policy["ingress"]
    assert "from" not in public and public["ports"] == [{"port": 5000, "protocol": "TCP"}]
    assert admin["ports"] == [{"port": 5001, "protocol": "TCP"}]
    operator, scraper = admin["from"]
    assert operator["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": c.OPERATOR_NAMESPACE}
    assert operator["podSelector"]["matchLabels"][c.LABEL_COMPONENT] == "operator"
    assert scraper == {"namespaceSelector": {"matchLabels": {"ringlb.io/scrape": "true"}}}


def test_pdbs_cover_balancer_and_replica_pods() -> None:
    pdbs = [o for o in children.applied_objects(OWNER, spec.parse({})) if o["kind"] == "PodDisruptionBudget"]
    assert {p["metadata"]["name"]: p["spec"]["selector"]["matchLabels"] for p in pdbs} == {
        "web-balancer": children.balancer_selector("web"),
        "web-replicas": children.replica_selector("web"),
    }
    assert all(p["spec"]["maxUnavailable"] == 1 for p in pdbs)


def test_template_fields_reach_the_pods() -> None:
    template = {
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {}},
        "imagePullSecrets": [{"name": "regcred"}],
        "priorityClassName": "high",
        "labels": {"team": "a", c.LABEL_COMPONENT: "spoof"},
        "annotations": {"note": "x"},
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
    }
    s = spec.parse({"template": template, "balancer": {**template, "serviceAnnotations": {"lb": "internal"}}})
    pod = children.replica_pod(OWNER, s, "Server 1")
    deploy = children.deployment(OWNER, s)
    svc = children.service(OWNER, s)
    for meta, podspec in (
        (pod["metadata"], pod["spec"]),
        (deploy["spec"]["template"]["metadata"], deploy["spec"]["template"]["spec"]),
    ):
        assert podspec["nodeSelector"] == {"disk": "ssd"} and podspec["tolerations"][0]["key"] == "dedicated"
        assert podspec["affinity"] == {"nodeAffinity": {}} and podspec["imagePullSecrets"] == [{"name": "regcred"}]
        assert podspec["priorityClassName"] == "high"
        assert podspec["containers"][0]["resources"]["limits"]["cpu"] == "500m"
        assert meta["labels"]["team"] == "a" and meta["labels"][c.LABEL_COMPONENT] != "spoof"
        assert meta["annotations"]["note"] == "x"
    assert svc["metadata"]["annotations"] == {"lb": "internal"}
    plain = children.replica_template_hash(OWNER, spec.parse({}), "Server 1")
    assert children.replica_template_hash(OWNER, s, "Server 1") != plain


def test_differs_ignores_server_defaults_but_not_lost_fields() -> None:
    want = children.service(OWNER, spec.parse({}))
    live = copy.deepcopy(want)
    live["spec"]["clusterIP"] = "10.96.0.9"
    live["spec"]["ports"][0]["targetPort"] = "http"
    live["metadata"]["resourceVersion"] = "7"
    assert not children.differs(want, live)
    live["spec"]["selector"] = {"x": "y"}
    assert children.differs(want, live)


def test_token_secret_and_selector() -> None:
    secret = children.token_secret(OWNER, children.membership_secret_name("web"), "t0k")
    assert secret["data"] == {"token": "dDBr"} and secret["metadata"]["name"] == "web-membership-token"
    assert children.selector_string(children.replica_selector("web")) == (
        "app.kubernetes.io/component=replica,ringlb.io/resource=web"
    )


def test_a_field_dropped_from_the_spec_is_applied_away() -> None:
    """``differs`` sees only what the operator sets; the applied-hash annotation makes a field it
    stopped setting (a balancer annotation removed from the spec) a difference, and the apply
    that follows is what removes it."""
    from ringlb_operator.kube import ensure

    from .conftest import FakeKube

    kube = FakeKube()
    with_note = spec.parse({"balancer": {"annotations": {"note": "x"}}})
    ensure(kube, children.deployment(OWNER, with_note), OWNER.uid, live=None)
    live = kube.get("Deployment", OWNER.namespace, f"{OWNER.name}-balancer")
    assert ensure(kube, children.deployment(OWNER, with_note), OWNER.uid, live=live).changed is False
    without = children.deployment(OWNER, spec.parse({}))
    assert not children.differs(without, live)  # the removal alone is invisible to differs
    assert ensure(kube, without, OWNER.uid, live=live).changed is True


def test_replica_pods_spread_over_nodes_unless_the_template_has_an_affinity() -> None:
    plain = children.replica_pod(OWNER, spec.parse({}), "Server 1")["spec"]
    assert plain["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": children.replica_selector(OWNER.name)},
        }
    ]
    placed = spec.parse({"template": {"affinity": {"nodeAffinity": {}}}})
    assert "topologySpreadConstraints" not in children.replica_pod(OWNER, placed, "Server 1")["spec"]
