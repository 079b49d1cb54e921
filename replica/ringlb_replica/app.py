"""The replica's HTTP API, exactly as the seed system served it, plus an optional per-key cache
model (``cache``) and its Prometheus counters on ``/metrics``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ringlb_replica.cache import KEY_HEADER, CacheSettings, KeyCache


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the replica app; identity comes from ``SERVER_ID`` and the cache model from
    ``RINGLB_REPLICA_CACHE_SIZE`` / ``RINGLB_REPLICA_MISS_COST_MS``, unless ``config`` overrides
    them (``SERVER_ID``, ``CACHE_SIZE``, ``MISS_COST_MS``).

    Any path other than ``/home``, ``/heartbeat`` and ``/metrics`` gets Flask's 404, which the
    balancer turns into the seed's ``'<path>' endpoint does not exist`` error. The cache only
    adds an ``X-Cache`` header to ``/home``: its body stays the seed's, byte for byte.
    """
    app = Flask(__name__)
    app.config["SERVER_ID"] = os.environ.get("SERVER_ID", "unknown")
    env = CacheSettings.from_env()
    app.config["CACHE_SIZE"] = env.size
    app.config["MISS_COST_MS"] = env.miss_cost_ms
    if config:
        app.config.update(config)
    settings = CacheSettings(app.config["CACHE_SIZE"], app.config["MISS_COST_MS"])
    settings.validate()
    cache = KeyCache(settings.size) if settings.size else None
    miss_cost = settings.miss_cost_ms / 1000
    registry = CollectorRegistry()
    registry.register(_CacheCollector(cache, settings))
    # Precomputed, and serialized as the seed did (json.dumps' default separators), since
    # clients of the seed compare these bodies byte for byte.
    greeting = json.dumps({"message": f"Hello from Server: {app.config['SERVER_ID']}", "status": "successful"})

    @app.get("/home")
    def home() -> Response:
        response = Response(greeting, content_type="application/json")
        key = request.headers.get(KEY_HEADER)
        if cache is not None and key:
            raw = key.encode("latin-1")  # werkzeug decoded the field as latin-1: the bytes sent
            hit = cache.lookup(raw)
            if not hit:
                time.sleep(miss_cost)
                cache.insert(raw)
            response.headers["X-Cache"] = "hit" if hit else "miss"
        return response

    @app.get("/heartbeat")
    def heartbeat() -> tuple[str, int]:
        return "", 200

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return app


class _CacheCollector:
    """The cache's own counters, read at scrape time (no second set of numbers to keep)."""

    def __init__(self, cache: KeyCache | None, settings: CacheSettings) -> None:
        self.cache = cache
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        cache = self.cache
        for name, doc, value in (
            ("hits", "Requests whose key was in the replica's cache", cache.hits if cache else 0),
            (
                "misses",
                "Requests whose key was not in the cache (each cost the miss cost)",
                cache.misses if cache else 0,
            ),
            (
                "evictions",
                "Keys dropped from the cache to make room (least recently used)",
                cache.evictions if cache else 0,
            ),
        ):
            yield CounterMetricFamily(f"ringlb_replica_cache_{name}", doc, value=value)
        yield GaugeMetricFamily("ringlb_replica_cache_keys", "Keys in the cache now", value=len(cache) if cache else 0)
        yield GaugeMetricFamily(
            "ringlb_replica_cache_size", "Keys the cache holds at most (0: no cache)", value=self.settings.size
        )
        yield GaugeMetricFamily(
            "ringlb_replica_cache_miss_cost_seconds",
            "Time a miss costs (a sleep)",
            value=self.settings.miss_cost_ms / 1000,
        )
