"""The balancer under attack: hostile clients, hostile or broken replicas, and a
membership API that fails closed. Real balancer processes on loopback, raw sockets, and test
backends of our own: a byte-logging one (what the replica receives, byte for byte), a lenient
HTTP/1.1 one (the request-target injection), one that drops reused connections, a fake scaler.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from ringlb_harness.backends.framing import ByteLogBackend, LenientBackend, ReuseDropBackend, parse_requests
from ringlb_harness.backends.main import MainBackend
from ringlb_harness.backends.process import BackendProcess
from ringlb_harness.backends.scaler import FakeScaler
from ringlb_harness.balancer import Balancer, membership_doc
from ringlb_harness.http1 import Answer, exchange, read_answers, request_bytes
from ringlb_harness.net import connect

pytestmark = pytest.mark.integration

MAX_BODY = 65536
INSTANCE = "hostiletest"
WAIT = 30.0  # a deadline for an answer that comes: generous, it costs nothing when things are fast
FIRST_BYTE_TIMEOUT = 5  # the stopped replica's requests end after it; long enough that a loaded
# machine does not end ordinary ones


# ------------------------------------------------------------------------------------------
# fixtures: one balancer for the data-plane rows, backends it is pointed at in turn
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def echo() -> Iterator[MainBackend]:
    server = MainBackend(name="echo").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bytelog() -> Iterator[ByteLogBackend]:
    server = ByteLogBackend().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lenient() -> Iterator[LenientBackend]:
    server = LenientBackend().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    process = Balancer(
        tmp_path_factory.mktemp("hostile"),
        env={
            "RINGLB_MAX_BODY": str(MAX_BODY),
            "RINGLB_FIRST_BYTE_TIMEOUT": str(FIRST_BYTE_TIMEOUT),
            "RINGLB_HEAD_TIMEOUT": "3",
            "RINGLB_TOKEN": "add-token",  # for /add and /rm: must never open /membership
        },
    )
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def no_worker_crash(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "balancer" in request.fixturenames:
        request.getfixturevalue("balancer").assert_workers_unchanged()


def behind(balancer: Balancer, port: int, name: str = "b") -> None:
    """Point the balancer at one backend only."""
    balancer.push([(name, port)])


def status_of(answers: list[Answer]) -> int | None:
    return answers[0].status if answers else None


# ------------------------------------------------------------------------------------------
# the smuggling corpus, checked byte for byte at a byte-logging backend
# ------------------------------------------------------------------------------------------
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n"
REFUSE = {400}
REFUSE_OR_TOO_BIG = {400, 413}

# name -> (raw request, statuses that refuse it, None if it must be refused, else what the replica
# must then receive when the balancer forwards it instead: [(target, body)])
CORPUS: dict[str, tuple[bytes, set[int], list[tuple[bytes, bytes]] | None]] = {
    "cl-and-te": (
        b"POST /smug-clte HTTP/1.1\r\nHost: test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        REFUSE,
        None,
    ),
    "te-and-cl": (
        b"POST /smug-tecl HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        REFUSE,
        None,
    ),
    "duplicate-cl": (
        b"POST /smug-dupcl HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nContent-Length: 43\r\n\r\nhello" + SMUGGLED,
        REFUSE,
        None,
    ),
    "te-chunked-identity": (
        b"POST /smug-ci HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        REFUSE,
        None,
    ),
    "te-two-fields": (
        b"POST /smug-te2 HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        REFUSE,
        None,
    ),
    "te-xchunked": (
        b"POST /smug-x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        REFUSE,
        None,
    ),
    "te-gzip-no-length": (
        b"POST /smug-gz HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\n" + SMUGGLED,
        REFUSE,
        None,
    ),
    "cl-negative": (b"POST /smug-neg HTTP/1.1\r\nHost: test\r\nContent-Length: -1\r\n\r\n" + SMUGGLED, REFUSE, None),
    "cl-plus-sign": (
        b"POST /smug-plus HTTP/1.1\r\nHost: test\r\nContent-Length: +5\r\n\r\nhello" + SMUGGLED,
        REFUSE,
        None,
    ),
    "space-before-colon": (
        b"POST /smug-sp HTTP/1.1\r\nHost: test\r\nContent-Length : 5\r\n\r\nhello" + SMUGGLED,
        REFUSE,
        None,
    ),
    "two-hosts": (b"GET /smug-hosts HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", REFUSE, None),
    "no-host-http11": (b"GET /smug-nohost HTTP/1.1\r\nX-Request-ID: k\r\n\r\n", REFUSE, None),
    "huge-chunk-size": (
        b"POST /smug-huge HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        REFUSE_OR_TOO_BIG,
        None,
    ),
    "chunk-size-wraps-64-bits": (
        b"POST /smug-wrap HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        REFUSE_OR_TOO_BIG,
        None,
    ),
    # RFC 9112 allows either a 400 or forwarding with the fold replaced / the line ending fixed /
    # the NUL refused: what reaches the replica is then checked byte for byte.
    "obs-fold": (b"GET /smug-fold HTTP/1.1\r\nHost: test\r\nX-Folded: a\r\n b\r\n\r\n", REFUSE, [(b"/smug-fold", b"")]),
    "obs-fold-te": (
        b"POST /smug-foldte HTTP/1.1\r\nHost: test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        REFUSE,
        [(b"/smug-foldte", b"hello")],
    ),
    "bare-lf": (b"GET /smug-lf HTTP/1.1\nHost: test\nX-Request-ID: k\n\n", REFUSE, [(b"/smug-lf", b"")]),
    "nul-in-value": (b"GET /smug-nul HTTP/1.1\r\nHost: test\r\nX-Nul: a\x00b\r\n\r\n", REFUSE, [(b"/smug-nul", b"")]),
    "chunk-extensions": (
        b"POST /smug-ext HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;name=value;other="quoted"\r\nhello\r\n0;last\r\n\r\n',
        REFUSE,
        [(b"/smug-ext", b"hello")],
    ),
    "chunk-bare-lf": (
        b"POST /smug-clf HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        REFUSE,
        [(b"/smug-clf", b"hello")],
    ),
    "cl-list-same": (
        b"POST /smug-cl55 HTTP/1.1\r\nHost: test\r\nContent-Length: 5, 5\r\n\r\nhello",
        REFUSE,
        [(b"/smug-cl55", b"hello")],
    ),
}


def check_forwarded_head(head: bytes) -> None:
    lines = head[:-4].split(b"\r\n")
    assert b"\n" not in b"".join(lines), f"bare LF in the forwarded head: {head!r}"
    assert b"\x00" not in head, f"NUL forwarded: {head!r}"
    assert not any(line[:1] in (b" ", b"\t") for line in lines[1:]), f"obs-fold forwarded: {head!r}"
    names = [line.split(b":", 1)[0].lower() for line in lines[1:]]
    assert names.count(b"host") == 1, f"Host fields forwarded: {names.count(b'host')}: {head!r}"
    assert not (b"content-length" in names and b"transfer-encoding" in names), f"CL and TE forwarded: {head!r}"
    assert names.count(b"content-length") <= 1 and names.count(b"transfer-encoding") <= 1, head
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        assert name == name.strip() and name, f"bad field name forwarded: {line!r}"
        if name.lower() == b"transfer-encoding":
            assert value.strip().lower() == b"chunked", f"forwarded coding {value!r}"


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_smuggling_corpus(balancer: Balancer, bytelog: ByteLogBackend, case: str) -> None:
    raw, refusals, forwarded = CORPUS[case]
    behind(balancer, bytelog.port, "log")
    bytelog.clear()
    answers, data, closed = exchange(balancer.port, raw, count=1, timeout=WAIT)
    time.sleep(0.3)  # let anything the balancer forwards land in the log
    received = bytelog.received()
    seen = []
    for conn in received:
        requests_, rest, error = parse_requests(conn)
        seen.append((requests_, rest, error))
    complete = [r for reqs, _, _ in seen for r in reqs]
    assert answers, f"{case}: no answer within {WAIT:g} s (closed={closed}, bytes={data[:200]!r})"
    assert all(b"/smuggled" not in conn for conn in received), (
        f"{case}: a smuggled request reached the replica: {received}"
    )
    status = answers[0].status
    if forwarded is None or status in refusals:
        assert status in refusals, f"{case}: answered {status}, must be refused with {sorted(refusals)}: {data[:300]!r}"
        assert closed or len(answers) == 1, f"{case}: connection kept open after refusing"
        assert not complete, f"{case}: refused, yet the replica received {[(r.method, r.target) for r in complete]}"
        return
    # forwarded: exactly the expected requests, each framed so that a strict server reads them whole
    assert status == 200, f"{case}: answered {status}: {data[:300]!r}"
    for reqs, rest, error in seen:
        assert error is None and rest == b"", (
            f"{case}: the replica received bytes it cannot read: {error}: {rest[:200]!r}"
        )
        for r in reqs:
            check_forwarded_head(r.head)
    assert [(r.target, r.body) for r in complete] == forwarded, f"{case}: replica received {received}"


# ------------------------------------------------------------------------------------------
# hostile clients
# ------------------------------------------------------------------------------------------
INJECTIONS = {
    "lf": b"GET /a\nX-Injected: yes HTTP/1.1\r\nHost: test\r\n\r\n",
    "lf-request": b"GET /a\nGET /injected HTTP/1.1\r\nHost: test\r\n\r\n",
    "cr": b"GET /a\rX-Injected: yes HTTP/1.1\r\nHost: test\r\n\r\n",
    # a target that ends in CRLF: the rest of the line must not become a header field
    "crlf": b"GET /a\r\nX-Injected: yes HTTP/1.1\r\nHost: test\r\n\r\n",
    "nul": b"GET /a\x00b HTTP/1.1\r\nHost: test\r\n\r\n",
    "tab": b"GET /a\tb HTTP/1.1\r\nHost: test\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_cr_lf_nul_tab_in_request_target_get_400_and_reach_no_replica(
    balancer: Balancer, lenient: LenientBackend, case: str
) -> None:
    behind(balancer, lenient.port, "lenient")
    before = len(lenient.taken())
    answers, data, _closed = exchange(balancer.port, INJECTIONS[case], timeout=WAIT)
    time.sleep(0.2)
    taken = lenient.taken()[before:]
    assert not taken, f"{case}: the lenient replica ran {taken}"
    assert status_of(answers) == 400, f"{case}: {data[:300]!r}"


def send_in_background(sock: socket.socket, payload: bytes) -> threading.Thread:
    def run() -> None:
        try:
            sock.sendall(payload)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_trailer_section_has_a_size_limit(balancer: Balancer, echo: MainBackend) -> None:
    behind(balancer, echo.port)
    trailers = b"".join(b"X-Trailer-%d: %s\r\n" % (i, b"v" * 40) for i in range(20_000))  # ~1 MB
    payload = (
        request_bytes("POST", "/echo", {"Transfer-Encoding": "chunked", "X-Request-ID": "t"})
        + b"5\r\nhello\r\n0\r\n"
        + trailers
        + b"\r\n"
    )
    with connect(balancer.port, timeout=WAIT) as sock:
        sender = send_in_background(sock, payload)
        answers, data, _closed = read_answers(sock, timeout=WAIT)
        sender.join(5)
    assert status_of(answers) in {400, 413, 431}, f"1 MB of trailer fields answered: {data[:300]!r}"


def test_chunk_extension_bytes_count_against_the_limits(balancer: Balancer, echo: MainBackend) -> None:
    """A 1,000-byte body carried in 1-byte chunks with 4 KiB of extensions each (4 MB on the
    wire, 64 times RINGLB_MAX_BODY): refused, not forwarded as a small body."""
    behind(balancer, echo.port)
    extension = b";" + b"e" * 4096
    chunks = b"".join(b"1" + extension + b"\r\nx\r\n" for _ in range(1000))
    payload = (
        request_bytes("POST", "/echo", {"Transfer-Encoding": "chunked", "X-Request-ID": "ext"}) + chunks + b"0\r\n\r\n"
    )
    rss0 = balancer.rss()
    with connect(balancer.port, timeout=WAIT) as sock:
        sender = send_in_background(sock, payload)
        answers, _data, _closed = read_answers(sock, timeout=WAIT)
        sender.join(5)
    growth = balancer.rss() - rss0
    assert status_of(answers) in {400, 413, 431}, (
        f"{len(payload) >> 20} MB of chunk extensions for a 1,000-byte body answered {status_of(answers)}"
    )
    assert growth < 32 << 20, f"worker RSS grew {growth >> 20} MiB"


def test_16000_repetitions_of_one_header_cost_linear_time(balancer: Balancer, echo: MainBackend) -> None:
    behind(balancer, echo.port)
    head = request_bytes("GET", "/echo", [("X-Request-ID", "rep")] + [("X-Rep", "a")] * 16_000)
    timings, statuses = [], []
    for _ in range(5):
        start = time.perf_counter()
        answers, _data, _closed = exchange(balancer.port, head, timeout=WAIT)
        timings.append(time.perf_counter() - start)
        statuses.append(status_of(answers))
    assert all(s is not None for s in statuses), f"no answer: {statuses}"
    assert all(s == 431 or (s is not None and s < 300) for s in statuses), statuses
    # The cost is a figure, not an assertion (the issue measured 48.6 ms each before the fix):
    # wall time on a shared machine says nothing certain about the balancer.
    print(f"\n16,000 repeated fields: answered {statuses[0]}, median {sorted(timings)[2] * 1000:.1f} ms")


def test_expect_100_continue_gets_100_then_the_answer(balancer: Balancer, echo: MainBackend) -> None:
    behind(balancer, echo.port)
    with connect(balancer.port, timeout=WAIT) as sock:
        sock.sendall(
            request_bytes("POST", "/echo", {"X-Request-ID": "exp", "Expect": "100-continue", "Content-Length": "5"})
        )
        sock.settimeout(WAIT)
        try:
            first = sock.recv(65536)
        except TimeoutError:
            first = b""
        assert first.startswith(b"HTTP/1.1 100 "), f"no 100 Continue within {WAIT:g} s (got {first[:200]!r})"
        sock.sendall(b"hello")
        answers, data, _closed = read_answers(sock, timeout=WAIT)
        answers_all = answers
    final = answers_all[0]
    assert final.status == 200 and final.complete, data[:300]
    assert final.json()["body"] == "hello"


def test_half_closed_client_gets_its_answer(balancer: Balancer, echo: MainBackend) -> None:
    behind(balancer, echo.port)
    with connect(balancer.port, timeout=WAIT) as sock:
        sock.sendall(request_bytes("GET", "/echo?half", {"X-Request-ID": "half"}))
        sock.shutdown(socket.SHUT_WR)
        answers, data, _closed = read_answers(sock, timeout=WAIT)
    assert status_of(answers) == 200 and answers[0].complete, f"half-closed client got {data[:200]!r}"
    assert answers[0].json()["target"] == "/echo?half"


def test_http10_keep_alive_answers_carry_connection_keep_alive(balancer: Balancer, echo: MainBackend) -> None:
    behind(balancer, echo.port)
    with connect(balancer.port, timeout=WAIT) as sock:
        for target in ("/echo?one", "/healthz", "/echo?two"):
            sock.sendall(b"GET %s HTTP/1.0\r\nConnection: keep-alive\r\nX-Request-ID: k10\r\n\r\n" % target.encode())
            answers, data, closed = read_answers(sock, timeout=WAIT)
            assert status_of(answers) == 200, (target, data[:300])
            assert (answers[0].header("Connection") or "").lower() == "keep-alive", (target, answers[0].headers)
            assert not closed, f"{target}: connection closed after a keep-alive answer"


@pytest.mark.parametrize(
    "method,path,admin",
    [
        ("POST", "/healthz", False),
        ("PUT", "/readyz", False),
        ("POST", "/rep", False),
        ("GET", "/add", False),
        ("GET", "/rm", False),
        ("DELETE", "/membership", True),
        ("POST", "/metrics", True),
    ],
)
def test_405_carries_allow(balancer: Balancer, method: str, path: str, admin: bool) -> None:
    port = balancer.admin_port if admin else balancer.port
    # Host: localhost, as a loopback listener's control endpoints require (421 for a foreign name).
    answers, data, _ = exchange(
        port,
        request_bytes(method, path, {"Content-Length": "0"} if method != "GET" else {}, host="localhost"),
        timeout=WAIT,
    )
    assert status_of(answers) == 405, data[:300]
    allow = answers[0].header("Allow")
    assert allow, f"405 without Allow: {answers[0].headers}"
    assert method not in {m.strip() for m in allow.split(",")}, allow


def test_forwarded_and_x_real_ip_are_stripped_and_xff_appended(balancer: Balancer, echo: MainBackend) -> None:
    behind(balancer, echo.port)
    reply = requests.get(
        f"{balancer.url}/echo",
        timeout=WAIT,
        headers={
            "X-Request-ID": "fwd",
            "Forwarded": "for=198.51.100.7;proto=https",
            "X-Real-IP": "198.51.100.7",
            "X-Forwarded-For": "203.0.113.9",
        },
    )
    seen = {k.lower(): v for k, v in reply.json()["headers"]}
    assert "forwarded" not in seen and "x-real-ip" not in seen, seen
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"


def test_json_nested_30000_deep_to_membership_is_a_400_json_answer(balancer: Balancer) -> None:
    before = balancer.membership()
    reply = balancer.put_membership(b"[" * 30_000 + b"]" * 30_000)
    assert reply.status_code == 400, reply.text[:300]
    assert reply.headers.get("Content-Type", "").startswith("application/json"), reply.headers
    assert balancer.membership() == before


@pytest.mark.parametrize("method,path", [("POST", "/add"), ("DELETE", "/rm")])
def test_json_nested_30000_deep_to_add_and_rm_is_a_400_json_answer(
    scaled: tuple[Balancer, FakeScaler], method: str, path: str
) -> None:
    balancer, _ = scaled
    reply = requests.request(
        method,
        f"{balancer.url}{path}",
        data=b"[" * 30_000 + b"]" * 30_000,
        headers={"Content-Type": "application/json"},
        timeout=WAIT,
    )
    assert reply.status_code == 400, reply.text[:300]
    assert reply.headers.get("Content-Type", "").startswith("application/json"), reply.headers
    assert reply.json()["status"] == "failure"


def test_a_request_carrying_our_hop_marker_is_a_loop_508(balancer: Balancer, echo: MainBackend) -> None:
    behind(balancer, echo.port)
    seen = {
        k.lower(): v
        for k, v in requests.get(f"{balancer.url}/echo", headers={"X-Request-ID": "via"}, timeout=WAIT).json()[
            "headers"
        ]
    }
    via = seen.get("via")
    assert via, f"the balancer adds no hop header (Via) to forwarded requests: {seen}"
    reply = requests.get(f"{balancer.url}/echo", headers={"X-Request-ID": "via", "Via": via}, timeout=WAIT)
    assert reply.status_code == 508, reply.text[:300]
    other = requests.get(
        f"{balancer.url}/echo", headers={"X-Request-ID": "via", "Via": "1.1 some-other-proxy"}, timeout=WAIT
    )
    assert other.status_code == 200, "a Via from another proxy is not a loop"


# ------------------------------------------------------------------------------------------
# hostile or broken replicas
# ------------------------------------------------------------------------------------------
def test_post_is_never_sent_twice_when_a_reused_connection_closes_unanswered(balancer: Balancer) -> None:
    backend = ReuseDropBackend().start()
    try:
        behind(balancer, backend.port, "dropper")
        outcomes = []
        with requests.Session() as session:
            for i in range(6):
                reply = session.post(
                    f"{balancer.url}/post-{i}", data=b"pay-%d" % i, headers={"X-Request-ID": "dup"}, timeout=WAIT
                )
                outcomes.append(reply.status_code)
        received = backend.received()
    finally:
        backend.stop()
    targets = [t for _, t, _, _ in received]
    for i in range(6):
        assert targets.count(f"/post-{i}") == 1, (
            f"POST /post-{i} reached the replica {targets.count(f'/post-{i}')} times: {received}"
        )
    dropped = [t for _, t, nth, _ in received if nth > 1]
    assert dropped, f"the balancer never reused a replica connection (test inconclusive): {received}"
    for _, target, nth, _ in received:
        i = int(target.rsplit("-", 1)[1])
        if nth > 1:
            assert outcomes[i] >= 500, f"{target} dropped by the replica yet answered {outcomes[i]}"


def test_early_hints_then_the_final_answer(balancer: Balancer, echo: MainBackend) -> None:
    behind(balancer, echo.port)
    with connect(balancer.port, timeout=WAIT) as sock:
        sock.sendall(request_bytes("GET", "/early-hints", {"X-Request-ID": "103"}))
        answers, data, _closed = read_answers(sock, timeout=WAIT)
    assert answers, data[:300]
    final = answers[0]
    assert final.status == 200 and final.body == b"the final answer", data[:400]
    assert set(final.informational) <= {103}


def test_sigstopped_replica_ends_in_flight_requests_after_the_first_byte_timeout(balancer: Balancer) -> None:
    replica = BackendProcess("main")
    try:
        behind(balancer, replica.port, "stopped")
        assert requests.get(f"{balancer.url}/echo", headers={"X-Request-ID": "s"}, timeout=WAIT).status_code == 200
        os.kill(replica.pid, signal.SIGSTOP)
        # The replica stays stopped until the end: without the first-byte timeout no answer comes.
        answers, data, closed = exchange(
            balancer.port,
            request_bytes("GET", "/echo?stopped", {"X-Request-ID": "s"}),
            timeout=FIRST_BYTE_TIMEOUT + 2 * WAIT,
        )
    finally:
        replica.stop()
    assert answers or closed, f"no answer and no close within {FIRST_BYTE_TIMEOUT + 2 * WAIT:g} s"
    assert status_of(answers) in {502, 503, 504}, data[:300]


# ------------------------------------------------------------------------------------------
# the membership API fails closed
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    process = Balancer(tmp_path_factory.mktemp("tokenless"), token="", env={"RINGLB_TOKEN": "add-token"})
    yield process
    process.stop()


def test_membership_push_without_a_configured_token_is_403(tokenless: Balancer) -> None:
    doc = membership_doc(1, [("x", 9)])
    for token in ("", "anything", "add-token"):  # RINGLB_TOKEN never opens /membership
        reply = tokenless.put_membership(doc, token=token)
        assert reply.status_code == 403, (token, reply.status_code, reply.text)
    assert tokenless.membership()["revision"] == 0


def test_readyz_is_503_without_a_membership(tokenless: Balancer) -> None:
    for url in {tokenless.url, tokenless.admin_url}:
        reply = requests.get(f"{url}/readyz", timeout=WAIT)
        assert reply.status_code == 503, (url, reply.status_code, reply.text)


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0:8080",
        "[::]:8080",
        "169.254.169.254:80",
        "[fe80::1]:80",
        "224.0.0.1:80",
        "[ff02::1]:80",
        "255.255.255.255:80",
        "own-public",
        "own-admin",
    ],
)
def test_membership_refuses_addresses_that_are_not_replicas(balancer: Balancer, address: str) -> None:
    if address == "own-public":
        address = f"127.0.0.1:{balancer.port}"
    elif address == "own-admin":
        address = f"127.0.0.1:{balancer.admin_port}"
    before = balancer.membership()
    doc = membership_doc(before["revision"] + 1, [{"name": "bad", "address": address}])
    reply = balancer.put_membership(doc)
    assert reply.status_code == 400, (address, reply.status_code, reply.text)
    assert balancer.membership() == before


def test_revision_jump_beyond_2_to_the_32_is_refused(balancer: Balancer) -> None:
    before = balancer.membership()
    for revision in (before["revision"] + 2**32 + 1, 144_115_188_075_855_873):
        reply = balancer.put_membership(membership_doc(revision, []))
        assert reply.status_code == 400, (revision, reply.status_code, reply.text)
    assert balancer.membership() == before


# ------------------------------------------------------------------------------------------
# control endpoints under load, with a fake scaler
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory, echo: MainBackend) -> Iterator[tuple[Balancer, FakeScaler]]:
    tmp = tmp_path_factory.mktemp("scaled")
    scaler_token = "scaler-token"
    # the scaler needs the balancer's admin URL, the balancer the scaler's URL: start the scaler
    # against a placeholder, then point it at the balancer.
    scaler = FakeScaler("http://127.0.0.1:9", "push-token", ["S1", "S2", "S3"], echo.port, token=scaler_token)
    process = Balancer(
        tmp, env={"RINGLB_SCALER": scaler.url, "RINGLB_SCALER_TOKEN": scaler_token, "RINGLB_SCALE_TIMEOUT": "30"}
    )
    scaler.push_url = process.admin_url + "/membership"
    assert requests.get(f"{process.admin_url}/readyz", timeout=WAIT).status_code == 503
    scaler.push_now()
    assert not scaler.push_failures, scaler.push_failures
    yield process, scaler
    scaler.stop()
    process.stop()


def test_control_endpoints_answer_during_50_concurrent_scale_calls(scaled: tuple[Balancer, FakeScaler]) -> None:
    balancer, scaler = scaled
    results: dict[str, list[int]] = {"add": [], "rm": []}
    lock = threading.Lock()

    def scale(i: int) -> None:
        with requests.Session() as session:
            add = session.post(f"{balancer.url}/add", json={"n": 1, "hostnames": [f"T{i}"]}, timeout=60)
            rm = session.delete(f"{balancer.url}/rm", json={"n": 1, "hostnames": [f"T{i}"]}, timeout=60)
        with lock:
            results["add"].append(add.status_code)
            results["rm"].append(rm.status_code)

    def timed_healthz() -> float:
        with connect(balancer.admin_port, timeout=WAIT) as sock:
            start = time.perf_counter()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            answers, _, _ = read_answers(sock, timeout=WAIT)
            elapsed = time.perf_counter() - start
        assert status_of(answers) == 200
        return elapsed

    quiet_push = scaler.push_now()  # the same push with nothing else going on, for the report
    healthz, pushes, pending = [], [], []
    started = time.perf_counter()
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(scale, i) for i in range(50)]
        time.sleep(0.3)  # the storm is on
        for _ in range(3):
            healthz.append(timed_healthz())
            pushes.append(scaler.push_now())
            pending.append(sum(not f.done() for f in futures))
            time.sleep(0.1)
        for future in futures:
            future.result(timeout=90)
    storm = time.perf_counter() - started
    print(
        f"\n/healthz {[round(t * 1000, 1) for t in healthz]} ms, push {[round(t * 1000, 1) for t in pushes]} ms "
        f"under 50 concurrent /add+/rm lasting {storm:.1f} s, {pending} of them unanswered after each "
        f"(a push alone: {quiet_push * 1000:.1f} ms)"
    )
    assert not scaler.push_failures, scaler.push_failures
    # Not a timing figure (make faults measures those): each control answer came while most of
    # the storm still waited for its own, so it did not queue behind the scale calls.
    assert min(pending) >= 25, f"the control calls were answered after the storm: {pending} scale calls left"
    assert results["add"] == [200] * 50 and results["rm"] == [200] * 50, results


# ------------------------------------------------------------------------------------------
# file descriptors run out
# ------------------------------------------------------------------------------------------
def test_new_clients_are_served_when_slow_connections_exceed_the_descriptor_limit(
    tmp_path: Path, echo: MainBackend
) -> None:
    with Balancer(tmp_path, nofile=256, env={"RINGLB_HEAD_TIMEOUT": "2"}) as balancer:
        behind(balancer, echo.port)
        slow = []
        try:
            for _ in range(400):  # more than the balancer has descriptors
                sock = socket.create_connection(("127.0.0.1", balancer.port), timeout=WAIT)
                sock.sendall(b"GET /echo HTTP/1.1\r\n")
                slow.append(sock)
            served = []

            def client(i: int) -> int:
                deadline = time.monotonic() + 2 * WAIT  # the head deadline (2 s) frees descriptors
                while time.monotonic() < deadline:
                    try:
                        answers, _, _ = exchange(
                            balancer.port,
                            request_bytes("GET", f"/echo?new={i}", {"X-Request-ID": str(i)}),
                            timeout=max(0.5, deadline - time.monotonic()),
                        )
                        if status_of(answers) == 200:
                            return 200
                    except OSError:
                        time.sleep(0.2)
                return 0

            with ThreadPoolExecutor(10) as pool:
                served = list(pool.map(client, range(10)))
        finally:
            for sock in slow:
                sock.close()
        assert served == [200] * 10, f"new clients served: {served.count(200)} of 10; log:\n{balancer.log_tail(20)}"
        assert balancer.worker_pids() == balancer.workers0, "the worker died"
