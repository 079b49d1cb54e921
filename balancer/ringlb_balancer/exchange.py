"""One request's life in the proxy: choose a replica, stream both ways, retry while it is safe.

An exchange is driven by callbacks from both sides (the client's parser, the replica's parser,
the transports' flow control), never by a task per request: a task and its wake-ups cost more
than the rest of the per-request work, and the callbacks already arrive in order.

Retries follow RFC 9110 §9.2.2: a request is sent again only while nothing of its answer has
reached the client, and only if it is idempotent with a body that can be replayed (kept while it
is small), or if it surely never left (the connection was refused).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote_to_bytes

from ringlb_balancer import framing
from ringlb_balancer.shared import HEALTH_AT
from ringlb_balancer.tunnel import Tunnel

if TYPE_CHECKING:
    from ringlb_balancer.client import ClientConnection
    from ringlb_balancer.engine import Active
    from ringlb_balancer.upstream import UpstreamConnection

BODY_NONE: Final = 0
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})  # RFC 9110 §9.2.2

MAX_PENDING_BODY = 256 * 1024  # request body bytes held while no replica connection takes them

# Where an exchange is, for the housekeeping pass and for what a failure means.
WAITING: Final = 0
SENDING: Final = 1
ANSWERING: Final = 2
DONE: Final = 3


class Exchange:
    # Defaults as class attributes: an exchange sets only what its request gives it, which is
    # measurably cheaper than setting thirty slots for every request. ``active`` is set by
    # ``start`` before any replica is chosen: the methods of the replica side assert it (one
    # compare, compiled) where they read it.
    active: Active | None = None
    index = -1
    conn: UpstreamConnection | None = None
    state = WAITING
    body_size = 0
    replayable = True
    written = False  # some byte of this request reached a replica connection
    broken = 0  # replica connections that failed after this request may have reached them
    started = False
    response_started = False
    framing_chunked = False
    discard = False
    canned_answer: bytes | None = None
    since = 0.0
    waiting_since = 0.0
    status = 0
    control_body: list[bytes] | None = None
    headers: list[tuple[bytes, bytes]] | None = None  # kept for control endpoints only

    def __init__(
        self,
        client: ClientConnection,
        method: bytes,
        target: bytes,
        http10: bool,
        keep_alive: bool,
        tail: bytes,
        key: bytes | None,
        mode: int,
        expect: bool,
        upgrade: bytes | None,
    ) -> None:
        self.client = client
        self.engine = engine = client.engine
        self.method = method
        self.target = target
        self.http10 = http10
        self.keep_alive = keep_alive and upgrade is None
        self.tail = tail  # header lines after Host, framing included, ending with the blank line
        self.key = key
        self.mode = mode
        self.expect = expect
        self.upgrade = upgrade
        self.head_only = method == b"HEAD"
        self.tried: list[int] = []
        self.body_log: list[bytes] = []  # framed body bytes not yet sent, or kept for a replay
        self.client_complete = mode == BODY_NONE
        self.control = client.admin or target.split(b"?", 1)[0] in engine.control_paths
        if self.control:
            self.control_body = []

    @classmethod
    def canned(cls, client: ClientConnection, answer: bytes) -> Exchange:
        """An exchange that only writes ``answer`` (a refusal) and then closes the connection."""
        exchange = cls(client, b"GET", b"/", False, False, b"", None, BODY_NONE, False, None)
        exchange.control = False
        exchange.canned_answer = answer
        return exchange

    # -- start --------------------------------------------------------------------------
    def start(self) -> None:
        """Called when this exchange reaches the head of its connection's queue."""
        self.started = True
        self.since = time.perf_counter()
        if self.canned_answer is not None:
            self.client.write(self.canned_answer)
            self.state = DONE
            self.client.finished(self)
            return
        if self.expect and not self.client_complete:
            self.client.write(framing.CONTINUE)
        if self.control:
            if self.client_complete:
                self.engine.control(self)
            return
        engine = self.engine
        self.active, index = engine.route(self.key)
        if index < 0:
            engine.counters.failure("empty")
            self.answer(503, "no replica is available")
            return
        self.attempt(index)

    def attempt(self, index: int) -> None:
        engine = self.engine
        active = self.active
        assert active is not None
        self.index = index
        self.tried.append(index)
        self.state = WAITING
        self.waiting_since = engine.now
        if active is engine.active:
            engine.inflight_view[engine.row_base + index] += 1
        conn = active.pools[index].take()
        if conn is not None:
            self.attach(conn)
        else:
            engine.connect(active.pools[index], self)

    def attach(self, conn: UpstreamConnection) -> None:
        """A connection to the chosen replica is ready: send the head and what body we have."""
        if self.state == DONE:
            conn.pool.release(conn)  # nothing was sent on it
            return
        active = self.active
        assert active is not None
        self.conn = conn
        conn.exchange = self
        member = active.members[self.index]
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (self.method, self.target, member, self.tail)
        if self.body_log:
            head += b"".join(self.body_log)
            if not self.replayable:
                self.body_log = []
        conn.send(head)
        if self.client_complete:
            conn.sent()
        self.written = True
        self.state = SENDING
        self.waiting_since = self.engine.now
        if self.client.read_paused:
            self.client.maybe_resume()

    # -- client side --------------------------------------------------------------------
    def client_body(self, data: bytes) -> None:
        if self.control_body is not None:
            self.control_body.append(data)  # its size is bounded by ClientConnection.on_body
            return
        if self.state == DONE:
            return
        framed = framing.chunk(data) if self.mode == BODY_CHUNKED else data
        self._body_out(framed)

    def _body_out(self, framed: bytes) -> None:
        self.body_size += len(framed)
        if self.replayable and self.body_size > self.engine.settings.replay_body:
            self.replayable = False
            if self.conn is not None:
                self.body_log = []
        conn = self.conn
        if conn is not None and self.state != WAITING:
            transport = conn.transport
            assert transport is not None  # attach() had a connected one
            transport.write(framed)
            if self.replayable:
                self.body_log.append(framed)
        else:
            self.body_log.append(framed)
            if self.body_size > MAX_PENDING_BODY:
                self.client.pause()  # no replica connection yet: stop reading the client

    def client_done(self) -> None:
        was_complete, self.client_complete = self.client_complete, True
        if self.control:
            # start() dispatched it already when the request had no body
            if self.started and not was_complete and self.control_body is not None:
                self.engine.control(self)
            return
        if self.mode == BODY_CHUNKED and self.state != DONE:
            self._body_out(framing.CHUNK_END)
        conn = self.conn
        if not was_complete and conn is not None and self.state != WAITING and self.state != DONE:
            conn.sent()  # the body's last byte went out on it
        self.waiting_since = self.engine.now

    def client_gone(self) -> None:
        """The client closed: whatever the replica is doing for it is wasted work."""
        if self.state != DONE:
            self.state = DONE
            self._leave()
            if self.conn is not None:
                self.conn.abort()
                self.conn = None

    def client_refused(self) -> None:
        """The rest of this request was malformed: drop the replica side."""
        self.client_gone()

    def client_congested(self, congested: bool) -> None:
        if self.conn is not None and self.state == ANSWERING:
            if congested:
                self.conn.pause()
            else:
                self.conn.resume()

    # -- replica side -------------------------------------------------------------------
    def response_head(self, conn: UpstreamConnection, status: int, fields: bytes, length: int) -> None:
        """The replica's answer head: retry, translate (404), or relay it and stream the body."""
        engine = self.engine
        active = self.active
        assert active is not None
        self.status = status
        if status == 101:
            if self.upgrade is None:
                # This request's answer, not the replica's health: no ejection, no retry.
                self.conn = None
                conn.abort()
                engine.counters.failure("upstream")
                self.answer(
                    502,
                    f"replica {engine.name_of(active, self.index)} switched protocols "
                    "for a request that asked for no upgrade",
                )
                return
            self.state = ANSWERING
            self.response_started = True
            self.client.write(
                framing.response_head(
                    101, fields, b"Connection: Upgrade\r\nUpgrade: %s\r\n" % self.upgrade, False, False
                )
            )
            engine.counters.answered(active.rows[self.index], status, time.perf_counter() - self.since)
            self._leave()
            self.state = DONE  # the exchange ends here; the tunnel owns both transports from now
            self.conn = None
            tunnel = Tunnel(self.client, conn, engine.now)
            conn.tunnel_to(tunnel)
            self.client.upgraded(tunnel)
            return
        if self.upgrade is not None:
            self.client.upgrade_refused()
        if status >= 500:
            engine.note_5xx(active, self.index)
            if engine.settings.retry_5xx and self.can_retry():
                self.discard = True  # drained to keep the connection, or closed on its way
                conn.exchange = None
                conn.abort()
                self.retry(f"answered {status}")
                return
        else:
            active.consecutive_5xx[self.index] = 0
        self.state = ANSWERING
        # Decided once, before the head: the head's Connection field and what happens to the
        # connection after the answer must agree, even if a drain begins in between.
        # A refused upgrade closes: the client may already send tunnel bytes.
        self.keep_alive = self.keep_alive and engine.serving and self.upgrade is None
        if status == 404 and not self.upgrade:
            # The seed's contract: a path no replica serves is the balancer's 400.
            path = unquote_to_bytes(self.target.split(b"?", 1)[0]).decode("utf-8", "replace")
            self.discard = True
            engine.counters.answered(active.rows[self.index], 400, time.perf_counter() - self.since)
            self.client.write(
                framing.error(
                    400,
                    f"'{path}' endpoint does not exist in server replicas",
                    self.keep_alive,
                    http10=self.http10,
                    head_only=self.head_only,
                )
            )
            self.response_started = True
            if self.head_only:
                self.response_done(conn)
            return
        self.response_started = True
        keep = self.keep_alive
        no_body = self.head_only or status in (204, 304)
        if no_body:
            frame = b"Content-Length: %d\r\n" % length if length >= 0 and status != 204 else b""
        elif length >= 0:
            frame = b"Content-Length: %d\r\n" % length
        elif self.http10:
            frame = b""  # no chunked coding for HTTP/1.0: the body ends with the connection
            keep = False
        else:
            frame = b"Transfer-Encoding: chunked\r\n"
            self.framing_chunked = True
        self.keep_alive = keep
        self.client.write(framing.response_head(status, fields, frame, not keep, self.http10))
        engine.counters.answered(active.rows[self.index], status, time.perf_counter() - self.since)
        if self.head_only:
            self.response_done(conn)  # 204 and 304 end in llhttp's own message-complete
        elif self.client.write_paused:
            conn.pause()

    def response_body(self, data: bytes) -> None:
        if self.discard:
            return
        self.client.write(framing.chunk(data) if self.framing_chunked else data)

    def response_done(self, conn: UpstreamConnection) -> None:
        if self.state == DONE:
            return
        if self.framing_chunked and not self.discard:
            self.client.write(framing.CHUNK_END)
        self.state = DONE
        self._leave()
        self.conn = None
        conn.answered()  # pooled, or closed if the replica answered before the request was out
        if not self.client_complete:
            self.keep_alive = False  # the rest of the request body is still on the wire
        self.client.finished(self)

    def failed(self, conn: UpstreamConnection | None, reason: str, broken: bool, refused: bool = False) -> None:
        """The replica connection failed (refused, reset, closed early, timed out, garbage)."""
        if self.state == DONE:
            return
        engine = self.engine
        self.conn = None
        if conn is not None:
            conn.exchange = None
        if self.response_started and self.discard:
            # The client has its whole answer already (the seed's 400 for a 404): only the
            # replica's unread body is lost, and with it this connection's keep-alive.
            self.state = DONE
            self._leave()
            self.keep_alive = False
            self.client.finished(self)
            return
        if self.response_started:
            # Part of the answer is out: the client must see a broken message, not a short one.
            self.state = DONE
            self._leave()
            engine.counters.failure("upstream")
            self.client.abort()
            return
        active = self.active
        assert active is not None
        if broken and (refused or len(self.tried) == 1):
            # Only the first member a request fails on is ejected by it: when the next one fails
            # too, the request itself may be what breaks them (heartbeats judge them instead).
            engine.eject(active, self.index, "connection")
        if not refused:
            self.broken += 1
        # A request that two members failed on after it may have reached them (a reset, a close,
        # garbage) is not sent to a third: it is the likelier cause than both members.
        if self.can_retry(refused) and self.broken < 2:
            self.retry(reason)
            return
        engine.counters.failure("upstream")
        name = engine.name_of(active, self.index)
        self.answer(502, f"replica {name} failed: {reason}")

    def can_retry(self, refused: bool = False) -> bool:
        if len(self.tried) >= self.engine.settings.max_attempts or self.upgrade is not None:
            return False
        if refused and not self.written:
            return True
        return self.method in IDEMPOTENT and self.replayable

    def retry(self, reason: str) -> None:
        engine = self.engine
        active = self.active
        assert active is not None
        name = engine.name_of(active, self.index)
        self._leave()
        nxt = engine.fallback(active, self.key, self.tried)
        if nxt < 0:
            engine.counters.failure("upstream")
            self.answer(502, f"replica {name} failed: {reason}; no other replica left")
            return
        engine.counters.retried(active.rows[nxt])
        self.discard = False
        self.attempt(nxt)

    def timed_out(self, now: float) -> None:
        """Housekeeping: no first byte, or no byte for too long, from the replica."""
        settings = self.engine.settings
        conn = self.conn
        if conn is None:
            return
        engine = self.engine
        if (
            self.state == SENDING
            and self.active is engine.active
            and self.index >= 0
            and engine.shared_map[HEALTH_AT + self.index]
            and self.can_retry()
        ):
            # Ejected while this request waits for its first byte (heartbeats found the replica
            # hung): the next member answers it now rather than after the first-byte timeout.
            conn.abort()
            self.failed(conn, "ejected while the request waited for an answer", broken=False)
        elif self.state == SENDING and self.client_complete and now - self.waiting_since > settings.first_byte_timeout:
            # Not sent again: the client has waited the whole deadline once already, and a retry
            # per member would multiply it (an answer head dripped slowly held a request 90 s).
            self.conn = None
            conn.abort()
            engine.counters.failure("timeout")
            active = self.active
            assert active is not None
            if len(self.tried) == 1:
                engine.eject(active, self.index, "connection")
            name = engine.name_of(active, self.index)
            self.answer(504, f"replica {name} sent no answer within {settings.first_byte_timeout:g}s")
        elif self.state == ANSWERING and not conn.read_paused and now - conn.last_io > settings.idle_timeout:
            conn.abort()
            self.engine.counters.failure("timeout")
            self.failed(conn, f"answer stalled for {settings.idle_timeout:g}s", broken=True)

    # -- endings ------------------------------------------------------------------------
    def answer(self, status: int, message: str) -> None:
        """The balancer's own answer in the seed's error format."""
        self.state = DONE
        self._leave()
        # Closed after it when the request body is still arriving, as after a replica's early
        # answer: a refusal of the rest of that body would be a second answer to one request.
        self.keep_alive = self.keep_alive and self.engine.serving and self.client_complete
        self.client.write(framing.error(status, message, self.keep_alive, http10=self.http10, head_only=self.head_only))
        self.client.finished(self)

    def reply(self, data: bytes) -> None:
        """A control endpoint's complete answer."""
        self.state = DONE
        self.client.write(data)
        self.client.finished(self)

    def _leave(self) -> None:
        """This request no longer counts against its member's in-flight load."""
        if self.index >= 0:
            engine = self.engine
            if self.active is engine.active:
                engine.inflight_view[engine.row_base + self.index] -= 1
            self.index = -1
