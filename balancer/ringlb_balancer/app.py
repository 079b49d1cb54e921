"""Assembles one balancer process's state: settings, the shared map, the routing store, the scaler.

gunicorn loads this object as its "application" (``ringlb_balancer.wsgi:app``) in every worker;
``worker.ProxyWorker`` serves it. It is not a WSGI application: requests are handled by the
worker's event loop, so calling it under another worker class answers 500 saying so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from ringlb_balancer.config import Settings
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
    def __init__(self, settings: Settings, scaler: Scaler | None = None) -> None:
        self.settings = settings
        self.shared = SharedState(settings.state_dir or tempfile.mkdtemp(prefix="ringlb-"))
        self.store = RoutingStore(self.shared, settings.snapshot)
        self.scaler = scaler if scaler is not None else make_scaler(settings)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"ringlb's balancer runs under its own worker class: -k ringlb_balancer.worker.ProxyWorker\n"]


def create_app(settings: Settings | None = None, scaler: Scaler | None = None) -> Balancer:
    return Balancer(settings or Settings.from_env(), scaler)
