"""The balancer's settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Every knob of the balancer process; the README's configuration table mirrors this.

    Each field is read from ``RINGLB_<FIELD NAME IN CAPITALS>``.
    """

    state_dir: str = ""  # shared by the worker processes; a private temp dir when empty
    token: str = ""  # bearer token for /add and /rm; empty leaves them open, as in the seed
    membership_token: str = ""  # bearer token for PUT /membership; empty means use ``token``
    scaler: str = ""  # "" (no /add, /rm), "http://host:port" (local supervisor), "kubernetes"
    scaler_token: str = ""  # bearer token the scaler expects (local supervisor)
    resource: str = ""  # "namespace/name" of the ReplicaSet resource, for the kubernetes scaler
    scale_timeout: float = 60.0  # how long /add and /rm wait for the new membership
    connect_timeout: float = 1.0
    read_timeout: float = 30.0
    max_body: int = 1024 * 1024  # request bodies above this get 413
    max_attempts: int = 3  # replicas tried per request (idempotent, or never sent)
    health_interval: float = 1.0
    health_timeout: float = 0.5
    healthy_after: int = 2  # consecutive good heartbeats before an ejected member returns
    failures_to_eject: int = 3  # consecutive 5xx answers before a member is ejected

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> "Settings":
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"RINGLB_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(f.default)
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise SystemExit(f"RINGLB_{f.name.upper()}={raw!r}: expected {kind.__name__}") from None
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append("max_attempts must be at least 1")
        if self.max_body < 0:
            problems.append("max_body must not be negative")
        if min(self.connect_timeout, self.read_timeout, self.health_interval, self.health_timeout) <= 0:
            problems.append("timeouts and intervals must be positive")
        if self.scaler == "kubernetes" and self.resource.count("/") != 1:
            problems.append("the kubernetes scaler needs RINGLB_RESOURCE=namespace/name")
        if self.scaler and not (self.scaler == "kubernetes" or self.scaler.startswith("http://")):
            problems.append("scaler must be empty, 'kubernetes' or an http:// URL")
        if problems:
            raise SystemExit("balancer settings: " + "; ".join(problems))
