"""Kubernetes I/O in one place: create absorbing 409, delete absorbing 404, patch, read.

Everything else in the operator handles plain dicts; this module alone knows the client's
API classes. ``Kube`` is the protocol the reconciler needs, so the unit tests pass a fake.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ringlb_operator import constants as c

log = logging.getLogger(__name__)

K8sObject = dict[str, Any]


class KubeError(Exception):
    """An API call failed for a reason the next pass may not fix by itself (shown in status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Kube(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> K8sObject | None:
        """The object, or None when it does not exist."""

    def create(self, obj: K8sObject) -> K8sObject | None:
        """Create; None when it already exists (409), which a level-based caller ignores."""

    def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """JSON merge patch."""

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete; an object already gone (404) is not an error."""

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the resource's status subresource."""


# kind -> (API class name, snake-case resource used in the method names)
_KINDS: dict[str, tuple[str, str]] = {
    "Pod": ("CoreV1Api", "pod"),
    "Secret": ("CoreV1Api", "secret"),
    "Service": ("CoreV1Api", "service"),
    "ServiceAccount": ("CoreV1Api", "service_account"),
    "Deployment": ("AppsV1Api", "deployment"),
    "Role": ("RbacAuthorizationV1Api", "role"),
    "RoleBinding": ("RbacAuthorizationV1Api", "role_binding"),
}

MERGE_PATCH = "application/merge-patch+json"


class ClusterKube:
    """``Kube`` over the official client, reading raw JSON (no model round trip)."""

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client

        self.client = client
        self.api_client = api_client or client.ApiClient()
        self._apis: dict[str, Any] = {}

    @staticmethod
    def load_config() -> None:
        """In-cluster credentials in a pod, the current kube-context on a laptop."""
        from kubernetes import config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()

    def _method(self, verb: str, kind: str) -> Callable[..., Any]:
        api_name, resource = _KINDS[kind]
        if api_name not in self._apis:
            self._apis[api_name] = getattr(self.client, api_name)(self.api_client)
        return getattr(self._apis[api_name], f"{verb}_namespaced_{resource}")

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            reply = fn(*args, _preload_content=False, _request_timeout=30, **kwargs)
        except self.client.exceptions.ApiException as exc:
            raise KubeError(exc.status or 0, _api_message(exc)) from None
        data = reply.data
        return json.loads(data) if data else None

    def get(self, kind: str, namespace: str, name: str) -> K8sObject | None:
        try:
            return self._call(self._method("read", kind), name, namespace)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, obj: K8sObject) -> K8sObject | None:
        namespace = obj["metadata"]["namespace"]
        try:
            return self._call(self._method("create", obj["kind"]), namespace, obj, _content_type="application/json")
        except KubeError as exc:
            if exc.status == 409:
                return None
            raise

    def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self._call(self._method("patch", kind), name, namespace, dict(patch), _content_type=MERGE_PATCH)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self._call(self._method("delete", kind), name, namespace)
        except KubeError as exc:
            if exc.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        api = self.client.CustomObjectsApi(self.api_client)
        self._call(
            api.patch_namespaced_custom_object_status,
            c.GROUP,
            c.VERSION,
            namespace,
            c.PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE_PATCH,
        )


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def ensure(kube: Kube, desired: K8sObject, owner_uid: str) -> str:
    """Make one child exist and match ``desired``; returns "" or a conflict message.

    get → create if absent → refuse to touch what another owner holds → patch only when the
    spec-hash annotation says the content we own differs.
    """
    from ringlb_operator.children import patch_for

    meta = desired["metadata"]
    current = kube.get(desired["kind"], meta["namespace"], meta["name"])
    if current is None:
        if kube.create(desired) is None:
            log.debug("%s %s appeared meanwhile; next pass compares it", desired["kind"], meta["name"])
        return ""
    if not owned_by(current, owner_uid):
        return f"{desired['kind']} {meta['name']} exists and is not owned by this resource"
    want = (meta.get("annotations") or {}).get(c.ANNOTATION_SPEC_HASH)
    have = (current.get("metadata", {}).get("annotations") or {}).get(c.ANNOTATION_SPEC_HASH)
    if want != have:
        kube.patch(desired["kind"], meta["namespace"], meta["name"], patch_for(desired))
    return ""


def ensure_peering(name: str) -> bool:
    """Create the ClusterKopfPeering ``name`` if missing, so that ``kubectl apply -k`` needs
    no custom object of a CRD it is creating in the same run. False when it cannot (no CRD,
    no permission): kopf then runs standalone and says so in its log."""
    from kubernetes import client

    api = client.CustomObjectsApi()
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        api.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", body, _preload_content=False)
    except client.exceptions.ApiException as exc:
        if exc.status == 409:
            return True
        log.warning("cannot create ClusterKopfPeering %s (%s); peering is off", name, exc.status)
        return False
    return True
