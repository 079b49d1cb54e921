"""Test backends put behind the balancer (not the replica image): raw asyncio servers whose
every byte is under the test's control.

- ``MainBackend``: one server, behaviour chosen by path (``/echo`` default, ``/sse``, ``/download``,
  ``/upload``, ``/ws``, ``/ws-refuse``, ``/die``, ``/early-hints``, ``/chunks16``, ``/big``,
  ``/slow``, ``/_state``); every client connection's bytes are counted in ``state``.
- ``ByteLogBackend``: records exactly the bytes each connection delivers (strict h11 server,
  one request per connection, ``Connection: close``), for the smuggling corpus.
- ``LenientBackend``: a careless HTTP/1.1 server that splits requests on bare LF, as the one
  behind which a request-target injection ran.
- ``ReuseDropBackend``: answers the first request of a connection, and closes without an answer
  on any later request of the same connection (records every request it received).
- ``FakeScaler``: the supervisor's scaler API (``GET``/``PUT /replicas``) that pushes the new
  membership to a balancer, as ``ringlb dev`` does.

Each runs in a thread of the test process (``.start()``), or in its own process with
``python -m tests.backends main --port N`` (``BackendProcess``), e.g. to SIGSTOP it.
Every backend answers ``GET /heartbeat`` with 200 so the balancer's health checks keep it in.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import h11

LOOPBACK = "127.0.0.1"
BLOCK = bytes(range(256)) * 4096  # 1 MiB of a known pattern
PATTERN16 = b"0123456789abcdef"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ------------------------------------------------------------------------------------------
# a server in a thread
# ------------------------------------------------------------------------------------------
class ServerThread:
    """An asyncio server on 127.0.0.1:<free port> in a daemon thread of its own loop."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()

    async def _make_server(self) -> asyncio.Server:
        raise NotImplementedError

    def start(self) -> ServerThread:
        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self._server = server = self.loop.run_until_complete(self._make_server())
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the server's loop and return its result (state reads without races)."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn())
            done.set()

        assert self.loop is not None, "call() before start()"
        self.loop.call_soon_threadsafe(run)
        # Generous: the loop may be busy streaming on a loaded machine; it costs nothing otherwise.
        if not done.wait(60):
            raise AssertionError("the backend's loop did not run a call within 60 s")
        return box[0]

    def stop(self) -> None:
        if self.loop is None:
            return

        server, thread = self._server, self._thread
        assert server is not None and thread is not None  # start() set them with the loop

        async def close() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        thread.join(5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------
# a minimal HTTP/1.1 server side on asyncio streams (the main backend)
# ------------------------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    head: bytes  # the raw head, as received
    conn: int
    nth: int  # 1 for the first request of its connection

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.target).query).items()}

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.header("Transfer-Encoding") or "").lower()

    @property
    def keep_alive(self) -> bool:
        tokens = (self.header("Connection") or "").lower()
        return "close" not in tokens if self.version == "HTTP/1.1" else "keep-alive" in tokens


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def parse_head(head: bytes, conn: int, nth: int) -> Request:
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Request(method, target, version, headers, head, conn, nth)


async def body_chunks(reader: asyncio.StreamReader, req: Request, piece: int = 1 << 20):
    """The request body as it arrives (de-chunked), in pieces of at most ``piece`` bytes."""
    if req.chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailer fields
                    pass
                return
            left = size
            while left:
                data = await reader.read(min(left, piece))
                if not data:
                    raise ConnectionError("body cut short")
                left -= len(data)
                yield data
            await reader.readexactly(2)
    else:
        left = int(req.header("Content-Length") or 0)
        while left:
            data = await reader.read(min(left, piece))
            if not data:
                raise ConnectionError("body cut short")
            left -= len(data)
            yield data


def head_bytes(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n").encode("latin-1")


def simple(
    status: int,
    body: bytes,
    content_type: str = "text/plain",
    close: bool = False,
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + (extra or [])
    if close:
        headers.append(("Connection", "close"))
    return head_bytes(status, "OK" if status == 200 else "Answer", headers) + body


class MainBackend(ServerThread):
    """Behaviour by path; see the module docstring. ``state`` is read with ``snapshot()``."""

    def __init__(self, port: int = 0, name: str = "main") -> None:
        super().__init__(port)
        self.name = name
        self.conn_ids = 0
        self.state: dict[str, Any] = {
            "open": 0,
            "connections": 0,
            "requests": defaultdict(int),  # path -> count
            "downloads": {},
            "uploads": {},
            "ws": 0,
        }
        self.gates: dict[str, asyncio.Semaphore] = {}

    async def _make_server(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, LOOPBACK, self.port, limit=1 << 20, backlog=1024)

    def snapshot(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.call(lambda: self.state)))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conn_ids += 1
        conn = self.conn_ids
        self.state["open"] += 1
        self.state["connections"] += 1
        nth = 0
        try:
            while True:
                head = await read_head(reader)
                if head is None:
                    return
                nth += 1
                try:
                    req = parse_head(head, conn, nth)
                except ValueError:
                    writer.write(simple(400, b"bad request line", close=True))
                    return
                self.state["requests"][req.path] += 1
                handler = getattr(
                    self, "do_" + req.path.strip("/").split("/")[0].replace("-", "_").replace(".", "_"), None
                )
                keep = await (handler or self.do_echo)(req, reader, writer)
                await writer.drain()
                if not keep or not req.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self.state["open"] -= 1
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the peer may have broken the connection any way
                pass

    # -- handlers: return True to keep the connection for another request ---------------------
    async def do_heartbeat(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(simple(200, b"ok"))
        return True

    async def do__state(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(simple(200, json.dumps(self.state).encode(), "application/json"))
        return True

    async def do_echo(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if (req.header("Expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = b"".join([c async for c in body_chunks(reader, req)])
        payload = json.dumps(
            {
                "server": self.name,
                "method": req.method,
                "target": req.target,
                "version": req.version,
                "headers": req.headers,
                "body": body.decode("latin-1"),
                "conn": req.conn,
                "nth": req.nth,
            }
        ).encode()
        writer.write(simple(200, payload, "application/json"))
        return True

    async def do_slow(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(int(req.query.get("ms", "300")) / 1000)
        return await self.do_echo(req, reader, writer)

    def release(self, gate: str) -> None:
        """Let one more event of the ``/sse?gate=<gate>`` stream go: the test paces the stream."""
        self.call(lambda: self._gate(gate).release())

    def _gate(self, name: str) -> asyncio.Semaphore:
        return self.gates.setdefault(name, asyncio.Semaphore(0))

    async def do_sse(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """``n`` events, ``gap`` ms apart, or each once ``release(gate)`` lets it go."""
        n, gap = int(req.query.get("n", "5")), int(req.query.get("gap", "250")) / 1000
        gate = self._gate(req.query["gate"]) if "gate" in req.query else None
        writer.write(
            head_bytes(
                200,
                "OK",
                [
                    ("Content-Type", "text/event-stream"),
                    ("Cache-Control", "no-cache"),
                    ("Transfer-Encoding", "chunked"),
                ],
            )
        )
        await writer.drain()
        for i in range(n):
            await (gate.acquire() if gate is not None else asyncio.sleep(gap))
            event = f"id: {i}\ndata: event {i}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    async def do_download(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        n, ident = int(req.query["n"]), req.query.get("id", "d")
        record = self.state["downloads"][ident] = {"size": n, "sent": 0, "finished": False, "closed": False}
        writer.write(head_bytes(200, "OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))]))
        view = memoryview(BLOCK)
        try:
            while record["sent"] < n:
                piece = view[: min(len(BLOCK), n - record["sent"])]
                writer.write(piece)
                record["sent"] += len(piece)
                await writer.drain()
            record["finished"] = True
        except ConnectionError:
            record["closed"] = True
            raise
        # the answer is whole; the connection closing later is not a cut
        return True

    async def do_big(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        n = int(req.query.get("n", str(4 << 20)))
        writer.write(head_bytes(200, "OK", [("Content-Length", str(n))]))
        sent = 0
        while sent < n:
            piece = BLOCK[: min(len(BLOCK), n - sent)]
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
        return True

    async def do_upload(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        ident = req.query.get("id", "u")
        record = self.state["uploads"][ident] = {"bytes": 0, "chunked": req.chunked, "done": False}
        async for data in body_chunks(reader, req):
            record["bytes"] += len(data)
        record["done"] = True
        writer.write(simple(200, json.dumps(record).encode(), "application/json"))
        return True

    async def do_ws(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import (
            AcceptConnection,
            BytesMessage,
            CloseConnection,
            Ping,
            TextMessage,
        )
        from wsproto.events import (
            Request as WSRequest,
        )

        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(req.head)
        for event in ws.events():
            if isinstance(event, WSRequest):
                writer.write(ws.send(AcceptConnection()))
        await writer.drain()
        self.state["ws"] += 1
        while True:
            data = await reader.read(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    writer.write(ws.send(TextMessage(data="echo: " + event.data)))
                elif isinstance(event, BytesMessage):
                    writer.write(ws.send(BytesMessage(data=b"echo: " + bytes(event.data))))
                elif isinstance(event, Ping):
                    writer.write(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    try:
                        writer.write(ws.send(event.response()))
                        await writer.drain()
                    except Exception:  # noqa: BLE001 - the peer may be gone already: the close is done
                        pass
                    return False
            await writer.drain()
            if not data:
                return False

    async def do_ws_refuse(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(simple(403, b"upgrade refused by the replica", extra=[("X-Refused", "yes")]))
        return True

    async def do_die(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        n = int(req.query.get("n", "100000"))
        chunked = req.query.get("mode") == "chunked"
        if chunked:
            writer.write(head_bytes(200, "OK", [("Transfer-Encoding", "chunked")]))
            writer.write(b"%x\r\n%s\r\n" % (n, BLOCK[:n]))
        else:
            writer.write(head_bytes(200, "OK", [("Content-Length", str(2 * n))]))
            writer.write(BLOCK[:n])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort() if req.query.get("how") == "reset" else writer.close()
        return False

    async def do_early_hints(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(simple(200, b"the final answer", extra=[("Link", "</style.css>; rel=preload; as=style")]))
        return True

    async def do_chunks16(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        n = int(req.query.get("n", str(4 << 20)))
        assert n % 65536 == 0
        batch = b"10\r\n" + b"\r\n10\r\n".join([PATTERN16] * 4096) + b"\r\n"  # 64 KiB of payload
        writer.write(head_bytes(200, "OK", [("Transfer-Encoding", "chunked")]))
        for _ in range(n // 65536):
            writer.write(batch)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True


# ------------------------------------------------------------------------------------------
# byte logging (strict) and lenient backends
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# a scaler as the local supervisor offers it, pushing membership like it does
# ------------------------------------------------------------------------------------------
class FakeScaler:
    """``GET``/``PUT /replicas`` (the supervisor's scaling API, bearer ``token``); every accepted
    change is pushed to ``push_url`` (a balancer's admin URL) by a pusher thread. Member
    addresses are 127.0.1.<i>:<port>, one per name (nothing needs to listen there)."""

    def __init__(
        self, push_url: str, push_token: str, names: list[str], port_for_all: int, token: str = "scaler-token"
    ) -> None:
        import requests

        self.push_url = push_url.rstrip("/") + "/membership"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {push_token}"
        self.token = token
        self.port_for_all = port_for_all
        self.desired = list(names)
        self.version = 1
        self.revision = 0
        self.lock = threading.Lock()
        self.push_lock = threading.Lock()
        self.addresses: dict[str, int] = {}
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.push_times: list[float] = []
        self.push_failures: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, code: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    self._reply(401, {"error": "bad token"})
                    return False
                return True

            def do_GET(self) -> None:
                if self._authorized():
                    with outer.lock:
                        self._reply(200, {"replicas": outer.desired, "version": str(outer.version)})

            def do_PUT(self) -> None:
                doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self._authorized():
                    return
                with outer.lock:
                    if str(doc.get("version")) != str(outer.version):
                        self._reply(409, {"error": "version conflict"})
                        return
                    outer.desired = list(doc["replicas"])
                    outer.version += 1
                    self._reply(200, {"replicas": outer.desired, "version": str(outer.version)})
                outer.wake.set()

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.pusher = threading.Thread(target=self._push_loop, daemon=True)
        self.pusher.start()

    def _address(self, name: str) -> str:
        if name not in self.addresses:
            self.addresses[name] = len(self.addresses) + 1
        return f"127.0.1.{self.addresses[name]}:{self.port_for_all}"

    def push_now(self) -> float:
        """Push the desired list as the next revision; returns the seconds the PUT took."""
        with self.push_lock:
            with self.lock:
                names = list(self.desired)
            self.revision += 1
            doc = {"revision": self.revision, "members": [{"name": n, "address": self._address(n)} for n in names]}
            start = time.perf_counter()
            try:
                reply = self.session.put(self.push_url, json=doc, timeout=30)
                elapsed = time.perf_counter() - start
                if reply.status_code != 200:
                    self.push_failures.append(f"{reply.status_code} {reply.text[:200]}")
            except Exception as exc:  # noqa: BLE001 - any failure is recorded for the test to assert on
                elapsed = time.perf_counter() - start
                self.push_failures.append(repr(exc))
            self.push_times.append(elapsed)
            return elapsed

    def _push_loop(self) -> None:
        while not self.stopping.is_set():
            if self.wake.wait(0.2):
                self.wake.clear()
                self.push_now()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------
# a backend in its own process
# ------------------------------------------------------------------------------------------
class BackendProcess:
    """``python -m tests.backends main``: the main backend in a process of its own (SIGSTOP it)."""

    def __init__(self, kind: str = "main") -> None:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.backends", kind, "--port", "0"],
            cwd=root,
            stdout=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=root),
        )
        assert self.process.stdout is not None  # stdout=PIPE
        line = self.process.stdout.readline().decode()
        if not line.startswith("ready "):
            self.process.kill()
            raise RuntimeError(f"backend process did not start: {line!r}")
        self.port = int(line.split()[1])
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:  # stdout=PIPE: always
            self.process.stdout.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.backends")
    parser.add_argument("kind", choices=["main", "bytelog", "lenient", "reusedrop"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    cls = {"main": MainBackend, "bytelog": ByteLogBackend, "lenient": LenientBackend, "reusedrop": ReuseDropBackend}[
        args.kind
    ]
    server = cls(args.port).start()
    print(f"ready {server.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0
