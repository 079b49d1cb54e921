"""The operator's own Prometheus metrics, served on their own port (``RINGLB_OPERATOR_METRICS_PORT``).

One registry, so tests can read values without a global default registry full of other things.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)
REGISTRY = CollectorRegistry(auto_describe=True)

PASS_SECONDS = Histogram(
    "ringlb_operator_pass_duration_seconds",
    "Duration of one reconcile pass of one resource",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
PASS_ERRORS = Counter(
    "ringlb_operator_pass_errors_total",
    "Reconcile passes that failed (kind: api, crash) or reported API errors in status (kind: child)",
    ["kind"],
    registry=REGISTRY,
)
PUSH_SECONDS = Histogram(
    "ringlb_operator_push_duration_seconds",
    "Duration of one membership push to one balancer pod (GET and PUT, with retries)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
    registry=REGISTRY,
)
PUSH_FAILURES = Counter(
    "ringlb_operator_push_failures_total",
    "Membership pushes a balancer pod did not acknowledge, by cause",
    ["reason"],  # unreachable, deadline, refused, stale, unauthorized
    registry=REGISTRY,
)
RING_REVISION = Gauge(
    "ringlb_operator_ring_revision",
    "Ring revision the operator published for a resource",
    ["namespace", "resource"],
    registry=REGISTRY,
)
ACKNOWLEDGED = Gauge(
    "ringlb_operator_balancer_acknowledged",
    "Balancer pods of a resource holding its current ring revision",
    ["namespace", "resource"],
    registry=REGISTRY,
)
BALANCER_PODS = Gauge(
    "ringlb_operator_balancer_pods",
    "Live balancer pods of a resource",
    ["namespace", "resource"],
    registry=REGISTRY,
)


def failure_reason(error: str) -> str:
    if error.startswith("409"):
        return "stale"
    if error.startswith(("401", "403")):
        return "unauthorized"
    if error.startswith("deadline"):
        return "deadline"
    if error.startswith("unreachable") or error == "no answer":
        return "unreachable"
    return "refused"


def forget(namespace: str, resource: str) -> None:
    """Drop a deleted resource's series."""
    for gauge in (RING_REVISION, ACKNOWLEDGED, BALANCER_PODS):
        try:
            gauge.remove(namespace, resource)
        except KeyError:
            pass


def serve(port: int) -> bool:
    """Start the /metrics listener; False (and a warning) when the port is taken."""
    try:
        start_http_server(port, registry=REGISTRY)
    except OSError as exc:
        log.warning("operator metrics not served on :%d: %s", port, exc)
        return False
    return True
