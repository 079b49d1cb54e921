"""A minimal HTTP/1.1 client for the balancer's connections to replicas.

The per-request path is the balancer's whole cost, and profiling showed urllib3/http.client
spending most of it in header parsing through ``email.parser`` and in per-request object setup.
Replicas are ours and speak plain HTTP/1.1, so this client keeps a LIFO pool of keep-alive
sockets per replica, writes the request in one ``sendall`` and parses the response by hand.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

MAX_RESPONSE_HEAD = 64 * 1024
MAX_RESPONSE_BODY = 64 * 1024 * 1024


class UpstreamError(Exception):
    """The replica could not be reached or answered garbage.

    ``sent`` is False when the request certainly never reached the replica (connection refused,
    connect timeout): such a request may be retried elsewhere whatever its method.
    """

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    reusable: bool


class _Connection:
    __slots__ = ("sock", "buf")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_head(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head, self.buf = self.buf[:end], self.buf[end + 4 :]
                return head
            if len(self.buf) > MAX_RESPONSE_HEAD:
                raise UpstreamError("response head too large", sent=True)
            if not self._fill():
                raise ConnectionResetError("replica closed the connection")

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise UpstreamError("replica closed mid-body", sent=True)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 2 :]
                return line
            if len(self.buf) > MAX_RESPONSE_HEAD or not self._fill():
                raise UpstreamError("bad chunked encoding from replica", sent=True)

    def read_chunked(self) -> bytes:
        parts = []
        size = 0
        while True:
            try:
                length = int(self.read_line().split(b";", 1)[0], 16)
            except ValueError:
                raise UpstreamError("bad chunk size from replica", sent=True) from None
            if length == 0:
                while self.read_line():  # trailers
                    pass
                return b"".join(parts)
            size += length
            if size > MAX_RESPONSE_BODY:
                raise UpstreamError("response body too large", sent=True)
            parts.append(self.read_exact(length))
            self.read_exact(2)

    def read_to_close(self) -> bytes:
        while self._fill():
            if len(self.buf) > MAX_RESPONSE_BODY:
                raise UpstreamError("response body too large", sent=True)
        data, self.buf = self.buf, b""
        return data


class Upstream:
    """Connections to one replica, owned by one process (pools are never shared across forks)."""

    def __init__(
        self, host: str, port: int, connect_timeout: float, read_timeout: float, max_idle: int = 16
    ) -> None:
        self.address = (host, port)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self.idle: list[_Connection] = []

    def close(self) -> None:
        for conn in self.idle:
            conn.sock.close()
        self.idle.clear()

    def _connect(self) -> _Connection:
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        except OSError as exc:
            raise UpstreamError(f"connect to {self.address[0]}:{self.address[1]}: {exc}", sent=False) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.read_timeout)
        return _Connection(sock)

    def request(self, data: bytes, head_only: bool) -> Response:
        """Send one serialized request; a stale pooled connection is retried once on a fresh
        one, since the replica closing an idle keep-alive socket is normal, not a failure."""
        while self.idle:
            conn = self.idle.pop()
            try:
                return self._exchange(conn, data, head_only)
            except (ConnectionResetError, BrokenPipeError):
                conn.sock.close()  # closed while idle: try the next one
            except BaseException as exc:
                conn.sock.close()
                raise self._error(exc) from None
        conn = self._connect()
        try:
            return self._exchange(conn, data, head_only)
        except BaseException as exc:
            conn.sock.close()
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, OSError):
            return UpstreamError(f"{self.address[0]}:{self.address[1]}: {exc}", sent=True)
        return exc

    def _exchange(self, conn: _Connection, data: bytes, head_only: bool) -> Response:
        conn.sock.sendall(data)
        head = conn.read_head()
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise UpstreamError(f"bad status line from replica: {lines[0][:80]!r}", sent=True)
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        length = -1
        chunked = False
        keep_alive = parts[0] == "HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise UpstreamError("bad header line from replica", sent=True)
            value = value.strip()
            lower = name.lower()
            if lower == "content-length":
                if not value.isdigit() or int(value) > MAX_RESPONSE_BODY:
                    raise UpstreamError("bad content-length from replica", sent=True)
                length = int(value)
            elif lower == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif lower == "connection":
                token = value.lower()
                keep_alive = "close" not in token and (keep_alive or "keep-alive" in token)
            elif lower != "keep-alive":
                headers.append((name, value))
        if head_only or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif chunked:
            body = conn.read_chunked()
        elif length >= 0:
            body = conn.read_exact(length)
        else:
            body = conn.read_to_close()
            keep_alive = False
        if keep_alive and len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.sock.close()
        return Response(status, reason, headers, body, keep_alive)
