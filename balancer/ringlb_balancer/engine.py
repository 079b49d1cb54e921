"""Routing and forwarding state of one worker process: the membership in force, replica pools,
passive health, counters, and the once-a-second housekeeping of every connection.

The per-request path touches only what this module precomputes per membership (pools, Host
values, counter rows), one shared-memory read of the revision, and the strategy's table.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from ringlb_balancer import framing
from ringlb_balancer.config import Settings
from ringlb_balancer.counters import HOT_KEYS, Counters
from ringlb_balancer.routing import Routing, RoutingStore
from ringlb_balancer.shared import DRAINING_AT, HEALTH_AT, SharedState
from ringlb_balancer.upstream import UpstreamPool
from ringlb_ring import hashing
from ringlb_ring.sketch import SpaceSaving

if TYPE_CHECKING:
    from ringlb_balancer.client import ClientConnection
    from ringlb_balancer.control import Control
    from ringlb_balancer.exchange import Exchange

log = logging.getLogger("ringlb.engine")

HOUSEKEEPING_INTERVAL = 0.5
# Hot keys: one keyed request in HOT_SAMPLE, drawn at random (a fixed stride would alias with
# a client's own pattern), is counted: a sketch update costs about a microsecond, every request
# would be a few percent of the per-request CPU. The sketch of HOT_CAPACITY counters is renewed
# every HOT_WINDOW seconds, so the rates are recent ones.
HOT_SAMPLE_BITS = 3
HOT_SAMPLE = 1 << HOT_SAMPLE_BITS
HOT_CAPACITY = 200
HOT_WINDOW = 10.0


@dataclass
class Active:
    """Per-member objects for one membership, index-aligned with its member list. A request
    keeps the view it started with, so a retry never re-indexes into a newer membership."""

    routing: Routing
    revision: int
    owner: Callable[[str], int]  # the strategy's lookup, bound once
    bounded: float
    pools: list[UpstreamPool]
    members: list[bytes]  # Host header value (the member's address) per index
    rows: list[list[int]]  # counter row per index
    consecutive_5xx: list[int]


@mypyc_attr(allow_interpreted_subclasses=True)  # the unit tests' engine opens no sockets
class Engine:
    def __init__(
        self,
        settings: Settings,
        shared: SharedState,
        store: RoutingStore,
        loop: asyncio.AbstractEventLoop,
        instance: str,
    ) -> None:
        self.settings = settings
        self.shared = shared
        self.store = store
        self.loop = loop
        self.log = log
        self.counters = Counters(shared.dir)
        self.clients: dict[ClientConnection, None] = {}  # insertion order = age, for shedding
        self.tasks: set[asyncio.Task[Any]] = set()
        self.via = f"1.1 ringlb-{instance}".encode()
        self.via_marker = f"ringlb-{instance}".encode()
        self.control_paths: frozenset[bytes] = frozenset()
        self.control_max_body = 64 * 1024
        self.controller: Control | None = None
        self.max_connections = settings.max_connections
        self.now = loop.time()  # the clock deadlines use, advanced by housekeeping: coarse, cheap
        self.row_base = shared.slot(0)  # this process's in-flight row, claimed after the fork
        self.inflight_view = shared.inflight
        self.revision_view = shared.revision_view
        self.shared_map = shared.map  # read in place: health bytes at HEALTH_AT + index, the drain byte
        self.hot = SpaceSaving(HOT_CAPACITY)
        self.hot_since = self.now
        self.hot_draw = random.getrandbits(31)
        self.retiring = False
        self.active = self._build(store.current(), None)
        self._adopt_key()

    @property
    def serving(self) -> bool:
        """False once any worker of this balancer began draining (``SharedState.draining``), or
        this worker is on its way out (``retiring``: replaced by a reload, or stopping)."""
        return not (self.retiring or self.shared_map[DRAINING_AT])

    # -- membership ---------------------------------------------------------------------
    def current(self) -> Active:
        """The per-member objects for the membership in force, rebuilt when it changed; pools of
        members that stayed are kept."""
        routing = self.store.current()
        if routing is not self.active.routing:
            self.active = self._build(routing, self.active)
            self._adopt_key()
        return self.active

    def _build(self, routing: Routing, previous: Active | None) -> Active:
        old = {(p.name, p.host, p.port): p for p in previous.pools} if previous else {}
        pools = []
        for m in routing.membership.members:
            pool = old.pop((m.name, m.host, m.port), None)
            pools.append(pool or UpstreamPool(m.name, m.host, m.port, self))
        for pool in old.values():
            pool.close()
        self.shared.clear_row()
        members = routing.membership.members
        self.counters.retain([m.name for m in members])
        return Active(
            routing,
            routing.membership.revision,
            routing.strategy.owner,
            routing.membership.hashing.bounded_load,
            pools,
            [m.address.encode() for m in members],
            [self.counters.row(m.name) for m in members],
            [0] * len(members),
        )

    def _adopt_key(self) -> None:
        """Copied off the routing in force: the client protocol reads them for every request."""
        routing = self.active.routing
        self.key_plan = routing.key_plan
        self.key_fields = routing.key_plan.headers  # the fields the plan reads, lower-cased
        self.key_header = routing.key_header

    def name_of(self, active: Active, index: int) -> str:
        return active.routing.membership.members[index].name

    # -- routing ------------------------------------------------------------------------
    def route(self, key: bytes | None) -> tuple[Active, int]:
        """The membership in force and the member for ``key`` (-1: the ring is empty)."""
        active = self.active
        if self.revision_view[0] != active.revision:
            active = self.current()
        if not active.pools:
            return active, -1
        if key is not None:
            # A linear congruential step (native integers when compiled; random's functions
            # are calls into Python): its high bits draw the sample.
            self.hot_draw = (self.hot_draw * 1103515245 + 12345) & 0x7FFFFFFF
            if self.hot_draw >> (31 - HOT_SAMPLE_BITS) == 0:
                self.hot.observe(key.decode("latin-1"))
        text = key.decode("latin-1") if key else str(random.randint(100_000, 999_999))
        if active.bounded:
            strategy = active.routing.strategy
            return active, hashing.bounded_choice(
                self._healthy(active, strategy.preference(text)),
                self.shared.total_inflight(len(active.pools)),
                active.bounded,
            )
        index = active.owner(text)
        if self.shared_map[HEALTH_AT + index] and active is self.active:
            index = next(self._healthy(active, active.routing.strategy.preference(text)))
        return active, index

    def fallback(self, active: Active, key: bytes | None, tried: list[int]) -> int:
        """The next member in the key's preference order not tried yet, or -1."""
        text = key.decode("latin-1") if key else str(random.randint(100_000, 999_999))
        for index in self._healthy(active, active.routing.strategy.preference(text)):
            if index not in tried:
                return index
        return -1

    def _healthy(self, active: Active, preference: Iterator[int]) -> Iterator[int]:
        """Preference order with ejected members last: when all look down, trying them anyway
        beats refusing the request."""
        if active is not self.active:
            yield from preference
            return
        ejected = []
        for index in preference:
            if self.shared.ejected(index):
                ejected.append(index)
            else:
                yield index
        yield from ejected

    # -- accounting (shared flags and rows follow the membership in force only) ----------
    def note_5xx(self, active: Active, index: int) -> None:
        """Passive health: a run of 5xx answers ejects the member."""
        active.consecutive_5xx[index] += 1
        if active.consecutive_5xx[index] >= self.settings.failures_to_eject:
            self.eject(active, index, "5xx")

    def eject(self, active: Active, index: int, reason: str) -> None:
        """Passive health: a failed connection ejects at once; heartbeats bring it back."""
        if active is self.active and not self.shared.ejected(index):
            self.shared.set_health(index, reason)
            self.counters.ejected(active.rows[index], reason)
            log.warning("member %s ejected: %s", self.name_of(active, index), reason)

    # -- connections --------------------------------------------------------------------
    def accepted(self, client: ClientConnection) -> None:
        """Register a new client. Past the cap, room is made by closing the oldest connection
        that has not sent a whole head (slowloris holds slots that way), else the oldest idle
        keep-alive one; when every slot holds a real request, the newcomer is told 503."""
        clients = self.clients
        clients[client] = None
        if len(clients) <= self.max_connections:
            return
        victim = None
        for other in clients:
            if other is not client and other.unfinished_head:
                victim = other
                break
        if victim is None:
            for other in clients:
                if other is not client and other.idle:
                    victim = other
                    break
        if victim is not None:
            victim.close()
            return
        self.counters.failure("overload")
        client.write(
            framing.error(
                503,
                f"every connection slot of this worker ({self.max_connections}) holds a request: retry shortly",
                extra=((b"Retry-After", b"1"),),
            )
        )
        client.close()

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a task until it ends: the event loop keeps only weak references."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def connect(self, pool: UpstreamPool, exchange: Exchange) -> None:
        """A new connection to ``pool``'s replica for ``exchange``: the one place where the
        proxy opens sockets, so the engine's unit tests override it in a subclass."""
        self.keep(self.loop.create_task(pool.open(exchange)))

    def control(self, exchange: Exchange) -> None:
        assert self.controller is not None
        self.keep(self.loop.create_task(self.controller.handle(exchange)))

    async def housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            now = self.now = self.loop.time()
            settings = self.settings
            for client in list(self.clients):
                client.housekeeping(now, settings)
                if client.queue:
                    client.queue[0].timed_out(now)
            if now - self.hot_since >= HOT_WINDOW:
                self.publish_hot_keys(now)
            try:
                self.counters.flush()
            except OSError:
                log.exception("cannot write counters")

    def publish_hot_keys(self, now: float) -> None:
        """The window's top keys as rates, for the next counters flush; a new window begins."""
        scale = HOT_SAMPLE / max(now - self.hot_since, 1e-3)
        self.counters.hot = [(key, count * scale, error * scale) for key, count, error in self.hot.top(HOT_KEYS)]
        self.hot = SpaceSaving(HOT_CAPACITY)
        self.hot_since = now

    async def drain(self, grace: float) -> None:
        """Stop taking new requests on kept-alive connections, then wait for in-flight ones."""
        self.retiring = True  # this worker only: after a reload its replacements serve on
        for client in list(self.clients):
            if client.idle:
                client.close()
        deadline = time.monotonic() + grace
        while any(c.queue for c in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for client in list(self.clients):
            client.close()
        self.counters.flush()
