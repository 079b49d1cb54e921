"""A stateful property test of the proxy core: random interleavings of everything its peers can do.

A hypothesis ``RuleBasedStateMachine`` drives a real ``Engine`` (fake transports on both sides, as
in test_engine.py) through client bytes (valid, pipelined, upgrading, refused, split anywhere),
replica bytes (every framing, 1xx, 101, 204, HEAD answers, garbage, stray bytes), half-closes,
resets, paused writes and deadlines, with several clients at once. After every step it checks
what must never happen, whatever the order of events:

- a client receives only answers to its own requests, in its order, each well-formed (h11 is the
  client's parser), byte for byte what the replica sent for it;
- replicas receive exactly the requests the balancer accepted from clients (h11 is the replica's
  parser), one at a time per connection, in each client's order: nothing smuggled, nothing replayed
  that is not idempotent;
- a well-formed answer reaches its client whole; a tunnel carries exactly the bytes of each side;
- no slot is held by a closed connection, no closed or busy replica connection is pooled, the
  in-flight counts are the exchanges in flight;
- buffers and queues stay within their bounds; every state is one of the tables'; no error is
  logged and no loop callback raises.

Replica answers carry a marker naming the request they answer (``@@client.seq@@``), which is how an
answer that reaches the wrong client is recognised. Time is the engine's clock, advanced by a rule
that runs the per-client housekeeping; nothing sleeps.

``make test`` runs a short, derandomized search (a fixed set of examples). A long random run:

    RINGLB_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest -q tests/unit/balancer/test_machine.py
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ringlb_balancer import client as client_module
from ringlb_balancer import states
from ringlb_balancer.client import ClientConnection
from ringlb_balancer.exchange import IDEMPOTENT, MAX_PENDING_BODY, Exchange
from ringlb_balancer.upstream import MAX_RESPONSE_HEAD, UpstreamConnection
from tests.unit.balancer.fakes import NAMES, FakeTransport, Harness, build, settle

LONG_EXAMPLES = int(os.environ.get("RINGLB_FUZZ_EXAMPLES", "0"))

MARKER = re.compile(rb"@@(\d+)\.(\d+)@@")
TARGET = re.compile(rb"/m/(\d+)/(\d+)")
KEYS = [b"k1", b"k2", b"k3", b"k4", b"k5", b"k6"]
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_ "  # no '@': markers appear only where placed
MAX_OPEN = 3  # client connections at once
LOG = logging.getLogger("ringlb.engine")

# Heads the balancer must refuse whatever the settings, each followed by a request that would be
# smuggled if the refusal let the parser go on. ``%s`` is the request target.
REFUSED_HEADS = [
    b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST %s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"POST %s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
    b"GET %s HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n",
    b"GET %s HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n",
    b"GET %s HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n",
    b"GET %s HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n",
    b"GET %s HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET %s HTTP/1.1\r\n\r\n",
    b"GET http://evil.example%s HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET %s HTTP/2.0\r\nHost: a\r\n\r\n",
    b"CONNECT evil.example:443 HTTP/1.1\r\nHost: a\r\nX-Target: %s\r\n\r\n",
    b"POST %s HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\nab",
    b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 4\r\n\r\nabcd",
    b"GET %s HTTP/1.1\r\nHost: a\r\nVia: 1.1 ringlb-unit\r\n\r\n",
    b"GET %s HTTP/1.1\r\nHost: a\r\nX-Request-ID: 1\r\nX-Request-ID: 2\r\n\r\n",
    b"G@T %s HTTP/1.1\r\nHost: a\r\n\r\n",
]
# A valid chunked head whose body then breaks: the head may reach a replica, the body never whole.
# Each with the data a replica may get before the break.
BROKEN_BODIES = [
    (b"5\r\nhello\r\nzz\r\n\r\n", b"hello"),
    (b"5\r\nhelloXX0\r\n\r\n", b"hello"),
    (b"3\r\nabc\r\n-2\r\n\r\n", b"abc"),
]
SMUGGLED = b"GET /dead/%d/%d HTTP/1.1\r\nHost: a\r\n\r\n"

ANSWER_KINDS = [
    "length",
    "chunked",
    "close",
    "no-content",
    "informational",
    "switch",
    "not-found",
    "server-error",
    "connection-close",
    "garbage",
    "stray",
    "too-long",
    "too-many-fields",
]
GARBAGE_ANSWERS = [
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"hello\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]
EOF_ITEM = b""  # in a replica's script: it closes its side here


@dataclass
class Answer:
    """A replica's answer, before it knows the request: what hypothesis draws."""

    kind: str
    status: int = 200
    filler: bytes = b""
    cuts: list[int] = field(default_factory=list)  # where a chunked body is cut into chunks
    how: int = 0  # a variant of the kind, and how much is sent at once (0: all)


def marker(cid: int, seq: int) -> bytes:
    return b"@@%d.%d@@" % (cid, seq)


# ---------------------------------------------------------------------------------------------
# What a client sends
# ---------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """A request to send, before it has a target: what hypothesis draws."""

    kind: str  # plain, length, chunked, upgrade, refused, broken
    method: bytes = b"GET"
    key: bytes = b"k1"
    body: bytes = b""
    chunks: list[int] = field(default_factory=list)  # chunk sizes for a chunked body
    fillers: int = 0  # extra header fields
    close: bool = False  # Connection: close
    expect: bool = False  # Expect: 100-continue
    extension: bool = False  # chunk extensions and a trailer field
    shape: int = 0  # which refused head or broken body


text = st.text(ALPHABET, max_size=40).map(str.encode)
answers = st.builds(
    Answer,
    st.sampled_from(ANSWER_KINDS),
    st.sampled_from([200, 201, 202]),
    text,
    st.lists(st.integers(0, 80), max_size=3),
    st.integers(0, 4),
)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    # Most requests keep the connection in HTTP: a refusal, a close or an upgrade ends that.
    kind = draw(st.sampled_from(["plain"] * 8 + ["length"] * 5 + ["chunked"] * 4 + ["upgrade", "refused", "broken"]))
    spec = Spec(
        kind,
        key=draw(st.sampled_from(KEYS)),
        fillers=draw(st.sampled_from([0, 0, 0, 1, 2, 4])),
        close=draw(st.integers(0, 9)) == 0,
    )
    if kind == "plain":
        spec.method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"HEAD", b"DELETE", b"POST"]))
    elif kind in ("length", "chunked"):
        spec.method = draw(st.sampled_from([b"POST", b"PUT", b"PATCH"]))
        spec.body = draw(text)
        spec.expect = draw(st.booleans()) and draw(st.booleans())
        if kind == "chunked":
            cuts = sorted(draw(st.lists(st.integers(0, len(spec.body)), max_size=3)))
            bounds = [0, *cuts, len(spec.body)]
            spec.chunks = [b - a for a, b in itertools.pairwise(bounds) if b > a]
            spec.extension = draw(st.booleans())
    elif kind == "upgrade":
        spec.close = False
    elif kind == "refused":
        spec.shape = draw(st.integers(0, len(REFUSED_HEADS) - 1))
    else:
        spec.method = b"POST"
        spec.shape = draw(st.integers(0, len(BROKEN_BODIES) - 1))
    return spec


@dataclass(eq=False)
class Req:
    """A request as sent, and what the oracles learn about it."""

    cid: int
    seq: int
    method: bytes
    wire: bytes
    body: bytes
    upgrade: bool
    close: bool
    fate: str  # valid | refused-head | refused-body | dead (after a refusal, a close or an upgrade)
    start: int  # offset of its first byte in the client's stream
    head_end: int  # offset just past its head
    bodies: list[bytes] = field(default_factory=list)  # answer bodies replicas sent for it
    expected: tuple[int, bytes | None] | None = None  # (status, body) its client must get whole
    switched: tuple[Replica, int] | None = None  # the replica and the offset its tunnel bytes start
    conns: set[int] = field(default_factory=set)  # replica connections it reached

    @property
    def name(self) -> str:
        return f"request {self.cid}.{self.seq} ({self.method.decode()}, {self.fate})"


def render(spec: Spec, cid: int, seq: int, max_headers: int, max_body: int) -> tuple[bytes, int, bytes, str]:
    """Wire bytes, head length, decoded body, and what the balancer must do with it."""
    target = b"/m/%d/%d" % (cid, seq)
    if spec.kind == "refused":
        wire = (REFUSED_HEADS[spec.shape] % target) + SMUGGLED % (cid, seq)
        return wire, len(wire), b"", "refused-head"
    fields = [b"Host: lb", b"X-Request-ID: " + spec.key] + [b"X-Filler-%d: %d" % (i, i) for i in range(spec.fillers)]
    body_wire = b""
    if spec.kind == "length":
        fields.append(b"Content-Length: %d" % len(spec.body))
        body_wire = spec.body
    elif spec.kind in ("chunked", "broken"):
        fields.append(b"Transfer-Encoding: chunked")
        if spec.kind == "broken":
            body_wire = BROKEN_BODIES[spec.shape][0] + SMUGGLED % (cid, seq)
        else:
            at = 0
            for size in spec.chunks:
                body_wire += b"%x%s\r\n%s\r\n" % (size, b";ext=1" if spec.extension else b"", spec.body[at : at + size])
                at += size
            body_wire += b"0\r\nX-Trailer: t\r\n\r\n" if spec.extension else b"0\r\n\r\n"
    if spec.kind == "upgrade":
        fields += [b"Connection: Upgrade", b"Upgrade: websocket"]
    elif spec.close:
        fields.append(b"Connection: close")
    if spec.expect:
        fields.append(b"Expect: 100-continue")
    head = b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (spec.method, target, b"\r\n".join(fields))
    body = BROKEN_BODIES[spec.shape][1] if spec.kind == "broken" else spec.body
    if len(fields) > max_headers or (spec.kind == "length" and max_body and len(body) > max_body):
        fate = "refused-head"  # 431 / 413, before anything is forwarded
    elif spec.kind == "broken" or (spec.kind == "chunked" and max_body and len(body) > max_body):
        fate = "refused-body"  # the head may be forwarded, the body never whole (400, 413)
    else:
        fate = "valid"
    return head + body_wire, len(head), body, fate


# Which clients a rule can act on (as asyncio would let the peer act).
def is_open(c: Client) -> bool:
    return not c.transport.closed and not c.lost


def not_lost(c: Client) -> bool:
    return not c.lost


def writable(c: Client) -> bool:
    return is_open(c) and not c.eof and not c.refused_at_accept


def speaking_http(c: Client) -> bool:
    return writable(c) and c.mode == "http"


def tunneling(c: Client) -> bool:
    return writable(c) and c.mode == "tunnel"


def sending(c: Client) -> bool:
    return writable(c) and c.transport.reading and c.sent < len(c.stream)


class Client:
    """One client connection: what it sent, and the answers parsed from what it received."""

    def __init__(self, cid: int, conn: ClientConnection, transport: FakeTransport) -> None:
        self.cid = cid
        self.conn = conn
        self.transport = transport
        self.stream = bytearray()  # every byte it means to send
        self.sent = 0  # how many of them were delivered
        self.parsed = 0  # how many of them were delivered while the balancer still parsed
        self.requests: list[Req] = []
        self.mode = "http"  # http | dead (nothing after this is a request) | tunnel (bytes for the tunnel)
        self.eof = False
        self.lost = False
        self.last_read = 0
        self.refused_at_accept = transport.closed
        self.rx = 0  # offset in transport.data of the first answer not parsed whole
        self.answers = 0  # answers parsed whole
        self.tunnel_rx: int | None = None  # offset in transport.data where tunnel bytes begin
        self.tunnel_req: Req | None = None
        self.last_answer_closes = False

    @property
    def open(self) -> bool:
        return not self.transport.closed and not self.lost


# ---------------------------------------------------------------------------------------------
# What a replica sends
# ---------------------------------------------------------------------------------------------


@dataclass
class Item:
    """A piece of a replica's script: bytes (or its half-close) for the request at ``index``."""

    index: int
    data: bytes
    stray: bool = False  # bytes after a complete answer: dropped once a newer request is out
    done: tuple[str, object] | None = None  # what the model learns once the last byte is fed


# Which replica connections a rule can act on.
def replica_open(m: ProxyMachine, r: Replica) -> bool:
    return not r.transport.closed and not r.lost


def replica_not_lost(m: ProxyMachine, r: Replica) -> bool:
    return not r.lost


def replica_writable(m: ProxyMachine, r: Replica) -> bool:
    return replica_open(m, r) and not r.eof


def owing(m: ProxyMachine, r: Replica) -> bool:
    return replica_writable(m, r) and not r.script and m.owed(r) is not None


def scripted(m: ProxyMachine, r: Replica) -> bool:
    return replica_writable(m, r) and r.transport.reading and bool(r.script)


def idle(m: ProxyMachine, r: Replica) -> bool:
    return replica_writable(m, r) and r.transport.reading and not r.script and r.tunnel_tx is None and m.owed(r) is None


class Replica:
    """One replica connection: its script of bytes to send, and the requests parsed from it."""

    def __init__(self, uid: int, conn: UpstreamConnection) -> None:
        self.uid = uid
        self.conn = conn
        self.transport: FakeTransport = conn.transport
        self.script: list[Item] = []
        self.fed = bytearray()
        self.last_feed = 0
        self.complete: list[Req] = []  # requests parsed whole
        self.partial: Req | None = None  # the request still arriving
        self.rx = 0  # offset in transport.data of the first request not parsed whole
        self.answered = 0  # final answers sent whole
        self.tunnel_rx: int | None = None  # offset in transport.data where tunnel bytes begin
        self.tunnel_tx: int | None = None  # offset in fed where the replica's tunnel bytes begin
        self.eof = False
        self.lost = False

    @property
    def requests(self) -> list[Req]:
        return self.complete + ([self.partial] if self.partial is not None else [])

    @property
    def open(self) -> bool:
        return not self.transport.closed and not self.lost


# ---------------------------------------------------------------------------------------------
# The oracles' parsers (h11: an HTTP/1.1 implementation independent of llhttp)
# ---------------------------------------------------------------------------------------------


@dataclass
class Parsed:
    complete: bool
    consumed: int = 0
    status: int = 0
    method: bytes = b""
    target: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    switched: bool = False


def parse_answer(data: bytes, method: bytes, upgrade: bool) -> Parsed:
    """The first answer in ``data`` to a request of ``method``; raises h11.RemoteProtocolError."""
    conn = h11.Connection(h11.CLIENT)
    fields = [("Host", "lb")] + ([("Connection", "Upgrade"), ("Upgrade", "websocket")] if upgrade else [])
    conn.send(h11.Request(method=method, target="/", headers=fields))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    out = Parsed(complete=False)
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            out.body = bytes(body)
            return out
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                out.status, out.switched, out.complete = 101, True, True
                out.headers = {k: v for k, v in event.headers}
                out.consumed = len(data) - len(conn.trailing_data[0])
                return out
        elif isinstance(event, h11.Response):
            out.status = event.status_code
            out.headers = {k: v for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.complete, out.body = True, bytes(body)
            out.consumed = len(data) - len(conn.trailing_data[0])
            return out
        else:
            raise AssertionError(f"unexpected h11 event {event!r}")


def parse_request(data: bytes) -> Parsed:
    """The first request in ``data``, as a replica reads it; raises h11.RemoteProtocolError."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    out = Parsed(complete=False)
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            out.body = bytes(body)
            return out
        if isinstance(event, h11.Request):
            out.method, out.target = event.method, event.target
            out.headers = {k: v for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.complete, out.body = True, bytes(body)
            out.consumed = len(data) - len(conn.trailing_data[0])
            return out
        else:
            raise AssertionError(f"unexpected h11 event {event!r}")


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------

pick = st.integers(0, 1 << 16)
sizes = st.one_of(st.just(1 << 16), st.integers(1, 64))  # one read: all that is there, or a piece


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


class ProxyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(lambda _, context: self.loop_errors.append(repr(context)))
        self.errors = _Errors()
        self.errors.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(self.errors)
        self.dir = Path(tempfile.mkdtemp(prefix="ringlb-machine-"))
        self.h: Harness | None = None
        self.clients: list[Client] = []
        self.replicas: list[Replica] = []
        self.reqs: dict[tuple[int, int], Req] = {}
        self.arrivals: dict[int, int] = {}  # client → seq of the last request that reached a replica

    def teardown(self) -> None:
        LOG.removeHandler(self.errors)
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- set-up ------------------------------------------------------------------------------
    @initialize(
        early_data=st.integers(1, 48),
        max_body=st.sampled_from([0, 24, 4096]),
        max_headers=st.sampled_from([100, 5]),
        replay_body=st.sampled_from([8, 65536]),
        retry_5xx=st.sampled_from([0, 1]),
        max_attempts=st.sampled_from([1, 3]),
        max_connections=st.sampled_from([1000, 2]),
    )
    def start(self, **overrides: int) -> None:
        self.h = build(self.dir / "state", self.loop, **overrides)
        self.settings = self.h.engine.settings

    def settle(self) -> None:
        self.loop.run_until_complete(settle(10))
        self.track_replicas()

    @property
    def engine(self):
        return self.h.engine

    # -- clients -------------------------------------------------------------------------------
    def new_client(self) -> Client:
        conn, transport = self.h.client()
        self.clients.append(Client(len(self.clients), conn, transport))
        self.settle()
        return self.clients[-1]

    def any_client(self, test: Callable[[Client], bool]) -> bool:
        return any(test(c) for c in self.clients)

    def a_client(self, i: int, test: Callable[[Client], bool]) -> Client:
        ready = [c for c in self.clients if test(c)]
        return ready[i % len(ready)]

    @rule(i=pick, batch=st.lists(specs(), min_size=1, max_size=3), size=sizes)
    def client_sends_requests(self, i: int, batch: list[Spec], size: int) -> None:
        """Requests appended to what a client sends (pipelined when several), and a first read of
        them; the client is a new connection when ``i`` says so and there is room."""
        ready: list[Client | None] = [c for c in self.clients if speaking_http(c)]
        if sum(map(is_open, self.clients)) < MAX_OPEN:
            ready.append(None)
        client = ready[i % len(ready)] if ready else None
        if client is None:
            client = self.new_client()
            if not speaking_http(client):
                return  # refused at the accept: every slot holds a request
        for spec in batch:
            seq = len(client.requests)
            wire, head, body, fate = render(spec, client.cid, seq, self.settings.max_headers, self.settings.max_body)
            if client.mode != "http":
                fate = "dead"
            start = len(client.stream)
            req = Req(
                client.cid, seq, spec.method, wire, body, spec.kind == "upgrade", spec.close, fate, start, start + head
            )
            client.stream += wire
            client.requests.append(req)
            self.reqs[client.cid, seq] = req
            if client.mode == "http":
                if req.upgrade and fate == "valid":
                    client.mode = "tunnel"
                elif fate != "valid" or spec.close:
                    client.mode = "dead"
        if sending(client):
            self.deliver(client, size)

    @precondition(lambda self: self.any_client(tunneling))
    @rule(i=pick, data=st.binary(min_size=1, max_size=24).filter(lambda b: b"@" not in b))
    def client_queues_tunnel_bytes(self, i: int, data: bytes) -> None:
        self.a_client(i, tunneling).stream += data

    @precondition(lambda self: self.any_client(sending))
    @rule(i=pick, size=sizes)
    def client_sends(self, i: int, size: int) -> None:
        """The next bytes of a client's stream, as one read (the balancer reads it)."""
        self.deliver(self.a_client(i, sending), size)

    def deliver(self, client: Client, size: int) -> None:
        data = bytes(client.stream[client.sent : client.sent + size])
        client.sent += len(data)
        if client.conn.state != states.C_CLOSED:
            client.parsed = client.sent
        client.last_read = len(data)
        client.conn.data_received(data)
        self.settle()

    @precondition(lambda self: self.any_client(not_lost))
    @rule(i=pick, reset=st.booleans())
    def client_half_closes_or_resets(self, i: int, reset: bool) -> None:
        client = self.a_client(i, not_lost)
        if reset or not writable(client):
            client.transport.closed = client.lost = True
            client.conn.connection_lost(ConnectionResetError("reset by the client"))
        else:
            client.eof = True
            if not client.conn.eof_received():
                self.close_after_eof(client)
        self.settle()

    @precondition(lambda self: self.any_client(is_open))
    @rule(i=pick, stop=st.booleans())
    def client_stops_or_starts_reading(self, i: int, stop: bool) -> None:
        """The client's socket buffer fills (pause_writing) or drains (resume_writing)."""
        client = self.a_client(i, is_open)
        if stop and not client.conn.write_paused:
            client.conn.pause_writing()
        elif not stop and client.conn.write_paused:
            client.conn.resume_writing()
        self.settle()

    # -- replicas ------------------------------------------------------------------------------
    def track_replicas(self) -> None:
        for conn in self.h.upstreams[len(self.replicas) :]:
            self.replicas.append(Replica(len(self.replicas), conn))

    def any_replica(self, test: Callable[[ProxyMachine, Replica], bool]) -> bool:
        return any(test(self, r) for r in self.replicas)

    def a_replica(self, i: int, test: Callable[[ProxyMachine, Replica], bool]) -> Replica:
        ready = [r for r in self.replicas if test(self, r)]
        return ready[i % len(ready)]

    def owed(self, replica: Replica) -> Req | None:
        """The request this replica connection has not answered yet."""
        pending = replica.requests
        if replica.tunnel_tx is not None or replica.answered >= len(pending):
            return None
        return pending[replica.answered]

    @precondition(lambda self: self.any_replica(owing))
    @rule(i=pick, answer=answers)
    def replica_answers(self, i: int, answer: Answer) -> None:
        """A replica writes (into its script) its answer to the request it owes, and sends part of it."""
        replica = self.a_replica(i, owing)
        req = self.owed(replica)
        assert req is not None
        kind, status, filler, cuts, how = answer.kind, answer.status, answer.filler, answer.cuts, answer.how
        index = replica.answered
        head_only = req.method == b"HEAD"
        body = marker(req.cid, req.seq) + filler
        expected_body: bytes | None = b"" if head_only else body
        script: list[Item] = []

        def final(data: bytes, expected: tuple[int, bytes | None] | None) -> None:
            script.append(Item(index, data, done=("answered", expected)))

        if kind in ("length", "connection-close", "stray", "too-long", "informational"):
            if kind == "informational":
                script.append(
                    Item(
                        index,
                        [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"][
                            how % 2
                        ],
                    )
                )
            close = b"Connection: close\r\n" if kind == "connection-close" else b""
            head = b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\nX-Answer: yes\r\n%s\r\n" % (status, len(body), close)
            final(head + (b"" if head_only else body), (status, expected_body))
            if kind == "connection-close":
                script.append(Item(index, EOF_ITEM))
            elif kind == "stray":
                # A whole answer more, naming the same client's next request: if it ever reached
                # that client, it would look like the next answer but for the word "stray".
                extra = marker(req.cid, req.seq + 1) + b"stray"
                script.append(
                    Item(index, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(extra), extra), stray=True)
                )
            elif kind == "too-long":
                script.append(Item(index, marker(req.cid, req.seq + 1) + b"stray" + filler, stray=True))
        elif kind == "chunked":
            head = b"HTTP/1.1 %d OK\r\nTransfer-Encoding: chunked\r\n\r\n" % status
            if head_only:
                final(head, (status, b""))
            else:
                bounds = [0, *sorted(c % (len(body) + 1) for c in cuts), len(body)]
                chunked = b"".join(b"%x\r\n%s\r\n" % (b - a, body[a:b]) for a, b in itertools.pairwise(bounds) if b > a)
                final(head + chunked + (b"0\r\nX-T: 1\r\n\r\n" if how % 2 else b"0\r\n\r\n"), (status, body))
        elif kind == "close":
            head = b"HTTP/1.1 %d OK\r\nX-Framing: none\r\n\r\n" % status
            if head_only:
                final(head, (status, b""))
            else:
                script.append(Item(index, head + body))
                script.append(Item(index, EOF_ITEM, done=("answered", (status, body))))
        elif kind == "no-content":
            if how % 2:
                final(b"HTTP/1.1 204 No Content\r\nX-Answer: yes\r\n\r\n", (204, b""))
            else:
                final(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", (304, b""))
            if how >= 3:  # a body where none may be: stray bytes
                script.append(Item(index, body, stray=True))
        elif kind == "switch":
            head = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            if req.upgrade:
                script.append(Item(index, head, done=("switched", req)))
                script.append(Item(index, body))
            else:
                final(head, (502, None))  # a 101 nobody asked for
        elif kind == "not-found":
            head = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body)
            final(head + (b"" if head_only else body), (400, None))
        elif kind == "server-error":
            code = 500 + how % 4
            head = b"HTTP/1.1 %d Oops\r\nContent-Length: %d\r\n\r\n" % (code, len(body))
            retried = self.settings.retry_5xx and req.method in IDEMPOTENT
            final(head + (b"" if head_only else body), None if retried else (code, expected_body))
        elif kind == "garbage":
            script.append(Item(index, GARBAGE_ANSWERS[how % len(GARBAGE_ANSWERS)]))
        else:  # too-many-fields
            fields = b"".join(b"X-F%d: v\r\n" % n for n in range(self.settings.max_headers + 1))
            script.append(Item(index, b"HTTP/1.1 200 OK\r\n%sContent-Length: 0\r\n\r\n" % fields))
        req.bodies.append(body)
        replica.script = script
        if replica.transport.reading:
            self.feed(replica, 1 << 16 if how == 0 else 1 + how * 7)

    @precondition(lambda self: self.any_replica(scripted))
    @rule(i=pick, size=sizes)
    def replica_sends(self, i: int, size: int) -> None:
        """The next bytes of a replica's script, as one read, if the balancer reads it."""
        self.feed(self.a_replica(i, scripted), size)

    def feed(self, replica: Replica, size: int) -> None:
        latest = len(replica.requests) - 1
        while replica.script and replica.script[0].stray and replica.script[0].index < latest:
            replica.script.pop(0)  # the connection carries a newer request: these bytes were never sent
        if not replica.script:
            return
        item = replica.script[0]
        client = self.client_of(replica)
        client_open = client is not None and client.open
        if item.data == EOF_ITEM:
            replica.script.pop(0)
            if client_open:
                self.learn(replica, item)
            elif item.done is not None and item.done[0] == "answered":
                replica.answered += 1
            self.replica_half_closes_now(replica)
            return
        data, rest = item.data[:size], item.data[size:]
        if rest:
            item.data = rest
        else:
            replica.script.pop(0)
        replica.fed += data
        replica.last_feed = len(data)
        replica.conn.data_received(data)
        if not rest and client_open:
            self.learn(replica, item)
        elif not rest and item.done is not None and item.done[0] == "answered":
            replica.answered += 1
        self.settle()

    def client_of(self, replica: Replica) -> Client | None:
        req = self.owed(replica)
        return self.clients[req.cid] if req is not None else None

    def learn(self, replica: Replica, item: Item) -> None:
        """The last byte of a script item was fed: what the model now expects."""
        if item.done is None:
            return
        what, value = item.done
        if what == "answered":
            req = replica.requests[item.index]
            replica.answered += 1
            if value is not None:
                req.expected = value
        else:  # switched: from now on both directions are tunnel bytes
            req = value
            replica.tunnel_tx = len(replica.fed)
            replica.tunnel_rx = len(replica.transport.data) if replica.partial is None else None
            req.switched = (replica, replica.tunnel_tx)

    @precondition(lambda self: self.any_replica(idle))
    @rule(i=pick, data=st.sampled_from([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n@@0.999@@", b"\r\n", b"x"]))
    def replica_sends_unasked(self, i: int, data: bytes) -> None:
        """Bytes from a replica that owes nothing (a pooled connection)."""
        replica = self.a_replica(i, idle)
        replica.fed += data
        replica.last_feed = len(data)
        replica.conn.data_received(data)
        self.settle()

    @precondition(lambda self: self.any_replica(replica_not_lost))
    @rule(i=pick, reset=st.booleans())
    def replica_half_closes_or_resets(self, i: int, reset: bool) -> None:
        replica = self.a_replica(i, replica_not_lost)
        if reset or not replica_writable(self, replica):
            replica.transport.closed = replica.lost = True
            replica.conn.connection_lost(ConnectionResetError("reset by the replica"))
            self.settle()
        else:
            self.replica_half_closes_now(replica)

    def replica_half_closes_now(self, replica: Replica) -> None:
        replica.eof = True
        if not replica.conn.eof_received():
            self.close_after_eof(replica)
        self.settle()

    def close_after_eof(self, side: Client | Replica) -> None:
        """What asyncio does when eof_received returns False: close, then connection_lost on
        the next loop turn."""
        side.transport.close()

        def lost() -> None:
            if not side.lost:
                side.lost = True
                side.conn.connection_lost(None)

        self.loop.call_soon(lost)

    @precondition(lambda self: self.any_replica(replica_open))
    @rule(i=pick, stop=st.booleans())
    def replica_stops_or_starts_reading(self, i: int, stop: bool) -> None:
        replica = self.a_replica(i, replica_open)
        if stop and not replica.conn.write_paused:
            replica.conn.pause_writing()
        elif not stop and replica.conn.write_paused:
            replica.conn.resume_writing()
        self.settle()

    @precondition(lambda self: self.any_client(is_open))
    @rule(name=st.sampled_from(NAMES), refused=st.booleans())
    def connects_to_a_member_fail_or_work_again(self, name: str, refused: bool) -> None:
        if refused:
            self.h.refuse.add(name)
        else:
            self.h.refuse.discard(name)

    # -- the event loop and the clock ----------------------------------------------------------
    def closing(self) -> list[tuple[Client | Replica, ClientConnection | UpstreamConnection]]:
        ends: list[tuple[Client | Replica, ClientConnection | UpstreamConnection]] = [
            (c, c.conn) for c in self.clients if c.transport.closed and not c.lost
        ]
        return ends + [(r, r.conn) for r in self.replicas if r.transport.closed and not r.lost]

    @precondition(lambda self: self.closing())
    @rule(i=pick)
    def transport_reports_connection_lost(self, i: int) -> None:
        """asyncio calls connection_lost after a close (once written out) or an abort."""
        ends = self.closing()
        side, protocol = ends[i % len(ends)]
        side.lost = True
        protocol.connection_lost(None)
        self.settle()

    @precondition(lambda self: self.any_client(is_open))
    @rule(seconds=st.sampled_from([0.6, 0.6, 0.6, 1.5, 1.5, 1.5, 6.0, 11.0, 31.0, 301.0]))
    def time_passes(self, seconds: float) -> None:
        """One pass of Engine.housekeeping at a later clock."""
        engine = self.engine
        now = engine.now = engine.now + seconds
        for client in list(engine.clients):
            client.housekeeping(now, engine.settings)
            if client.queue:
                client.queue[0].timed_out(now)
        self.settle()

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def nothing_raised_or_logged(self) -> None:
        assert not self.loop_errors, f"a loop callback raised: {self.loop_errors}"
        assert not self.errors.records, f"the engine logged errors: {self.errors.records}"

    @invariant()
    def clients_get_only_their_own_answers_in_order(self) -> None:
        for client in self.clients:
            self.check_client_stream(client)

    def check_client_stream(self, client: Client) -> None:
        data = bytes(client.transport.data)
        while client.tunnel_rx is None and client.rx < len(data):
            if client.last_answer_closes:
                raise AssertionError(
                    f"client {client.cid}: bytes after an answer that said Connection: close: "
                    f"{data[client.rx : client.rx + 200]!r}"
                )
            if client.refused_at_accept:
                req = None
                assert client.answers == 0, f"client {client.cid}: more than one answer to a refused accept"
            else:
                assert client.answers < len(client.requests), (
                    f"client {client.cid}: an answer to no request: {data[client.rx : client.rx + 200]!r}"
                )
                req = client.requests[client.answers]
            # A refusal of a head the balancer did not read whole cannot know it was a HEAD's.
            whole_head = req is not None and req.fate != "refused-head" and client.parsed >= req.head_end
            method = req.method if req is not None and whole_head else b"GET"
            try:
                answer = parse_answer(data[client.rx :], method, req is not None and req.upgrade)
            except h11.RemoteProtocolError as exc:
                raise AssertionError(
                    f"client {client.cid}: malformed answer to {req.name if req else 'its accept'}: "
                    f"{exc}: {data[client.rx : client.rx + 300]!r}"
                ) from None
            self.check_answer(client, req, answer)
            if not answer.complete:
                break
            client.rx += answer.consumed
            client.answers += 1
            client.last_answer_closes = answer.headers.get(b"connection", b"").lower() == b"close"
            if answer.switched:
                client.tunnel_rx, client.tunnel_req = client.rx, req
        if client.tunnel_rx is not None:
            req = client.tunnel_req
            assert req is not None and req.switched is not None
            replica, start = req.switched
            got, sent = data[client.tunnel_rx :], bytes(replica.fed[start:])
            assert sent.startswith(got), f"client {client.cid}: tunnel bytes {got!r} are not the replica's {sent!r}"
            if client.open and replica.open:
                assert got == sent, f"client {client.cid}: tunnel bytes {got!r} short of the replica's {sent!r}"

    def check_answer(self, client: Client, req: Req | None, answer: Parsed) -> None:
        where = f"client {client.cid}, answer {client.answers} ({req.name if req else 'accept'})"
        found = MARKER.findall(answer.body)
        if req is None:
            assert answer.status in (0, 503) and not found, f"{where}: {answer}"
            return
        own = (b"%d" % req.cid, b"%d" % req.seq)
        assert all(m == own for m in found), f"{where}: carries markers {found} of other requests: {answer.body!r}"
        if found:
            assert req.fate in ("valid", "refused-body"), f"{where}: a replica answered a request it must never get"
            if answer.complete:
                assert answer.body in req.bodies, (
                    f"{where}: body {answer.body!r} is none the replica sent: {req.bodies}"
                )
            else:
                assert any(b.startswith(answer.body) for b in req.bodies), f"{where}: body {answer.body!r} not sent"
        if answer.status == 101:
            assert req.upgrade and req.switched is not None, f"{where}: a 101 the replica did not send for it"
        if answer.complete and req.close:
            assert answer.headers.get(b"connection", b"").lower() == b"close", f"{where}: asked to close, not told so"
        if answer.complete and req.fate == "refused-head":
            assert 400 <= answer.status < 600 and answer.headers.get(b"connection") == b"close", f"{where}: {answer}"

    @invariant()
    def well_formed_answers_reach_their_clients_whole(self) -> None:
        for client in self.clients:
            for index, req in enumerate(client.requests):
                if req.expected is None or req.switched is not None:
                    continue
                status, body = req.expected
                assert index < client.answers or (index == client.answers and client.tunnel_rx is None), (
                    f"{req.name}: its whole answer {req.expected} was sent by the replica but the client got "
                    f"{bytes(client.transport.data[client.rx :])!r} after {client.answers} answers"
                )
                if index == client.answers:
                    raise AssertionError(
                        f"{req.name}: its whole answer ({status}, {body!r}) was sent by the replica "
                        f"but the client has only {bytes(client.transport.data[client.rx :])!r}"
                    )

    @invariant()
    def replicas_get_exactly_the_accepted_requests(self) -> None:
        for replica in self.replicas:
            self.check_replica_stream(replica)

    def check_replica_stream(self, replica: Replica) -> None:
        data = bytes(replica.transport.data)
        where = f"replica connection {replica.uid} ({replica.conn.pool.name})"
        while replica.tunnel_rx is None and replica.rx < len(data):
            try:
                parsed = parse_request(data[replica.rx :])
            except h11.RemoteProtocolError as exc:
                raise AssertionError(
                    f"{where}: malformed request: {exc}: {data[replica.rx : replica.rx + 300]!r}"
                ) from None
            if not parsed.method:
                replica.partial = None
                break
            match = TARGET.fullmatch(parsed.target)
            assert match, f"{where}: a request no client sent: {parsed.target!r}: {data[replica.rx :]!r}"
            req = self.reqs.get((int(match[1]), int(match[2])))
            assert req is not None, f"{where}: a request no client sent: {parsed.target!r}"
            assert req.fate in ("valid", "refused-body"), f"{where}: {req.name} must never reach a replica"
            assert parsed.method == req.method, f"{where}: {req.name} arrived as {parsed.method!r}"
            if parsed.complete:
                assert req.fate == "valid", f"{where}: {req.name} arrived whole: {data[replica.rx :]!r}"
                assert parsed.body == req.body, (
                    f"{where}: {req.name} arrived with body {parsed.body!r}, not {req.body!r}"
                )
            else:
                assert req.body.startswith(parsed.body), f"{where}: {req.name} arrived with body {parsed.body!r}"
            if replica.uid not in req.conns:
                req.conns.add(replica.uid)
                if len(req.conns) > 1:
                    assert req.method in IDEMPOTENT, f"{req.name} was sent to a replica twice: {req.conns}"
                last = self.arrivals.get(req.cid, -1)
                assert req.seq >= last, f"{req.name} reached a replica after request {req.cid}.{last}"
                self.arrivals[req.cid] = req.seq
            if not parsed.complete:
                replica.partial = req
                break
            replica.partial = None
            replica.complete.append(req)
            replica.rx += parsed.consumed
            if req.switched is not None and req.switched[0] is replica:
                replica.tunnel_rx = replica.rx
        assert len(replica.requests) <= replica.answered + 1, (
            f"{where}: a request sent before the answer to the one before it: {[r.name for r in replica.requests]}"
        )
        if replica.tunnel_rx is not None:
            req = replica.complete[-1]
            client = self.clients[req.cid]
            got, sent = data[replica.tunnel_rx :], bytes(client.stream[req.head_end : client.sent])
            assert sent.startswith(got), f"{where}: tunnel bytes {got!r} are not the client's {sent!r}"
            if client.open and replica.open and not client.eof:
                assert got == sent, f"{where}: tunnel bytes {got!r} short of the client's {sent!r}"

    @invariant()
    def closed_connections_hold_no_slot_and_pools_hold_only_idle_ones(self) -> None:
        engine = self.engine
        for client in self.clients:
            conn = client.conn
            assert (conn in engine.clients) == (not conn.closed), (
                f"client {client.cid}: closed={conn.closed}, slot held"
            )
            if client.lost:
                assert conn.closed and conn.state == states.C_CLOSED and not conn.queue
        pooled: list[UpstreamConnection] = []
        for pool in engine.active.pools:
            for _, conn in pool.idle:
                assert conn.state == states.U_IDLE and not conn.closed and not conn.transport.closed, (
                    f"pooled replica connection in state {states.UPSTREAM_STATES[conn.state]}, closed={conn.closed}"
                )
                assert conn.exchange is None and conn.tunnel is None
                pooled.append(conn)
        assert len(pooled) == len({id(c) for c in pooled}), "a replica connection is pooled twice"
        for replica in self.replicas:
            conn = replica.conn
            if replica.transport.closed:
                continue
            owners = [
                conn in pooled,
                conn.exchange is not None and conn.exchange.conn is conn,
                conn.tunnel is not None and not conn.tunnel.ended,
            ]
            assert sum(owners) == 1, (
                f"replica connection {replica.uid} in state {states.UPSTREAM_STATES[conn.state]} "
                f"is open with {sum(owners)} owners (pool, exchange, tunnel): {owners}"
            )

    @invariant()
    def in_flight_counts_are_the_exchanges_in_flight(self) -> None:
        engine = self.engine
        exchanges: dict[int, Exchange] = {}
        for client in self.clients:
            exchanges.update((id(e), e) for e in client.conn.queue)
        for replica in self.replicas:
            if replica.conn.exchange is not None:
                exchanges[id(replica.conn.exchange)] = replica.conn.exchange
        for index in range(len(engine.active.pools)):
            counted = engine.inflight_view[engine.row_base + index]
            held = sum(1 for e in exchanges.values() if e.index == index and e.active is engine.active)
            assert counted == held, f"member {index}: in-flight count {counted}, exchanges in flight {held}"

    @invariant()
    def buffers_stay_within_bounds(self) -> None:
        settings_ = self.settings
        for client in self.clients:
            conn = client.conn
            assert conn.early_size < settings_.early_data + client.last_read, (
                f"client {client.cid}: {conn.early_size} early bytes held (early_data {settings_.early_data})"
            )
            # The bound of MAX_QUEUED + 1 itself does not hold for a read that carries several
            # heads (test_one_read_of_pipelined_requests_queues_at_most_max_queued_plus_one): held
            # here is the half that does, no read is taken past the bound.
            assert len(conn.queue) <= client_module.MAX_QUEUED or not client.transport.reading or conn.closed, (
                f"client {client.cid}: {len(conn.queue)} requests queued (MAX_QUEUED {client_module.MAX_QUEUED}) "
                "and the client is still read"
            )
            for exchange in conn.queue:
                held = sum(len(b) for b in exchange.body_log)
                assert held <= max(settings_.replay_body, MAX_PENDING_BODY) + 2 * client.last_read + 16, (
                    f"client {client.cid}: {held} body bytes held for one exchange"
                )
        for replica in self.replicas:
            assert replica.conn.head_wire <= MAX_RESPONSE_HEAD + replica.last_feed

    @invariant()
    def every_state_is_one_the_tables_allow(self) -> None:
        for client in self.clients:
            conn = client.conn
            assert 0 <= conn.state < len(states.CLIENT_STATES)
            assert not conn.closed or conn.state == states.C_CLOSED
            assert (conn.state == states.C_TUNNEL) <= (conn.tunnel is not None)
        for replica in self.replicas:
            conn = replica.conn
            assert 0 <= conn.state < len(states.UPSTREAM_STATES)
            assert not conn.closed or conn.state == states.U_CLOSED
            assert (conn.state == states.U_TUNNEL) <= (conn.tunnel is not None)
            if conn.exchange is not None:
                assert conn.state in (states.U_SENDING, states.U_AWAITING), (
                    f"replica connection {replica.uid} carries a request in state {states.UPSTREAM_STATES[conn.state]}"
                )


ProxyMachine.TestCase.settings = settings(
    max_examples=LONG_EXAMPLES or 200,
    stateful_step_count=60,
    deadline=None,
    derandomize=not LONG_EXAMPLES,
    database=None if not LONG_EXAMPLES else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestProxyMachine = ProxyMachine.TestCase


@pytest.mark.parametrize("shape", range(len(REFUSED_HEADS)))
def test_each_refused_shape_is_refused_alone(shape: int, tmp_path: Path) -> None:
    """The generator's promise, checked once per shape: refused, closed, nothing reaches a replica."""

    async def body() -> None:
        h = build(tmp_path, asyncio.get_running_loop())
        conn, out = h.client()
        wire, _, _, fate = render(Spec("refused", shape=shape), 0, 0, 100, 0)
        conn.data_received(wire)
        await settle()
        answer = parse_answer(bytes(out.data), b"GET", False)
        assert fate == "refused-head" and answer.complete and 400 <= answer.status < 600, answer
        assert out.closed and h.connects == [] and answer.consumed == len(out.data)

    asyncio.run(body())


# ---------------------------------------------------------------------------------------------
# What the machine found, one example each
# ---------------------------------------------------------------------------------------------


def on_engine(test: Callable[[Harness], Awaitable[None]], tmp_path: Path, **overrides: Any) -> None:
    async def body() -> None:
        await test(build(tmp_path, asyncio.get_running_loop(), **overrides))

    asyncio.run(body())


def test_the_balancers_own_answer_to_a_head_has_no_body(tmp_path: Path) -> None:
    """A 502 (or the seed's 400 for a 404) to a HEAD carried its JSON body: on a kept-alive
    connection the client read that body as the start of the next answer."""

    async def body(h: Harness) -> None:
        h.refuse.update(NAMES)
        conn, out = h.client()
        conn.data_received(
            b"HEAD /a HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\n\r\nGET /b HTTP/1.1\r\nHost: lb\r\n\r\n"
        )
        await settle()
        first = parse_answer(bytes(out.data), b"HEAD", False)
        assert first.complete and first.status == 502 and first.body == b""
        second = parse_answer(bytes(out.data[first.consumed :]), b"GET", False)
        assert second.complete and second.status == 502 and b"failed" in second.body

    on_engine(body, tmp_path, max_attempts=1)


def test_an_error_answered_while_the_body_arrives_ends_the_connection(tmp_path: Path) -> None:
    """A 502 sent before the request body was whole kept the connection: the refusal of the rest
    of that body (here the body deadline's 408) became a second answer to one request."""

    async def body(h: Harness) -> None:
        h.refuse.update(NAMES)
        conn, out = h.client()
        conn.data_received(b"POST /a HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await settle()
        first = parse_answer(bytes(out.data), b"POST", False)
        assert first.complete and first.status == 502 and first.headers.get(b"connection") == b"close"
        assert out.closed and first.consumed == len(out.data)
        h.engine.now += 60
        conn.housekeeping(h.engine.now, h.engine.settings)
        assert first.consumed == len(out.data)  # nothing after it

    on_engine(body, tmp_path, max_attempts=1)


# Found by the machine, then fixed in the core.


def test_one_read_of_pipelined_requests_queues_a_bounded_number_then_is_refused(tmp_path: Path) -> None:
    """llhttp parses a whole read (httptools cannot pause it): reading stops after MAX_QUEUED,
    and a read holding more than MAX_PIPELINED heads gets a 503 in their place and the close."""

    async def body(h: Harness) -> None:
        conn, out = h.client()
        conn.data_received(b"GET /a HTTP/1.1\r\nHost: lb\r\n\r\n" * 50)
        await settle()
        assert len(conn.queue) <= client_module.MAX_PIPELINED + 1, f"{len(conn.queue)} exchanges from one read"
        assert not out.reading

    on_engine(body, tmp_path)


def test_a_chunked_body_over_max_body_is_refused_when_it_ends_in_the_same_read(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        conn, out = h.client()
        conn.data_received(
            b"POST /a HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n" + b"x" * 32 + b"\r\n0\r\n\r\n"
        )
        await settle()
        assert b" 413 " in out.data[:20] and not any(h.sent(up).endswith(b"0\r\n\r\n") for up in h.upstreams)

    on_engine(body, tmp_path, max_body=24)


def test_a_client_whose_answer_is_streaming_is_not_shed_for_its_next_half_sent_head(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        first, out = h.client()
        first.data_received(b"GET /a HTTP/1.1\r\nHost: lb\r\n\r\n")
        first.data_received(b"GET /b HT")  # the next head, half-sent
        await settle()
        h.upstream().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")  # answer half-sent
        h.client()
        h.client()  # one past the cap: the victim must not be the connection with an answer in flight
        assert not out.closed

    on_engine(body, tmp_path, max_connections=2)


def test_a_reset_cuts_a_close_delimited_answer_short_visibly(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        conn, out = h.client()
        conn.data_received(b"GET /a HTTP/1.1\r\nHost: lb\r\n\r\n")
        await settle()
        up = h.upstream()
        up.data_received(b"HTTP/1.1 200 OK\r\n\r\npart of it")
        up.connection_lost(ConnectionResetError("reset"))
        assert out.aborted, f"a reset answer ended as if whole: {bytes(out.data)!r}"

    on_engine(body, tmp_path)
