"""What the proxy writes on the wire: heads rebuilt for the next hop, and its own answers.

Parsing is llhttp's (through httptools); this module only decides which header fields cross
the proxy and how a message is framed on the other side. It is pure, so every rule here is a
unit test without sockets.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

# Hop-by-hop fields (RFC 9110 §7.6.1): meaningful for one connection only.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
# Rewritten by the balancer on the way to a replica, or dropped because a client could forge
# them: replicas learn the client's address only from X-Forwarded-For, which the balancer appends.
REQUEST_DROPPED = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"forwarded",
    b"x-real-ip",
    b"x-ringlb-key",
}
RESPONSE_DROPPED = HOP_BY_HOP | {b"content-length"}
# Connection options that are not field names (RFC 9112 §9.6): nothing to drop for them.
_CONNECTION_OPTIONS = frozenset({b"keep-alive", b"close", b"upgrade"})
_CONNECTION_PLAIN = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close", b"upgrade", b"Upgrade"})

# A request target is origin-form: "/" then visible ASCII only. llhttp already refuses CR and
# LF there; this also refuses NUL, TAB, spaces and DEL, which a lenient replica might split on.
_ORIGIN_FORM = re.compile(rb"/[\x21-\x7e]*")

CHUNK_END = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def valid_target(target: bytes) -> bool:
    return _ORIGIN_FORM.fullmatch(target) is not None


def connection_tokens(value: bytes) -> set[bytes]:
    """The field names a Connection header declares hop-by-hop, lower-cased."""
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def seed_json(message: Any, status: str) -> bytes:
    """A seed-API body, serialized with json.dumps' default separators as the seed's were:
    its clients compare these bodies byte for byte."""
    return json.dumps({"message": message, "status": status}).encode()


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def response(
    status: int,
    body: bytes,
    keep_alive: bool,
    content_type: bytes = b"application/json",
    extra: tuple[tuple[bytes, bytes], ...] = (),
    http10: bool = False,
    head_only: bool = False,
) -> bytes:
    """One complete answer of the balancer's own (errors, control endpoints); ``head_only``
    answers HEAD: the length of the body, without it."""
    out = [
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        % (status, reason(status), content_type, len(body))
    ]
    for name, value in extra:
        out.append(b"%s: %s\r\n" % (name, value))
    if not keep_alive:
        out.append(b"Connection: close\r\n")
    elif http10:
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    if not head_only:
        out.append(body)
    return b"".join(out)


def error(
    status: int,
    message: str,
    keep_alive: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    http10: bool = False,
    head_only: bool = False,
) -> bytes:
    """An error answer in the seed's format: ``{"message": "<Error> ...", "status": "failure"}``;
    ``head_only`` for a HEAD request, whose answer ends with its head (a body would be read as
    the next answer on a kept-alive connection)."""
    return response(
        status, seed_json(f"<Error> {message}", "failure"), keep_alive, extra=extra, http10=http10, head_only=head_only
    )


def response_fields(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, int, bool]:
    """A replica's header fields as the client gets them (hop-by-hop ones dropped, also those
    its Connection header names), with the answer's Content-Length (-1: none) and whether it
    is chunked. One pass: this runs for every answer."""
    out = []
    named = None
    length = -1
    chunked = False
    for name, value in headers:
        lower = name.lower()
        if lower in RESPONSE_DROPPED:
            if lower == b"content-length":
                length = int(value)  # llhttp has checked it
            elif lower == b"transfer-encoding":
                chunked = True
            elif lower == b"connection" and value not in _CONNECTION_PLAIN:
                # a repeated field adds to the list (RFC 9110 §5.3)
                named = connection_tokens(value) | (named or set())
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    if named:
        named -= _CONNECTION_OPTIONS
        if named:  # rare: a replica naming its own hop-by-hop fields
            out = [line for line in out if line.split(b":", 1)[0].lower() not in named]
    return b"".join(out), (-1 if chunked else length), chunked


def response_head(status: int, fields: bytes, framing: bytes, close: bool, http10: bool) -> bytes:
    """The head of a replica's answer for the client; ``fields`` from ``response_fields``,
    ``framing`` a complete header line or empty. The reason phrase is the standard one for the
    code: RFC 9112 §4 lets a proxy replace it, and clients ignore it."""
    connection = b"Connection: close\r\n" if close else b"Connection: keep-alive\r\n" if http10 else b""
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, reason(status))
    return b"%s%s%s%s\r\n" % (line, fields, framing, connection)


_STATUS_LINES = {status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode()) for status in HTTPStatus}
