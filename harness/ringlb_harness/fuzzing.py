"""The request-path fuzz shared by tests/integration/test_fuzz.py (short, CI) and scripts/fuzz.py
(minutes): hypothesis builds request bytes (valid requests, then mutated framing), sends them on
raw sockets to a balancer, and checks the property: an answer within a bound, every answer a
well-formed HTTP/1.1 response (h11 as the client-side parser), and no worker crash."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringlb_harness.http1 import Malformed, parse_responses
from ringlb_harness.net import connect

METHODS = (
    ["GET"] * 4
    + ["POST"] * 3
    + ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "G\x00T", "get", ""]
)
TARGETS = ["/echo"] * 6 + [
    "/",
    "/echo",
    "/echo?a=1&b=%20",
    "/slow?ms=10",
    "/rep",
    "/healthz",
    "/readyz",
    "http://x/",
    "*",
    "/a b",
    "/\x7f",
    "/%00",
    "/../../etc",
    "/" + "a" * 300,
    "/die?n=10",
]
VERSIONS = (
    ["HTTP/1.1"] * 8 + ["HTTP/1.0"] * 2 + ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.11", "http/1.1", "HTTP/1", ""]
)
NAMES = [
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Expect",
    "Upgrade",
    "X-Request-ID",
    "Trailer",
    "TE",
    "Via",
    "X-Forwarded-For",
    "Cookie",
    "Keep-Alive",
    "X-A",
    "",
    " X",
    "X ",
    "X\x00",
]
VALUES = [
    "x",
    "0",
    "5",
    "-1",
    "18446744073709551621",
    "chunked",
    "identity",
    "chunked, identity",
    "gzip, chunked",
    "close",
    "keep-alive",
    "100-continue",
    "websocket",
    "\x00",
    " ",
    "a\tb",
    "5, 5",
    "",
    "h2c",
]
LINE_ENDS = [b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n", b" \r\n"]
BODIES = [
    b"",
    b"hello",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"0\r\n\r\n",
    b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"G" * 100,
]


@st.composite
def request_bytes(draw: st.DrawFn) -> bytes:
    end = draw(st.sampled_from(LINE_ENDS))
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    version = draw(st.sampled_from(VERSIONS))
    line = f"{method} {target} {version}".encode("latin-1")
    fields = [("Host", "test")] if draw(st.sampled_from([True] * 5 + [False])) else []
    fields += draw(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=6))
    head = line + end + b"".join(f"{n}: {v}".encode("latin-1") + draw(st.sampled_from(LINE_ENDS)) for n, v in fields)
    head += end
    body = draw(st.sampled_from(BODIES))
    return head + body


@st.composite
def connection_bytes(draw: st.DrawFn) -> bytes:
    """One or more requests on a connection, some mutated at the byte level."""
    data = b"".join(draw(st.lists(request_bytes(), min_size=1, max_size=3)))
    for _ in range(draw(st.sampled_from([0] * 6 + [1, 2, 3]))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        if kind == "flip":
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)) :]
        else:
            data = data[:at] + data[at : at + 16] + data[at:]
    return data


def check_one(port: int, data: bytes, splits: list[int], timeout: float = 30.0) -> str:
    """Send ``data`` (cut at ``splits``), half-close, read until the balancer closes. Returns a
    short outcome for statistics; raises AssertionError on a hang or a malformed answer."""
    with connect(port, timeout) as sock:
        pieces, last = [], 0
        for cut in sorted(set(s % (len(data) + 1) for s in splits)):
            pieces.append(data[last:cut])
            last = cut
        pieces.append(data[last:])
        try:
            for piece in pieces:
                if piece:
                    sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # reset or already closed by the balancer: read what it sent
            pass
        received = b""
        deadline = time.monotonic() + timeout
        closed = False
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    assert closed, (
        f"hang: connection still open {timeout} s after a half-close; sent {data[:200]!r}, got {received[:200]!r}"
    )
    if not received:
        return "closed without an answer"
    methods = ["HEAD" if data.startswith(b"HEAD") else "GET"] * 8
    try:
        answers, _rest = parse_responses(received, methods, closed=True)
    except Malformed as exc:
        # A replica's answer cut by the replica (/die) is cut on purpose: the balancer must close
        # the connection (it did), so only the last answer may be incomplete, and only then.
        if b"/die" in data:
            return "cut by the replica"
        raise AssertionError(f"malformed answer: {exc}; sent {data[:300]!r}") from None
    assert answers, f"bytes that are no HTTP response: {received[:300]!r}; sent {data[:300]!r}"
    return " ".join(str(a.status) for a in answers)


def run_for(
    seconds: float, example: Callable[[bytes, list[int]], None], batch: int = 100, max_examples: int = 1_000_000
) -> int:
    """Run ``example(data, splits)`` on hypothesis-generated inputs in batches of ``batch``
    until ``seconds`` or ``max_examples`` are spent (hypothesis has no time budget of its own).
    A failing example is shrunk and raised by hypothesis as usual. Returns the examples run."""
    stop_at = time.monotonic() + seconds
    ran = 0

    @settings(max_examples=batch, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=connection_bytes(), splits=st.lists(st.integers(0, 10_000), max_size=3))
    def property_(data: bytes, splits: list[int]) -> None:
        nonlocal ran
        ran += 1
        example(data, splits)

    while time.monotonic() < stop_at and ran < max_examples:
        property_()
    return ran
