"""HTTP/1.1 message framing for the proxy: pure functions over byte buffers, no I/O.

Both sides of the proxy (clients → balancer, balancer → replicas) parse incrementally: a
function gets the bytes received so far and either returns a complete message or ``None`` for
"need more". Keeping framing here, apart from the sockets, lets it be tested exhaustively.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024

# Hop-by-hop headers (RFC 9110 §7.6.1) plus the ones the balancer rewrites itself.
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authorization", "proxy-authenticate",
    }
)
REWRITTEN = frozenset({"host", "content-length", "expect", "x-forwarded-for", "x-forwarded-proto"})


_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS3 = re.compile(r"[0-9]{3}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name


class BadMessage(ValueError):
    """Unparseable bytes; ``status`` is what to answer a client with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    target: str  # as received: path plus optional ?query
    version: str
    headers: list[tuple[str, str]]  # original case, in order
    body: bytes = b""
    keep_alive: bool = True
    lower: dict[str, str] = field(default_factory=dict)  # lower-cased name -> last value

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # without hop-by-hop headers and Content-Length
    body: bytes
    keep_alive: bool
    content_length: int = -1  # as announced (kept for HEAD answers)


def _split_head(head: bytes) -> tuple[str, list[tuple[str, str]], dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    lower: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value:
            # bare CR/LF would let a client inject headers into the forwarded request
            raise BadMessage(f"malformed header line {line[:60]!r}")
        value = value.strip(" \t")
        headers.append((name, value))
        key = name.lower()
        lower[key] = f"{lower[key]}, {value}" if key in lower else value
    return lines[0], headers, lower


def _content_length(lower: dict[str, str]) -> int:
    text = lower.get("content-length")
    if text is None:
        return -1
    if not (text.isascii() and text.isdigit()):  # refuses "1, 2" too: a smuggling vector
        raise BadMessage("invalid Content-Length")
    return int(text)


def decode_chunked(buf: bytes | bytearray, start: int, limit: int) -> tuple[bytes, int] | None:
    """Decode a chunked body beginning at ``start``; returns (body, end offset) or ``None`` if
    more bytes are needed. Raises ``BadMessage`` (413 when the body passes ``limit``)."""
    parts = []
    size = 0
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - pos > 1024:
                raise BadMessage("chunk size line too long")
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip(b" \t")
        if not _HEX.fullmatch(size_text):  # int(x, 16) would take "-2", "+5", "0x5", "5_0"
            raise BadMessage("invalid chunk size")
        length = int(size_text, 16)
        pos = eol + 2
        if length == 0:
            while True:  # trailer section, ends with an empty line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return b"".join(parts), eol + 2
                pos = eol + 2
        size += length
        if size > limit:
            raise BadMessage("body too large", 413)
        if len(buf) < pos + length + 2:
            return None
        parts.append(bytes(buf[pos : pos + length]))
        if buf[pos + length : pos + length + 2] != b"\r\n":
            raise BadMessage("chunk not terminated by CRLF")
        pos += length + 2


def parse_request(buf: bytearray, max_body: int) -> tuple[Request, int] | None:
    """One request from the front of ``buf``: (request, bytes consumed) or ``None``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0 or end > MAX_HEAD:
        if end > MAX_HEAD or len(buf) > MAX_HEAD:
            raise BadMessage("request head too large", 431)
        return None
    start_line, headers, lower = _split_head(bytes(buf[:end]))
    parts = start_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise BadMessage(f"malformed request line {start_line[:80]!r}")
    method, target, version = parts
    if not target.startswith("/"):
        raise BadMessage("request target must be a path (origin form)")
    connection = lower.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    body_at = end + 4
    if "chunked" in lower.get("transfer-encoding", "").lower():
        if "content-length" in lower:
            raise BadMessage("both Transfer-Encoding and Content-Length")
        decoded = decode_chunked(buf, body_at, max_body)
        if decoded is None:
            return None
        body, consumed = decoded
    else:
        length = _content_length(lower)
        if length > max_body:
            raise BadMessage(f"request body exceeds {max_body} bytes", 413)
        length = max(length, 0)
        if len(buf) < body_at + length:
            return None
        body, consumed = bytes(buf[body_at : body_at + length]), body_at + length
    return Request(method, target, version, headers, body, keep_alive, lower), consumed


def parse_response(
    buf: bytearray, head_only: bool, closed: bool, max_body: int
) -> Response | None:
    """A complete response at the front of ``buf`` (a connection carries one at a time), or
    ``None``. ``closed`` says the peer closed, which ends a body without a length."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise BadMessage("response head too large", 502)
        if closed:
            raise BadMessage("replica closed the connection before answering", 502)
        return None
    start_line, raw_headers, lower = _split_head(bytes(buf[:end]))
    parts = start_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _DIGITS3.fullmatch(parts[1]):
        raise BadMessage(f"bad status line {start_line[:80]!r}", 502)
    status = int(parts[1])
    connection = lower.get("connection", "").lower()
    keep_alive = "close" not in connection and (parts[0] == "HTTP/1.1" or "keep-alive" in connection)
    length = _content_length(lower)
    headers = [(n, v) for n, v in raw_headers if n.lower() not in HOP_BY_HOP and n.lower() != "content-length"]
    body_at = end + 4
    if head_only or status in (204, 304) or status < 200:
        body = b""
    elif "chunked" in lower.get("transfer-encoding", "").lower():
        decoded = decode_chunked(buf, body_at, max_body)
        if decoded is None:
            if closed:
                raise BadMessage("replica closed mid-body", 502)
            return None
        body = decoded[0]
    elif length >= 0:
        if length > max_body:
            raise BadMessage("response body too large", 502)
        if len(buf) < body_at + length:
            if closed:
                raise BadMessage("replica closed mid-body", 502)
            return None
        body = bytes(buf[body_at : body_at + length])
    else:
        if not closed:
            return None
        body = bytes(buf[body_at:])
        keep_alive = False
    return Response(status, parts[2] if len(parts) > 2 else "", headers, body, keep_alive, length)


def serialize_request(req: Request, host: str, client_ip: str, scheme: str) -> bytes:
    """The request as sent to a replica: hop-by-hop headers dropped (including any named in
    Connection), Host set to the replica, X-Forwarded-* appended, body re-framed by length."""
    named = {t.strip().lower() for t in req.lower.get("connection", "").split(",") if t.strip()}
    out = [f"{req.method} {req.target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in req.headers:
        key = name.lower()
        if key not in HOP_BY_HOP and key not in REWRITTEN and key not in named:
            out.append(f"{name}: {value}\r\n")
    forwarded = req.lower.get("x-forwarded-for")
    out.append(f"X-Forwarded-For: {forwarded}, {client_ip}\r\n" if forwarded else f"X-Forwarded-For: {client_ip}\r\n")
    out.append(f"X-Forwarded-Proto: {scheme}\r\n")
    if req.body or req.method not in ("GET", "HEAD", "OPTIONS", "DELETE"):
        out.append(f"Content-Length: {len(req.body)}\r\n")
    out.append("\r\n")
    return "".join(out).encode("latin-1") + req.body


def serialize_response(
    status: int, reason: str, headers: list[tuple[str, str]], body: bytes, keep_alive: bool,
    content_length: int | None = None,
) -> bytes:
    """A response for the client; ``content_length`` overrides the body's (HEAD answers)."""
    out = [f"HTTP/1.1 {status} {reason}\r\n"]
    for name, value in headers:
        out.append(f"{name}: {value}\r\n")
    out.append(f"Content-Length: {len(body) if content_length is None else content_length}\r\n")
    if not keep_alive:
        out.append("Connection: close\r\n")
    out.append("\r\n")
    return "".join(out).encode("latin-1") + body
