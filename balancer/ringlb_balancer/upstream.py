"""The replica side of the proxy: keep-alive connections, each parsing answers with llhttp.

A connection carries one exchange at a time and hands every parsed piece to it at once, so an
answer streams to the client as it arrives. Idle connections are reused only while younger than
``upstream_keepalive``: the replicas' gunicorn closes idle ones after 2 s, and a request sent on a
connection the replica is closing is one that cannot always be sent again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from ringlb_balancer import framing

if TYPE_CHECKING:
    from ringlb_balancer.client import ClientConnection
    from ringlb_balancer.engine import Engine
    from ringlb_balancer.exchange import Exchange

MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamConnection:
    """An asyncio protocol, duck-typed like ``ClientConnection`` so that mypyc compiles it."""

    __slots__ = (
        "awaiting_head", "closed", "closing_after", "exchange", "got_bytes", "head_wire", "headers",
        "informational", "last_io", "loop", "parser", "pool", "read_paused", "reused", "skip_complete",
        "transport", "tunnel", "until_close", "write_paused",
    )

    def __init__(self, pool: "UpstreamPool") -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_wire = 0  # bytes received while the answer's head is incomplete
        self.awaiting_head = False
        self.informational = False
        self.skip_complete = False
        self.closed = False
        self.closing_after = False  # the replica said Connection: close
        self.until_close = False  # the body ends when the replica closes
        self.reused = False
        self.got_bytes = False
        self.read_paused = False
        self.write_paused = False
        self.last_io = 0.0
        self.tunnel: ClientConnection | None = None

    # -- transport ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes) -> None:
        self.headers = []
        self.got_bytes = False
        self.awaiting_head = True
        self.head_wire = 0
        self.last_io = self.pool.engine.now
        self.transport.write(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.tunnel is not None:
            self.tunnel.close()
            return
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        if self.until_close and exchange.response_started:
            exchange.response_done(self)  # the close is how this answer ends
        elif self.reused and not self.got_bytes:
            # The replica closed an idle connection as we used it: not a failure of the replica.
            exchange.failed(self, "closed a kept-alive connection without answering", broken=False)
        else:
            exchange.failed(self, f"connection lost{': ' + str(exc) if exc else ''}", broken=True)

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            transport = self.tunnel.transport
            if transport is not None and transport.can_write_eof():
                transport.write_eof()
                return True
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.exchange.client.pause()
        elif self.tunnel is not None:
            self.tunnel.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.client.maybe_resume()
        elif self.tunnel is not None:
            self.tunnel.resume()

    def pause(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.last_io = self.pool.engine.now
            self.transport.resume_reading()  # type: ignore[union-attr]

    def release(self) -> None:
        """Back to the pool after a complete exchange (or closed, if that is not safe)."""
        self.exchange = None
        if self.read_paused:
            self.resume()
        self.pool.release(self)

    def abort(self) -> None:
        self.closed = True
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()

    def tunnel_to(self, client: "ClientConnection") -> None:
        """After a relayed 101: bytes flow both ways unparsed until either side closes."""
        self.tunnel = client
        self.exchange = None
        self.resume()

    # -- bytes in -----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        # Attributes are read into locals before a None test: mypy would narrow ``self.tunnel``
        # for the rest of the method, and mypyc checks a narrowed read at run time.
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.write(data)
            return
        exchange = self.exchange
        if exchange is None:
            self.abort()  # bytes nobody asked for: this connection is out of step
            return
        self.got_bytes = True
        self.last_io = self.pool.engine.now
        client = exchange.client
        if self.awaiting_head:
            self.head_wire += len(data)
        client.cork()
        try:
            self.parser.feed_data(data)
            if self.awaiting_head and self.head_wire > MAX_RESPONSE_HEAD:
                raise httptools.HttpParserError(f"answer head exceeds {MAX_RESPONSE_HEAD} bytes")
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0]:]
            tunnel = self.tunnel  # set by the 101 this read carried
            if tunnel is not None and rest:
                tunnel.write(rest)
        except httptools.HttpParserError as exc:
            exchange = self.exchange  # the one fed, or None if its answer completed
            self.abort()
            if exchange is not None:
                exchange.failed(self, f"invalid answer: {exc}", broken=True)
        finally:
            client.uncork()

    # -- llhttp callbacks (httptools calls only those defined: no on_message_begin, on_url or
    # on_status here; the reason phrase is the standard one, as RFC 9112 §4 lets a proxy do)
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.informational = True  # 100, 103: the final answer follows
            self.headers = []
            return
        self.awaiting_head = False
        exchange = self.exchange
        if exchange is None:
            return
        fields, length, chunked = framing.response_fields(self.headers)
        self.closing_after = not parser.should_keep_alive()
        self.until_close = length < 0 and not chunked and status not in (101, 204, 304)
        if exchange.head_only and status != 101:
            # llhttp cannot be told that a HEAD answer has no body: the exchange ends here and
            # the next answer gets a fresh parser. The old one still completes an empty body.
            self.parser = httptools.HttpResponseParser(self)
            self.skip_complete = length == 0 or status in (204, 304)
            self.until_close = False
        exchange.response_head(self, status, fields, length)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.skip_complete:
            self.skip_complete = False
            return
        exchange = self.exchange
        if exchange is not None:
            exchange.response_done(self)


class UpstreamPool:
    """Keep-alive connections from this worker to one replica."""

    def __init__(self, name: str, host: str, port: int, engine: "Engine") -> None:
        self.name = name
        self.host = host
        self.port = port
        self.engine = engine
        self.loop = engine.loop
        self.idle: list[tuple[float, UpstreamConnection]] = []
        self.closed = False

    def take(self) -> UpstreamConnection | None:
        horizon = self.engine.now - self.engine.settings.upstream_keepalive
        idle = self.idle
        while idle:
            since, conn = idle.pop()
            if conn.closed:
                continue
            if since < horizon:
                conn.abort()
                continue
            return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if self.closed or conn.closed or conn.closing_after or len(self.idle) >= 64:
            conn.abort()
            return
        conn.reused = True
        self.idle.append((self.engine.now, conn))

    def forget(self, conn: UpstreamConnection) -> None:
        for i, (_, c) in enumerate(self.idle):
            if c is conn:
                del self.idle[i]
                return

    def close(self) -> None:
        self.closed = True
        for _, conn in self.idle:
            conn.abort()
        self.idle.clear()

    async def open(self, exchange: "Exchange") -> None:
        """Connect, then hand the connection to ``exchange`` (through ``Engine.connect``)."""
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),  # type: ignore[type-var]
                self.engine.settings.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            exchange.failed(None, f"cannot connect to {self.host}:{self.port}: {exc or 'timeout'}",
                            broken=True, refused=True)
            return
        exchange.attach(conn)
