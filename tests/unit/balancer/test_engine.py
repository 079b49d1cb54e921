"""The proxy engine under asyncio, with fake transports on both sides.

A real ``Engine`` (built as ``worker.ProxyWorker.run`` builds it) over a temporary state dir with
a published membership; client bytes go in through ``ClientConnection.data_received`` and the
answer is read from a transport that records writes. Replica connections are fakes too:
``Engine.connect`` is overridden (a subclass) so that a real ``UpstreamConnection`` gets a recording
transport, and the test feeds the replica's answer to its ``data_received``.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from ringlb_balancer import framing
from ringlb_balancer.client import ClientConnection
from tests.unit.balancer.fakes import ADDRESSES, CLIENT_IP, NAMES, FakeTransport, Harness, build, run, settle

VIA = b"Via: 1.1 ringlb-unit\r\n"


@pytest.fixture
def make(tmp_path):
    """``make(**settings)``, inside a running loop → a Harness over a published 3-member membership."""
    counter = [0]

    def build_one(members: list[str] | None = None, key: dict | None = None, **overrides: Any) -> Harness:
        counter[0] += 1
        return build(tmp_path / f"state{counter[0]}", asyncio.get_running_loop(), members, key, **overrides)

    return build_one


def head_and_body(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        fields[name.lower()] = value
    return lines[0], fields, body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def seed_error(message: str) -> bytes:
    return json.dumps({"message": f"<Error> {message}", "status": "failure"}).encode()


GET = b"GET /home?x=1 HTTP/1.1\r\nHost: lb.example\r\nX-Request-ID: 123456\r\n\r\n"
OK_HELLO = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


# ---------------------------------------------------------------------------------------------
# The request a replica gets
# ---------------------------------------------------------------------------------------------


def test_request_head_is_rebuilt_for_the_replica(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(
            b"POST /x?y=1 HTTP/1.1\r\nHost: client.example\r\nConnection: keep-alive, X-Secret\r\n"
            b"X-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\n"
            b"Proxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n"
            b"X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\n"
            b"X-Real-IP: 6.6.6.6\r\nX-Ringlb-Key: forged\r\nX-Request-ID: abc\r\n"
            b"Transfer-Encoding: chunked\r\nX-Keep: yes\r\nAuthorization: Bearer t\r\n\r\n"
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: dropped\r\n\r\n"
        )
        await settle()
        up = h.upstream()
        member = ADDRESSES[h.member(up)].encode()
        assert h.sent(up) == (
            b"POST /x?y=1 HTTP/1.1\r\nHost: " + member + b"\r\nX-Request-ID: abc\r\nX-Keep: yes\r\n"
            b"Authorization: Bearer t\r\nX-Forwarded-For: 1.1.1.1, " + CLIENT_IP.encode() + b"\r\n"
            b"X-Forwarded-Proto: http\r\n" + VIA + b"X-Ringlb-Key: abc\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"
        )
        assert out.data == b""

    run(body)


def test_content_length_body_and_empty_post(make):
    async def body():
        h = make()
        client, _ = h.client()
        client.data_received(b"PUT /items HTTP/1.1\r\nHost: lb\r\nContent-Length: 11\r\n\r\nhello world")
        await settle()
        sent = h.sent(h.upstream())
        assert sent.endswith(b"X-Forwarded-Proto: http\r\n" + VIA + b"Content-Length: 11\r\n\r\nhello world")
        h.upstream().data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
        client.data_received(b"POST /empty HTTP/1.1\r\nHost: lb\r\n\r\n")
        await settle()
        assert h.sent(h.upstream()).endswith(VIA + b"Content-Length: 0\r\n\r\n")

    run(body)


def test_get_has_no_content_length_and_http10_client_without_host(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"GET /a HTTP/1.0\r\n\r\n")
        await settle()
        up = h.upstream()
        assert h.sent(up) == (
            b"GET /a HTTP/1.1\r\nHost: "
            + ADDRESSES[h.member(up)].encode()
            + b"\r\nX-Forwarded-For: "
            + CLIENT_IP.encode()
            + b"\r\nX-Forwarded-Proto: http\r\n"
            + VIA
            + b"\r\n"
        )
        up.data_received(OK_HELLO)
        # An HTTP/1.0 client without keep-alive: the answer says close, and the connection closes.
        assert out.take() == (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        assert out.closed

    run(body)


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------


def test_answer_relayed_and_connection_reused(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET)
        await settle()
        up = h.upstream()
        up.data_received(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
            b"Keep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nhello"
        )
        assert out.take() == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        assert not out.closed
        assert [c for _, c in up.pool.idle] == [up]  # back to its pool for the next request
        client.data_received(GET)
        await settle()
        assert len(h.upstreams) == 1 and h.sent(up).count(b"GET /home") == 2

    run(body)


@pytest.mark.parametrize("who", ["this worker", "a sibling"])
def test_a_draining_engine_answers_with_connection_close_then_closes(make, who):
    async def body():
        h = make()
        if who == "this worker":
            h.engine.retiring = True  # what the worker sets on SIGTERM
        else:
            h.engine.shared.draining = True  # a sibling's SIGTERM: the flag in the shared map
        client, out = h.client()
        client.data_received(GET)
        await settle()
        h.upstream().data_received(OK_HELLO)
        assert (
            out.take()
            == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        assert out.closed

    run(body)


def test_a_drain_beginning_mid_answer_keeps_the_connection_its_head_promised(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET)
        await settle()
        up = h.upstream()
        up.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n")
        h.engine.retiring = True  # SIGTERM between the head and the body
        up.data_received(b"hello")
        assert b"Connection: close" not in out.take() and not out.closed  # the client may reuse it
        client.data_received(GET)
        await settle()
        up.data_received(OK_HELLO)
        assert b"Connection: close\r\n" in out.take() and out.closed

    run(body)


def test_pipelined_requests_are_answered_in_order(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(
            b"GET /one HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k1\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k1\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n"
        )
        await settle()
        assert len(h.upstreams) == 1  # the second waits for the first answer
        assert b"GET /one " in h.sent(h.upstream()) and b"/two" not in h.sent(h.upstream())
        h.upstream().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
        await settle()
        assert out.data.endswith(b"one")
        assert b"GET /two " in h.sent(h.upstream())
        h.upstream().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        await settle()
        answers = out.take()
        assert answers.index(b"one") < answers.index(b"two") < answers.index(b'{"status": "ok"}')
        assert answers.count(b"HTTP/1.1 200 OK") == 3

    run(body)


def test_chunked_answer_is_rechunked_for_http11(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET)
        await settle()
        up = h.upstream()
        up.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert out.take() == (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        up.data_received(b"5;x=y\r\nhello\r\n")
        assert out.take() == b"5\r\nhello\r\n"  # each chunk goes out as it arrives (SSE)
        up.data_received(b"6\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
        assert out.take() == b"6\r\n world\r\n0\r\n\r\n"
        assert not out.closed

    run(body)


def test_chunked_answer_is_close_delimited_for_http10(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        await settle()
        up = h.upstream()
        up.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        assert out.take() == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world"
        assert out.closed

    run(body)


def test_close_delimited_answer_ends_with_the_replica_connection(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET)
        await settle()
        up = h.upstream()
        up.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial ")
        up.data_received(b"body")
        up.connection_lost(None)
        assert out.take() == (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\npartial \r\n4\r\nbody\r\n0\r\n\r\n"
        )
        assert not out.closed

    run(body)


def test_head_answer_keeps_content_length_and_has_no_body(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"HEAD /big HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\n\r\n")
        await settle()
        up = h.upstream()
        up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n")
        assert out.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"
        assert [c for _, c in up.pool.idle] == [up]
        # the same replica connection parses the next answer from its start
        client.data_received(b"GET /next HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\n\r\n")
        await settle()
        assert len(h.upstreams) == 1
        up.data_received(OK_HELLO)
        assert out.take().endswith(b"\r\n\r\nhello")

    run(body)


@pytest.mark.parametrize("http10", [False, True])
def test_404_is_the_seed_400(make, http10):
    async def body():
        h = make()
        client, out = h.client()
        version = b"HTTP/1.0" if http10 else b"HTTP/1.1"
        client.data_received(b"GET /no%20such?q=1 " + version + b"\r\nHost: lb\r\nConnection: keep-alive\r\n\r\n")
        await settle()
        h.upstream().data_received(
            b"HTTP/1.1 404 NOT FOUND\r\nContent-Type: text/html\r\nContent-Length: 9\r\n\r\nnot found"
        )
        expected = framing.error(400, "'/no such' endpoint does not exist in server replicas", True, http10=http10)
        assert out.take() == expected
        assert (
            b'{"message": "<Error> \'/no such\' endpoint does not exist in server replicas", "status": "failure"}'
            in expected
        )
        assert not out.closed

    run(body)


def test_103_before_200_is_skipped(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET)
        await settle()
        h.upstream().data_received(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
        assert out.data == b""
        h.upstream().data_received(OK_HELLO)
        assert out.take() == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

    run(body)


def test_103_and_200_in_one_read(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET)
        await settle()
        h.upstream().data_received(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK_HELLO)
        assert out.take() == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"

    run(body)


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------


def test_5xx_is_relayed_not_retried_by_default(make):
    """One request that makes replicas answer 500 must not be sent to every member (and count
    against each): a retry on 5xx is the user's choice (RINGLB_RETRY_5XX=1)."""

    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET)
        await settle()
        h.upstream().data_received(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1\r\n\r\nx")
        await settle()
        assert len(h.upstreams) == 1
        assert out.take() == b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1\r\n\r\nx"

    run(body)


def test_get_is_retried_on_5xx_at_the_next_member_when_configured(make):
    async def body():
        h = make(retry_5xx=1)
        client, out = h.client()
        client.data_received(GET)
        await settle()
        first = h.upstream()
        first.data_received(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        await settle()
        assert out.data == b""
        assert first.transport.aborted
        assert len(h.upstreams) == 2
        second = h.upstream()
        assert h.member(second) != h.member(first)
        assert h.sent(second).startswith(b"GET /home?x=1 HTTP/1.1\r\nHost: " + ADDRESSES[h.member(second)].encode())
        second.data_received(OK_HELLO)
        assert out.take().endswith(b"hello")

    run(body)


def test_5xx_on_every_member_is_relayed_after_max_attempts(make):
    async def body():
        h = make(max_attempts=2, retry_5xx=1)
        client, out = h.client()
        client.data_received(GET)
        await settle()
        h.upstream().data_received(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1\r\n\r\nx")
        await settle()
        h.upstream().data_received(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 1\r\n\r\ny")
        await settle()
        assert len(h.upstreams) == 2
        assert out.take() == b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 1\r\n\r\ny"

    run(body)


def test_post_is_never_sent_again_once_the_replica_got_it(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"POST /pay HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\nContent-Length: 2\r\n\r\n{}")
        await settle()
        up = h.upstream()
        assert h.sent(up).endswith(b"\r\n\r\n{}")
        up.connection_lost(ConnectionResetError("reset by peer"))
        await settle()
        assert len(h.upstreams) == 1 and h.connects == [h.member(up)]
        status, _, payload = head_and_body(out.take())
        assert status == "HTTP/1.1 502 Bad Gateway"
        assert payload == seed_error(f"replica {h.member(up)} failed: connection lost: reset by peer")

    run(body)


def test_post_is_retried_when_the_connect_was_refused(make):
    async def body():
        h = make()
        active, index = h.engine.route(b"k")
        first = h.engine.name_of(active, index)
        h.refuse = {first}
        client, out = h.client()
        client.data_received(b"POST /pay HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\nContent-Length: 2\r\n\r\n{}")
        await settle(10)
        assert len(h.connects) == 2 and h.connects[1] != first
        up = h.upstream()
        assert h.member(up) == h.connects[1]
        assert h.sent(up).endswith(b"Content-Length: 2\r\n\r\n{}")
        up.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        assert out.take() == b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
        assert h.engine.shared.ejected(NAMES.index(first))  # a refused connect ejects at once

    run(body)


def test_kept_alive_connection_closed_by_replica_is_retried_for_post(make):
    """A request sent on an idle connection the replica was closing: no byte came back, and
    the replica never processed it, so even a POST goes again (on a fresh connection)."""

    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"GET /a HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\n\r\n")
        await settle()
        first = h.upstream()
        first.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        out.take()
        client.data_received(b"POST /b HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\nContent-Length: 1\r\n\r\nx")
        await settle()
        assert b"POST /b" in h.sent(first)
        first.connection_lost(None)
        await settle()
        status, _, payload = head_and_body(out.take())
        # What the engine does today: a reused connection lost without an answer is not the
        # replica's fault, but a POST is still not resent (it may have been processed).
        assert status == "HTTP/1.1 502 Bad Gateway", payload
        assert len(h.upstreams) == 1

    run(body)


# ---------------------------------------------------------------------------------------------
# Upgrade, CONNECT, Expect, loops
# ---------------------------------------------------------------------------------------------


def test_101_switches_to_a_byte_tunnel(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(
            b"GET /ws HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly"
        )
        await settle()
        up = h.upstream()
        sent = h.sent(up)
        assert sent.endswith(VIA + b"X-Ringlb-Key: k\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        assert b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" in sent
        assert b"early" not in sent  # held until the replica agrees
        up.data_received(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi"
        )
        assert out.take() == (
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi"
        )
        assert h.sent(up).endswith(b"\r\n\r\nearly")
        client.data_received(b"GET / HTTP/1.1\r\n\r\n")  # not parsed any more: tunnel bytes
        assert h.sent(up).endswith(b"earlyGET / HTTP/1.1\r\n\r\n")
        up.data_received(b"\x81\x03bye")
        assert out.take() == b"\x81\x03bye"
        up.connection_lost(None)
        assert out.closed

    run(body)


def test_refused_upgrade_is_an_ordinary_answer_that_closes(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"GET /ws HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await settle()
        h.upstream().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
        assert out.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
        assert out.closed

    run(body)


def test_connect_is_405_with_allow(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
        await settle()
        answer = out.take()
        status, fields, payload = head_and_body(answer)
        assert status == "HTTP/1.1 405 Method Not Allowed"
        assert fields["allow"] == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
        assert payload == seed_error("CONNECT is not supported: ringlb is a reverse proxy")
        assert out.closed and h.connects == []

    run(body)


def test_expect_100_continue_is_answered_first(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(
            b"PUT /f HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        await settle()
        assert out.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
        up = h.upstream()
        assert b"Expect" not in h.sent(up)
        client.data_received(b"hello")
        assert h.sent(up).endswith(b"Content-Length: 5\r\n\r\nhello")
        up.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        assert out.take() == b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"

    run(body)


def test_other_expectations_are_417(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"PUT /f HTTP/1.1\r\nHost: lb\r\nExpect: teapot\r\nContent-Length: 5\r\n\r\nhello")
        await settle()
        assert status_of(out.take()) == 417

    run(body)


def test_via_loop_marker_is_508(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"GET / HTTP/1.1\r\nHost: lb\r\nVia: 1.1 proxy-a, 1.1 ringlb-unit\r\n\r\n")
        await settle()
        answer = out.take()
        assert status_of(answer) == 508
        assert head_and_body(answer)[2] == seed_error("forwarding loop: this request already passed this balancer")
        assert h.connects == []

    run(body)


def test_another_balancers_via_is_forwarded(make):
    async def body():
        h = make()
        client, _ = h.client()
        client.data_received(b"GET / HTTP/1.1\r\nHost: lb\r\nVia: 1.1 ringlb-other\r\n\r\n")
        await settle()
        assert b"Via: 1.1 ringlb-other\r\n" in h.sent(h.upstream())

    run(body)


# ---------------------------------------------------------------------------------------------
# Request smuggling shapes and limits
# ---------------------------------------------------------------------------------------------

# Each row: the request, what llhttp 9 (httptools 0.9) does with it, and the balancer's answer.
SMUGGLING = [
    (
        "cl-and-te",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "error: Transfer-Encoding can't be present with Content-Length",
        400,
    ),
    (
        "duplicate-cl",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "error: Duplicate Content-Length",
        400,
    ),
    (
        "te-chunked-identity",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "error: Invalid `Transfer-Encoding` header value",
        400,
    ),
    (
        "te-xchunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "error after headers complete: Request has invalid `Transfer-Encoding`",
        400,
    ),
    (
        "te-gzip",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
        "error after headers complete: Request has invalid `Transfer-Encoding`",
        400,
    ),
    (
        "obs-fold",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n",
        "error: Unexpected whitespace after header value",
        400,
    ),
    ("bare-lf", b"GET / HTTP/1.1\nHost: a\n\n", "error: Expected CRLF after version", 400),
    (
        "bare-lf-in-head",
        b"GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n",
        "error: Missing expected CR after header value",
        400,
    ),
    (
        "bare-cr",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n",
        "error: Missing expected LF after header value",
        400,
    ),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n", "error: Invalid header value char", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n", "error: Invalid header token", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "accepted (the balancer refuses)", 400),
    ("no-host-http11", b"GET / HTTP/1.1\r\n\r\n", "accepted (the balancer refuses)", 400),
    ("absolute-form", b"GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n", "accepted (the balancer refuses)", 400),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "accepted (the balancer refuses)", 400),
    ("tab-in-target", b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", "error: Invalid characters in url", 400),
    (
        "bad-chunk-size",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n\r\n",
        "error after headers complete: Invalid character in chunk size",
        400,
    ),
]


@pytest.mark.parametrize(("raw", "llhttp", "code"), [r[1:] for r in SMUGGLING], ids=[r[0] for r in SMUGGLING])
def test_smuggling_shapes_are_refused(make, raw, llhttp, code):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(raw + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        await settle()
        answer = out.take()
        assert status_of(answer) == code, (llhttp, answer)
        _status, fields, payload = head_and_body(answer)
        assert fields["connection"] == "close" and out.closed
        assert json.loads(payload)["status"] == "failure"
        assert answer.count(b"HTTP/1.1") == 1  # nothing after the refusal is read
        for up in h.upstreams:  # whatever reached a replica never completes there
            assert up.transport.aborted or not h.sent(up)

    run(body)


def test_pipelined_refusal_waits_for_the_answer_before_it(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET + b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n")
        await settle()
        assert out.data == b""
        h.upstream(0).data_received(OK_HELLO)
        await settle()
        answers = out.take()
        assert answers.startswith(b"HTTP/1.1 200 OK") and answers.count(b"HTTP/1.1 400 Bad Request") == 1
        assert out.closed
        assert len(h.upstreams) == 1  # the refused request never reaches a replica

    run(body)


def test_too_many_header_fields_is_431(make):
    async def body():
        h = make(max_headers=10)
        client, out = h.client()
        client.data_received(
            b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10)) + b"\r\n"
        )
        await settle()
        answer = out.take()
        assert status_of(answer) == 431
        assert head_and_body(answer)[2] == seed_error("more than 10 header fields")
        assert out.closed

    run(body)


def test_head_too_large_is_431_however_it_is_split(make):
    async def body():
        for pieces in (1, 7):
            h = make(max_head=1024)
            client, out = h.client()
            raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 1100 + b"\r\n\r\n"
            step = -(-len(raw) // pieces)
            for i in range(0, len(raw), step):
                client.data_received(raw[i : i + step])
            await settle()
            answer = out.take()
            assert status_of(answer) == 431
            assert head_and_body(answer)[2] == seed_error("request head exceeds 1024 bytes")

    run(body)


def test_content_length_over_max_body_is_413_before_any_body(make):
    async def body():
        h = make(max_body=100)
        client, out = h.client()
        client.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n")
        await settle()
        answer = out.take()
        assert status_of(answer) == 413
        assert head_and_body(answer)[2] == seed_error("request body exceeds 100 bytes (RINGLB_MAX_BODY)")
        assert out.closed and h.connects == []

    run(body)


def test_content_length_at_max_body_passes(make):
    async def body():
        h = make(max_body=100)
        client, _ = h.client()
        client.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
        await settle()
        assert h.sent(h.upstream()).endswith(b"\r\n\r\n" + b"x" * 100)

    run(body)


def test_chunked_body_growing_past_max_body_is_413(make):
    async def body():
        h = make(max_body=100)
        client, out = h.client()
        client.data_received(b"POST /up HTTP/1.1\r\nHost: a\r\nX-Request-ID: k\r\nTransfer-Encoding: chunked\r\n\r\n")
        await settle()
        up = h.upstream()
        client.data_received(b"40\r\n" + b"x" * 0x40 + b"\r\n")
        assert out.data == b""
        client.data_received(b"40\r\n" + b"y" * 0x40 + b"\r\n")
        await settle()
        answer = out.take()
        assert status_of(answer) == 413, answer
        assert head_and_body(answer)[2] == seed_error("request body exceeds 100 bytes (RINGLB_MAX_BODY)")
        assert out.closed
        assert up.transport.aborted  # type: ignore[union-attr]  # the replica never sees a complete request

    run(body)


def test_trailers_over_max_head_are_431(make):
    async def body():
        h = make(max_head=256)
        client, out = h.client()
        client.data_received(
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
            + b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 40) for i in range(10))
            + b"\r\n"
        )
        await settle()
        answer = out.take()
        assert status_of(answer) == 431, answer
        assert head_and_body(answer)[2] == seed_error("trailer section exceeds 256 bytes")
        assert out.closed

    run(body)


def test_control_body_over_64k_is_413(make):
    async def body():
        h = make()
        client, out = h.client()
        payload = b'{"n": 1, "hostnames": ["' + b"x" * 70_000 + b'"]}'
        client.data_received(b"POST /add HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(payload))
        client.data_received(payload[:40_000])
        client.data_received(payload[40_000:])
        await settle()
        answer = out.take()
        assert status_of(answer) == 413, answer
        _status, fields, body_ = head_and_body(answer)
        assert body_ == seed_error("request body exceeds 65536 bytes")
        assert answer.count(b"HTTP/1.1") == 1
        assert h.connects == []
        # the rest of the body is still on the wire: the connection cannot carry another request
        assert fields.get("connection") == "close" and out.closed

    run(body)


def test_control_membership_body_over_64k_is_413(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(
            b"PUT /membership HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer m\r\nContent-Length: 70000\r\n\r\n"
            + b"x" * 70_000
        )
        await settle()
        answer = out.take()
        assert status_of(answer) == 413
        assert head_and_body(answer)[2] == seed_error("request body exceeds 65536 bytes")
        assert h.engine.store.current().membership.revision == 1

    run(body)


# ---------------------------------------------------------------------------------------------
# Control endpoints through the engine
# ---------------------------------------------------------------------------------------------


def test_control_endpoints_are_answered_in_the_loop(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"GET /rep HTTP/1.1\r\nHost: a\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        await settle(20)
        rep = b'{"message": {"N": 3, "replicas": ["Server 1", "Server 2", "Server 3"]}, "status": "successful"}'
        # each request answered exactly once, in order; HEAD gets the head only, with GET's length
        healthz = b'{"status": "ok"}'
        assert out.take() == (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (len(rep), rep, len(healthz))
        )
        assert h.connects == []

    run(body)


def test_membership_push_through_the_engine_changes_routing(make):
    async def body():
        h = make()
        client, out = h.client()
        doc = json.dumps(
            {
                "revision": 2,
                "members": [{"name": "Server 2", "address": ADDRESSES["Server 2"]}],
                "hashing": {"strategy": "ring"},
            }
        ).encode()
        client.data_received(
            b"PUT /membership HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer m\r\nContent-Length: %d\r\n\r\n%s"
            % (len(doc), doc)
        )
        for _ in range(200):
            await asyncio.sleep(0.01)
            if out.data:
                break
        assert head_and_body(out.take())[2] == b'{"revision": 2, "members": 1, "changed": true}'
        client.data_received(GET)
        await settle()
        assert h.member(h.upstream()) == "Server 2"

    run(body)


def test_client_ip_key_routes_by_address(make):
    async def body():
        h = make(key={"source": "client-ip", "name": ""})
        for i in range(3):
            client, _ = h.client()
            client.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-ID: %d\r\n\r\n" % i)
            await settle()
        assert len({h.member(u) for u in h.upstreams}) == 1

    run(body)


def test_no_member_is_503(make):
    async def body():
        h = make(members=[])
        client, out = h.client()
        client.data_received(GET)
        await settle()
        answer = out.take()
        assert status_of(answer) == 503
        assert head_and_body(answer)[2] == seed_error("no replica is available")

    run(body)


def test_client_gone_aborts_the_replica_side(make):
    async def body():
        h = make()
        client, _ = h.client()
        client.data_received(GET)
        await settle()
        client.connection_lost(None)
        assert h.upstream().transport.aborted

    run(body)


def test_answer_cut_short_aborts_the_client(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET)
        await settle()
        h.upstream().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        h.upstream().connection_lost(None)
        assert out.aborted and out.data.endswith(b"hello")

    run(body)


def test_malformed_answer_is_502(make):
    async def body():
        h = make(max_attempts=1)
        client, out = h.client()
        client.data_received(GET)
        await settle()
        h.upstream().data_received(b"HTTP/1.1 abc OK\r\n\r\n")
        answer = out.take()
        assert status_of(answer) == 502
        assert json.loads(head_and_body(answer)[2])["message"].startswith(
            f"<Error> replica {h.member(h.upstream())} failed: invalid answer"
        )

    run(body)


# ---------------------------------------------------------------------------------------------
# Deadlines (housekeeping, driven here with an explicit clock)
# ---------------------------------------------------------------------------------------------


def test_first_byte_timeout_answers_504_once_without_a_retry(make):
    """The client has waited the whole deadline once: sending the request to the next member
    would make it wait max_attempts times as long (a slowly dripped answer head held a request
    90 s), so a GET times out like a POST. Changed from "retries a GET" with the core rebuild."""

    async def body():
        h = make(first_byte_timeout=30.0)
        client, out = h.client()
        for request in (GET, b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"):
            client.data_received(request)
            await settle()
            conn = h.upstreams[-1]
            now = h.engine.loop.time()
            client.queue[0].timed_out(now + 29)
            assert not conn.transport.aborted
            count = len(h.upstreams)
            client.queue[0].timed_out(now + 31)
            await settle()
            assert conn.transport.aborted and len(h.upstreams) == count
            status, _, payload = head_and_body(out.take())
            assert status == "HTTP/1.1 504 Gateway Timeout"
            assert payload == seed_error(f"replica {h.member(conn)} sent no answer within 30s")
            assert h.engine.shared.ejected(NAMES.index(h.member(conn)))  # a first attempt's member
            h.engine.shared.set_health(NAMES.index(h.member(conn)), None)


def test_stalled_answer_aborts_the_client(make):
    async def body():
        h = make(idle_timeout=30.0)
        client, out = h.client()
        client.data_received(GET)
        await settle()
        h.upstream().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        client.queue[0].timed_out(h.engine.loop.time() + 31)
        assert h.upstream().transport.aborted and out.aborted

    run(body)


def test_slow_head_is_408_and_idle_connection_closes(make):
    async def body():
        h = make(head_timeout=10.0, keepalive_timeout=5.0)
        client, out = h.client()
        client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow")
        client.housekeeping(h.engine.loop.time() + 11, h.engine.settings)
        answer = out.take()
        assert status_of(answer) == 408
        assert head_and_body(answer)[2] == seed_error("request head not received within 10s")
        assert out.closed

        idle, idle_out = h.client()
        idle.housekeeping(h.engine.loop.time() + 4, h.engine.settings)
        assert not idle_out.closed
        idle.housekeeping(h.engine.loop.time() + 6, h.engine.settings)
        assert idle_out.closed and idle_out.data == b""

    run(body)


def test_in_flight_counts_return_to_zero_after_retries_run_out(make):
    # Bounded load reads these counters: a request must leave exactly what it added, however
    # many members it tried.
    async def body():
        h = make()
        h.refuse = set(NAMES)
        client, out = h.client()
        client.data_received(b"POST /pay HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\nContent-Length: 2\r\n\r\n{}")
        await settle(10)
        assert status_of(out.take()) == 502
        assert h.engine.shared.total_inflight(len(NAMES)) == [0, 0, 0]

    run(body)


def test_get_waiting_on_a_member_ejected_by_heartbeats_moves_on_at_once(make):
    # A hung replica (SIGSTOP) is ejected by the master's heartbeats within seconds; requests
    # already waiting on it go to the next member then, not after the 30 s first-byte timeout.
    async def body():
        h = make(first_byte_timeout=30.0)
        client, out = h.client()
        client.data_received(GET)
        await settle()
        first = h.upstream()
        h.engine.shared.set_health(NAMES.index(h.member(first)), "heartbeat")
        client.queue[0].timed_out(h.engine.loop.time() + 2)
        await settle()
        assert first.transport.aborted and len(h.upstreams) == 2
        assert h.member(h.upstream()) != h.member(first)
        h.upstream().data_received(OK_HELLO)
        assert out.take().endswith(b"hello")

    run(body)


# ---------------------------------------------------------------------------------------------
# The findings of the second attack pass, one class each (states.py holds the rules)
# ---------------------------------------------------------------------------------------------

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: lb\r\nX-Request-ID: k\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def test_an_upgrade_request_with_a_body_is_refused_and_nothing_reaches_a_replica(make):
    async def body():
        h = make()
        for framing_line, payload in (
            (b"Content-Length: 5\r\n", b"x" * 5),
            (b"Transfer-Encoding: chunked\r\n", b"1\r\nx\r\n0\r\n\r\n"),
        ):
            client, out = h.client()
            client.data_received(
                UPGRADE + framing_line + b"\r\n" + payload + b"GET /home?SMUGGLED=1 HTTP/1.1\r\nHost: evil\r\n\r\n"
            )
            await settle()
            assert status_of(out.take()) == 400 and out.closed
            assert h.upstreams == []

    run(body)


def test_a_refused_upgrade_returns_a_connection_that_owes_nothing_and_drops_the_early_bytes(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(UPGRADE + b"\r\nGET /home?SMUGGLED=1 HTTP/1.1\r\nHost: evil\r\n\r\n")
        await settle()
        up = h.upstream()
        up.data_received(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno")
        await settle()
        assert out.take().endswith(b"no") and out.closed  # the early bytes were for a tunnel
        assert b"SMUGGLED" not in h.sent(up)
        assert [c for _, c in up.pool.idle] == [up]  # its request (no body) was sent whole: in step

    run(body)


def test_an_answer_before_the_request_body_was_out_never_returns_its_connection_to_the_pool(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"POST /p HTTP/1.1\r\nHost: a\r\nX-Request-ID: k\r\nContent-Length: 10\r\n\r\nabc")
        await settle()
        up = h.upstream()
        up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await settle()
        assert out.take().endswith(b"ok")
        assert up.transport.aborted and up.pool.idle == []

    run(body)


def test_every_ending_of_a_tunnel_closes_both_sides_and_frees_the_slot(make):
    endings = {
        "client closes": lambda client, up: client.connection_lost(None),
        "replica closes": lambda client, up: up.connection_lost(None),
        "both half-close": lambda client, up: (client.eof_received(), up.eof_received()),
        "replica half-closes, then the client": lambda client, up: (up.eof_received(), client.eof_received()),
    }

    async def body():
        h = make()
        for name, end in endings.items():
            client, out = h.client()
            client.data_received(UPGRADE + b"\r\n")
            await settle()
            up = h.upstream()
            up.data_received(SWITCHED)
            client.data_received(b"ping")
            assert h.sent(up).endswith(b"ping")
            end(client, up)
            await settle()
            # (a side whose connection_lost ran has a transport asyncio closed already)
            assert out.closed or name == "client closes", name
            assert up.transport.closed or name == "replica closes", name
            assert client not in h.engine.clients, name

    run(body)


def test_an_idle_tunnel_ends_after_its_deadline(make):
    async def body():
        h = make(tunnel_idle_timeout=60.0)
        client, out = h.client()
        client.data_received(UPGRADE + b"\r\n")
        await settle()
        up = h.upstream()
        up.data_received(SWITCHED)
        now = h.engine.now
        client.housekeeping(now + 59, h.engine.settings)
        assert not out.closed
        client.housekeeping(now + 61, h.engine.settings)
        assert out.closed and up.transport.closed
        assert client not in h.engine.clients

    run(body)


def test_bytes_before_the_101_are_held_up_to_their_bound_then_the_connection_ends(make):
    async def body():
        h = make(early_data=1024)
        client, out = h.client()
        client.data_received(UPGRADE + b"\r\n")
        await settle()
        client.data_received(b"x" * 1024)
        h.upstream().data_received(SWITCHED)
        assert h.sent(h.upstream()).endswith(b"x" * 1024)  # held, then sent in order

        client, out = h.client()
        client.data_received(UPGRADE + b"\r\n")
        await settle()
        up = h.upstream()
        client.data_received(b"x" * 1025)
        await settle()
        assert out.closed and client not in h.engine.clients and client.early_size == 0
        client.connection_lost(None)  # what asyncio does after the close
        assert up.transport.aborted

    run(body)


def test_a_client_that_does_not_read_its_answer_is_closed_after_the_send_deadline(make):
    async def body():
        h = make(send_timeout=30.0)
        client, out = h.client()
        client.data_received(GET)
        await settle()
        h.upstream().data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)
        client.pause_writing()  # the transport's buffer is full: the client is not reading
        now = h.engine.now
        client.housekeeping(now + 29, h.engine.settings)
        assert not out.closed
        client.housekeeping(now + 31, h.engine.settings)
        assert out.aborted and client not in h.engine.clients

    run(body)


def test_at_the_cap_a_half_sent_head_makes_room_then_an_idle_one_then_a_503(make):
    async def body():
        h = make(max_connections=2)
        slow, slow_out = h.client()
        slow.data_received(b"GET /home HTTP/1.1\r\nHo")  # slowloris
        busy, busy_out = h.client()
        busy.data_received(GET)  # a real request, waiting for its replica
        newcomer, new_out = h.client()
        assert slow_out.closed and not busy_out.closed and not new_out.closed
        newcomer.data_received(GET)
        await settle()
        _late, late_out = h.client()
        status, fields, _ = head_and_body(late_out.take())
        assert status == "HTTP/1.1 503 Service Unavailable" and fields["retry-after"] == "1" and late_out.closed
        assert not busy_out.closed and not new_out.closed

    run(body)


@pytest.mark.parametrize(
    "stray",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTRAY!",  # a whole fake answer
        b"STRAY!",  # garbage
    ],
)
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_bytes_after_a_complete_answer_close_the_connection_and_reach_no_client(make, answer, stray):
    async def body():
        h = make()
        for late in (False, True):  # in the same read as the answer, or in a later one
            client, out = h.client()
            client.data_received(GET)
            await settle()
            up = h.upstream()
            if late:
                up.data_received(answer)
                up.data_received(stray)
            else:
                up.data_received(answer + stray)
            await settle()
            assert b"STRAY" not in out.data
            assert up.transport.aborted and up not in [c for _, c in up.pool.idle]
            client.data_received(GET)  # the next request gets a connection of its own
            await settle()
            assert h.upstream() is not up

    run(body)


def test_a_101_nobody_asked_for_is_a_502_and_ejects_nobody(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET)
        await settle()
        up = h.upstream()
        up.data_received(SWITCHED + b"tunnel bytes")
        await settle()
        assert status_of(out.take()) == 502 and up.transport.aborted
        assert len(h.upstreams) == 1  # not tried elsewhere
        assert not any(h.engine.shared.ejected(i) for i in range(3))

    run(body)


def test_an_answer_with_too_many_header_fields_is_a_502(make):
    async def body():
        h = make(max_headers=100, max_attempts=1)
        client, out = h.client()
        client.data_received(GET)
        await settle()
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(101))
        h.upstream().data_received(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n")
        await settle()
        answer = out.take()
        assert status_of(answer) == 502 and b"X-F1:" not in answer

    run(body)


def test_two_routing_keys_are_refused(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: 1\r\nX-Request-ID: 2\r\n\r\n")
        await settle()
        assert status_of(out.take()) == 400 and h.upstreams == []

    run(body)


def test_a_request_that_breaks_every_member_ejects_only_the_first(make):
    async def body():
        h = make()
        client, out = h.client()
        client.data_received(GET)
        await settle()
        for _ in range(3):  # a GET is resent after a reset; each member resets it
            h.upstream().connection_lost(ConnectionResetError("reset by peer"))
            await settle()
        assert status_of(out.take()) == 502
        assert sum(h.engine.shared.ejected(i) for i in range(3)) == 1

    run(body)


def test_the_key_comes_from_the_first_source_in_the_fallback_list_that_gives_one(make):
    key = {
        "source": "header",
        "name": "X-Session",
        "fallback": [
            {"source": "cookie", "name": "sid"},
            {"source": "query", "name": "user"},
            {"source": "path-segment", "index": 1},
            {"source": "client-ip"},
        ],
    }

    async def body():
        h = make(key=key)
        cases = [
            (b"GET /u/7?user=q HTTP/1.1\r\nHost: a\r\nX-Session: s1\r\nCookie: sid=c1\r\n\r\n", b"s1"),
            (b"GET /u/7?user=q HTTP/1.1\r\nHost: a\r\nCookie: a=b\r\nCookie: sid=c1\r\n\r\n", b"c1"),
            (b"GET /u/7?user=q HTTP/1.1\r\nHost: a\r\n\r\n", b"q"),
            (b"GET /u/7 HTTP/1.1\r\nHost: a\r\n\r\n", b"7"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", CLIENT_IP.encode()),
        ]
        for request, expected in cases:
            client, _ = h.client()
            client.data_received(request)
            await settle()
            assert b"\r\nX-Ringlb-Key: " + expected + b"\r\n" in h.sent(h.upstream()), request

    run(body)


def test_hot_keys_are_sampled_and_published_as_rates_with_their_owner(make):
    from ringlb_balancer import engine as engine_module
    from ringlb_balancer.status import model

    async def body():
        h = make()
        _client, _ = h.client()
        random.seed(7)
        for i in range(400 * engine_module.HOT_SAMPLE):  # "hot" is a quarter of the keyed requests
            h.engine.route(b"hot" if i % 4 == 0 else b"k%d" % i)
        h.engine.publish_hot_keys(h.engine.hot_since + 10.0)
        key, rate, _error = h.engine.counters.hot[0]
        # sampled: the estimate of its 80 req/s is within a few standard deviations
        assert key == "hot" and abs(rate - 400 * engine_module.HOT_SAMPLE / 4 / 10.0) < 25
        assert len(h.engine.hot) == 0  # a new window began
        doc = model.data(
            h.engine.active.routing.membership, h.engine.active.routing.strategy, hot=h.engine.counters.hot
        )
        assert doc["hotKeys"][0]["owner"] == NAMES[h.engine.active.owner("hot")]

    run(body)


def test_the_first_head_deadline_runs_from_the_accept_so_a_slow_handshake_counts(make):
    async def body():
        h = make(head_timeout=10.0)
        accepted = h.engine.now
        conn = ClientConnection(h.engine, False)  # created at the accept; TLS then handshakes
        h.engine.now = accepted + 8  # the handshake took 8 s
        out = FakeTransport((CLIENT_IP, 40000))
        conn.connection_made(out)
        conn.data_received(b"GET / HTTP/1.1\r\nHo")
        conn.housekeeping(accepted + 11, h.engine.settings)
        assert status_of(out.take()) == 408

    run(body)
