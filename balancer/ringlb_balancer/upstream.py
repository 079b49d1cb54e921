"""The replica side of the proxy: keep-alive connections, each parsing answers with llhttp.

A connection carries one exchange at a time and hands every parsed piece to it at once, so an
answer streams to the client as it arrives. Idle connections are reused only while younger than
``upstream_keepalive``: the replicas' gunicorn closes idle ones after 2 s, and a request sent on a
connection the replica is closing is one that cannot always be sent again.
"""

from __future__ import annotations

import asyncio
import select
from typing import TYPE_CHECKING

import httptools

from ringlb_balancer import framing, states
from ringlb_balancer.flow import FlowControl
from ringlb_balancer.tunnel import Tunnel

if TYPE_CHECKING:
    from ringlb_balancer.engine import Engine
    from ringlb_balancer.exchange import Exchange

MAX_RESPONSE_HEAD = 64 * 1024


class BadAnswer(Exception):
    """An answer the proxy does not relay, or bytes a replica sent outside the answer it owed."""


class UpstreamConnection(FlowControl):
    """An asyncio protocol, duck-typed like ``ClientConnection`` so that mypyc compiles it. Its
    life is the ``states.UPSTREAM`` machine: it goes back to its pool only from ``U_IDLE``."""

    __slots__ = (
        "awaiting_head",
        "closing_after",
        "exchange",
        "feeding",
        "got_bytes",
        "head_fields",
        "head_wire",
        "headers",
        "informational",
        "last_io",
        "loop",
        "parser",
        "pool",
        "readable",
        "release_after_feed",
        "reused",
        "skip_complete",
        "state",
        "tunnel",
        "until_close",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        super().__init__()
        self.pool = pool
        self.loop = pool.loop
        self.state = states.U_CONNECTING
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_wire = 0  # bytes received while the answer's head is incomplete
        self.head_fields = 0
        self.awaiting_head = False
        self.informational = False
        self.skip_complete = False
        self.closing_after = False  # the replica said Connection: close
        self.until_close = False  # the body ends when the replica closes
        self.reused = False
        self.got_bytes = False
        self.tunnel: Tunnel | None = None
        self.readable: select.poll | None = None  # asks the kernel whether bytes wait unread
        self.last_io = 0.0
        self.feeding = False  # inside llhttp's feed: more of this read may follow the answer
        self.release_after_feed = False

    def move(self, event: int) -> None:
        self.state = states.upstream_move(self.state, event)

    def clock(self) -> float:
        return self.pool.engine.now

    # -- transport ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # a stream's (asyncio says BaseTransport)
        self.transport = transport
        self.move(states.CONNECTED)
        raw = transport.get_extra_info("socket")
        if raw is not None:
            self.readable = select.poll()
            self.readable.register(raw.fileno(), select.POLLIN)

    def send(self, data: bytes) -> None:
        """The head of a new request (and what of its body is here): the connection is taken."""
        self.move(states.ASSIGNED)
        self.headers = []
        self.head_fields = 0
        self.got_bytes = False
        self.awaiting_head = True
        self.head_wire = 0
        self.last_io = self.pool.engine.now
        transport = self.transport
        assert transport is not None
        transport.write(data)

    def sent(self) -> None:
        """The request's last byte, as framed, is written."""
        self.move(states.SENT)

    def stray_pending(self) -> bool:
        """Whether the replica sent something (or closed) while this connection was idle: then
        it is out of step, and the next answer read from it would not be the next request's.
        The event loop may not have read those bytes yet (they can become readable in the same
        turn as the request about to use this connection), so the kernel is asked: one poll(2)
        with no timeout, cheaper than a MSG_PEEK read and its EAGAIN exception."""
        readable = self.readable
        return readable is not None and bool(readable.poll(0))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state = states.U_CLOSED
        self.readable = None
        self.pool.forget(self)
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.end()
            return
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        if self.until_close and exchange.response_started and exc is None:
            exchange.response_done(self)  # the close is how this answer ends
        elif self.reused and not self.got_bytes:
            # The replica closed an idle connection as we used it: not a failure of the replica.
            exchange.failed(self, "closed a kept-alive connection without answering", broken=False)
        else:
            exchange.failed(self, f"connection lost{': ' + str(exc) if exc else ''}", broken=True)

    def eof_received(self) -> bool:
        tunnel = self.tunnel
        if tunnel is not None:
            return tunnel.eof_from_replica()
        return False

    def writes_paused(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.client.pause()
        elif self.tunnel is not None:
            self.tunnel.replica_congested(True)

    def writes_resumed(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.client.maybe_resume()
        elif self.tunnel is not None:
            self.tunnel.replica_congested(False)

    def resume(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.last_io = self.pool.engine.now
            transport = self.transport
            assert transport is not None
            transport.resume_reading()

    def answered(self) -> None:
        """The answer ended as framed: back to the pool if the machine says the connection is
        in step (its request was sent whole, nothing else is owed), else closed."""
        self.exchange = None
        if self.closed:
            return  # the close was how the answer ended
        self.move(states.ANSWERED)
        if self.state == states.U_IDLE and not self.closing_after:
            if self.read_paused:
                self.resume()
            if self.feeding:
                # Back to the pool once the rest of this read is parsed: bytes after the answer
                # (a fake answer after a 204) must find no exchange, not the next request's.
                self.release_after_feed = True
            else:
                self.pool.release(self)
        else:
            self.abort()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.state = states.U_CLOSED
            self.exchange = None
            self.pool.forget(self)
            transport = self.transport
            assert transport is not None
            transport.close()

    def abort(self) -> None:
        self.closed = True
        self.state = states.U_CLOSED
        self.exchange = None
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def tunnel_to(self, tunnel: Tunnel) -> None:
        """After a relayed 101: bytes flow both ways unparsed until the tunnel ends."""
        self.move(states.SWITCHED)
        self.tunnel = tunnel
        self.exchange = None
        self.resume()

    # -- bytes in -----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        # Attributes are read into locals before a None test: mypy would narrow ``self.tunnel``
        # for the rest of the method, and mypyc checks a narrowed read at run time.
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.from_replica(data)
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
        self.feeding = True
        try:
            self.parser.feed_data(data)
            if self.awaiting_head and self.head_wire > MAX_RESPONSE_HEAD:
                raise httptools.HttpParserError(f"answer head exceeds {MAX_RESPONSE_HEAD} bytes")
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            tunnel = self.tunnel  # set by the 101 this read carried
            if tunnel is not None and rest:
                tunnel.from_replica(rest)
        except httptools.HttpParserError as exc:
            exchange = self.exchange  # the one fed, or None if its answer completed
            cause = exc.__context__
            self.abort()
            if exchange is not None:
                exchange.failed(self, f"invalid answer: {cause or exc}", broken=True)
        finally:
            self.feeding = False
            client.uncork()
        if self.release_after_feed:
            self.release_after_feed = False
            if self.state == states.U_IDLE and not self.closed:
                self.pool.release(self)

    # -- llhttp callbacks (httptools calls only those defined: no on_url or on_status here; the
    # reason phrase is the standard one, as RFC 9112 §4 lets a proxy do)
    def on_message_begin(self) -> None:
        if self.exchange is None:
            # An answer begins after the one owed ended (more bytes than its framing said, a
            # body after a 204): those bytes must never reach the next request's client.
            raise BadAnswer("bytes after a complete answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_fields += 1
        if self.head_fields > self.pool.engine.settings.max_headers:
            raise BadAnswer(f"more than {self.pool.engine.settings.max_headers} header fields (RINGLB_MAX_HEADERS)")
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
            # the next answer gets a fresh parser. The old one still completes an empty body;
            # a body the replica sends anyway is refused by the fresh one (or by the pool).
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

    def __init__(self, name: str, host: str, port: int, engine: Engine) -> None:
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
            if since < horizon or conn.stray_pending():
                conn.abort()
                continue
            return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if self.closed or conn.closed or len(self.idle) >= 64:
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

    async def open(self, exchange: Exchange) -> None:
        """Connect, then hand the connection to ``exchange`` (through ``Engine.connect``)."""
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),  # type: ignore[type-var]  # a native (mypyc) class cannot subclass asyncio.Protocol: asyncio needs only its methods
                self.engine.settings.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            exchange.failed(
                None, f"cannot connect to {self.host}:{self.port}: {exc or 'timeout'}", broken=True, refused=True
            )
            return
        exchange.attach(conn)
