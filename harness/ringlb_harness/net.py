"""Sockets on loopback: free ports, the one wait loop, raw exchanges."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str = "condition",
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Call ``predicate`` until it returns something truthy (returned); exceptions of
    ``retry_on`` count as "not yet", any other is raised. Raises AssertionError naming ``what``
    and the last result after ``timeout`` s. The one wait loop of the tests and scripts: a
    condition waited for, never a sleep standing in for it."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except retry_on as exc:  # "not ready yet" has many shapes
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket, timeout: float = 5.0, limit: int = 64 << 20) -> tuple[bytes, bool]:
    """Read until EOF, ``timeout`` s in total or ``limit`` bytes; returns (bytes, closed).
    A reset counts as closed."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return b"".join(chunks), False
        except ConnectionResetError:
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, shut_wr: bool = False) -> tuple[bytes, bool]:
    """Send ``data`` on a new connection and read what comes back until the balancer closes
    (or ``timeout``). Returns (bytes, closed)."""
    with connect(port, timeout) as sock:
        try:
            sock.sendall(data)
            if shut_wr:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_all(sock, timeout)
