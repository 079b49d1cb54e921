"""``ringlb dev`` (local mode: balancer, replicas and the supervisor that scales them) as a
subprocess on a free port, as a user runs it."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.net import free_port, wait_until
from tests.support.proc import cmdline, tagged

TAG = "RINGLB_TEST_STACK"  # in the environment of every process of one stack, inherited
GONE_WITHIN = 60.0  # generous: stopping waits for gunicorn's graceful exits on a loaded machine


class LocalMode:
    """``ringlb dev`` in a session of its own, so ``interrupt`` can do what a terminal's Ctrl-C
    does: SIGINT to its whole foreground process group."""

    def __init__(self, tmp: Path, *args: str) -> None:
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
            env=dict(os.environ, **{TAG: self.tag}),
            start_new_session=True,
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
