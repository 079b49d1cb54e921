"""Assembles the balancer: the forwarding fast path plus the Flask app for its own endpoints."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from typing import Any

from flask import Flask

from ringlb_balancer import api
from ringlb_balancer.config import Settings
from ringlb_balancer.health import HealthChecker
from ringlb_balancer.proxy import Proxy, StartResponse
from ringlb_balancer.routing import RoutingStore
from ringlb_balancer.scaling import HttpScaler, KubernetesScaler, Scaler
from ringlb_balancer.shared import SharedState


def make_scaler(settings: Settings) -> Scaler | None:
    if settings.scaler == "kubernetes":
        return KubernetesScaler(settings.resource)
    if settings.scaler:
        return HttpScaler(settings.scaler, settings.scaler_token)
    return None


class Balancer:
    """The WSGI application: its own paths go to Flask, every other path is forwarded."""

    def __init__(self, settings: Settings, scaler: Scaler | None = None) -> None:
        self.settings = settings
        self.shared = SharedState(settings.state_dir or tempfile.mkdtemp(prefix="ringlb-"))
        self.store = RoutingStore(self.shared)
        self.proxy = Proxy(settings, self.shared, self.store)
        self.flask = Flask("ringlb_balancer")
        self.flask.config["MAX_CONTENT_LENGTH"] = 64 * 1024
        self.flask.json.sort_keys = False  # keep the seed API's field order
        self.flask.extensions["ringlb"] = {
            "settings": settings,
            "store": self.store,
            "scaler": scaler if scaler is not None else make_scaler(settings),
        }
        api.register(self.flask)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in api.CONTROL_PATHS:
            return self.flask(environ, start_response)
        return self.proxy(environ, start_response)

    def health_checker(self) -> HealthChecker:
        return HealthChecker(self.settings, self.store)


def create_app(settings: Settings | None = None, scaler: Scaler | None = None) -> Balancer:
    return Balancer(settings or Settings.from_env(), scaler)
