"""Helpers for tests that drive real processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except requests.RequestException as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def pids_listening(port: int) -> set[int]:
    """Every process holding a listening TCP socket on 127.0.0.1:``port`` (gunicorn's master
    and its workers), found through /proc so no extra tool is needed."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    pids.add(int(pid))
                    break
        except OSError:
            continue
    return pids


def descendants(pid: int) -> set[int]:
    found = set()
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found |= {child} | descendants(child)
    return found


class LocalMode:
    """``ringlb dev`` as a subprocess on a free port, as a user runs it."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = tmp / "logs"
        self.output = open(tmp / "ringlb-dev.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ringlb_balancer.cli", "dev", "--port", str(self.port),
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
            alive = {p for p in alive if Path(f"/proc/{p}").exists() and "Z" not in _state(p)}
            time.sleep(0.1)
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        return alive


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
