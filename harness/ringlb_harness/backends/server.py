"""The pieces every test backend is built of: an asyncio server in a thread of the test process
(``ServerThread``), and a minimal HTTP/1.1 server side on asyncio streams whose every byte is
under the test's control (``read_head``, ``parse_head``, ``body_chunks``, ``simple``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

BLOCK = bytes(range(256)) * 4096  # 1 MiB of a known pattern
PATTERN16 = b"0123456789abcdef"


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
            async for data in _exactly(reader, size, piece):
                yield data
            await reader.readexactly(2)
    else:
        async for data in _exactly(reader, int(req.header("Content-Length") or 0), piece):
            yield data


async def _exactly(reader: asyncio.StreamReader, size: int, piece: int):
    """``size`` bytes as they arrive, in pieces of at most ``piece`` bytes."""
    while size:
        data = await reader.read(min(size, piece))
        if not data:
            raise ConnectionError("body cut short")
        size -= len(data)
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
