"""The balancer process as its image runs it: ``gunicorn -c python:ringlb_balancer.gunicorn_conf
ringlb_balancer.wsgi:app``, one worker by default, on free loopback ports, its membership pushed
as the operator pushes it. Tests, scripts/fuzz.py, scripts/bench.py and scripts/memory.py start
it here."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import requests

from ringlb_balancer.local.supervisor import balancer_command
from ringlb_harness import proc
from ringlb_harness.net import LOOPBACK, free_port

TOKEN = "push-token"
COMMAND = balancer_command()


def member(name: str, port: int, host: str = LOOPBACK) -> dict[str, str]:
    return {"name": name, "address": f"{host}:{port}"}


def membership_doc(
    revision: int, members: Iterable[Mapping[str, str] | tuple[str, int]], **extra: Any
) -> dict[str, Any]:
    """The ``PUT /membership`` document, built by hand (the format of ringlb_ring.membership):
    members as {name, address} or (name, port) on loopback; ``extra`` adds hashing / key."""
    items = [dict(m) if isinstance(m, Mapping) else member(*m) for m in members]
    return {"revision": revision, "members": items, **extra}


class Balancer:
    """One balancer process. ``admin=True`` gives it its own admin listener (as the image does);
    ``token=""`` starts it without a membership token. ``nofile`` lowers RLIMIT_NOFILE for it.
    ``wait=False`` returns at once, before any worker answers. ``health_interval`` (s): the
    tests' quick heartbeats; None keeps the balancer's own (what a benchmark measures)."""

    def __init__(
        self,
        tmp: Path,
        *,
        token: str = TOKEN,
        admin: bool = True,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        nofile: int | None = None,
        name: str = "balancer",
        wait: bool = True,
        health_interval: float | None = 0.5,
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.admin_port = free_port() if admin else None
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.admin_url = f"http://{LOOPBACK}:{self.admin_port}" if admin else self.url
        self.token = token
        self.revision = 0
        self.log_path = tmp / f"{name}.log"
        state = tmp / f"{name}-state"
        state.mkdir(exist_ok=True)
        full_env = dict(
            os.environ,
            RINGLB_BIND=f"{LOOPBACK}:{self.port}",
            RINGLB_ADMIN_BIND=f"{LOOPBACK}:{self.admin_port}" if admin else "",
            RINGLB_MEMBERSHIP_TOKEN=token,
            RINGLB_WORKERS=str(workers),
            RINGLB_STATE_DIR=str(state),
            RINGLB_LOOP=os.environ.get("RINGLB_LOOP", "uvloop"),
            PYTHONUNBUFFERED="1",
        )
        if health_interval is not None:
            full_env["RINGLB_HEALTH_INTERVAL"] = f"{health_interval:g}"
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open until stop(), which closes it

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.process = subprocess.Popen(
            COMMAND,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=limit if nofile is not None else None,
        )
        self.session = requests.Session()
        deadline = time.monotonic() + 60  # generous: a loaded machine starts gunicorn slowly
        while wait and not self._up():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"balancer did not start (exit {self.process.returncode}); log:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.workers0 = self.worker_pids()

    def _up(self) -> bool:
        try:
            ok = requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
            if ok and self.admin_url != self.url:
                ok = requests.get(f"{self.admin_url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False
        return ok and bool(self.worker_pids())

    # -- membership ---------------------------------------------------------------------------
    def put_membership(self, doc: Any, token: str | None = None, url: str | None = None) -> requests.Response:
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
        return self.session.put(
            f"{url or self.admin_url}/membership",
            data=data,
            headers=headers | {"Content-Type": "application/json"},
            timeout=10,
        )

    def push(self, members: Iterable[Mapping[str, str] | tuple[str, int]], **extra: Any) -> requests.Response:
        """Push the next revision with these members; asserts it was accepted."""
        self.revision += 1
        reply = self.put_membership(membership_doc(self.revision, members, **extra))
        assert reply.status_code == 200, f"push refused: {reply.status_code} {reply.text}"
        return reply

    def membership(self) -> dict[str, Any]:
        return self.session.get(f"{self.admin_url}/membership", timeout=5).json()

    # -- processes ------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> set[int]:
        return {p for p in proc.descendants(self.process.pid) if proc.alive(p)}

    def worker(self) -> int:
        """The one worker's pid (RINGLB_WORKERS=1)."""
        pids = self.worker_pids()
        assert len(pids) == 1, f"expected one worker, found {pids}"
        return next(iter(pids))

    def rss(self) -> int:
        return sum(proc.rss_bytes(p) for p in self.worker_pids())

    def cpu_seconds(self) -> float:
        return proc.cpu_seconds(self.process.pid)

    def assert_workers_unchanged(self) -> None:
        """No worker crashed or was replaced since start (gunicorn would fork a new one)."""
        now = self.worker_pids()
        assert now == self.workers0, f"workers changed {self.workers0} -> {now}; log:\n{self.log_tail()}"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        self.session.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # stop at once, no drain period
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                for pid in proc.descendants(self.process.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> Balancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
