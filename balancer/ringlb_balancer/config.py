"""The balancer's settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ringlb_balancer import tls


@dataclass(frozen=True)
class Settings:
    """Every knob of the balancer process; the README's configuration table mirrors this.

    Each field is read from ``RINGLB_<FIELD NAME IN CAPITALS>``.
    """

    state_dir: str = ""  # shared by the worker processes; a private temp dir when empty
    bind: str = "0.0.0.0:5000"  # the public listener: proxy and the seed API
    admin_bind: str = ""  # operator-facing endpoints; empty serves them on the public listener
    tls_cert: str = ""  # PEM certificate chain: the public listener speaks only TLS; followed for renewals
    tls_key: str = ""  # PEM private key of tls_cert
    token: str = ""  # bearer token for /add and /rm; empty leaves them open, as in the seed
    membership_token: str = ""  # bearer token for PUT /membership; empty refuses every push
    snapshot: str = ""  # a membership document file to start from (and follow)
    scaler: str = ""  # "" (no /add, /rm), "http://host:port" (local supervisor), "kubernetes"
    scaler_token: str = ""  # bearer token the scaler expects (local supervisor)
    resource: str = ""  # "namespace/name" of the ReplicaSet resource, for the kubernetes scaler
    scale_timeout: float = 60.0  # how long /add and /rm wait for their change to be in force
    connect_timeout: float = 1.0
    first_byte_timeout: float = 30.0  # request sent, no byte of an answer yet
    idle_timeout: float = 30.0  # no byte between two parts of an answer (not a total)
    head_timeout: float = 10.0  # a client's whole request head, from its first byte
    keepalive_timeout: float = 5.0  # an idle client connection between requests
    send_timeout: float = 30.0  # an answer waiting on a client that does not read, this long: closed
    tunnel_idle_timeout: float = 300.0  # a WebSocket (upgraded) tunnel with no byte either way
    early_data: int = 64 * 1024  # bytes a client may send after an Upgrade head, before the 101
    upstream_keepalive: float = 1.0  # reuse a replica connection idle at most this long
    min_body_rate: int = 1024  # bytes/s a request body must keep up, after 5 s
    max_body: int = 1024 * 1024  # request bodies above this get 413; 0 = no limit
    max_head: int = 64 * 1024  # request head (and trailer) bytes; above this 431
    max_headers: int = 100  # header fields in one request; above this 431
    max_connections: int = 1000  # client connections per worker; the idle make room past it
    replay_body: int = 64 * 1024  # request body bytes kept to send again on a retry
    max_attempts: int = 3  # replicas tried per request (idempotent, or never sent)
    health_interval: float = 1.0
    health_timeout: float = 0.5
    healthy_after: int = 2  # consecutive good heartbeats before an ejected member returns
    failures_to_eject: int = 3  # consecutive 5xx answers before a member is ejected
    retry_5xx: int = 0  # 1: an idempotent request answered 5xx is sent to the next member
    drain_seconds: float = 5.0  # after SIGTERM: /readyz 503 but still serving, this long

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"RINGLB_{f.name.upper()}")
            if raw is None:
                continue
            kind: Callable[[str], Any] = type(f.default)
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
        if min(self.max_body, self.upstream_keepalive, self.drain_seconds, self.min_body_rate) < 0:
            problems.append("max_body, upstream_keepalive, drain_seconds, min_body_rate must not be negative")
        if min(self.max_head, self.max_headers, self.max_connections, self.early_data) < 1:
            problems.append("max_head, max_headers, max_connections and early_data must be positive")
        if self.retry_5xx not in (0, 1):
            problems.append("retry_5xx must be 0 or 1")
        if (
            min(
                self.connect_timeout,
                self.first_byte_timeout,
                self.idle_timeout,
                self.head_timeout,
                self.keepalive_timeout,
                self.send_timeout,
                self.tunnel_idle_timeout,
                self.health_interval,
                self.health_timeout,
            )
            <= 0
        ):
            problems.append("timeouts and intervals must be positive")
        if self.scaler == "kubernetes" and self.resource.count("/") != 1:
            problems.append("the kubernetes scaler needs RINGLB_RESOURCE=namespace/name")
        if self.scaler and not (self.scaler == "kubernetes" or self.scaler.startswith("http://")):
            problems.append("scaler must be empty, 'kubernetes' or an http:// URL")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("TLS needs both RINGLB_TLS_CERT and RINGLB_TLS_KEY")
        elif self.tls_cert and (error := tls.load_error(self.tls_cert, self.tls_key)):
            problems.append(error)
        if problems:
            raise SystemExit("balancer settings: " + "; ".join(problems))
