"""The main test backend: one server, behaviour chosen by path (``/echo`` default, ``/sse``,
``/download``, ``/upload``, ``/ws``, ``/ws-refuse``, ``/die``, ``/early-hints``, ``/chunks16``,
``/big``, ``/slow``, ``/_state``); every client connection's bytes are counted in ``state``."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from ringlb_harness.backends.server import (
    BLOCK,
    PATTERN16,
    Request,
    ServerThread,
    body_chunks,
    head_bytes,
    parse_head,
    read_head,
    simple,
)
from ringlb_harness.net import LOOPBACK


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
