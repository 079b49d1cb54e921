"""The client side of the proxy: one protocol object per client connection.

llhttp (through httptools) parses the bytes as they arrive; this module turns its callbacks into
exchanges and enforces what llhttp leaves to the application: head size and field count, a
deadline for the whole head, a minimum body rate, one Host, an origin-form target, and the
order of pipelined answers. Requests parsed while an earlier one is still being answered wait
in a short queue; past a small bound the connection stops being read, so a client that sends
without reading cannot make the worker hold more than a few requests for it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final

import httptools

from ringlb_balancer import framing, states
from ringlb_balancer.exchange import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, Exchange
from ringlb_balancer.flow import FlowControl
from ringlb_balancer.tunnel import Tunnel

if TYPE_CHECKING:
    from ringlb_balancer.config import Settings
    from ringlb_balancer.engine import Engine

_NONE: Final[dict[bytes, bytes]] = {}
_NO_FIELDS: Final[frozenset[bytes]] = frozenset()
MAX_QUEUED: Final = 4  # pipelined requests parsed ahead of the one being answered
# llhttp parses a whole read and cannot be paused (httptools): one read of pipelined heads can
# queue more than MAX_QUEUED before reading stops. Past this many, the connection is refused.
MAX_PIPELINED: Final = 16
BODY_RATE_GRACE = 5.0  # seconds before the minimum body rate applies


class Reject(Exception):
    """A request refused while parsing; ``data`` is the complete answer to send."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data


class ClientConnection(FlowControl):
    """An asyncio protocol, duck-typed: without the ``asyncio.Protocol`` base, mypyc compiles it
    as a native class whose fields are C struct members (see ``setup.py``). Its reading side is
    the ``states.CLIENT`` machine; its answers are the exchanges in ``queue``, in request order."""

    __slots__ = (
        "admin",
        "body_bytes",
        "body_since",
        "body_wire",
        "client_ip",
        "corked",
        "early",
        "early_size",
        "engine",
        "head_wire",
        "headers",
        "loop",
        "parser",
        "parsing",
        "proto",
        "queue",
        "requests",
        "since",
        "state",
        "trailer_bytes",
        "tunnel",
        "url",
    )

    def __init__(self, engine: Engine, admin: bool) -> None:
        super().__init__()
        self.engine = engine
        self.admin = admin  # the admin listener: control endpoints only
        self.proto = b"https" if engine.settings.tls_cert and not admin else b"http"  # TLS: public listener only
        self.loop = engine.loop
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        self.queue: deque[Exchange] = deque()
        self.parsing: Exchange | None = None  # whose body is being received
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_wire = 0  # bytes received since the current head began
        self.body_wire = 0  # bytes received since the current body began, framing included
        self.state = states.C_IDLE
        self.since = engine.now  # start of the head (the accept, for the first), or of idleness
        self.body_since = 0.0
        self.body_bytes = 0
        self.trailer_bytes = 0
        self.requests = 0  # heads parsed on this connection
        self.corked: list[bytes] | None = None
        self.tunnel: Tunnel | None = None  # once the replica said 101
        self.early: list[bytes] = []  # bytes after an Upgrade head, before the replica's 101
        self.early_size = 0

    def move(self, event: int) -> None:
        self.state = states.client_move(self.state, event)

    def clock(self) -> float:
        return self.engine.now

    # -- connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # a stream's (asyncio says BaseTransport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0].encode() if peer else b""
        self.engine.accepted(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state = states.C_CLOSED
        self.engine.clients.pop(self, None)
        if self.tunnel is not None:
            self.tunnel.end()
        for exchange in self.queue:
            exchange.client_gone()
        self.queue.clear()

    def eof_received(self) -> bool:
        # A half-closed client still gets its answers; the connection closes after them.
        tunnel = self.tunnel
        if tunnel is not None:
            return tunnel.eof_from_client()
        if self.state == states.C_BODY or self.state == states.C_UPGRADE:
            self.close()  # the body can never complete; the upgrade has no one left to talk to
            return False
        if not self.queue:
            return False
        for exchange in self.queue:
            exchange.keep_alive = False
        return True

    def writes_paused(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client_congested(True)
        elif self.queue:
            self.queue[0].client_congested(True)

    def writes_resumed(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client_congested(False)
        elif self.queue:
            self.queue[0].client_congested(False)

    def write(self, data: bytes) -> None:
        if self.corked is not None:
            self.corked.append(data)
        elif not self.closed:
            transport = self.transport
            assert transport is not None
            transport.write(data)

    def cork(self) -> None:
        """Collect writes until ``uncork``: a small answer parsed from one read (head, body,
        end) then leaves in one send instead of three; the syscalls were the largest cost."""
        if self.corked is None:
            self.corked = []

    def uncork(self) -> None:
        corked, self.corked = self.corked, None
        if corked and not self.closed:
            transport = self.transport
            assert transport is not None
            transport.write(b"".join(corked) if len(corked) > 1 else corked[0])

    def close(self) -> None:
        if not self.closed:
            self.uncork()
            self.closed = True
            self.state = states.C_CLOSED
            transport = self.transport
            assert transport is not None
            transport.close()
            self.engine.clients.pop(self, None)  # the slot is free now, not when the loop says so

    def abort(self) -> None:
        """End the connection with a reset: an answer cut short must not look complete."""
        self.corked = None
        self.closed = True
        self.state = states.C_CLOSED
        transport = self.transport
        assert transport is not None
        transport.abort()
        self.engine.clients.pop(self, None)

    def maybe_resume(self) -> None:
        """Read again unless a bound still says no: queued requests, answers not drained, or
        early bytes of an upgrade past their bound."""
        if (
            len(self.queue) <= MAX_QUEUED
            and not self.write_paused
            and not self.closed
            and self.state != states.C_UPGRADE
            and self.state != states.C_CLOSED
        ):
            exchange = self.parsing
            if exchange is None or exchange.conn is None or not exchange.conn.write_paused:
                self.resume()

    # -- bytes in -----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == states.C_TUNNEL:
            tunnel = self.tunnel
            assert tunnel is not None  # the state says a tunnel is open
            tunnel.from_client(data)
            return
        if state == states.C_UPGRADE:
            self.hold_early(data)
            return
        if state == states.C_CLOSED:
            return
        if state == states.C_IDLE:
            self.move(states.HEAD_BYTES)
            if self.requests:
                # The first head's deadline runs from the accept (this object's creation): a TLS
                # handshake, which comes before connection_made, counts against it.
                self.since = self.engine.now
            self.head_wire += len(data)
        elif state == states.C_HEAD:
            self.head_wire += len(data)
        else:
            self.body_wire += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            if rest:
                self.hold_early(rest)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, Reject):
                self.engine.log.error("request parser callback failed", exc_info=cause)
            self.refuse(cause.data if isinstance(cause, Reject) else framing.error(400, f"bad request: {exc}"))
            return
        except httptools.HttpParserError as exc:
            self.refuse(framing.error(400, f"malformed request: {exc}"))
            return
        if self.state == states.C_BODY:
            limit = self.engine.settings.max_body
            if limit and self.body_bytes > limit:
                self.refuse(framing.error(413, f"request body exceeds {limit} bytes (RINGLB_MAX_BODY)"))
                return
            if limit and self.body_wire > 2 * limit + self.engine.settings.max_head:
                # Chunk sizes and extensions are bytes too: bounded with the body they frame.
                self.refuse(framing.error(413, f"chunked framing of the request body exceeds {2 * limit} bytes"))
                return
        elif self.state == states.C_HEAD and self.head_wire > self.engine.settings.max_head:
            # httptools holds a field until its end: bound the unfinished head by the wire.
            self.refuse(framing.error(431, f"request head exceeds {self.engine.settings.max_head} bytes"))
            return
        queue = self.queue
        if queue:
            # Started only now, when llhttp has checked all it received: a request that turns
            # out malformed later in the same read never reaches a replica.
            if not queue[0].started:
                queue[0].start()
            if len(queue) > MAX_QUEUED:
                self.pause()

    def hold_early(self, data: bytes) -> None:
        """Bytes sent after an Upgrade head: held for the tunnel, up to ``early_data``. Past it
        the connection ends: a WebSocket client sends nothing before the 101 (RFC 6455 §4.1),
        and pausing instead would also hide the client's close until the first-byte deadline."""
        if self.closed:
            return
        self.early.append(data)
        self.early_size += len(data)
        if self.early_size > self.engine.settings.early_data:
            self.early, self.early_size = [], 0
            self.close()

    def refuse(self, answer: bytes) -> None:
        """A request that cannot be parsed: answer after those before it, then close."""
        refused, self.parsing = self.parsing, None
        if refused is not None:
            # Its head was parsed but not the rest: it is never answered; the refusal takes its place.
            if refused.started:
                refused.client_refused()
                if refused.response_started:
                    self.abort()  # part of its answer is out: a refusal after it would look like its end
                    return
            try:
                self.queue.remove(refused)
            except ValueError:
                pass  # already answered (the replica answered before the whole body came)
        self.state = states.client_move(self.state, states.CLOSE)  # nothing more is read
        self.queue.append(Exchange.canned(self, answer))
        if not self.queue[0].started:
            self.queue[0].start()
        self.pause()

    # -- llhttp callbacks ---------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        if self.state == states.C_IDLE:
            # A pipelined head began inside a read: from here its deadline and size bound apply.
            self.move(states.HEAD_BYTES)
            self.since = self.engine.now
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state == states.C_BODY:  # a trailer field: counted, then dropped
            self.trailer_bytes += len(name) + len(value) + 4
            if self.trailer_bytes > self.engine.settings.max_head:
                raise Reject(framing.error(431, f"trailer section exceeds {self.engine.settings.max_head} bytes"))
            return
        self.headers.append((name, value))  # sizes are checked once the head is complete

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            # llhttp reads a request line without a version as HTTP/0.9; no replica speaks it.
            raise Reject(
                framing.error(400 if version < "1.0" else 505, f"HTTP/{version} is not supported: use HTTP/1.1")
            )
        http10 = version == "1.0"
        method = parser.get_method()
        keep_alive = parser.should_keep_alive()
        if method == b"CONNECT":
            raise Reject(
                framing.error(
                    405,
                    "CONNECT is not supported: ringlb is a reverse proxy",
                    extra=((b"Allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),),
                )
            )
        target = self.url
        if not framing.valid_target(target):
            raise Reject(framing.error(400, "request target must be a path of visible ASCII (origin form)"))
        engine = self.engine
        settings = engine.settings
        headers = self.headers
        if len(headers) > settings.max_headers:
            raise Reject(framing.error(431, f"more than {settings.max_headers} header fields"))
        key_header = engine.key_header
        key_fields = engine.key_fields if not key_header else _NO_FIELDS
        key: bytes | None = None
        captured: dict[bytes, bytes] | None = None
        hosts = 0
        length = -1
        chunked = False
        expect = False
        upgrade = None
        forwarded_for = None
        named: set[bytes] = set()
        kept: list[bytes] = []
        size = len(target)
        for name, value in headers:
            size += len(name) + len(value)
            lower = name.lower()
            if lower == key_header:
                if key is not None:
                    raise Reject(
                        framing.error(400, f"more than one {name.decode('latin-1')} header: send one routing key")
                    )
                key = value
            elif lower in key_fields:
                if captured is None:
                    captured = {}
                seen = captured.get(lower)
                if seen is None:
                    captured[lower] = value
                elif lower == b"cookie":
                    captured[lower] = seen + b"; " + value  # RFC 9110 §5.3 would join with ", "; cookies use "; "
                else:
                    raise Reject(
                        framing.error(400, f"more than one {name.decode('latin-1')} header: send one routing key")
                    )
            if lower in framing.REQUEST_DROPPED:
                if lower == b"host":
                    hosts += 1
                elif lower == b"content-length":
                    length = int(value)  # llhttp has checked it: digits, one value
                elif lower == b"transfer-encoding":
                    # llhttp refuses other codings too, but only after this callback returns.
                    coding = value.strip().lower()
                    if coding != b"chunked":
                        if coding.rsplit(b",", 1)[-1].strip() != b"chunked":
                            raise Reject(framing.error(400, "Transfer-Encoding must end in chunked"))
                        # gzip, chunked: the balancer would forward the gzip bytes unlabelled
                        raise Reject(
                            framing.error(
                                501,
                                f"transfer coding {value.decode('latin-1')!r} is not "
                                "supported: send the body with Transfer-Encoding: chunked only",
                            )
                        )
                    chunked = True
                elif lower == b"expect":
                    if value.lower() != b"100-continue":
                        raise Reject(framing.error(417, "only Expect: 100-continue is supported"))
                    expect = True
                elif lower == b"connection":
                    named |= framing.connection_tokens(value)
                elif lower == b"upgrade":
                    upgrade = value
                elif lower == b"x-forwarded-for":
                    forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
                continue
            if lower == b"via" and engine.via_marker in value:
                raise Reject(framing.error(508, "forwarding loop: this request already passed this balancer"))
            kept.append(b"%s: %s\r\n" % (name, value))
        if size + 4 * len(headers) > settings.max_head:
            raise Reject(framing.error(431, f"request head exceeds {settings.max_head} bytes"))
        if hosts > 1 or (hosts == 0 and not http10):
            raise Reject(framing.error(400, "a request needs exactly one Host header"))
        if upgrade is not None and (b"upgrade" not in named or not parser.should_upgrade()):
            upgrade = None
        if upgrade is not None and (chunked or length > 0):
            # Its body would have to be forwarded before the switch, and a replica that refuses
            # the upgrade reads it as the next request: no upgrade request carries one here.
            raise Reject(framing.error(400, "an Upgrade request must not have a body"))
        if named:
            kept = [line for line in kept if line.split(b":", 1)[0].lower() not in named]
        mode = BODY_CHUNKED if chunked else BODY_LENGTH if length > 0 else BODY_NONE
        limit = engine.settings.max_body
        if limit and length > limit:
            raise Reject(framing.error(413, f"request body exceeds {limit} bytes (RINGLB_MAX_BODY)"))
        if not key_header:
            key = engine.key_plan.extract(target, captured or _NONE, self.client_ip)
        ip = self.client_ip
        xff = forwarded_for + b", " + ip if forwarded_for is not None else ip
        if key is not None:
            # The key this request was hashed by, whatever its source: a replica keeping per-key
            # state (a cache) needs the balancer's notion of "the same key", not its own guess.
            kept.append(
                b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nVia: %s\r\nX-Ringlb-Key: %s\r\n"
                % (xff, self.proto, engine.via, key)
            )
        else:
            kept.append(b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nVia: %s\r\n" % (xff, self.proto, engine.via))
        if mode == BODY_CHUNKED:
            kept.append(b"Transfer-Encoding: chunked\r\n")
        elif mode == BODY_LENGTH:
            kept.append(b"Content-Length: %d\r\n" % length)
        elif method not in (b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE") and upgrade is None:
            kept.append(b"Content-Length: 0\r\n")
        if upgrade is not None:
            kept.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n" % upgrade)
        kept.append(b"\r\n")
        exchange = Exchange(self, method, target, http10, keep_alive, b"".join(kept), key, mode, expect, upgrade)
        self.requests += 1
        if len(self.queue) >= MAX_PIPELINED:
            raise Reject(framing.error(503, f"more than {MAX_PIPELINED} pipelined requests ahead of their answers"))
        self.move(
            states.HEAD_UPGRADE if upgrade is not None else states.HEAD_BODY if mode != BODY_NONE else states.HEAD_DONE
        )
        self.body_since = engine.now
        self.body_bytes = 0
        self.body_wire = 0
        self.head_wire = 0
        if exchange.control:
            exchange.headers = self.headers
        self.parsing = exchange
        self.queue.append(exchange)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        exchange = self.parsing
        assert exchange is not None  # llhttp calls on_body between on_headers_complete and the end
        if exchange.control and self.body_bytes > self.engine.control_max_body:
            raise Reject(framing.error(413, f"request body exceeds {self.engine.control_max_body} bytes"))
        limit = self.engine.settings.max_body
        if limit and self.body_bytes > limit:  # here, not after the read: the body may end in it
            raise Reject(framing.error(413, f"request body exceeds {limit} bytes (RINGLB_MAX_BODY)"))
        exchange.client_body(body)

    def on_message_complete(self) -> None:
        # Ready for the next message here, not in an on_message_begin: one callback fewer per
        # request (httptools calls only the callbacks a protocol defines).
        exchange = self.parsing
        self.parsing = None
        if self.state == states.C_BODY:
            self.move(states.BODY_DONE)
        self.since = self.engine.now
        self.url = b""
        self.headers = []
        self.trailer_bytes = 0
        if exchange is not None:
            exchange.client_done()

    # -- answers out --------------------------------------------------------------------
    def finished(self, exchange: Exchange) -> None:
        """``exchange`` (the head of the queue) has written its whole answer."""
        if self.queue and self.queue[0] is exchange:
            self.queue.popleft()
        if self.closed:
            return  # nothing more goes out: queued requests are never sent for a client gone
        if not exchange.keep_alive:  # as its head said: a drain that began since waits for the next
            self.close()
            return
        self.since = self.engine.now
        if self.queue:
            self.queue[0].start()
        if self.read_paused:
            self.maybe_resume()

    def upgraded(self, tunnel: Tunnel) -> None:
        """The replica answered 101: from now on this connection is a byte tunnel."""
        self.move(states.UPGRADED)
        self.tunnel = tunnel
        early, self.early, self.early_size = self.early, [], 0
        for data in early:
            tunnel.from_client(data)
        self.resume()

    def upgrade_refused(self) -> None:
        """The replica answered the Upgrade request otherwise: bytes the client sent for the
        tunnel are dropped, and the connection ends after that answer (its head said so)."""
        self.move(states.REFUSED)
        self.early, self.early_size = [], 0

    def housekeeping(self, now: float, settings: Settings) -> None:
        """Deadlines that llhttp leaves to the application, checked once a second: every state
        has one, so no connection holds a slot forever."""
        if self.closed:
            return
        if self.write_paused and now - self.write_paused_since > settings.send_timeout:
            self.abort()  # an answer (or tunnel bytes) the client has not read for send_timeout
            return
        state = self.state
        if state == states.C_TUNNEL:
            tunnel = self.tunnel
            if tunnel is not None and now - tunnel.last_io > settings.tunnel_idle_timeout:
                tunnel.end()
        elif state == states.C_HEAD and now - self.since > settings.head_timeout:
            self.refuse(framing.error(408, f"request head not received within {settings.head_timeout:g}s"))
        elif state == states.C_BODY and not self.read_paused:
            elapsed = now - self.body_since
            if elapsed > BODY_RATE_GRACE and self.body_bytes < settings.min_body_rate * elapsed:
                self.refuse(framing.error(408, f"request body slower than {settings.min_body_rate} bytes/s"))
        elif state == states.C_IDLE and not self.queue and now - self.since > settings.keepalive_timeout:
            self.close()

    @property
    def idle(self) -> bool:
        """Between requests with nothing to answer: closing it loses no request."""
        return self.state == states.C_IDLE and not self.queue

    @property
    def unfinished_head(self) -> bool:
        """No complete request yet: a half-sent head, or nothing since the connection opened."""
        if self.queue:
            return False  # an answer is in flight: closing would cut it
        return self.state == states.C_HEAD or (self.state == states.C_IDLE and self.requests == 0)
