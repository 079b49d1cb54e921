"""The ReplicaSet custom resource as everyone outside the operator needs it: its API names, and
which identities a spec asks for.

The balancer's Kubernetes scaler reads and patches its own resource; with these here it needs
neither kopf nor the operator's full spec model, and cannot disagree with the CRD on a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ringlb_ring.naming import PlanError, desired_identities

GROUP = "ringlb.io"
VERSION = "v1alpha1"
KIND = "ReplicaSet"
PLURAL = "replicasets"
DEFAULT_REPLICAS = 3  # the CRD's default for spec.replicas


def identities(spec: Mapping[str, Any] | None) -> list[str]:
    """The ring identities a resource's spec asks for, in ring order, with the CRD's defaults.

    Raises ``PlanError`` for a spec whose replicas or hostnames are malformed."""
    spec = spec or {}
    replicas = spec.get("replicas", DEFAULT_REPLICAS)
    hostnames = spec.get("hostnames", [])
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise PlanError("spec.replicas must be a non-negative integer")
    if not isinstance(hostnames, list) or not all(isinstance(h, str) for h in hostnames):
        raise PlanError("spec.hostnames must be a list of strings")
    return desired_identities(replicas, hostnames)
