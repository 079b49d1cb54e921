"""Prometheus metrics, valid across gunicorn's worker processes.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (the gunicorn config sets it before any worker imports
this module) every process writes its samples to files there and ``/metrics`` merges them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "ringlb_requests_total", "Requests forwarded, by the member that answered and its status class",
    ["member", "code"],
)
LATENCY = Histogram(
    "ringlb_request_duration_seconds", "Time from receiving a request to having the replica's answer",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
RETRIES = Counter("ringlb_retries_total", "Requests sent again to the next member", ["member"])
EJECTIONS = Counter("ringlb_ejections_total", "Members ejected, by who noticed", ["member", "reason"])
FAILURES = Counter("ringlb_failed_requests_total", "Requests answered by the balancer with 5xx", ["reason"])
REVISION = Gauge(
    "ringlb_membership_revision", "Membership revision in force", multiprocess_mode="max"
)


def render() -> tuple[bytes, str]:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
