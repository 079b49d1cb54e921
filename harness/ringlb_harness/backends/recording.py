"""Backends that prove what crossed the balancer: a strict recording one (every request as a
strict HTTP/1.1 server parsed it) and raw-socket misbehaving ones (stray bytes, a 101 nobody
asked for, 5,000 header fields, tunnels that end in every way, an upgrade never answered).

Both run in a thread of the test process (``ServerThread``, backends.server) and answer
``GET /heartbeat`` with 200, so the balancer's health checks keep them in.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

import h11

from ringlb_harness.backends.server import Request, ServerThread, parse_head, read_head
from ringlb_harness.net import LOOPBACK

STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTRAY!"  # a whole fake answer: its marker must reach no client
MARKER = b"STRAY!"


# ------------------------------------------------------------------------------------------
# the recording backend (strict, h11)
# ------------------------------------------------------------------------------------------
@dataclass
class Recorded:
    """One request as the backend parsed it; ``head`` is rebuilt from the fields as received."""

    conn: int
    nth: int  # 1 for the first request of its connection
    method: str
    target: str
    headers: list[tuple[str, str]]  # names as sent, in order
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def head(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1"] + [f"{n}: {v}" for n, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _RecordingProtocol(asyncio.Protocol):
    def __init__(self, owner: RecordingBackend) -> None:
        self.owner = owner
        owner.conns += 1
        self.conn = owner.conns
        self.nth = 0
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        self.current: Recorded | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are no asyncio.Transport instances

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        self.h11.receive_data(b"")
        self._pump()
        return False

    def _pump(self) -> None:
        try:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    if event is h11.PAUSED and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                        self.h11.start_next_cycle()
                        continue
                    return
                if isinstance(event, h11.ConnectionClosed):
                    self.transport.close()
                    return
                if isinstance(event, h11.Request):
                    self.nth += 1
                    self.answered = False
                    self.current = Recorded(
                        self.conn,
                        self.nth,
                        event.method.decode("latin-1"),
                        event.target.decode("latin-1"),
                        [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()],
                    )
                    if self.owner.eager:
                        self._answer()  # as gunicorn does for an app that never reads the body
                elif isinstance(event, h11.Data):
                    assert self.current is not None  # h11 sends Data only after a Request
                    self.current.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    assert self.current is not None
                    if self.current.target != "/heartbeat":
                        self.owner.requests.append(self.current)
                    if not self.answered:
                        self._answer()
                    self.current = None
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            self.owner.errors.append(f"connection {self.conn}: {exc}")
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
        except h11.LocalProtocolError as exc:  # pragma: no cover - a bug of this backend
            self.owner.errors.append(f"connection {self.conn}: backend bug: {exc}")
            self.transport.abort()

    def _answer(self) -> None:
        request = self.current
        assert request is not None
        self.answered = True
        body = json.dumps(
            {
                "name": self.owner.name,
                "conn": self.conn,
                "nth": request.nth,
                "method": request.method,
                "target": request.target,
            }
        ).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        data = self.h11.send(h11.Response(status_code=200, headers=headers))
        if request.method != "HEAD":
            data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(h11.EndOfMessage())
        self.transport.write(data)


class RecordingBackend(ServerThread):
    """Every request a strict server (h11) read, in arrival order (``received``), and every
    bytes it could not read as HTTP/1.1 (``protocol_errors``). Answers 200 with a JSON record
    of the request it answers (name, conn, nth, method, target). ``eager``: answer as soon as
    the head is in, before the body, then read the body (gunicorn with an app that never reads
    it does the same: a body left unsent on a reused connection is taken from the next request).
    """

    def __init__(self, name: str = "recorder", eager: bool = False) -> None:
        super().__init__()
        self.name = name
        self.eager = eager
        self.conns = 0
        self.requests: list[Recorded] = []
        self.errors: list[str] = []

    async def _make_server(self) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(lambda: _RecordingProtocol(self), LOOPBACK, self.port)

    def clear(self) -> None:
        def empty() -> None:
            self.requests.clear()
            self.errors.clear()

        self.call(empty)

    def received(self) -> list[Recorded]:
        return self.call(lambda: list(self.requests))

    def protocol_errors(self) -> list[str]:
        return self.call(lambda: list(self.errors))


# ------------------------------------------------------------------------------------------
# raw misbehaving backends
# ------------------------------------------------------------------------------------------
@dataclass
class RawState:
    hits: Counter[str] = field(default_factory=Counter)  # path -> requests
    stray_sent: int = 0  # stray answers written (same write, or the later one)
    stray_peer: int = 0  # the port of the connection the last one went to
    switched_open: int = 0  # connections answered 101 to a plain request, still open
    tunnels_open: int = 0
    tunnel_bytes: bytearray = field(default_factory=bytearray)  # what tunnel clients sent, all tunnels
    held_bytes: int = 0  # bytes received after an upgrade head never answered (/hold)


def _answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    reason = {200: b"OK", 204: b"No Content", 500: b"Internal Server Error"}.get(status, b"Answer")
    return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, reason, len(body), extra, body)


class RawBackend(ServerThread):
    """Behaviour by path, every byte under the test's control:

    - ``/ok`` (and anything else): 200, body ``<name> <target>``; ``?close=1`` adds
      ``Connection: close`` and closes.
    - ``/stray?kind=head|204|length&when=same|late``: a well-formed answer (to a HEAD; a 204; a
      5-byte body) followed by ``STRAY`` in the same write, or in a later one on the idle
      connection once ``release_stray()`` is called; ``stray_sent`` counts them.
    - ``/switch``: 101 to a request that asked for no upgrade, then reads until closed.
    - ``/fail``: 500; ``/reset``: the connection reset without an answer.
    - ``/many-headers``: an answer with 5,000 header fields.
    - ``/big?n=N``: N bytes of body, written as fast as the reader takes them.
    - ``/tunnel?end=echo|replica-close|replica-half``: 101, then echo; the replica closes after
      the first echo, or half-closes after it and keeps reading (``tunnel_bytes``) until EOF.
    - ``/hold``: an upgrade never answered; what follows the head is read and counted.
    """

    def __init__(self, name: str = "raw") -> None:
        super().__init__()
        self.name = name
        self.state = RawState()
        self.stray_gate: asyncio.Event | None = None

    async def _make_server(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, LOOPBACK, self.port)

    def snapshot(self) -> RawState:
        def copy() -> RawState:
            s = self.state
            return RawState(
                Counter(s.hits),
                s.stray_sent,
                s.stray_peer,
                s.switched_open,
                s.tunnels_open,
                bytearray(s.tunnel_bytes),
                s.held_bytes,
            )

        return self.call(copy)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (head := await read_head(reader)) is not None:
                req = parse_head(head, 0, 0)
                length = int(req.header("Content-Length") or 0)
                if length and req.path not in ("/hold",):
                    await reader.readexactly(length)
                if req.path != "/heartbeat":
                    self.state.hits[req.path] += 1
                handler = getattr(self, "do_" + req.path.strip("/").replace("-", "_"), None)
                keep = await (handler or self.do_ok)(req, reader, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def do_ok(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        close = req.query.get("close") == "1"
        body = f"{self.name} {req.target}".encode()
        writer.write(_answer(200, body, b"Connection: close\r\n" if close else b""))
        await writer.drain()
        return not close

    async def do_stray(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        kind, when = req.query["kind"], req.query["when"]
        self.state.stray_peer = writer.get_extra_info("peername")[1]
        answer = {
            "head": b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n",
            "204": b"HTTP/1.1 204 No Content\r\n\r\n",
            "length": _answer(200, b"hello"),
        }[kind]
        if when == "same":
            writer.write(answer + STRAY)
            await writer.drain()
        else:
            writer.write(answer)
            await writer.drain()
            gate = self._stray_gate()
            await gate.wait()  # a later write, when the test says
            gate.clear()
            writer.write(STRAY)
            await writer.drain()
        self.state.stray_sent += 1
        return True

    def _stray_gate(self) -> asyncio.Event:
        if self.stray_gate is None:
            self.stray_gate = asyncio.Event()
        return self.stray_gate

    def release_stray(self) -> None:
        """Let a ``when=late`` stray answer go out now."""
        self.call(lambda: self._stray_gate().set())

    async def do_switch(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await writer.drain()
        self.state.switched_open += 1
        try:
            while await reader.read(65536):
                pass
        finally:
            self.state.switched_open -= 1
        return False

    async def do_fail(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(_answer(500, b"replica failure"))
        await writer.drain()
        return True

    async def do_reset(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.transport.abort()
        return False

    async def do_many_headers(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        fields = b"".join(b"X-Many-%d: v\r\n" % i for i in range(5000))
        writer.write(_answer(200, b"many", fields))
        await writer.drain()
        return True

    async def do_big(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        n = int(req.query["n"])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
        piece = b"b" * (1 << 20)
        sent = 0
        while sent < n:
            writer.write(piece[: n - sent])
            sent += min(len(piece), n - sent)
            await writer.drain()
        return True

    async def do_tunnel(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        end = req.query.get("end", "echo")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await writer.drain()
        self.state.tunnels_open += 1
        try:
            first = True
            while data := await reader.read(65536):
                self.state.tunnel_bytes += data
                if first or end == "echo":
                    writer.write(data)
                    await writer.drain()
                if first and end == "replica-close":
                    return False
                if first and end == "replica-half":
                    writer.write_eof()
                first = False
        finally:
            self.state.tunnels_open -= 1
        return False

    async def do_hold(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        while data := await reader.read(1 << 20):
            self.state.held_bytes += len(data)
        return False
