"""Kubernetes I/O in one place: server-side apply, create, delete with a uid precondition (and
force-delete), read.

Everything else in the operator handles plain dicts; this module alone knows the client's
API classes. ``Kube`` is the protocol the reconciler needs, so the unit tests pass a fake.
Owned objects are written with server-side apply (field manager ``ringlb-operator``, force):
the operator owns exactly the fields its builders set, and takes them back from a hand edit.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ringlb_operator import constants as c

log = logging.getLogger(__name__)

K8sObject = dict[str, Any]
PROBE_MANAGER = f"{c.MANAGER}-probe"  # dry-run applies that only read back an object's owner


class KubeError(Exception):
    """An API call failed for a reason the next pass may not fix by itself (shown in status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Kube(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> K8sObject | None:
        """The object, or None when it does not exist."""

    def create(self, obj: K8sObject) -> K8sObject | None:
        """Create; None when something of that name already exists (409): check its owner."""

    def apply(self, obj: K8sObject, force: bool = True, dry_run: bool = False, manager: str = c.MANAGER) -> K8sObject:
        """Server-side apply; raises KubeError 409 on a field conflict when not forced."""

    def delete(self, kind: str, namespace: str, name: str, uid: str = "", grace_seconds: int | None = None) -> None:
        """Delete (only the object with ``uid`` if given); gone (404) or replaced (409) is fine.
        ``grace_seconds=0`` force-deletes: the object goes without its kubelet's confirmation."""

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the resource's status subresource."""

    def list_pods(self, namespace: str, selector: str) -> list[K8sObject]:
        """The pods matching a label selector, read from the API (not from a cache)."""

    def list_events(self, namespace: str, field_selector: str) -> list[K8sObject]:
        """The Events matching a field selector (``involvedObject.name=...,reason=...``): what
        the kubelet says about a pod it cannot start, and nowhere else."""


# kind -> (API class name, snake-case resource used in the method names)
_KINDS: dict[str, tuple[str, str]] = {
    "Pod": ("CoreV1Api", "pod"),
    "Secret": ("CoreV1Api", "secret"),
    "Event": ("CoreV1Api", "event"),
    "ConfigMap": ("CoreV1Api", "config_map"),
    "Service": ("CoreV1Api", "service"),
    "ServiceAccount": ("CoreV1Api", "service_account"),
    "Deployment": ("AppsV1Api", "deployment"),
    "Role": ("RbacAuthorizationV1Api", "role"),
    "RoleBinding": ("RbacAuthorizationV1Api", "role_binding"),
    "NetworkPolicy": ("NetworkingV1Api", "network_policy"),
    "PodDisruptionBudget": ("PolicyV1Api", "pod_disruption_budget"),
}

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # a JSON body is valid YAML


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
            return self._call(
                self._method("create", obj["kind"]),
                namespace,
                obj,
                field_manager=c.MANAGER,
                _content_type="application/json",
            )
        except KubeError as exc:
            if exc.status == 409:
                return None
            raise

    def apply(self, obj: K8sObject, force: bool = True, dry_run: bool = False, manager: str = c.MANAGER) -> K8sObject:
        meta = obj["metadata"]
        extra: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        return self._call(
            self._method("patch", obj["kind"]),
            meta["name"],
            meta["namespace"],
            obj,
            field_manager=manager,
            force=force,
            _content_type=APPLY_PATCH,
            **extra,
        )

    def delete(self, kind: str, namespace: str, name: str, uid: str = "", grace_seconds: int | None = None) -> None:
        body: dict[str, Any] = {"preconditions": {"uid": uid}} if uid else {}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            self._call(
                self._method("delete", kind), name, namespace, body=body or None, _content_type="application/json"
            )
        except KubeError as exc:
            if exc.status not in (404, 409):  # gone, or a new object of that name: not ours to delete
                raise

    def list_pods(self, namespace: str, selector: str) -> list[K8sObject]:
        reply = self._call(self._method("list", "Pod"), namespace, label_selector=selector)
        return list((reply or {}).get("items") or [])

    def list_events(self, namespace: str, field_selector: str) -> list[K8sObject]:
        reply = self._call(self._method("list", "Event"), namespace, field_selector=field_selector)
        return list((reply or {}).get("items") or [])

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


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    ref = controller_of(obj)
    return bool(ref and ref.get("uid") == uid)


def foreign(kind: str, obj: Mapping[str, Any]) -> str:
    """The ChildConflict message for an object of our child's name that is not ours."""
    name = (obj.get("metadata") or {}).get("name", "?")
    ref = controller_of(obj)
    holder = f"controlled by {ref.get('kind')} {ref.get('name')}" if ref else "not controlled by this resource"
    return f"{kind} {name} exists and is {holder}"


@dataclass(frozen=True)
class Ensured:
    conflict: str = ""  # a ChildConflict message, "" if none
    changed: bool = False  # created or repaired in this call


_UNKNOWN: Any = object()


def ensure(kube: Kube, desired: K8sObject, owner_uid: str, live: K8sObject | None = _UNKNOWN) -> Ensured:
    """Make one child exist and hold what ``desired`` sets.

    ``live`` is the object as the operator's watch last saw it (None: absent); without it the
    object is read. Absent → create; a 409 there means someone else holds the name: read it,
    and refuse to touch it unless it is ours. Present and ours but missing some of our fields
    (a hand edit, a scale, an older operator) → server-side apply with force.
    """
    from ringlb_operator.children import differs, stamped

    desired = stamped(desired)
    kind, meta = desired["kind"], desired["metadata"]
    if live is _UNKNOWN:
        live = kube.get(kind, meta["namespace"], meta["name"])
    if live is None:
        if kube.create(desired) is not None:
            return Ensured(changed=True)
        live = kube.get(kind, meta["namespace"], meta["name"])
        if live is None:  # deleted again meanwhile: the next pass creates it
            return Ensured()
    if not owned_by(live, owner_uid):
        return Ensured(conflict=foreign(kind, live))
    if differs(desired, live):
        kube.apply(desired)
        return Ensured(changed=True)
    return Ensured()


def ensure_blind(kube: Kube, desired: K8sObject, owner_uid: str) -> Ensured:
    """``ensure`` for a kind the operator may write but not read (Secrets).

    A non-forced apply is a no-op on our own unchanged Secret and creates a missing one. A 409
    (someone else owns a field: a hand edit, or a foreign Secret of that name) is followed by a
    dry-run apply under another field manager, which only reads the owner back; ours → apply
    with force, foreign → ChildConflict. A second controller reference is refused by the API
    server (422), which also means foreign.
    """
    kind, meta = desired["kind"], desired["metadata"]
    try:
        reply = kube.apply(desired, force=False)
    except KubeError as exc:
        if exc.status == 422 and "controller" in str(exc).lower():
            return Ensured(conflict=f"{kind} {meta['name']} exists and is controlled by another owner")
        if exc.status != 409:
            raise
        probe = {
            "apiVersion": desired["apiVersion"],
            "kind": kind,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        }
        live = kube.apply(probe, force=False, dry_run=True, manager=PROBE_MANAGER)
        if not owned_by(live, owner_uid):
            return Ensured(conflict=foreign(kind, live))
        kube.apply(desired, force=True)
        return Ensured(changed=True)
    if not owned_by(reply, owner_uid):
        return Ensured(conflict=foreign(kind, reply))
    return Ensured()


def operator_key(kube: Kube, namespace: str = c.OPERATOR_NAMESPACE, name: str = c.OPERATOR_KEY_SECRET) -> bytes:
    """The operator's key, from which every per-resource token is derived (created once, at
    random, in the operator's own namespace: the only Secret the operator ever reads)."""
    for _ in range(3):
        current = kube.get("Secret", namespace, name)
        if current is not None:
            data = (current.get("data") or {}).get("key", "")
            if not data:
                raise KubeError(422, f"Secret {namespace}/{name} has no 'key'")
            return base64.b64decode(data)
        fresh = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {c.LABEL_NAME: c.APP_NAME, c.LABEL_MANAGED_BY: c.MANAGER},
            },
            "data": {"key": base64.b64encode(secrets.token_bytes(32)).decode()},
        }
        kube.create(fresh)  # None on a race with a peer: read theirs
    raise KubeError(404, f"Secret {namespace}/{name} cannot be created or read")


def ensure_peering(name: str) -> bool:
    """Create the ClusterKopfPeering ``name`` if missing, so that ``kubectl apply -k`` needs
    no custom object of a CRD it is creating in the same run. False when it cannot (no CRD,
    no permission): with mandatory peering the operator then waits and says so in its log."""
    from kubernetes import client

    api = client.CustomObjectsApi()
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        api.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", body, _preload_content=False)
    except client.exceptions.ApiException as exc:
        if exc.status == 409:
            return True
        log.warning("cannot create ClusterKopfPeering %s (%s); peering cannot start", name, exc.status)
        return False
    return True
