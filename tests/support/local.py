"""``ringlb dev`` (local mode: balancer, replicas and the supervisor that scales them) as a
subprocess on a free port, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.net import free_port, wait_until
from tests.support.proc import descendants, state


class LocalMode:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = tmp / "logs"
        self.output = open(tmp / "ringlb-dev.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ringlb_balancer.local.cli", "dev", "--port", str(self.port),
             "--log-dir", str(self.log_dir), *args],
            stdout=self.output, stderr=subprocess.STDOUT,
        )
        self.session = requests.Session()

    def rep(self) -> dict:
        return self.session.get(f"{self.url}/rep", timeout=5).json()["message"]

    def wait_replicas(self, count: int, timeout: float = 30.0) -> dict:
        return wait_until(lambda: (m := self.rep())["N"] == count and m, timeout, what=f"{count} replicas")

    def membership(self) -> dict:
        return self.session.get(f"{self.url}/membership", timeout=5).json()

    def stop(self) -> set[int]:
        """SIGINT, as Ctrl-C would; returns the children that outlived it (should be none)."""
        children = descendants(self.process.pid)
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output.close()
        deadline = time.monotonic() + 10
        alive = children
        while alive and time.monotonic() < deadline:
            alive = {p for p in alive if Path(f"/proc/{p}").exists() and "Z" not in state(p)}
            time.sleep(0.1)
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        return alive
