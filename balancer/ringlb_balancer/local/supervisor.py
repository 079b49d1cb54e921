"""Local mode: the operator's job done with plain processes on loopback.

The supervisor owns the desired replica list, keeps one gunicorn replica process per name
(respawning a dead one on the same port, so its ring position and keys come back to it), and
pushes the membership of ready replicas to the balancer, exactly as the operator does in a
cluster. The balancer's /add and /rm reach it through the same scaler interface as the
Kubernetes resource.
"""

from __future__ import annotations

import ctypes
import hmac
import logging
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import requests
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from ringlb_balancer.health import heartbeat
from ringlb_balancer.local import warmup
from ringlb_ring import naming
from ringlb_ring.hashing import HashingConfig
from ringlb_ring.membership import KeyConfig, Member, Membership

log = logging.getLogger("ringlb.supervisor")

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl  # loaded here, not between fork and exec


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies, even by SIGKILL: no orphans. Runs between
    fork and exec of a threaded process, so it only calls a function resolved beforehand."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether ``process`` has exited, leaving it unreaped: while it is a zombie its PID, and so
    its process group's ID, cannot be reused, and ``_end`` can still signal the group safely."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        process.poll()
        return True


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of an exited child's process group, then reap the child. A gunicorn
    master that died or was killed first leaves its workers behind, and a worker stuck on a lock
    (forked while one was held) ignores SIGTERM: the group is how every one of them is found."""
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def balancer_command() -> list[str]:
    """The balancer as its image runs it (settings from ``RINGLB_*`` in the environment); the
    harness and tests start it so too."""
    return [sys.executable, "-m", "gunicorn", "-c", "python:ringlb_balancer.gunicorn_conf", "ringlb_balancer.wsgi:app"]


def replica_command(port: int, workers: int = 1, extra: Sequence[str] = ()) -> list[str]:
    """A replica as local mode runs it (the image's gunicorn, gthread with 4 threads), with an
    idle keep-alive of 30 s so that the balancer's connection reuse does not depend on speed.
    ``extra``: more gunicorn options (an access log). The benchmarks and tests start it so too."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--keep-alive",
        "30",
        "--no-control-socket",
        *extra,
        "ringlb_replica.wsgi:app",
    ]


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    restarts: int = 0


@dataclass
class LocalConfig:
    replicas: list[str] = field(default_factory=lambda: ["Server 1", "Server 2", "Server 3"])
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 2
    replica_workers: int = 1
    cache_size: int = 0  # the replicas' per-key cache model (RINGLB_REPLICA_CACHE_SIZE); 0: off
    miss_cost_ms: float = 0.0  # what a cache miss costs them (RINGLB_REPLICA_MISS_COST_MS)
    hashing: HashingConfig = field(default_factory=HashingConfig)
    warmup_seconds: float = 0.0  # a change's keys move in steps over this long (local.warmup); 0: at once
    key: KeyConfig = field(default_factory=KeyConfig)
    token: str = ""
    membership_token: str = ""  # generated when empty
    log_dir: str = ""
    tls_cert: str = ""  # with tls_key: the public port speaks TLS; pushes go to a loopback admin port
    tls_key: str = ""


class Supervisor:
    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        for name in config.replicas:
            naming.check_name(name)
        naming.check_unique(config.replicas)
        self.desired = list(config.replicas)
        self.version = 1
        self.replicas: dict[str, Replica] = {}
        self.lock = threading.Lock()
        self.revision = 0
        self.pushed: list[Member] | None = None
        self.pushed_hashing = config.hashing  # with the transition of the warm-up step pushed, if any
        self.published: tuple[str, ...] = ()  # members of the last direct table in force
        self.ramp: warmup.Ramp | None = None  # the warm-up in force
        self.served = False  # the desired list was in force once: start-up itself is not warmed up
        self.membership_token = config.membership_token or secrets.token_urlsafe(24)
        # Over TLS the supervisor pushes in plain HTTP to an admin listener of its own on loopback,
        # as the operator does on Kubernetes, instead of trusting the user's certificate itself.
        self.admin_port = free_port() if config.tls_cert else None
        self.checked_at = 0.0
        self.scaler_token = secrets.token_urlsafe(24)
        self.stopping = threading.Event()
        self.balancer: subprocess.Popen[bytes] | None = None
        self.api = make_server("127.0.0.1", 0, self._scaler_app(), threaded=True)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.membership_token}"

    @property
    def balancer_url(self) -> str:
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://{self.config.host}:{self.config.port}"

    @property
    def admin_url(self) -> str:
        """Where /membership, /metrics and /status are: the public port unless TLS is on."""
        return f"http://127.0.0.1:{self.admin_port}" if self.admin_port else self.balancer_url

    # -- the scaler API the balancer calls for /add and /rm ---------------------------------
    def _scaler_app(self) -> Flask:
        app = Flask("ringlb_supervisor")

        @app.before_request
        def check_token() -> Any:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {self.scaler_token}".encode()):
                return jsonify({"error": "bad token"}), 401
            return None

        @app.get("/replicas")
        def get_replicas() -> Any:
            with self.lock:
                return jsonify({"replicas": self.desired, "version": str(self.version)})

        @app.put("/replicas")
        def put_replicas() -> Any:
            doc = request.get_json(silent=True)
            if not isinstance(doc, dict) or not isinstance(doc.get("replicas"), list):
                return jsonify({"error": "body must be {replicas: [...], version: ...}"}), 400
            try:
                names = [naming.check_name(n) for n in doc["replicas"]]
                naming.check_unique(names)
            except naming.PlanError as exc:
                return jsonify({"error": str(exc)}), 400
            if len(names) > naming.MAX_REPLICAS:
                return jsonify({"error": f"at most {naming.MAX_REPLICAS} replicas"}), 400
            with self.lock:
                if str(doc.get("version")) != str(self.version):
                    return jsonify({"error": "version conflict"}), 409
                self.desired = names
                self.version += 1
            log.info("desired replicas: %s", names)
            return jsonify({"replicas": names, "version": str(self.version)})

        return app

    # -- processes -------------------------------------------------------------------------
    def _popen(self, cmd: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        """Start a child that dies with the supervisor, its output in ``log_dir`` if set. Each
        child leads a session of its own: Ctrl-C in a terminal reaches the supervisor alone (not
        gunicorn masters and workers half started), which then stops every child's whole group."""
        if not self.config.log_dir:
            return subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        os.makedirs(self.config.log_dir, exist_ok=True)
        with open(os.path.join(self.config.log_dir, naming.dns_name(log_name) + ".log"), "ab") as log:
            return subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
            )

    def _spawn_replica(self, replica: Replica) -> None:
        env = dict(
            os.environ,
            SERVER_ID=replica.name,
            RINGLB_REPLICA_CACHE_SIZE=str(self.config.cache_size),
            RINGLB_REPLICA_MISS_COST_MS=str(self.config.miss_cost_ms),
        )
        cmd = replica_command(replica.port, self.config.replica_workers)
        replica.process = self._popen(cmd, env, replica.name)
        replica.ready = False

    def start_balancer(self) -> None:
        env = dict(
            os.environ,
            RINGLB_BIND=f"{self.config.host}:{self.config.port}",
            RINGLB_WORKERS=str(self.config.workers),
            RINGLB_TOKEN=self.config.token,
            RINGLB_MEMBERSHIP_TOKEN=self.membership_token,
            RINGLB_SCALER=f"http://127.0.0.1:{self.api.server_port}",
            RINGLB_SCALER_TOKEN=self.scaler_token,
            RINGLB_SCALE_TIMEOUT=str(20 + math.ceil(self.config.warmup_seconds)),  # /rm awaits its hand-over
            # One port in local mode, /membership, /metrics and /status on it too, unless TLS is on.
            RINGLB_ADMIN_BIND=f"127.0.0.1:{self.admin_port}" if self.admin_port else "",
            RINGLB_TLS_CERT=self.config.tls_cert,
            RINGLB_TLS_KEY=self.config.tls_key,
            RINGLB_DRAIN_SECONDS="0",  # nothing routes around a local balancer: stop at once
        )
        self.balancer = self._popen(balancer_command(), env, "balancer")

    @staticmethod
    def _stop_all(processes: list[subprocess.Popen[bytes] | None], grace: float = 5.0) -> None:
        """SIGTERM every child's process group, wait up to ``grace`` seconds for the children to
        exit, then SIGKILL whatever is left of each group (``_end``)."""
        started = [p for p in processes if p is not None]
        for process in started:
            if not _exited(process):
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while not all(map(_exited, started)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in started:
            _end(process)

    # -- reconciliation --------------------------------------------------------------------
    def reconcile(self) -> None:
        """One level-based pass: make processes match the desired list, push if needed."""
        with self.lock:
            desired = list(self.desired)
        used_ports = {r.port for r in self.replicas.values()}
        for name in desired:
            replica = self.replicas.get(name)
            if replica is None:
                port = free_port()
                while port in used_ports or port == self.config.port:
                    port = free_port()
                replica = self.replicas[name] = Replica(name, port)
                used_ports.add(port)
            if replica.process is None or _exited(replica.process):
                if replica.process is not None:
                    _end(replica.process)
                    replica.restarts += 1
                    log.warning("replica %s exited (%s); respawning", name, replica.process.returncode)
                self._spawn_replica(replica)
            elif not replica.ready:
                replica.ready = heartbeat(Member(name, "127.0.0.1", replica.port), 0.5)
        target = [n for n in desired if self.replicas[n].ready]
        leaving = [
            n
            for n, r in self.replicas.items()
            if n not in desired and r.ready and r.process is not None and not _exited(r.process)
        ]
        step = warmup.due(
            self.ramp,
            self.published,
            target,
            {*target, *leaving},
            self.config.warmup_seconds if self.served else 0.0,
            self.config.hashing.strategy,
            time.monotonic(),
        )
        members = [Member(n, "127.0.0.1", self.replicas[n].port) for n in step.names]
        hashing = replace(self.config.hashing, transition=step.transition)
        if (members, hashing) != (self.pushed, self.pushed_hashing) or self._hijacked():
            self.push(members, hashing)
        if (members, hashing) == (self.pushed, self.pushed_hashing):  # in force: the ramp moves on
            self.ramp = step.ramp
            if step.ramp is None:
                self.published = step.names
                self.served = self.served or list(step.names) == desired
        # Removed replicas leave the ring first (after their hand-over, with a warm-up), then
        # stop (all at once: each takes a while to shut down gracefully).
        routed = {m.name for m in self.pushed or ()}
        removed = [self.replicas.pop(n) for n in list(self.replicas) if n not in desired and n not in routed]
        self._stop_all([r.process for r in removed])

    def _hijacked(self, every: float = 1.0) -> bool:
        """Whether the balancer holds a ring other than ours (someone else pushed), checked once
        a second: like the operator, the supervisor compares and repairs, level-based."""
        now = time.monotonic()
        if self.pushed is None or now - self.checked_at < every:
            return False
        self.checked_at = now
        try:
            held = self.session.get(f"{self.admin_url}/membership", timeout=2).json()
        except (requests.RequestException, ValueError):
            return False
        ours = Membership(self.revision, tuple(self.pushed), self.pushed_hashing, self.config.key).to_json()
        if held == ours:
            return False
        log.warning(
            "balancer holds revision %s, not ours (%d): pushing ours again", held.get("revision"), self.revision
        )
        if isinstance(held.get("revision"), int):
            self.revision = max(self.revision, held["revision"])
        return True

    def push(self, members: list[Member], hashing: HashingConfig) -> None:
        doc = Membership(self.revision + 1, tuple(members), hashing, self.config.key).to_json()
        try:
            reply = self.session.put(f"{self.admin_url}/membership", json=doc, timeout=5)
        except requests.RequestException:
            return  # balancer not up yet: the next pass pushes again
        if reply.status_code == 200:
            self.revision += 1
            self.pushed = members
            self.pushed_hashing = hashing
            step = f" (warm-up, {hashing.transition.fraction:.0%} of the keys moved)" if hashing.transition else ""
            log.info("membership revision %d: %s%s", self.revision, [m.name for m in members], step)
        elif reply.status_code == 409:
            # A newer revision is in force (another pusher): go past it on the next pass.
            try:
                self.revision = max(
                    self.revision, int(self.session.get(f"{self.admin_url}/membership", timeout=2).json()["revision"])
                )
            except (requests.RequestException, ValueError, KeyError, TypeError):
                pass
            self.pushed = None
        else:
            log.error("balancer refused membership: %s %s", reply.status_code, reply.text)

    def serving(self) -> bool:
        """Whether the balancer holds every desired replica, as last pushed and accepted."""
        with self.lock:
            desired = list(self.desired)
        return self.pushed is not None and [m.name for m in self.pushed] == desired

    def run(self, interval: float = 0.2, on_serving: Callable[[], None] | None = None) -> None:
        """Reconcile until ``stopping`` is set, then stop every child. ``on_serving`` is called
        once, the first time ``serving()`` holds: ``ringlb dev`` says where the balancer is only
        when ``/rep`` already answers with the replicas."""
        threading.Thread(target=self.api.serve_forever, daemon=True, name="scaler-api").start()
        try:
            self.start_balancer()
            while not self.stopping.wait(interval):
                if self.balancer is not None and _exited(self.balancer):
                    _end(self.balancer)
                    log.error("balancer exited with %s; restarting it", self.balancer.returncode)
                    self.pushed = None
                    self.revision = 0
                    self.start_balancer()
                self.reconcile()
                if on_serving is not None and self.serving():
                    on_serving()
                    on_serving = None
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.api.shutdown()
        self._stop_all([self.balancer, *(r.process for r in self.replicas.values())])
