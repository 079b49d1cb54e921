"""Pure builders of every object a resource owns: each returns a plain dict, no I/O.

Names are deterministic (``<resource>-<identity>``, ``<resource>-balancer``...), so a restarted
operator finds what it created before; a create that meets a 409 is checked for its owner.
Every child carries a controller owner reference, so deleting the resource garbage-collects it.
Objects other than pods are written with server-side apply: each builder returns exactly the
fields the operator owns, and ``differs`` says whether a live object still holds them.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from ringlb_operator import constants as c
from ringlb_operator.spec import PodTemplate, Spec
from ringlb_ring.naming import dns_name

K8sObject = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The resource being reconciled, as much of it as its children need."""

    name: str
    namespace: str
    uid: str

    def body(self) -> kopf.Body:
        """What ``kopf.append_owner_reference`` reads an owner reference from."""
        return kopf.Body(
            {"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": self.name, "uid": self.uid}}
        )


# --- names ---------------------------------------------------------------------------------
def pod_name(owner: str, identity: str) -> str:
    return f"{owner}-{dns_name(identity)}"


def balancer_name(owner: str) -> str:
    return f"{owner}-balancer"


def secret_name(owner: str) -> str:
    """The ``/add``/``/rm`` token (users who may scale read it)."""
    return f"{owner}-balancer-token"


def membership_secret_name(owner: str) -> str:
    """The ``PUT /membership`` token: only the operator and the balancer pods need it."""
    return f"{owner}-membership-token"


def configmap_name(owner: str) -> str:
    """The membership snapshot a balancer pod loads at start (``RINGLB_SNAPSHOT``)."""
    return f"{owner}-membership"


def replicas_pdb_name(owner: str) -> str:
    return f"{owner}-replicas"


def replica_selector(owner: str) -> dict[str, str]:
    return {c.LABEL_RESOURCE: owner, c.LABEL_COMPONENT: c.COMPONENT_REPLICA}


def balancer_selector(owner: str) -> dict[str, str]:
    return {c.LABEL_RESOURCE: owner, c.LABEL_COMPONENT: c.COMPONENT_BALANCER}


def selector_string(labels: Mapping[str, str]) -> str:
    """``status.selector`` for the scale subresource (what ``kubectl scale``/HPA read)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def spread_over_nodes(selector: Mapping[str, str]) -> list[dict[str, Any]]:
    """A soft spread by hostname: a constraint the scheduler can always meet, so a cluster with
    fewer nodes than pods still runs them all."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(selector)},
        }
    ]


def labels(owner: str, component: str) -> dict[str, str]:
    return {
        c.LABEL_NAME: c.APP_NAME,
        c.LABEL_INSTANCE: owner,
        c.LABEL_COMPONENT: component,
        c.LABEL_MANAGED_BY: c.MANAGER,
        c.LABEL_RESOURCE: owner,
    }


def stamped(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with its own digest in an annotation. ``differs`` sees only the fields ``obj``
    sets, so a field the operator stopped setting (an annotation dropped from the spec) shows
    only as a new digest; the apply that follows removes the field, as server-side apply drops
    what its manager no longer sends."""
    out = copy.deepcopy(dict(obj))
    out["metadata"].setdefault("annotations", {})[c.ANNOTATION_APPLIED_HASH] = digest(obj)
    return out


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value: what a child was built from."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _adopt(obj: K8sObject, owner: Owner) -> K8sObject:
    obj["metadata"]["namespace"] = owner.namespace
    kopf.append_owner_reference(obj, owner=owner.body())
    return obj


# --- security: the Pod Security "restricted" profile, as the issue asks -----------------------
POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
TMP_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}

DEFAULT_REPLICA_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
DEFAULT_BALANCER_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}


def _env(pairs: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    return [{"name": name, "value": value} for name, value in pairs]


def _http_probe(
    path: str, period: int, timeout: int, failures: int, delay: int = 0, port: str = "http"
) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "initialDelaySeconds": delay,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _resources(template: PodTemplate, default: Mapping[str, Any]) -> dict[str, Any]:
    return template.resources.as_dict() or copy.deepcopy(dict(default))


def _scheduling(template: PodTemplate) -> dict[str, Any]:
    """The template's scheduling fields, only those set (so defaults change no hash)."""
    out: dict[str, Any] = {}
    if template.node_selector:
        out["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        out["tolerations"] = [dict(t) for t in template.tolerations]
    if template.affinity:
        out["affinity"] = copy.deepcopy(dict(template.affinity))
    if template.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": r.name} for r in template.image_pull_secrets]
    if template.priority_class_name:
        out["priorityClassName"] = template.priority_class_name
    return out


def _tolerates(toleration: Mapping[str, Any], key: str) -> bool:
    """Whether a toleration matches the NoExecute taint ``key`` (value-less, as the node
    lifecycle controller sets it): same key or an empty key with Exists, effect NoExecute or any."""
    if (toleration.get("effect") or "") not in ("", "NoExecute"):
        return False
    operator = toleration.get("operator") or "Equal"
    if not toleration.get("key"):
        return operator == "Exists"
    return toleration["key"] == key and (operator == "Exists" or not toleration.get("value"))


def tolerated_seconds(tolerations: Any, key: str) -> tuple[bool, float | None]:
    """(covered, seconds): whether the user's ``tolerations`` name the NoExecute taint ``key``, and
    for how long, as the taint-eviction controller reads them: the smallest tolerationSeconds of
    the matching ones, None (forever) when none of them has one."""
    matching = [t for t in tolerations if _tolerates(t, key)]
    limits = [float(t["tolerationSeconds"]) for t in matching if t.get("tolerationSeconds") is not None]
    return bool(matching), (max(0.0, min(limits)) if limits else None)


def node_loss_tolerations(template: PodTemplate) -> list[dict[str, Any]]:
    """Tolerations of the node-loss taints for ``unreachableNodeSeconds`` (Kubernetes' admission
    default is 300 s), for each key the user's tolerations do not already cover: theirs win."""
    return [
        {
            "key": key,
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": template.unreachable_node_seconds,
        }
        for key in c.NODE_LOSS_TAINTS
        if not tolerated_seconds(template.tolerations, key)[0]
    ]


def _with_node_loss_tolerations(pod_spec: dict[str, Any], template: PodTemplate) -> dict[str, Any]:
    tolerations = list(pod_spec.get("tolerations") or []) + node_loss_tolerations(template)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return pod_spec


def _pod_labels(template: PodTemplate, ours: Mapping[str, str]) -> dict[str, str]:
    return {**template.labels, **ours}  # ours last: selectors depend on them


# --- replica pods ------------------------------------------------------------------------------
def replica_pod(owner: Owner, spec: Spec, identity: str) -> K8sObject:
    """The pod of one ring identity. Pods are immutable in practice, so the template hash
    annotation says what it was built from; a pod whose hash differs is replaced (rolling)."""
    template = spec.replica_template
    container = {
        "name": "replica",
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "ports": [{"name": "http", "containerPort": c.PORT, "protocol": "TCP"}],
        # SERVER_ID last: with duplicate names Kubernetes keeps the last, so a user's env cannot
        # override the identity.
        "env": template.env_pairs() + [{"name": "SERVER_ID", "value": identity}],
        "livenessProbe": _http_probe("/heartbeat", period=5, timeout=2, failures=3, delay=2),
        "readinessProbe": _http_probe("/heartbeat", period=2, timeout=1, failures=2),
        "resources": _resources(template, DEFAULT_REPLICA_RESOURCES),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": [dict(TMP_MOUNT)],
    }
    pod_spec: dict[str, Any] = {
        "hostname": dns_name(identity)[:63],
        "automountServiceAccountToken": False,  # replicas never talk to the API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        "securityContext": copy.deepcopy(POD_SECURITY),
        "containers": [container],
        "volumes": [copy.deepcopy(TMP_VOLUME)],
        **_scheduling(template),
    }
    extra = {"labels": dict(template.labels), "annotations": dict(template.annotations)}
    built_from: list[Any] = [c.BUILDER_VERSION, pod_spec] + ([extra] if template.labels or template.annotations else [])
    template_hash = digest(built_from)
    # The node-loss tolerations are added after hashing: an operator upgrade that introduces them,
    # or a change of unreachableNodeSeconds, does not restart running pods (the operator's own
    # force-delete follows the current value for every pod, whatever its tolerations say).
    _with_node_loss_tolerations(pod_spec, template)
    if not template.affinity:
        # Spread over nodes, softly (as the balancer pods): a lost node then takes as few
        # identities as the nodes allow, not all of them. After hashing too, for the same reason.
        pod_spec["topologySpreadConstraints"] = spread_over_nodes(replica_selector(owner.name))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(owner.name, identity),
            "labels": _pod_labels(
                template, {**labels(owner.name, c.COMPONENT_REPLICA), c.LABEL_IDENTITY: dns_name(identity)[:63]}
            ),
            "annotations": {
                **template.annotations,
                c.ANNOTATION_IDENTITY: identity,
                c.ANNOTATION_TEMPLATE_HASH: template_hash,
            },
        },
        "spec": pod_spec,
    }
    return _adopt(pod, owner)


def replica_template_hash(owner: Owner, spec: Spec, identity: str) -> str:
    return replica_pod(owner, spec, identity)["metadata"]["annotations"][c.ANNOTATION_TEMPLATE_HASH]


# --- balancer ------------------------------------------------------------------------------------
def token_secret(owner: Owner, name: str, token: str) -> K8sObject:
    """A token Secret. Its content is derived from the operator's key and the resource's uid,
    so applying it again is a no-op and the operator never has to read Secrets back."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "labels": labels(owner.name, c.COMPONENT_BALANCER)},
        "data": {c.SECRET_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }
    return _adopt(secret, owner)


def membership_configmap(owner: Owner, document: Mapping[str, Any]) -> K8sObject:
    """The membership document (with its revision) that a starting balancer pod loads."""
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)},
        "data": {c.MEMBERSHIP_KEY: json.dumps(dict(document), sort_keys=True, separators=(",", ":"))},
    }
    return _adopt(cm, owner)


def snapshot_revision(cm: Mapping[str, Any] | None) -> int:
    """The revision a membership ConfigMap holds (0 when absent or unreadable)."""
    try:
        return int(json.loads(((cm or {}).get("data") or {})[c.MEMBERSHIP_KEY])["revision"])
    except (KeyError, TypeError, ValueError):
        return 0


def service_account(owner: Owner) -> K8sObject:
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": balancer_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)},
    }
    return _adopt(sa, owner)


def role(owner: Owner) -> K8sObject:
    """The balancer may read and patch its own resource and nothing else (``/add``, ``/rm``).

    RBAC cannot narrow a patch to fields; the ValidatingAdmissionPolicy in
    ``manifests/policy/`` refuses any change by this ServiceAccount beyond ``spec.replicas``
    and ``spec.hostnames``.
    """
    rules = [
        {
            "apiGroups": [c.GROUP],
            "resources": [c.PLURAL],
            "resourceNames": [owner.name],
            "verbs": ["get", "patch"],
        }
    ]
    obj = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": balancer_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)},
        "rules": rules,
    }
    return _adopt(obj, owner)


def role_binding(owner: Owner) -> K8sObject:
    obj = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": balancer_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": balancer_name(owner.name)},
        "subjects": [{"kind": "ServiceAccount", "name": balancer_name(owner.name), "namespace": owner.namespace}],
    }
    return _adopt(obj, owner)


def _secret_env(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": c.SECRET_TOKEN_KEY}}}


def termination_grace(drain_seconds: int) -> int:
    """Above preStop + drain + graceful shutdown, with a margin, so SIGKILL never cuts a request."""
    return c.PRESTOP_SECONDS + drain_seconds + c.BALANCER_GRACEFUL_SECONDS + 5


def deployment(owner: Owner, spec: Spec) -> K8sObject:
    """The balancer: N pods behind one Service; each is Ready once it holds a membership
    (pushed, or loaded from the snapshot ConfigMap at start)."""
    b = spec.balancer
    template = b.template
    selector = balancer_selector(owner.name)
    pod_labels = _pod_labels(template, labels(owner.name, c.COMPONENT_BALANCER))
    container: K8sObject = {
        "name": "balancer",
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "ports": [
            {"name": "http", "containerPort": c.PORT, "protocol": "TCP"},
            {"name": c.ADMIN_PORT_NAME, "containerPort": c.ADMIN_PORT, "protocol": "TCP"},
        ],
        # User env first: ours come last and win (Kubernetes keeps the last of duplicate names).
        "env": [
            *template.env_pairs(),
            _secret_env("RINGLB_TOKEN", secret_name(owner.name)),
            _secret_env("RINGLB_MEMBERSHIP_TOKEN", membership_secret_name(owner.name)),
            {"name": "RINGLB_ADMIN_BIND", "value": f"0.0.0.0:{c.ADMIN_PORT}"},
            {"name": "RINGLB_SNAPSHOT", "value": f"{c.SNAPSHOT_DIR}/{c.MEMBERSHIP_KEY}"},
            {"name": "RINGLB_DRAIN_SECONDS", "value": str(b.drain_seconds)},
            {"name": "RINGLB_SCALER", "value": "kubernetes"},
            {"name": "RINGLB_RESOURCE", "value": f"{owner.namespace}/{owner.name}"},
            {"name": "RINGLB_STATE_DIR", "value": "/tmp/ringlb-state"},
        ],
        "readinessProbe": _http_probe("/readyz", period=2, timeout=1, failures=2, port=c.ADMIN_PORT_NAME),
        "livenessProbe": _http_probe("/healthz", period=10, timeout=2, failures=3, delay=5, port=c.ADMIN_PORT_NAME),
        # Endpoints and kube-proxy drop a terminating pod asynchronously: keep serving a moment
        # before SIGTERM; the balancer then drains (RINGLB_DRAIN_SECONDS) and finishes requests.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(c.PRESTOP_SECONDS)]}}},
        # A balancer that refuses its settings (a TLS Secret that does not load...) exits with one
        # line saying why: kept in the pod's status, the operator's Degraded condition quotes it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": _resources(template, DEFAULT_BALANCER_RESOURCES),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": [dict(TMP_MOUNT), {"name": "membership", "mountPath": c.SNAPSHOT_DIR, "readOnly": True}],
    }
    if b.tls is not None:
        # The directory, not subPath files: the kubelet swaps a Secret volume's ..data link on an
        # update, which subPath mounts never see; the balancer polls and reloads (no restart).
        container["env"] += [
            {"name": "RINGLB_TLS_CERT", "value": f"{c.TLS_DIR}/{c.TLS_CERT_KEY}"},
            {"name": "RINGLB_TLS_KEY", "value": f"{c.TLS_DIR}/{c.TLS_KEY_KEY}"},
        ]
        container["volumeMounts"].append({"name": "tls", "mountPath": c.TLS_DIR, "readOnly": True})
    pod_spec: dict[str, Any] = {
        "serviceAccountName": balancer_name(owner.name),
        "automountServiceAccountToken": True,  # the kubernetes scaler patches the resource
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace(b.drain_seconds),
        "securityContext": copy.deepcopy(POD_SECURITY),
        "topologySpreadConstraints": spread_over_nodes(selector),
        "containers": [container],
        "volumes": [
            copy.deepcopy(TMP_VOLUME),
            # optional: the first pod may start before the operator wrote the first revision.
            {"name": "membership", "configMap": {"name": configmap_name(owner.name), "optional": True}},
        ],
        **_scheduling(template),
    }
    if b.tls is not None:
        pod_spec["volumes"].append({"name": "tls", "secret": {"secretName": b.tls.secret_name}})
    # Short node-loss tolerations: a balancer pod on a lost node is evicted after
    # unreachableNodeSeconds (not Kubernetes' 300 s) and the ReplicaSet starts its replacement; a
    # Terminating pod does not block that (it has no fixed name), so nothing more is needed.
    _with_node_loss_tolerations(pod_spec, template)
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": balancer_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)},
        "spec": {
            "replicas": b.replicas,
            "selector": {"matchLabels": selector},
            # Never below the wanted count: a new pod is Ready only once it holds the membership.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    **({"annotations": dict(template.annotations)} if template.annotations else {}),
                },
                "spec": pod_spec,
            },
        },
    }
    return _adopt(obj, owner)


def service(owner: Owner, spec: Spec) -> K8sObject:
    """The public Service: port 5000 only (the admin port is reached by pod IP)."""
    metadata: dict[str, Any] = {"name": balancer_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)}
    if spec.balancer.service_annotations:
        metadata["annotations"] = dict(spec.balancer.service_annotations)
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": spec.balancer.service_type,
            "selector": balancer_selector(owner.name),
            "ports": [{"name": "http", "port": spec.balancer.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return _adopt(obj, owner)


def network_policy(owner: Owner) -> K8sObject:
    """Balancer pods: anyone may reach the public port; the admin port only the operator's pods
    (and, for /metrics, pods in namespaces labelled ``ringlb.io/scrape=true``)."""
    operator_peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": c.OPERATOR_NAMESPACE}},
        "podSelector": {"matchLabels": {c.LABEL_NAME: c.APP_NAME, c.LABEL_COMPONENT: c.OPERATOR_COMPONENT}},
    }
    scraper_peer = {"namespaceSelector": {"matchLabels": {c.SCRAPE_NAMESPACE_LABEL: "true"}}}
    obj = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": balancer_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)},
        "spec": {
            "podSelector": {"matchLabels": balancer_selector(owner.name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": c.PORT, "protocol": "TCP"}]},
                {"from": [operator_peer, scraper_peer], "ports": [{"port": c.ADMIN_PORT, "protocol": "TCP"}]},
            ],
        },
    }
    return _adopt(obj, owner)


def pdb(owner: Owner, name: str, component: str, selector: Mapping[str, str]) -> K8sObject:
    """At most one pod of ``selector`` evicted at a time (drains, node upgrades)."""
    obj = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": labels(owner.name, component)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(selector)}},
    }
    return _adopt(obj, owner)


def applied_objects(owner: Owner, spec: Spec) -> list[K8sObject]:
    """Everything a resource owns but its pods, Secrets and ConfigMap, in the order they must exist."""
    return [
        service_account(owner),
        role(owner),
        role_binding(owner),
        deployment(owner, spec),
        service(owner, spec),
        network_policy(owner),
        pdb(owner, balancer_name(owner.name), c.COMPONENT_BALANCER, balancer_selector(owner.name)),
        pdb(owner, replicas_pdb_name(owner.name), c.COMPONENT_REPLICA, replica_selector(owner.name)),
    ]


def differs(desired: Any, live: Any) -> bool:
    """Whether ``live`` lost any field ``desired`` sets (what server-side apply would restore).

    Fields the API server adds (defaults, status, other managers' fields) are ignored; lists
    must have the same length, element by element.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return True
        return any(differs(v, live.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return True
        return any(differs(d, v) for d, v in zip(desired, live))
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is not live
    return desired != live and str(desired) != str(live)
