"""The balancer's gunicorn worker: an asyncio HTTP/1.1 proxy with the Flask app beside it.

Profiling the first design (a WSGI view forwarding with blocking sockets under gthread workers)
put the balancer's own CPU at ~450 µs a request, most of it gunicorn's thread hand-offs and
the GIL contention of blocking I/O, not routing. Here each worker runs one event loop: client
and replica connections are asyncio protocols, framing is ``http11``'s, and only the balancer's
own endpoints (/rep, /add, ...) go to the Flask app, on a small thread pool so a slow /add
never stalls forwarding.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import unquote

from gunicorn.workers.base import Worker

from ringlb_balancer import hashing, metrics
from ringlb_balancer.api import CONTROL_PATHS, seed_json
from ringlb_balancer.app import Balancer
from ringlb_balancer.config import Settings
from ringlb_balancer.http11 import (
    BadMessage,
    Request,
    Response,
    parse_request,
    parse_response,
    serialize_request,
    serialize_response,
)
from ringlb_balancer.membership import EMPTY
from ringlb_balancer.routing import Routing
from ringlb_balancer.shared import EJECTED

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_RESPONSE_BODY = 64 * 1024 * 1024
JSON = [("Content-Type", "application/json")]


class UpstreamError(Exception):
    """A replica failed; ``sent`` is False when the request surely never reached it."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class _Stale(Exception):
    """A pooled connection turned out closed before any answer: retry on a fresh one."""


def seed_error(message: str) -> bytes:
    return seed_json(message, "failure")


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a replica, carrying one request at a time."""

    def __init__(self, pool: "UpstreamPool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.head_only = False
        self.closed = False
        self.reused = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, head_only: bool) -> asyncio.Future[Response]:
        loop = self.pool.loop
        self.waiter = loop.create_future()
        self.head_only = head_only
        self.buf.clear()
        self.timer = loop.call_later(self.pool.settings.read_timeout, self._timed_out)
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter

    def _timed_out(self) -> None:
        self._finish(exc=UpstreamError(f"{self.pool.name}: no answer in {self.pool.settings.read_timeout:g}s", sent=True))
        self._close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            self._close()  # bytes nobody asked for: the connection is out of sync
            return
        self._try_parse(closed=False)

    def _try_parse(self, closed: bool) -> None:
        try:
            response = parse_response(self.buf, self.head_only, closed, MAX_RESPONSE_BODY)
        except BadMessage as exc:
            self._finish(exc=UpstreamError(f"{self.pool.name}: {exc}", sent=True))
            self._close()
            return
        if response is None:
            return
        self._finish(response=response)
        if response.keep_alive and not closed:
            self.pool.release(self)
        else:
            self._close()

    def _finish(self, response: Response | None = None, exc: BaseException | None = None) -> None:
        waiter, self.waiter = self.waiter, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if waiter is not None and not waiter.done():
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(response)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None:
            if not self.buf and self.reused:
                self._finish(exc=_Stale())
            else:
                self._try_parse(closed=True)
        self.pool.forget(self)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections from this worker to one replica."""

    def __init__(self, name: str, host: str, port: int, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.address = (host, port)
        self.settings = settings
        self.loop = loop
        self.idle: list[UpstreamConnection] = []
        self.max_idle = 64

    def release(self, conn: UpstreamConnection) -> None:
        if len(self.idle) < self.max_idle and not conn.closed:
            conn.reused = True
            self.idle.append(conn)
        else:
            conn._close()

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn._close()
        self.idle.clear()

    async def request(self, data: bytes, head_only: bool) -> Response:
        while self.idle:
            conn = self.idle.pop()
            if conn.closed:
                continue
            try:
                return await conn.send(data, head_only)
            except _Stale:
                continue  # the replica closed an idle connection: normal, not a failure
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), *self.address),
                self.settings.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise UpstreamError(f"{self.name}: cannot connect: {exc or 'timeout'}", sent=False) from None
        try:
            return await conn.send(data, head_only)
        except _Stale:
            raise UpstreamError(f"{self.name}: closed the connection without answering", sent=True) from None


class ClientConnection(asyncio.Protocol):
    """One client connection: requests parsed in order, answered in order."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.buf = bytearray()
        self.busy = False
        self.closing = False
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.last_active = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        self.engine.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.engine.clients.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last_active = time.monotonic()
        if not self.busy:
            self._next()
        elif len(self.buf) > self.engine.settings.max_body + 65536:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _next(self) -> None:
        try:
            parsed = parse_request(self.buf, self.engine.settings.max_body)
        except BadMessage as exc:
            self.reply(exc.status, _REASONS.get(exc.status, "Bad Request"), JSON, seed_error(f"<Error> {exc}"), False)
            return
        if parsed is None:
            return
        request, consumed = parsed
        del self.buf[:consumed]
        self.busy = True
        # Held here: the event loop keeps only weak references to tasks.
        self.task = self.engine.loop.create_task(self.engine.handle(request, self))

    def reply(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
              keep_alive: bool, content_length: int | None = None) -> None:
        if self.closing or self.transport is None:
            return
        keep_alive = keep_alive and self.engine.worker_alive()
        self.transport.write(serialize_response(status, reason, headers, body, keep_alive, content_length))
        self.busy = False
        self.last_active = time.monotonic()
        if not keep_alive:
            self.closing = True
            self.transport.close()
            return
        self.transport.resume_reading()
        if self.buf:
            self._next()


_REASONS = {400: "Bad Request", 413: "Content Too Large", 431: "Request Header Fields Too Large", 502: "Bad Gateway"}


@dataclass
class Active:
    """Per-member objects for one membership, index-aligned with its member list."""

    routing: Routing
    pools: list[UpstreamPool]
    answered: list[Any]  # the 2xx request counter of each member
    consecutive_5xx: list[int]


class Engine:
    """Routing and forwarding for one worker process."""

    def __init__(
        self, balancer: Balancer, loop: asyncio.AbstractEventLoop, worker_alive: Callable[[], bool], keepalive: float
    ) -> None:
        self.balancer = balancer
        self.keepalive = keepalive  # seconds an idle client connection is kept (gunicorn's setting)
        self.settings = balancer.settings
        self.shared = balancer.shared
        self.store = balancer.store
        self.loop = loop
        self.worker_alive = worker_alive
        self.clients: set[ClientConnection] = set()
        self.control_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ringlb-control")
        self.active = Active(Routing.build(EMPTY), [], [], [])

    # -- membership -------------------------------------------------------------------------
    def current(self) -> Active:
        """The per-member objects for the membership in force, rebuilt when it changed; pools
        of members that stayed are kept."""
        routing = self.store.current()
        if routing is self.active.routing:
            return self.active
        old = {(p.name, p.address): p for p in self.active.pools}
        pools = []
        for m in routing.membership.members:
            pool = old.pop((m.name, (m.host, m.port)), None)
            pools.append(pool or UpstreamPool(m.name, m.host, m.port, self.settings, self.loop))
        for pool in old.values():
            pool.close()
        answered = [metrics.REQUESTS.labels(m.name, "2xx") for m in routing.membership.members]
        self.shared.clear_row()
        self.active = Active(routing, pools, answered, [0] * len(pools))
        metrics.REVISION.set(routing.membership.revision)
        return self.active

    def key(self, request: Request, routing: Routing, client: ClientConnection) -> str:
        source = routing.membership.key.source
        if source == "header":
            value = request.lower.get(routing.key_header)
        elif source == "cookie":
            try:
                morsel = SimpleCookie(request.lower.get("cookie", "")).get(routing.membership.key.name)
            except CookieError:
                morsel = None
            value = morsel.value if morsel else None
        else:
            value = client.client_ip
        # No key: a random one, as the seed did with its random 6-digit request ids.
        return value or str(random.randint(100_000, 999_999))

    def healthy(self, preference: Any) -> Any:
        """Preference order with ejected members last: when all look down, trying them anyway
        beats refusing the request."""
        ejected = []
        for index in preference:
            if self.shared.ejected(index):
                ejected.append(index)
            else:
                yield index
        yield from ejected

    # -- requests ---------------------------------------------------------------------------
    async def handle(self, request: Request, client: ClientConnection) -> None:
        try:
            if request.path in CONTROL_PATHS:
                status, reason, headers, body = await self.loop.run_in_executor(
                    self.control_pool, self.call_flask, request, client
                )
                client.reply(status, reason, headers, body, request.keep_alive)
            else:
                await self.forward(request, client)
        except Exception as exc:  # never let one request take the worker down
            self.balancer.flask.logger.exception("request failed")
            metrics.FAILURES.labels("internal").inc()
            client.reply(500, "Internal Server Error", JSON, seed_error(f"<Error> balancer error: {exc}"), False)

    async def forward(self, request: Request, client: ClientConnection) -> None:
        started = time.perf_counter()
        # The request keeps this view to the end: a membership switched while it waits must not
        # re-index its retries. Shared flags and counters follow the membership in force, so
        # they are touched only while this view is still the active one.
        active = self.current()
        routing = active.routing
        pools = active.pools
        if not pools:
            metrics.FAILURES.labels("empty").inc()
            client.reply(503, "Service Unavailable", JSON, seed_error("<Error> no replica is available"), request.keep_alive)
            return
        key = self.key(request, routing, client)
        strategy = routing.strategy
        bounded = routing.membership.hashing.bounded_load
        if bounded:
            index = hashing.bounded_choice(
                self.healthy(strategy.preference(key)), self.shared.total_inflight(len(pools)), bounded
            )
        else:
            index = strategy.owner(key)
            if self.shared.ejected(index):
                index = next(self.healthy(strategy.preference(key)))
        method = request.method
        idempotent = method in IDEMPOTENT
        fallback = None
        tried = 0
        while True:
            tried += 1
            member = routing.membership.members[index]
            data = serialize_request(request, member.address, client.client_ip, "http")
            slot = self.shared.slot(index)
            self.shared.inflight[slot] += 1
            error: UpstreamError | None = None
            response: Response | None = None
            try:
                response = await pools[index].request(data, method == "HEAD")
            except UpstreamError as exc:
                error = exc
            finally:
                if self.active is active:
                    self.shared.inflight[slot] -= 1
            if response is not None and response.status < 500:
                active.consecutive_5xx[index] = 0
                break
            self.note_failure(active, index, error)
            if not (idempotent or (error is not None and not error.sent)) or tried >= self.settings.max_attempts:
                break
            if fallback is None:
                fallback = (i for i in self.healthy(strategy.preference(key)) if i != index)
            nxt = next(fallback, None)
            if nxt is None:
                break
            metrics.RETRIES.labels(routing.membership.members[nxt].name).inc()
            index = nxt
        metrics.LATENCY.observe(time.perf_counter() - started)
        if response is None:
            metrics.FAILURES.labels("upstream").inc()
            client.reply(502, "Bad Gateway", JSON, seed_error(f"<Error> replica {member.name} failed: {error}"), request.keep_alive)
            return
        if response.status == 404:
            path = unquote(request.path)
            client.reply(400, "Bad Request", JSON,
                         seed_error(f"<Error> '{path}' endpoint does not exist in server replicas"), request.keep_alive)
            return
        if response.status < 300:
            active.answered[index].inc()
        else:
            metrics.REQUESTS.labels(member.name, f"{response.status // 100}xx").inc()
        client.reply(response.status, response.reason, response.headers, response.body, request.keep_alive,
                     response.content_length if method == "HEAD" and response.content_length >= 0 else None)

    def note_failure(self, active: "Active", index: int, error: UpstreamError | None) -> None:
        """Passive health: a connection failure ejects at once, 5xx answers after a run."""
        if error is None:
            active.consecutive_5xx[index] += 1
            if active.consecutive_5xx[index] < self.settings.failures_to_eject:
                return
        if active is self.active and not self.shared.ejected(index):
            self.shared.set_health(index, EJECTED)
            name = active.routing.membership.members[index].name
            metrics.EJECTIONS.labels(name, "5xx" if error is None else "connection").inc()

    def call_flask(self, request: Request, client: ClientConnection) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Run the Flask app for one of the balancer's own endpoints (in the thread pool)."""
        path, _, query = request.target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, encoding="latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": "ringlb",
            "SERVER_PORT": "5000",
            "SERVER_PROTOCOL": request.version,
            "REMOTE_ADDR": client.client_ip,
            "CONTENT_LENGTH": str(len(request.body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(request.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in request.lower.items():
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name != "content-length":
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        status_line: list[str] = []
        headers: list[tuple[str, str]] = []

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            status_line[:] = [status]
            headers[:] = [(n, v) for n, v in response_headers if n.lower() != "content-length"]

        chunks = self.balancer.flask(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        code, _, reason = status_line[0].partition(" ")
        return int(code), reason, headers, body

    def close_idle(self, now: float) -> None:
        """Close keep-alive clients idle past gunicorn's ``keepalive`` and clients that never
        finished sending a request (slow-loris) within the read timeout."""
        keepalive = self.keepalive
        for client in list(self.clients):
            idle = now - client.last_active
            if not client.busy and (
                (not client.buf and idle > keepalive) or (client.buf and idle > self.settings.read_timeout)
            ):
                client.closing = True
                if client.transport is not None:
                    client.transport.close()


class ProxyWorker(Worker):
    """gunicorn worker class: ``worker_class = "ringlb_balancer.worker.ProxyWorker"``."""

    def init_process(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        super().init_process()

    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        self.loop.add_signal_handler(signal.SIGTERM, self._stop)
        self.loop.add_signal_handler(signal.SIGQUIT, self._stop)
        self.loop.add_signal_handler(signal.SIGINT, self._stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)

    def _stop(self) -> None:
        self.alive = False

    def run(self) -> None:
        engine = Engine(self.wsgi, self.loop, lambda: self.alive, self.cfg.keepalive)
        try:
            self.loop.run_until_complete(self._serve(engine))
        finally:
            engine.control_pool.shutdown(wait=False)
            self.loop.close()

    async def _serve(self, engine: Engine) -> None:
        servers = [
            await self.loop.create_server(lambda: ClientConnection(engine), sock=listener.sock, backlog=self.cfg.backlog)
            for listener in self.sockets
        ]
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                break
            engine.close_idle(time.monotonic())
            await asyncio.sleep(0.5)
        for server in servers:
            server.close()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while any(c.busy for c in engine.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for client in list(engine.clients):
            if client.transport is not None:
                client.transport.close()
