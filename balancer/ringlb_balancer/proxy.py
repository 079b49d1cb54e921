"""The per-request path: pick a replica by hashing the request key and forward to it.

This is the hot path of the product, written as a plain WSGI callable rather than a Flask view:
Flask's request object, routing and response object cost more than the forwarding itself.
Everything that depends only on the membership is computed when the membership changes
(``Routing``); a request costs one shared-memory read, one hash and one table lookup before
its bytes go out on a pooled keep-alive connection.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote

from ringlb_balancer import hashing, metrics
from ringlb_balancer.config import Settings
from ringlb_balancer.routing import Routing, RoutingStore
from ringlb_balancer.shared import EJECTED, SharedState
from ringlb_balancer.upstream import Response, Upstream, UpstreamError

StartResponse = Callable[..., Any]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the balancer sets itself.
_DROP = frozenset(
    {
        "HTTP_CONNECTION", "HTTP_KEEP_ALIVE", "HTTP_PROXY_CONNECTION", "HTTP_TE", "HTTP_TRAILER",
        "HTTP_TRANSFER_ENCODING", "HTTP_UPGRADE", "HTTP_HOST", "HTTP_X_FORWARDED_FOR",
        "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
    }
)
_HEADER_NAMES: dict[str, str] = {}


def _header_name(environ_key: str) -> str:
    name = _HEADER_NAMES.get(environ_key)
    if name is None:
        name = _HEADER_NAMES[environ_key] = environ_key[5:].replace("_", "-").title()
    return name


def seed_error(message: str) -> bytes:
    return json.dumps({"message": message, "status": "failure"}).encode()


class Proxy:
    """Forwards requests for one worker process; holds that process's connection pools."""

    def __init__(self, settings: Settings, shared: SharedState, store: RoutingStore) -> None:
        self.settings = settings
        self.shared = shared
        self.store = store
        self.upstreams: list[Upstream] = []
        self.requests: list[Any] = []
        self.routing: Routing | None = None
        self.consecutive_5xx: list[int] = []

    def _switch(self, routing: Routing) -> None:
        """Rebuild the per-member objects when the membership changed; keep the pools of members
        that stayed at the same address."""
        old = {u.address: u for u in self.upstreams}
        self.upstreams = []
        for m in routing.membership.members:
            up = old.pop((m.host, m.port), None) or Upstream(
                m.host, m.port, self.settings.connect_timeout, self.settings.read_timeout
            )
            self.upstreams.append(up)
        for up in old.values():
            up.close()
        self.requests = [metrics.REQUESTS.labels(m.name, "2xx") for m in routing.membership.members]
        self.consecutive_5xx = [0] * len(self.upstreams)
        self.shared.clear_row()  # member indexes change meaning with the membership
        self.routing = routing
        metrics.REVISION.set(routing.membership.revision)

    def key(self, environ: dict[str, Any], routing: Routing) -> str:
        value = environ.get(routing.key_environ)
        if value and routing.membership.key.source == "cookie":
            try:
                morsel = SimpleCookie(value).get(routing.membership.key.name)
            except CookieError:
                morsel = None
            value = morsel.value if morsel else None
        # No key: a random one, as the seed did with its random 6-digit request ids.
        return value or str(random.randint(100_000, 999_999))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        routing = self.store.current()
        if routing is not self.routing:
            self._switch(routing)
        if not self.upstreams:
            return self._fail(start_response, "503 Service Unavailable", "<Error> no replica is available", "empty")

        length_text = environ.get("CONTENT_LENGTH")
        if length_text:
            try:
                length = int(length_text)
            except ValueError:
                return self._fail(start_response, "400 Bad Request", "<Error> invalid Content-Length", "bad_request")
            if length > self.settings.max_body:
                return self._too_large(start_response)
            body = environ["wsgi.input"].read(length) if length else b""
        elif "chunked" in environ.get("HTTP_TRANSFER_ENCODING", ""):
            body = environ["wsgi.input"].read(self.settings.max_body + 1)
            if len(body) > self.settings.max_body:
                return self._too_large(start_response)
        else:
            body = b""

        method = environ["REQUEST_METHOD"]
        path = quote(environ.get("PATH_INFO", "/").encode("latin-1"), safe="/:@!$&'()*+,;=-._~%")
        query = environ.get("QUERY_STRING")
        target = f"{path}?{query}" if query else path
        head = [f"{method} {target} HTTP/1.1\r\n"]
        for k, v in environ.items():
            if k[:5] == "HTTP_" and k not in _DROP:
                head.append(f"{_header_name(k)}: {v}\r\n")
        if environ.get("CONTENT_TYPE"):
            head.append(f"Content-Type: {environ['CONTENT_TYPE']}\r\n")
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        client = environ.get("REMOTE_ADDR", "")
        head.append(f"X-Forwarded-For: {forwarded}, {client}\r\n" if forwarded else f"X-Forwarded-For: {client}\r\n")
        head.append(f"X-Forwarded-Proto: {environ['wsgi.url_scheme']}\r\n")
        if "HTTP_HOST" in environ:
            head.append(f"X-Forwarded-Host: {environ['HTTP_HOST']}\r\n")
        head.append(f"Content-Length: {len(body)}\r\n" if body or method not in IDEMPOTENT else "")

        key = self.key(environ, routing)
        strategy = routing.strategy
        bounded = routing.membership.hashing.bounded_load
        if bounded:
            index = hashing.bounded_choice(
                self._healthy(strategy.preference(key)),
                self.shared.total_inflight(len(self.upstreams)),
                bounded,
            )
        else:
            index = strategy.owner(key)
            if self.shared.ejected(index):
                index = next(self._healthy(strategy.preference(key)))
        idempotent = method in IDEMPOTENT
        head_only = method == "HEAD"
        tried = 0
        fallback = None
        while True:
            tried += 1
            member = routing.membership.members[index]
            data = ("".join(head) + f"Host: {member.host}:{member.port}\r\n\r\n").encode("latin-1") + body
            slot = self.shared.slot(index)
            self.shared.inflight[slot] += 1
            try:
                response: Response | None = self.upstreams[index].request(data, head_only)
                error = None
            except UpstreamError as exc:
                response, error = None, exc
            finally:
                self.shared.inflight[slot] -= 1
            if response is not None and response.status < 500:
                self.consecutive_5xx[index] = 0
                break
            self._note_failure(index, member.name, error)
            retryable = idempotent or (error is not None and not error.sent)
            if not retryable or tried >= self.settings.max_attempts:
                break
            if fallback is None:
                fallback = (i for i in self._healthy(strategy.preference(key)) if i != index)
            nxt = next(fallback, None)
            if nxt is None:
                break
            metrics.RETRIES.labels(routing.membership.members[nxt].name).inc()
            index = nxt

        if response is None:
            return self._fail(start_response, "502 Bad Gateway", f"<Error> replica {member.name} failed: {error}", "upstream")
        metrics.LATENCY.observe(time.perf_counter() - started)
        if response.status == 404:
            # The seed API's answer for a path no replica serves.
            body_out = seed_error(
                f"<Error> '{environ.get('PATH_INFO', '/')}' endpoint does not exist in server replicas"
            )
            start_response("400 Bad Request", [("Content-Type", "application/json"), ("Content-Length", str(len(body_out)))])
            return [body_out]
        if response.status < 300:
            self.requests[index].inc()
        else:
            metrics.REQUESTS.labels(member.name, f"{response.status // 100}xx").inc()
        headers = response.headers
        headers.append(("Content-Length", str(len(response.body))))
        start_response(f"{response.status} {response.reason}", headers)
        return [response.body]

    def _healthy(self, preference: Iterable[int]) -> Iterable[int]:
        """Preference order with ejected members moved to the end: when every member looks
        down, trying them anyway beats refusing the request."""
        ejected = []
        for index in preference:
            if self.shared.ejected(index):
                ejected.append(index)
            else:
                yield index
        yield from ejected

    def _note_failure(self, index: int, name: str, error: UpstreamError | None) -> None:
        """Passive health: a connection failure ejects at once; 5xx answers after a run."""
        if error is None:
            self.consecutive_5xx[index] += 1
            if self.consecutive_5xx[index] < self.settings.failures_to_eject:
                return
        if not self.shared.ejected(index):
            self.shared.set_health(index, EJECTED)
            metrics.EJECTIONS.labels(name, "5xx" if error is None else "connection").inc()

    def _too_large(self, start_response: StartResponse) -> list[bytes]:
        return self._fail(
            start_response, "413 Content Too Large",
            f"<Error> request body exceeds {self.settings.max_body} bytes", "too_large",
        )

    @staticmethod
    def _fail(start_response: StartResponse, status: str, message: str, reason: str) -> list[bytes]:
        if status.startswith("5"):
            metrics.FAILURES.labels(reason).inc()
        body = seed_error(message)
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
