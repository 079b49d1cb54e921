"""Fakes for the operator's unit tests: an in-memory cluster and canned pods."""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from ringlb_operator import constants as c
from ringlb_operator.children import Owner, differs
from ringlb_operator.kube import K8sObject, KubeError
from ringlb_operator.observe import PodView, pod_view

OWNER = Owner("web", "ns", "uid-web")
DEADLINE = 60.0  # generous: passes run on threads, and CI builds a cluster beside these tests


async def until(predicate: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition") -> None:
    """Yield to the loop until ``predicate`` holds; fail naming ``what`` after ``timeout`` s.
    Async, unlike ringlb_harness.net.wait_until (same argument order): what it waits for
    happens in tasks of this same loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} after {timeout:g}s"
        await asyncio.sleep(0.01)


class FakeKube:
    """Objects by (kind, namespace, name); records every write so tests can count them."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], K8sObject] = {}
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.status_patches: list[dict[str, Any]] = []
        self.fail: dict[tuple[str, str], int] = {}  # (verb, kind) -> HTTP status to raise
        self.deletes: list[tuple[str, str, str, int | None]] = []  # (kind, name, uid precondition, grace)
        self.incarnations: dict[tuple[str, str, str], int] = {}
        self.lists: list[str] = []  # label selectors of list_pods calls
        self.graceful_at = ""  # set: a graceful pod delete leaves the pod Terminating until then

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
        if obj["kind"] == "Pod" and "status" not in stored:
            stored["status"] = {}
        self.incarnations[key] = self.incarnations.get(key, 0) + 1
        again = f"-{self.incarnations[key]}" if self.incarnations[key] > 1 else ""  # each incarnation its uid
        stored["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}{again}")
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def apply(self, obj: K8sObject, force: bool = True, dry_run: bool = False, manager: str = c.MANAGER) -> K8sObject:
        """Server-side apply, simplified: a non-forced apply that would change a value is a
        field conflict (409); a second controller reference is refused (422)."""
        kind, meta = obj["kind"], obj["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        current = self.objects.get(key)
        if dry_run:
            return copy.deepcopy(current if current is not None else obj)
        self._check("apply", kind)
        if current is None:
            self.writes.append(("apply", kind, meta["name"]))
            stored = copy.deepcopy(obj)
            stored["metadata"].setdefault("uid", f"uid-{meta['name']}")
            self.objects[key] = stored
            return copy.deepcopy(stored)
        theirs = controller(current)
        mine = controller(obj)
        if theirs and mine and theirs.get("uid") != mine.get("uid"):
            raise KubeError(422, "Only one reference can have Controller set to true")
        if not force and differs(obj, current):
            raise KubeError(409, "Apply failed with 1 conflict")
        if differs(obj, current):
            self.writes.append(("apply", kind, meta["name"]))
            for k, v in obj.items():  # top-level fields replaced whole (atomic selectors, lists)
                if k != "metadata":
                    current[k] = copy.deepcopy(v)
            _merge(current["metadata"], {k: v for k, v in meta.items() if k not in ("name", "namespace")})
        return copy.deepcopy(current)

    def delete(self, kind: str, namespace: str, name: str, uid: str = "", grace_seconds: int | None = None) -> None:
        self._check("delete", kind)
        self.deletes.append((kind, name, uid, grace_seconds))
        current = self.objects.get((kind, namespace, name))
        if current is not None and uid and current["metadata"].get("uid") != uid:
            return  # precondition failed (409): another incarnation, left alone
        self.writes.append(("force-delete" if grace_seconds == 0 else "delete", kind, name))
        if current is not None and kind == "Pod" and grace_seconds != 0 and self.graceful_at:
            current["metadata"]["deletionTimestamp"] = self.graceful_at  # its kubelet has to confirm
            return
        self.objects.pop((kind, namespace, name), None)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._check("patch_status", c.KIND)
        self.status_patches.append(copy.deepcopy(dict(status)))

    def list_pods(self, namespace: str, selector: str) -> list[K8sObject]:
        """Every matching pod as views() shows them by default: Running and Ready on "w1"."""
        self._check("list", "Pod")
        self.lists.append(selector)
        wanted = dict(term.split("=", 1) for term in selector.split(","))
        return [
            body
            for body in self.running_pods()
            if body["metadata"]["namespace"] == namespace
            and all((body["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    def running_pods(
        self, ready: bool = True, nodes: Mapping[str, str] | None = None, lost: frozenset[str] = frozenset()
    ) -> list[K8sObject]:
        """Every pod Running (and Ready), IPs 10.0.0.<n>; ``nodes`` places pods (pod name → node
        name, default "w1"); pods on a node in ``lost`` are not Ready (what the node lifecycle
        controller sets)."""
        out = []
        for n, key in enumerate(sorted(k for k in self.objects if k[0] == "Pod"), start=1):
            body = copy.deepcopy(self.objects[key])
            node = (nodes or {}).get(key[2], "w1")
            body.setdefault("spec", {})["nodeName"] = node
            out.append(running(body, f"10.0.0.{n}", ready and node not in lost))
        return out

    def pods(self) -> list[str]:
        return sorted(name for (kind, _, name) in self.objects if kind == "Pod")

    def count(self, verb: str, kind: str) -> int:
        return sum(1 for v, k, _ in self.writes if v == verb and k == kind)


def controller(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


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


def balancer_pod(name: str, ip: str, ready: bool = True, node: str = "w1") -> PodView:
    return pod_view(
        {
            "metadata": {
                "name": name,
                "namespace": OWNER.namespace,
                "uid": "uid-" + name,
                "labels": {c.LABEL_RESOURCE: OWNER.name, c.LABEL_COMPONENT: c.COMPONENT_BALANCER},
            },
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]},
        }
    )


def resource(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, generation: int = 1
) -> dict[str, Any]:
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


def views(
    kube: FakeKube, ready: bool = True, nodes: Mapping[str, str] | None = None, lost: frozenset[str] = frozenset()
) -> list[PodView]:
    """The pods in the fake as the operator's index would hold them (see FakeKube.running_pods)."""
    return [pod_view(body) for body in kube.running_pods(ready, nodes, lost)]
