"""Fakes for driving a real ``Engine`` without sockets, shared by test_engine.py and test_machine.py.

A real ``Engine`` (built as ``worker.ProxyWorker.run`` builds it) over a state dir with a published
membership; ``Engine.connect`` is overridden (a subclass) so that a real ``UpstreamConnection``
gets a recording transport one loop turn later, as a real connect would complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ringlb_balancer.client import ClientConnection
from ringlb_balancer.config import Settings
from ringlb_balancer.control import ADMIN_PATHS, PUBLIC_PATHS, Control
from ringlb_balancer.engine import Engine
from ringlb_balancer.routing import RoutingStore
from ringlb_balancer.shared import SharedState
from ringlb_balancer.upstream import UpstreamConnection, UpstreamPool
from ringlb_balancer.worker import own_addresses
from ringlb_ring.membership import parse

NAMES = ["Server 1", "Server 2", "Server 3"]
ADDRESSES = {"Server 1": "10.0.0.1:5001", "Server 2": "10.0.0.2:5002", "Server 3": "10.0.0.3:5003"}
CLIENT_IP = "203.0.113.7"
INSTANCE = "unit"


class FakeTransport:
    """Records what the protocol writes and how it ends the connection."""

    def __init__(self, peer: tuple[str, int] | None = None) -> None:
        self.data = bytearray()
        self.peer = peer
        self.closed = False
        self.aborted = False
        self.eof = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        assert not self.closed, f"write after close: {bytes(data)!r}"
        assert not self.eof, f"write after write_eof (asyncio raises RuntimeError): {bytes(data)!r}"
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class Harness:
    """One engine, its client connections, and every replica connection it opened."""

    def __init__(self, engine: Engine, control: Control) -> None:
        self.engine = engine
        self.control = control
        self.upstreams: list[UpstreamConnection] = []
        self.refuse: set[str] = set()  # member names whose connect is refused
        self.connects: list[str] = []

    def client(self, admin: bool = False) -> tuple[ClientConnection, FakeTransport]:
        conn = ClientConnection(self.engine, admin)
        transport = FakeTransport((CLIENT_IP, 40000))
        conn.connection_made(transport)
        return conn, transport

    def connect(self, pool: UpstreamPool, exchange: Any) -> None:
        """Stands in for ``Engine.connect``: the connection completes on the next loop turn."""
        self.connects.append(pool.name)

        def done() -> None:
            if pool.name in self.refuse:
                exchange.failed(None, f"cannot connect to {pool.host}:{pool.port}: refused", broken=True, refused=True)
                return
            conn = UpstreamConnection(pool)
            conn.connection_made(FakeTransport())
            self.upstreams.append(conn)
            exchange.attach(conn)

        pool.loop.call_soon(done)

    def upstream(self, i: int = -1) -> UpstreamConnection:
        return self.upstreams[i]

    @staticmethod
    def sent(conn: UpstreamConnection) -> bytes:
        return bytes(conn.transport.data)

    @staticmethod
    def member(conn: UpstreamConnection) -> str:
        return conn.pool.name


def build(
    state: Path,
    loop: asyncio.AbstractEventLoop,
    members: list[str] | None = None,
    key: dict | None = None,
    **overrides: Any,
) -> Harness:
    """A Harness over a published membership of ``members`` (default: the three of NAMES)."""
    harness_of: list[Harness] = []

    class LoopbackEngine(Engine):
        def connect(self, pool: UpstreamPool, exchange: Any) -> None:
            harness_of[0].connect(pool, exchange)

    settings = Settings(state_dir=str(state), membership_token="m", **overrides)
    shared = SharedState(state)
    store = RoutingStore(shared, settings.snapshot)
    doc: dict[str, Any] = {
        "revision": 1,
        "members": [{"name": n, "address": ADDRESSES[n]} for n in (NAMES if members is None else members)],
        "hashing": {"strategy": "ring"},
    }
    if key:
        doc["key"] = key
    store.publish(parse(doc))
    engine = LoopbackEngine(settings, shared, store, loop, INSTANCE)
    control = Control(settings, store, None, own_addresses(settings.bind, settings.admin_bind))
    engine.controller = control
    engine.control_paths = frozenset(p.encode() for p in (PUBLIC_PATHS if settings.admin_bind else ADMIN_PATHS))
    harness = Harness(engine, control)
    harness_of.append(harness)
    return harness


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def run(test: Callable[..., Awaitable[None]], *args: Any) -> None:
    asyncio.run(test(*args))
