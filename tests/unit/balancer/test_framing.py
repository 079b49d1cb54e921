"""ringlb_balancer.framing: which header fields cross the proxy and how its own answers look.

Pure functions; parsing itself is llhttp's (see test_engine.py for the wire behaviour)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringlb_balancer import framing


# -- valid_target ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target", [b"/", b"/home", b"/a/b?x=1&y=%20z", b"/~user/;p=1#frag", b"/" + bytes(range(0x21, 0x7F))]
)
def test_origin_form_targets_are_valid(target):
    assert framing.valid_target(target)


@pytest.mark.parametrize(
    "target",
    [
        b"",
        b"home",
        b"*",
        b"evil.example:443",
        b"http://evil.example/",
        b"https://127.0.0.1:5000/home",
        b"//evil.example/x".replace(b"//", b"http://", 1),
        b"/a\rb",
        b"/a\nb",
        b"/a\r\nX-Injected: 1",
        b"/a\x00b",
        b"/a\tb",
        b"/a b",
        b"/a\x7fb",
        b"/a\x80b",
        b"/\xff",
    ],
    ids=[
        "empty",
        "relative",
        "asterisk",
        "authority",
        "absolute-http",
        "absolute-https",
        "absolute-2",
        "cr",
        "lf",
        "crlf",
        "nul",
        "tab",
        "space",
        "del",
        "obs-text-80",
        "obs-text-ff",
    ],
)
def test_other_targets_are_refused(target):
    assert not framing.valid_target(target)


@given(st.binary(max_size=40))
def test_valid_targets_are_slash_then_visible_ascii(rest):
    target = b"/" + rest
    assert framing.valid_target(target) == all(0x21 <= b <= 0x7E for b in rest)


# -- connection_tokens, chunk ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        (b"close", {b"close"}),
        (b"Keep-Alive, X-Secret", {b"keep-alive", b"x-secret"}),
        (b" upgrade ,, HTTP2-Settings ,", {b"upgrade", b"http2-settings"}),
        (b"", set()),
        (b" , ", set()),
    ],
)
def test_connection_tokens(value, tokens):
    assert framing.connection_tokens(value) == tokens


def test_chunk():
    assert framing.chunk(b"hello") == b"5\r\nhello\r\n"
    assert framing.chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert framing.chunk(b"x" * 4096).startswith(b"1000\r\n")
    assert framing.CHUNK_END == b"0\r\n\r\n"
    assert framing.CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"


# -- the balancer's own answers --------------------------------------------------------------
def test_seed_json_is_byte_exact():
    assert framing.seed_json({"N": 1, "replicas": ["S1"]}, "successful") == (
        b'{"message": {"N": 1, "replicas": ["S1"]}, "status": "successful"}'
    )
    assert framing.seed_json("<Error> é", "failure") == b'{"message": "<Error> \\u00e9", "status": "failure"}'


def test_error_in_seed_format():
    body = b'{"message": "<Error> bad request: x", "status": "failure"}'
    assert framing.error(400, "bad request: x") == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(body), body)
    )
    body = framing.error(503, "no replica is available", keep_alive=True).partition(b"\r\n\r\n")[2]
    assert json.loads(body) == {"message": "<Error> no replica is available", "status": "failure"}


def test_error_keep_alive_and_extra_fields():
    out = framing.error(405, "no", keep_alive=True, extra=((b"Allow", b"GET, HEAD"),))
    head = out.partition(b"\r\n\r\n")[0]
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 405 Method Not Allowed",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(framing.seed_json("<Error> no", "failure")),
        b"Allow: GET, HEAD",
    ]
    assert b"Connection: keep-alive" in framing.error(400, "x", keep_alive=True, http10=True)
    assert b"Connection: close" in framing.error(400, "x", keep_alive=False, http10=True)


def test_response_content_type_and_unknown_status():
    out = framing.response(299, b"ok", True, b"text/plain")
    assert out == b"HTTP/1.1 299 Unknown\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
    assert framing.reason(508) == b"Loop Detected" and framing.reason(431) == b"Request Header Fields Too Large"


# -- response_head ---------------------------------------------------------------------------
REPLICA_HEADERS = [
    (b"Content-Type", b"text/plain"),
    (b"Connection", b"keep-alive, X-Internal"),
    (b"X-Internal", b"secret"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Content-Length", b"5"),
    (b"Trailer", b"X-T"),
    (b"Upgrade", b"h2c"),
    (b"Proxy-Authenticate", b"Basic"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"TE", b"trailers"),
    (b"Set-Cookie", b"a=1"),
    (b"set-cookie", b"b=2"),
    (b"CONNECTION", b"x-other"),
    (b"X-Other", b"dropped"),
]


def test_response_fields_drop_hop_by_hop_and_connection_named_fields():
    fields, length, chunked = framing.response_fields(REPLICA_HEADERS)
    # X-Internal and X-Other are named by two Connection fields: both lists count (RFC 9110 §7.6.1)
    assert fields == b"Content-Type: text/plain\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n"
    assert (length, chunked) == (-1, True)  # chunked wins over Content-Length


@pytest.mark.parametrize(
    ("headers", "length", "chunked"),
    [
        ([(b"Content-Length", b"42")], 42, False),
        ([(b"content-length", b"0")], 0, False),
        ([(b"Transfer-Encoding", b"chunked")], -1, True),
        ([(b"X-A", b"1")], -1, False),
    ],
)
def test_response_fields_framing(headers, length, chunked):
    assert framing.response_fields(headers)[1:] == (length, chunked)


def test_response_head():
    fields, _, _ = framing.response_fields([(b"Content-Type", b"text/plain"), (b"Keep-Alive", b"timeout=5")])
    assert framing.response_head(200, fields, b"Content-Length: 5\r\n", False, False) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("close", "http10", "tail"),
    [
        (False, False, b""),
        (True, False, b"Connection: close\r\n"),
        (True, True, b"Connection: close\r\n"),
        (False, True, b"Connection: keep-alive\r\n"),
    ],
)
def test_response_head_connection(close, http10, tail):
    out = framing.response_head(204, b"", b"", close, http10)
    assert out == b"HTTP/1.1 204 No Content\r\n" + tail + b"\r\n"


def test_response_head_uses_the_standard_reason():
    # RFC 9112 §4: the reason phrase carries no meaning; a proxy may send the standard one.
    assert framing.response_head(404, b"", b"", False, False) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert framing.response_head(599, b"", b"", False, False) == b"HTTP/1.1 599 Unknown\r\n\r\n"


def test_request_dropped_fields():
    assert framing.HOP_BY_HOP <= framing.REQUEST_DROPPED
    for name in (
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"forwarded",
        b"x-real-ip",
        b"x-ringlb-key",
    ):
        assert name in framing.REQUEST_DROPPED
    assert framing.HOP_BY_HOP | {b"content-length"} == framing.RESPONSE_DROPPED
