"""Backends that show how a request's framing reached them:

- ``ByteLogBackend`` records exactly the bytes each connection delivers (strict h11 server, one
  request per connection, ``Connection: close``), for the smuggling corpus; ``parse_requests``
  reads them as a strict server would.
- ``LenientBackend``: a careless HTTP/1.1 server that splits requests on bare LF, as the one
  behind which a request-target injection ran.
- ``ReuseDropBackend``: answers the first request of a connection, and closes without an answer
  on any later request of the same connection (records every request it received)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import cast

import h11

from ringlb_harness.backends.server import ServerThread, body_chunks, parse_head, read_head, simple
from ringlb_harness.net import LOOPBACK


@dataclass
class Logged:
    conn: int
    data: bytearray = field(default_factory=bytearray)
    closed: bool = False

    @property
    def heartbeat(self) -> bool:
        return bytes(self.data[:15]) == b"GET /heartbeat "


class _ByteLogProtocol(asyncio.Protocol):
    def __init__(self, owner: ByteLogBackend) -> None:
        self.owner = owner
        owner.counter += 1
        self.log = Logged(owner.counter)
        owner.logs.append(self.log)
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP server's (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        self.log.data += data
        if self.answered:
            return  # keep recording whatever follows the one request
        self.h11.receive_data(data)
        target = b""
        body = 0
        try:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.Request):
                    target = event.target
                elif isinstance(event, h11.Data):
                    body += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._answer(200, json.dumps({"conn": self.log.conn, "target": target.decode("latin-1")}).encode())
                    return
        except h11.RemoteProtocolError as exc:
            self._answer(400, f"byte-log backend: {exc}".encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.answered = True
        self.transport.write(simple(status, body, "application/json", close=True))
        self.transport.write_eof()
        asyncio.get_running_loop().call_later(2.0, self.transport.close)

    def eof_received(self) -> bool:
        self.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.closed = True


class ByteLogBackend(ServerThread):
    """Every connection's bytes, exactly as received (``logs``); heartbeats are marked."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.logs: list[Logged] = []
        self.counter = 0

    async def _make_server(self) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(lambda: _ByteLogProtocol(self), LOOPBACK, self.port)

    def clear(self) -> None:
        self.call(self.logs.clear)

    def received(self) -> list[bytes]:
        """The bytes of every non-heartbeat connection since ``clear()``, oldest first."""
        return self.call(lambda: [bytes(log.data) for log in self.logs if not log.heartbeat])


@dataclass
class SeenRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    head: bytes  # the raw head bytes


def parse_requests(data: bytes) -> tuple[list[SeenRequest], bytes, str | None]:
    """What a strict server (h11) reads in ``data``: the requests, the bytes it could not read as
    a request, and the error that stopped it (None when all bytes were whole requests)."""
    found: list[SeenRequest] = []
    rest = data
    while rest:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        conn.receive_data(rest)
        head_end = rest.find(b"\r\n\r\n")
        request: SeenRequest | None = None
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return found, rest, "incomplete request"
                if isinstance(event, h11.Request):
                    request = SeenRequest(
                        event.method,
                        event.target,
                        list(event.headers),
                        b"",
                        rest[: head_end + 4] if head_end >= 0 else rest,
                    )
                elif isinstance(event, h11.Data):
                    assert request is not None  # h11 gives the Request first
                    request.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    found.append(request)
                    break
        except h11.RemoteProtocolError as exc:
            return found, rest, str(exc)
        conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())
        rest = bytes(conn.trailing_data[0])
    return found, b"", None


class _LenientProtocol(asyncio.Protocol):
    """Reads lines ending in LF (CR optional), a request per blank line, bodies ignored."""

    def __init__(self, owner: LenientBackend) -> None:
        self.owner = owner
        self.buffer = b""
        self.current: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP server's (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            line = line.rstrip(b"\r")
            if line:
                self.current.append(line)
                continue
            if not self.current:
                continue
            request_line = self.current[0]
            if not request_line.startswith(b"GET /heartbeat"):
                self.owner.seen.append(list(self.current))
            self.current = []
            self.transport.write(simple(200, b"lenient: " + request_line[:100]))


class LenientBackend(ServerThread):
    """``seen``: every request (its lines) it took, heartbeats excepted."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.seen: list[list[bytes]] = []

    async def _make_server(self) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(lambda: _LenientProtocol(self), LOOPBACK, self.port)

    def taken(self) -> list[list[bytes]]:
        return self.call(lambda: list(self.seen))


class ReuseDropBackend(ServerThread):
    """Answers a connection's first request (keep-alive); on a later request of the same
    connection it reads it whole, records it, and closes without answering."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.seen: list[tuple[str, str, int, bytes]] = []  # (method, target, nth on its connection, body)
        self.conns = 0

    async def _make_server(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, LOOPBACK, self.port)

    def received(self) -> list[tuple[str, str, int, bytes]]:
        return self.call(lambda: list(self.seen))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns += 1
        nth = 0
        try:
            while (head := await read_head(reader)) is not None:
                nth += 1
                req = parse_head(head, self.conns, nth)
                body = b"".join([c async for c in body_chunks(reader, req)])
                if req.path != "/heartbeat":
                    self.seen.append((req.method, req.target, nth, body))
                if nth > 1:
                    return  # close without an answer: the request may or may not have been processed
                writer.write(simple(200, b"first on its connection"))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
