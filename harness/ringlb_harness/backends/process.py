"""A test backend in a process of its own (``python -m ringlb_harness.backends main``), e.g. to
SIGSTOP it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from ringlb_harness.backends.framing import ByteLogBackend, LenientBackend, ReuseDropBackend
from ringlb_harness.backends.main import MainBackend


class BackendProcess:
    """``python -m ringlb_harness.backends main``: the main backend in a process of its own (SIGSTOP it)."""

    def __init__(self, kind: str = "main") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ringlb_harness.backends", kind, "--port", "0"], stdout=subprocess.PIPE
        )
        assert self.process.stdout is not None  # stdout=PIPE
        line = self.process.stdout.readline().decode()
        if not line.startswith("ready "):
            self.process.kill()
            raise RuntimeError(f"backend process did not start: {line!r}")
        self.port = int(line.split()[1])
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:  # stdout=PIPE: always
            self.process.stdout.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ringlb_harness.backends")
    parser.add_argument("kind", choices=["main", "bytelog", "lenient", "reusedrop"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    cls = {"main": MainBackend, "bytelog": ByteLogBackend, "lenient": LenientBackend, "reusedrop": ReuseDropBackend}[
        args.kind
    ]
    server = cls(args.port).start()
    print(f"ready {server.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0
