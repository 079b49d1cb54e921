"""Where ``/add`` and ``/rm`` send their change: the owner of the desired replica list.

The balancer never starts replicas itself. It reads the desired list, plans the seed request
against it, and writes it back with optimistic concurrency; the owner (the local supervisor, or
the ReplicaSet resource that the operator reconciles) then starts or stops replicas and pushes
the new membership, which is what ``/add`` and ``/rm`` wait for.
"""

from __future__ import annotations

from typing import Any, Protocol

import requests

from ringlb_ring import resource as resource_api


class Conflict(Exception):
    """The desired list changed between read and write; read it again."""


class ScalerError(Exception):
    """The owner of the desired list could not be reached or refused the change."""


class Scaler(Protocol):
    def desired(self) -> tuple[list[str], str]:
        """The desired replica names and an opaque version for ``set_desired``."""

    def set_desired(self, names: list[str], version: str) -> None:
        """Replace the desired list if it is still at ``version``; raise ``Conflict`` if not."""


class HttpScaler:
    """The local supervisor's scaling API (``GET``/``PUT /replicas``)."""

    def __init__(self, url: str, token: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/") + "/replicas"
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def desired(self) -> tuple[list[str], str]:
        try:
            reply = self.session.get(self.url, timeout=self.timeout)
            reply.raise_for_status()
        except requests.RequestException as exc:
            raise ScalerError(f"supervisor unreachable: {exc}") from None
        doc = reply.json()
        return doc["replicas"], str(doc["version"])

    def set_desired(self, names: list[str], version: str) -> None:
        try:
            reply = self.session.put(self.url, json={"replicas": names, "version": version}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ScalerError(f"supervisor unreachable: {exc}") from None
        if reply.status_code == 409:
            raise Conflict()
        if reply.status_code != 200:
            raise ScalerError(f"supervisor refused the change: {reply.status_code} {reply.text[:200]}")


class KubernetesScaler:
    """The balancer's own ReplicaSet resource; its RBAC allows get/patch on that one name."""

    def __init__(self, resource: str) -> None:
        from kubernetes import client, config  # only the in-cluster image needs the client

        self.api_path = (resource_api.GROUP, resource_api.VERSION)
        self.plural = resource_api.PLURAL
        self.namespace, self.name = resource.split("/")
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.api = client.CustomObjectsApi()
        self.exceptions = client.exceptions

    def desired(self) -> tuple[list[str], str]:
        try:
            obj: Any = self.api.get_namespaced_custom_object(*self.api_path, self.namespace, self.plural, self.name)
        except self.exceptions.ApiException as exc:
            raise ScalerError(f"cannot read ReplicaSet {self.namespace}/{self.name}: {exc.reason}") from None
        try:
            names = resource_api.identities(obj.get("spec"))  # the CRD's defaults, not ours
        except ValueError as exc:
            raise ScalerError(f"ReplicaSet {self.namespace}/{self.name} has an invalid spec: {exc}") from None
        return names, obj["metadata"]["resourceVersion"]

    def set_desired(self, names: list[str], version: str) -> None:
        patch = {
            "metadata": {"resourceVersion": version},
            "spec": {"replicas": len(names), "hostnames": names},
        }
        try:
            self.api.patch_namespaced_custom_object(*self.api_path, self.namespace, self.plural, self.name, patch)
        except self.exceptions.ApiException as exc:
            if exc.status == 409:
                raise Conflict() from None
            raise ScalerError(
                f"cannot patch ReplicaSet {self.namespace}/{self.name}: {exc.reason}: {exc.body}"
            ) from None
