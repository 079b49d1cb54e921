"""Fakes for the operator's unit tests: an in-memory cluster and canned pods."""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any

import pytest

from ringlb_operator import constants as c
from ringlb_operator.children import Owner
from ringlb_operator.kube import K8sObject, KubeError
from ringlb_operator.observe import PodView, pod_view

OWNER = Owner("web", "ns", "uid-web")


class FakeKube:
    """Objects by (kind, namespace, name); records every write so tests can count them."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], K8sObject] = {}
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.status_patches: list[dict[str, Any]] = []
        self.fail: dict[tuple[str, str], int] = {}  # (verb, kind) -> HTTP status to raise

    def _check(self, verb: str, kind: str) -> None:
        if (verb, kind) in self.fail:
            raise KubeError(self.fail[(verb, kind)], f"injected {verb} {kind} failure")

    def get(self, kind: str, namespace: str, name: str) -> K8sObject | None:
        self._check("get", kind)
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def create(self, obj: K8sObject) -> K8sObject | None:
        self._check("create", obj["kind"])
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.writes.append(("create", obj["kind"], obj["metadata"]["name"]))
        if key in self.objects:
            return None
        stored = copy.deepcopy(obj)
        if obj["kind"] == "Secret" and "stringData" in stored:
            stored["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in stored.pop("stringData").items()}
        stored["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}")
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self._check("patch", kind)
        self.writes.append(("patch", kind, name))
        _merge(self.objects[(kind, namespace, name)], patch)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self._check("delete", kind)
        self.writes.append(("delete", kind, name))
        self.objects.pop((kind, namespace, name), None)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._check("patch_status", c.KIND)
        self.status_patches.append(copy.deepcopy(dict(status)))

    def pods(self) -> list[str]:
        return sorted(name for (kind, _, name) in self.objects if kind == "Pod")

    def count(self, verb: str, kind: str) -> int:
        return sum(1 for v, k, _ in self.writes if v == verb and k == kind)


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def running(pod: K8sObject, ip: str, ready: bool = True, **status: Any) -> K8sObject:
    """A pod body as the API would return it once scheduled and (maybe) Ready."""
    body = copy.deepcopy(pod)
    body["metadata"].setdefault("uid", "uid-" + body["metadata"]["name"])
    body["status"] = {
        "phase": "Running",
        "podIP": ip,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        **status,
    }
    return body


def balancer_pod(name: str, ip: str, ready: bool = True) -> PodView:
    return pod_view(
        {
            "metadata": {
                "name": name,
                "namespace": OWNER.namespace,
                "uid": "uid-" + name,
                "labels": {c.LABEL_RESOURCE: OWNER.name, c.LABEL_COMPONENT: c.COMPONENT_BALANCER},
            },
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]},
        }
    )


def resource(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid, "generation": generation},
        "spec": spec if spec is not None else {"replicas": 3},
        "status": status or {},
    }


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


def views(kube: FakeKube, ready: bool = True) -> list[PodView]:
    """Every replica pod in the fake as Running (and Ready), IPs 10.0.0.<n>."""
    out = []
    for n, name in enumerate(kube.pods(), start=1):
        body = kube.objects[("Pod", OWNER.namespace, name)]
        out.append(pod_view(running(body, f"10.0.0.{n}", ready)))
    return out
