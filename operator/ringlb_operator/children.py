"""Pure builders of every object a resource owns: each returns a plain dict, no I/O.

Names are deterministic (``<resource>-<identity>``, ``<resource>-balancer``...), so a restarted
operator finds what it created before and a second create of the same object is a harmless 409.
Every child carries a controller owner reference, so deleting the resource garbage-collects it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from ringlb_balancer.naming import dns_name

from ringlb_operator import constants as c
from ringlb_operator.spec import PodTemplate, Spec

K8sObject = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The resource being reconciled, as much of it as its children need."""

    name: str
    namespace: str
    uid: str

    def body(self) -> dict[str, Any]:
        return {"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": self.name, "uid": self.uid}}


# --- names ---------------------------------------------------------------------------------
def pod_name(owner: str, identity: str) -> str:
    return f"{owner}-{dns_name(identity)}"


def balancer_name(owner: str) -> str:
    return f"{owner}-balancer"


def secret_name(owner: str) -> str:
    return f"{owner}-balancer-token"


def replica_selector(owner: str) -> dict[str, str]:
    return {c.LABEL_RESOURCE: owner, c.LABEL_COMPONENT: c.COMPONENT_REPLICA}


def balancer_selector(owner: str) -> dict[str, str]:
    return {c.LABEL_RESOURCE: owner, c.LABEL_COMPONENT: c.COMPONENT_BALANCER}


def selector_string(labels: Mapping[str, str]) -> str:
    """``status.selector`` for the scale subresource (what ``kubectl scale``/HPA read)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def labels(owner: str, component: str) -> dict[str, str]:
    return {
        c.LABEL_NAME: c.APP_NAME,
        c.LABEL_INSTANCE: owner,
        c.LABEL_COMPONENT: component,
        c.LABEL_MANAGED_BY: c.MANAGER,
        c.LABEL_RESOURCE: owner,
    }


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


def _http_probe(path: str, period: int, timeout: int, failures: int, delay: int = 0) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "initialDelaySeconds": delay,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _resources(template: PodTemplate, default: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(template.resources) or dict(default))


# --- replica pods ------------------------------------------------------------------------------
def replica_pod(owner: Owner, spec: Spec, identity: str) -> K8sObject:
    """The pod of one ring identity. Pods are immutable in practice, so the template hash
    annotation says what it was built from; a pod whose hash differs is replaced (rolling)."""
    template = spec.template
    container = {
        "name": "replica",
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "ports": [{"name": "http", "containerPort": c.PORT, "protocol": "TCP"}],
        # SERVER_ID last: with duplicate names Kubernetes keeps the last, so a user's env cannot
        # override the identity.
        "env": _env(template.env) + [{"name": "SERVER_ID", "value": identity}],
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
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(owner.name, identity),
            "labels": {
                **labels(owner.name, c.COMPONENT_REPLICA),
                c.LABEL_IDENTITY: dns_name(identity)[:63],
            },
            "annotations": {
                c.ANNOTATION_IDENTITY: identity,
                c.ANNOTATION_TEMPLATE_HASH: digest([c.BUILDER_VERSION, pod_spec]),
            },
        },
        "spec": pod_spec,
    }
    return _adopt(pod, owner)


def replica_template_hash(owner: Owner, spec: Spec, identity: str) -> str:
    return replica_pod(owner, spec, identity)["metadata"]["annotations"][c.ANNOTATION_TEMPLATE_HASH]


# --- balancer ------------------------------------------------------------------------------------
def token_secret(owner: Owner, token: str) -> K8sObject:
    """Created once with a random token and never rewritten: the operator reads it back."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": secret_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)},
        "stringData": {c.SECRET_TOKEN_KEY: token},
    }
    return _adopt(secret, owner)


def service_account(owner: Owner) -> K8sObject:
    sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": balancer_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)},
    }
    return _with_hash(_adopt(sa, owner), {})


def role(owner: Owner) -> K8sObject:
    """The balancer may read and patch its own resource and nothing else (``/add``, ``/rm``)."""
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
    return _with_hash(_adopt(obj, owner), rules)


def role_binding(owner: Owner) -> K8sObject:
    body = {
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": balancer_name(owner.name)},
        "subjects": [{"kind": "ServiceAccount", "name": balancer_name(owner.name), "namespace": owner.namespace}],
    }
    obj = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": balancer_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)},
        **body,
    }
    return _with_hash(_adopt(obj, owner), body)


def _secret_env(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": c.SECRET_TOKEN_KEY}}}


def deployment(owner: Owner, spec: Spec) -> K8sObject:
    """The balancer: N pods behind one Service; each is Ready once it holds a membership push."""
    b = spec.balancer
    pod_labels = labels(owner.name, c.COMPONENT_BALANCER)
    container = {
        "name": "balancer",
        "image": b.template.image,
        "imagePullPolicy": b.template.image_pull_policy,
        "ports": [{"name": "http", "containerPort": c.PORT, "protocol": "TCP"}],
        "env": [
            _secret_env("RINGLB_TOKEN", secret_name(owner.name)),
            _secret_env("RINGLB_MEMBERSHIP_TOKEN", secret_name(owner.name)),
            {"name": "RINGLB_SCALER", "value": "kubernetes"},
            {"name": "RINGLB_RESOURCE", "value": f"{owner.namespace}/{owner.name}"},
            {"name": "RINGLB_STATE_DIR", "value": "/tmp/ringlb-state"},
            *_env(b.template.env),
        ],
        "readinessProbe": _http_probe("/readyz", period=2, timeout=1, failures=2),
        "livenessProbe": _http_probe("/healthz", period=10, timeout=2, failures=3, delay=5),
        "resources": _resources(b.template, DEFAULT_BALANCER_RESOURCES),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": [dict(TMP_MOUNT)],
    }
    spec_body = {
        "replicas": b.replicas,
        "selector": {"matchLabels": balancer_selector(owner.name)},
        # Never below the wanted count: a new pod is Ready only once it holds the membership.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "serviceAccountName": balancer_name(owner.name),
                "automountServiceAccountToken": True,  # the kubernetes scaler patches the resource
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 15,
                "securityContext": copy.deepcopy(POD_SECURITY),
                "containers": [container],
                "volumes": [copy.deepcopy(TMP_VOLUME)],
            },
        },
    }
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": balancer_name(owner.name), "labels": pod_labels},
        "spec": spec_body,
    }
    return _with_hash(_adopt(obj, owner), spec_body)


def service(owner: Owner, spec: Spec) -> K8sObject:
    spec_body = {
        "type": spec.balancer.service_type,
        "selector": balancer_selector(owner.name),
        "ports": [{"name": "http", "port": spec.balancer.port, "targetPort": "http", "protocol": "TCP"}],
    }
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": balancer_name(owner.name), "labels": labels(owner.name, c.COMPONENT_BALANCER)},
        "spec": spec_body,
    }
    return _with_hash(_adopt(obj, owner), spec_body)


def _with_hash(obj: K8sObject, content: Any) -> K8sObject:
    obj["metadata"].setdefault("annotations", {})[c.ANNOTATION_SPEC_HASH] = digest([c.BUILDER_VERSION, content])
    return obj


def balancer_objects(owner: Owner, spec: Spec) -> list[K8sObject]:
    """Everything of the balancer but the Secret, in the order they must exist."""
    return [service_account(owner), role(owner), role_binding(owner), deployment(owner, spec), service(owner, spec)]


def patch_for(desired: K8sObject) -> dict[str, Any]:
    """A JSON merge patch that makes an existing child equal to ``desired`` in what we own.

    Merge patches replace lists whole, so a Service switched back to ClusterIP loses its
    nodePort and a container list is exactly ours.
    """
    patch: dict[str, Any] = {
        "metadata": {
            "labels": desired["metadata"].get("labels", {}),
            "annotations": desired["metadata"].get("annotations", {}),
        }
    }
    for key, value in desired.items():
        if key not in ("apiVersion", "kind", "metadata"):
            patch[key] = value
    if desired["kind"] == "RoleBinding":
        patch.pop("roleRef", None)  # immutable; same name and kind anyway
    return patch
