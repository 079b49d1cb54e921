"""``ringlb dev`` (local mode: balancer, replicas and the supervisor that scales them) as a
subprocess on a free port, as a user runs it: the integration tests', scripts/faults.py's and
scripts/affinity.py's one driver of it."""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from ringlb_harness.net import free_port, wait_until
from ringlb_harness.proc import children, cmdline, tagged

TAG = "RINGLB_TEST_STACK"  # in the environment of every process of one stack, inherited
GONE_WITHIN = 60.0  # generous: stopping waits for gunicorn's graceful exits on a loaded machine
_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl  # loaded here, not between fork and exec


def _die_with_parent() -> None:
    """The stack gets SIGTERM (a clean stop) if the script that started it dies without its
    finally blocks."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalMode:
    """``ringlb dev`` in a session of its own, so ``interrupt`` can do what a terminal's Ctrl-C
    does: SIGINT to its whole foreground process group. ``env`` adds to its environment;
    ``die_with_parent``: SIGTERM to it when the thread that started it ends (a script's)."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, die_with_parent: bool = False) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = tmp / "logs"
        self.output_path = tmp / "ringlb-dev.log"
        self.output = open(self.output_path, "wb")  # noqa: SIM115 - open until stop(), which closes it
        self.tag = secrets.token_hex(8)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ringlb_balancer.local.cli",
                "dev",
                "--port",
                str(self.port),
                "--log-dir",
                str(self.log_dir),
                *args,
            ],
            stdout=self.output,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, **(env or {}), **{TAG: self.tag}),
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        self.session = requests.Session()

    def rep(self) -> dict:
        return self.session.get(f"{self.url}/rep", timeout=10).json()["message"]

    def wait_replicas(self, count: int, timeout: float = 60.0) -> dict:
        return wait_until(lambda: (m := self.rep())["N"] == count and m, timeout, what=f"{count} replicas")

    def membership(self) -> dict:
        return self.session.get(f"{self.url}/membership", timeout=10).json()

    def printed(self) -> str:
        return self.output_path.read_text(errors="replace")

    def stack(self) -> set[int]:
        """Every live process of this stack, ``ringlb dev`` itself included."""
        return tagged(TAG, self.tag)

    def running(self, marker: str) -> list[int]:
        """The children of ``ringlb dev`` whose command line has ``marker`` (gunicorn masters:
        ``ringlb_balancer.wsgi:app``, ``ringlb_replica.wsgi:app``)."""
        return [p for p in children(self.process.pid) if marker in cmdline(p)]

    def balancer_master(self) -> int | None:
        return next(iter(self.running("ringlb_balancer.wsgi:app")), None)

    def replica_pids(self, name: str) -> list[int]:
        """The gunicorn master of replica ``name`` (found by the port ``/membership`` gives it)
        and its workers."""
        port = next(m["address"].rsplit(":", 1)[1] for m in self.membership()["members"] if m["name"] == name)
        masters = [p for p in self.running("ringlb_replica.wsgi:app") if f"127.0.0.1:{port}" in cmdline(p)]
        return [pid for m in masters for pid in (m, *children(m))]

    def interrupt(self) -> None:
        """Ctrl-C as a terminal sends it: SIGINT to the foreground process group."""
        try:
            os.killpg(self.process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def stop(self, sig: signal.Signals | None = signal.SIGINT) -> dict[int, list[str]]:
        """Send ``sig`` to ``ringlb dev`` (Ctrl-C by default; None when already sent), wait for
        it and for every process of its stack to be gone. Returns those still there after
        ``GONE_WITHIN`` s (should be none), with their command lines, after SIGKILLing them."""
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=GONE_WITHIN)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output.close()
        self.session.close()
        deadline = time.monotonic() + GONE_WITHIN
        left = self.stack()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self.stack()
        found = {pid: cmdline(pid) for pid in left}
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return found
