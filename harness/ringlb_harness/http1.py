"""HTTP/1.1 as a strict client reads it (h11): responses parsed from raw bytes, requests built
as bytes, for tests that must see every byte the balancer sends."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

import h11

from ringlb_harness.net import connect


@dataclass
class Answer:
    """One HTTP response as a strict client parser (h11) read it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body_: bytes = b""
    informational: list[int] = field(default_factory=list)
    complete: bool = False  # EndOfMessage seen: the framing said the body was whole
    _parts: list[bytes] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.body_:
            self._parts.append(self.body_)

    @property
    def body(self) -> bytes:
        if len(self._parts) > 1:
            self._parts[:] = [b"".join(self._parts)]
        return self._parts[0] if self._parts else b""

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        values = [v.decode("latin-1") for n, v in self.headers if n.lower() == wanted]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class Malformed(AssertionError):
    """Bytes that a strict HTTP/1.1 client cannot read as responses."""


def parse_responses(data: bytes, methods: list[str] | None = None, closed: bool = True) -> tuple[list[Answer], bytes]:
    """Read ``data`` (everything a server sent on one connection) as consecutive HTTP/1.1
    responses with h11. ``methods`` are the requests' methods in order (HEAD answers have no
    body); default GET. Returns (complete answers, bytes left unparsed). Raises ``Malformed``
    when the bytes break HTTP/1.1; a last answer cut short is returned with complete=False.
    ``closed``: the connection was closed after ``data`` (so a read-until-close body ends)."""
    answers: list[Answer] = []
    rest = data
    index = 0
    while rest:
        method = methods[index] if methods and index < len(methods) else "GET"
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(rest)
        answer: Answer | None = None
        informational: list[int] = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise Malformed(f"answer #{index + 1} is not HTTP/1.1: {exc}; bytes: {rest[:300]!r}") from None
            if event is h11.NEED_DATA:
                if closed:
                    conn.receive_data(b"")
                    closed = False  # feed EOF once
                    continue
                if answer is not None:
                    answers.append(answer)
                return answers, b"" if answer is not None else rest
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                answer = Answer(event.status_code, list(event.headers), informational=informational)
            elif isinstance(event, h11.Data):
                assert answer is not None  # h11 sends Data only after a Response
                answer._parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert answer is not None
                answer.complete = True
                answers.append(answer)
                break
            elif isinstance(event, h11.ConnectionClosed):
                if answer is not None:
                    answers.append(answer)
                return answers, b""
            else:  # pragma: no cover - h11 has no other client-side events
                raise Malformed(f"unexpected h11 event {event!r}")
        rest = bytes(conn.trailing_data[0])
        index += 1
    return answers, b""


def one_answer(data: bytes, method: str = "GET", closed: bool = True) -> Answer:
    answers, _rest = parse_responses(data, [method], closed)
    if not answers:
        raise Malformed(f"no complete HTTP response in {data[:300]!r}")
    return answers[0]


def request_bytes(
    method: str,
    target: str,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
    host: str | None = "test",
) -> bytes:
    """A request as bytes (Content-Length added for a body unless a framing header is given)."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {n.lower() for n, _ in items}
    if host is not None and "host" not in names:
        items.insert(0, ("Host", host))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        items.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in items) + "\r\n"
    return head.encode("latin-1") + body


def dechunk(data: bytes) -> tuple[bytes, bool, bytes]:
    """Decode a chunked body fast (h11 takes seconds for 200,000 tiny chunks): returns
    (payload, complete, bytes after the last chunk and trailers). Strict: CRLF after every
    chunk, hex sizes; raises ``Malformed`` otherwise."""
    parts: list[bytes] = []
    pos = 0
    end = len(data)
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return b"".join(parts), False, b""
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise Malformed(f"bad chunk size line {data[pos:eol][:80]!r} at {pos}") from None
        start = eol + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", eol)
            if data[start : start + 2] == b"\r\n":
                return b"".join(parts), True, data[start + 2 :]
            if trailer_end < 0:
                return b"".join(parts), False, b""
            return b"".join(parts), True, data[trailer_end + 4 :]
        if start + size + 2 > end:
            parts.append(data[start : start + size])
            return b"".join(parts), False, b""
        if data[start + size : start + size + 2] != b"\r\n":
            raise Malformed(f"chunk of {size} bytes at {start} not followed by CRLF")
        parts.append(data[start : start + size])
        pos = start + size + 2


def split_answer(data: bytes, closed: bool = True) -> tuple[Answer, bytes]:
    """One answer read fast for big bodies: the head by h11, the body sliced (Content-Length)
    or ``dechunk``ed. Returns (answer, bytes after it)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise Malformed(f"no complete head in {data[:300]!r}")
    head = data[: end + 4]
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise Malformed(f"bad head: {exc}: {head[:300]!r}") from None
    if not isinstance(event, h11.Response):
        raise Malformed(f"no final answer head in {head[:300]!r}")
    answer = Answer(event.status_code, list(event.headers))
    rest = data[end + 4 :]
    te = (answer.header("Transfer-Encoding") or "").lower()
    if "chunked" in te:
        body, complete, rest = dechunk(rest)
    elif answer.header("Content-Length") is not None:
        n = int(answer.header("Content-Length") or 0)
        body, complete, rest = rest[:n], len(rest) >= n, rest[n:]
    else:
        body, complete, rest = rest, closed, b""
    answer._parts[:] = [body]
    answer.complete = complete
    return answer, rest


def read_answers(
    sock: socket.socket, count: int = 1, timeout: float = 5.0, methods: list[str] | None = None
) -> tuple[list[Answer], bytes, bool]:
    """Read until ``count`` complete answers arrived, the peer closed, or ``timeout``.
    Returns (answers, raw bytes, closed). Raises ``Malformed`` on bytes that are not HTTP/1.1."""
    deadline = time.monotonic() + timeout
    data = b""
    closed = False
    while True:
        answers, _ = parse_responses(data, methods, closed=closed) if data else ([], b"")
        done = [a for a in answers if a.complete]
        if len(done) >= count or closed:
            return answers, data, closed
        left = deadline - time.monotonic()
        if left <= 0:
            return answers, data, closed
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            closed = True
        data += chunk


def exchange(
    port: int, data: bytes, count: int = 1, timeout: float = 5.0, methods: list[str] | None = None
) -> tuple[list[Answer], bytes, bool]:
    """Send ``data`` on a new connection, then ``read_answers``."""
    with connect(port, timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_answers(sock, count, timeout, methods)
