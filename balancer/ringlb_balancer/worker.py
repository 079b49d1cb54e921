"""The balancer's gunicorn worker class: one event loop serving the proxy and the control endpoints.

gunicorn gives the process model (a master that forks, watches and replaces workers, binds the
listeners once, reopens logs); each worker runs this event loop. uvloop is used when installed
(``RINGLB_LOOP=asyncio`` turns it off).

SIGTERM drains, as a Kubernetes pod being deleted needs: ``/readyz`` turns 503 at once so
endpoints stop sending, the worker keeps serving for ``drain_seconds`` while they catch up, then
stops accepting and lets in-flight requests finish. SIGINT and SIGQUIT stop at once.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import resource
import secrets
import signal
import time

from gunicorn.workers.base import Worker

from ringlb_balancer import tls
from ringlb_balancer.app import Balancer
from ringlb_balancer.client import ClientConnection
from ringlb_balancer.control import ADMIN_PATHS, PUBLIC_PATHS, Control
from ringlb_balancer.engine import Engine

FD_RESERVE = 64  # descriptors kept free for logs, state files and replica connects


def _new_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get("RINGLB_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def port_of(bind: str) -> int:
    return int(bind.rsplit(":", 1)[1]) if bind else -1


def own_addresses(*binds: str) -> frozenset[tuple[str, int]]:
    return frozenset((b.rsplit(":", 1)[0].strip("[]"), port_of(b)) for b in binds if b)


class ProxyWorker(Worker):
    """``worker_class = "ringlb_balancer.worker.ProxyWorker"``."""

    def init_process(self) -> None:
        self.loop = _new_loop()
        asyncio.set_event_loop(self.loop)
        self.draining = False
        super().init_process()

    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        self.loop.add_signal_handler(signal.SIGTERM, self._drain)
        self.loop.add_signal_handler(signal.SIGQUIT, self._stop)
        self.loop.add_signal_handler(signal.SIGINT, self._stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)

    def _drain(self) -> None:
        # Flipped here, not at the serving loop's next turn, and in the shared map: with several
        # workers, one whose loop is busy when its own SIGTERM arrives would otherwise still
        # answer keep-alive after a sibling's /readyz said 503.
        self.draining = True
        self.engine.retiring = True
        if self.age > self.control.store.shared.replaced_age:
            self.control.draining = True
        # else: replaced by a reload (SIGHUP) whose new workers already serve: the balancer
        # stays ready, and only this worker ends each connection after its answer.

    def _stop(self) -> None:
        self.alive = False

    def run(self) -> None:
        # Everything loaded so far lives as long as the worker: keep it out of the collector's
        # scans, and collect less often (requests allocate much, but few cycles).
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        balancer: Balancer = self.wsgi
        settings = balancer.settings
        engine = Engine(
            settings,
            balancer.shared,
            balancer.store,
            self.loop,
            os.environ.get("RINGLB_INSTANCE") or secrets.token_hex(4),
        )
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Each client may hold a replica connection too: stay under the descriptor limit so
        # accept() never meets EMFILE; past the cap the longest-idle client makes room.
        engine.max_connections = max(1, min(settings.max_connections, (soft - FD_RESERVE) // 2))
        control = Control(settings, balancer.store, balancer.scaler, own_addresses(settings.bind, settings.admin_bind))
        engine.controller = control
        self.engine, self.control = engine, control
        paths = PUBLIC_PATHS if settings.admin_bind else ADMIN_PATHS
        engine.control_paths = frozenset(p.encode() for p in paths)
        try:
            self.loop.run_until_complete(self._serve(engine, control))
        finally:
            control.executor.shutdown(wait=False)
            control.history_writer.shutdown(wait=False)
            self.loop.close()

    async def _serve(self, engine: Engine, control: Control) -> None:
        settings = engine.settings
        admin_port = port_of(settings.admin_bind)
        # TLS on the public listener only: probes and pushes keep reaching the admin port as before.
        rotation = tls.Rotation(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        next_tls_check = time.monotonic() + tls.CHECK_INTERVAL
        servers = []
        for listener in self.sockets:
            admin = listener.sock.getsockname()[1] == admin_port
            secure = rotation.listener if rotation is not None and not admin else None
            servers.append(
                await self.loop.create_server(
                    functools.partial(ClientConnection, engine, admin),  # type: ignore[arg-type]  # a native (mypyc) class cannot subclass asyncio.Protocol: asyncio needs only its methods
                    sock=listener.sock,
                    backlog=self.cfg.backlog,
                    ssl=secure,
                    # The handshake gets the head's deadline: a client that stalls it holds a descriptor.
                    ssl_handshake_timeout=settings.head_timeout if secure is not None else None,
                )
            )
        if rotation is not None:
            rotation.write(control.store.shared.dir)
        housekeeping = self.loop.create_task(engine.housekeeping())
        drain_until = None
        while self.alive:
            self.notify()
            if rotation is not None and time.monotonic() >= next_tls_check:
                next_tls_check = time.monotonic() + tls.CHECK_INTERVAL
                self._follow_certificate(rotation)
            if self.ppid != os.getppid():
                break
            self.draining = self.draining or self.control.draining  # a sibling began first
            if self.draining and drain_until is None:
                # Endpoints still send here for a while: serve, but end each connection after its
                # answer (``_drain``), so clients reconnect to a pod that stays instead of racing
                # our close.
                drain_until = time.monotonic() + engine.settings.drain_seconds
                self.log.info("draining: /readyz answers 503, serving %gs more", engine.settings.drain_seconds)
            if drain_until is not None and time.monotonic() >= drain_until:
                break
            await asyncio.sleep(0.2 if self.draining else 0.5)
        for server in servers:
            server.close()
        await engine.drain(self.cfg.graceful_timeout - engine.settings.drain_seconds if self.alive else 1.0)
        housekeeping.cancel()

    def _follow_certificate(self, rotation: tls.Rotation) -> None:
        outcome = rotation.check()
        if outcome is None:
            return
        loaded, message = outcome
        (self.log.info if loaded else self.log.error)(message)
        try:
            rotation.write(self.control.store.shared.dir)
        except OSError:
            self.log.exception("cannot write TLS reload counts")
