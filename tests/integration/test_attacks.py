"""The proxy core's security findings, each proved against a real balancer process on
loopback: smuggling through an Upgrade request with a body (against the project's own Flask
replica under gunicorn, and a strict recording backend), tunnels that leak, early bytes of an
upgrade, slowloris against the connection cap, stray replica bytes, and the lesser findings.

Each test states an invariant, not one implementation's policy where the issue leaves it open
(an Upgrade request with a body may be refused or forwarded with its body). Backends are in
ringlb_harness/backends/recording.py. Nothing waits on the clock: every wait is on a condition with a
generous deadline, and the few settings made small (send and tunnel deadlines) are only ever
waited for, never timed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from ringlb_balancer.local.supervisor import replica_command
from ringlb_harness import proc, prometheus
from ringlb_harness.backends.recording import MARKER, RawBackend, RecordingBackend
from ringlb_harness.balancer import Balancer
from ringlb_harness.http1 import Answer, exchange, read_answers, request_bytes
from ringlb_harness.local import LocalMode
from ringlb_harness.net import LOOPBACK, connect, free_port, read_all, wait_until
from ringlb_harness.proc import open_fds

pytestmark = pytest.mark.integration

WAIT = 30.0  # a deadline for something that comes: generous, it costs nothing when things are fast
SMUGGLED = b"GET /home?SMUGGLED=1 HTTP/1.1\r\nHost: evil.example\r\nX-Real-IP: 6.6.6.6\r\n\r\n"
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket"}
_names = itertools.count(1)


def fresh(prefix: str) -> str:
    """A member name never used before in this module: per-member counters start at zero."""
    return f"{prefix}-{next(_names)}"


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingBackend]:
    server = RecordingBackend("recorder", eager=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def raws() -> Iterator[list[RawBackend]]:
    servers = [RawBackend(f"raw{i}").start() for i in range(3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    # A pooled replica connection is reused however slow the machine is: the attacks below are
    # about what happens on reuse, so an expired pool entry must not hide them.
    process = Balancer(tmp_path_factory.mktemp("attacks"), env={"RINGLB_UPSTREAM_KEEPALIVE": "60"})
    yield process
    process.stop()


@pytest.fixture
def limits(tmp_path: Path) -> Iterator[Balancer]:
    """Small deadlines for the one thing each test waits for; the others made long, so that no
    other deadline ends what the test expects one bound to end. One per test: a connection one
    test leaves behind must not hold a slot in the next."""
    process = Balancer(
        tmp_path,
        env={
            "RINGLB_MAX_CONNECTIONS": "20",
            "RINGLB_SEND_TIMEOUT": "1",
            "RINGLB_TUNNEL_IDLE_TIMEOUT": "1",
            "RINGLB_HEAD_TIMEOUT": "120",
            "RINGLB_IDLE_TIMEOUT": "120",
            "RINGLB_FIRST_BYTE_TIMEOUT": "120",
        },
    )
    try:
        yield process
        process.assert_workers_unchanged()
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def no_worker_crash(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "balancer" in request.fixturenames:
        request.getfixturevalue("balancer").assert_workers_unchanged()


def get(balancer: Balancer, target: str, key: str) -> tuple[list[Answer], bytes, bool]:
    """One GET on a connection of its own."""
    return exchange(balancer.port, request_bytes("GET", target, {"X-Request-ID": key}), 1, WAIT)


def tcp_table() -> list[tuple[int, int, str, int, str]]:
    """/proc/net/tcp as (local port, remote port, state, receive queue, inode); for a listening
    socket (state 0A) the receive queue is its accept queue."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        rows.append(
            (
                int(fields[1].rsplit(":", 1)[1], 16),
                int(fields[2].rsplit(":", 1)[1], 16),
                fields[3],
                int(fields[4].split(":")[1], 16),
                fields[9],
            )
        )
    return rows


def accept_queue(port: int) -> int:
    """Connections the kernel completed on the listener of ``port`` that no process accepted yet."""
    return sum(queue for local, _, state, queue, _ in tcp_table() if local == port and state == "0A")


def held_sockets(pid: int, port: int, peer_port: int | None = None) -> int:
    """How many connections of the local ``port`` (from ``peer_port`` only, if given) process
    ``pid`` holds a descriptor of: a balancer worker's client slots. One the worker has let go
    is not counted, whatever the kernel still does with it (a FIN waiting behind unread bytes)."""
    inodes = {
        f"socket:[{inode}]"
        for local, remote, state, _, inode in tcp_table()
        if local == port and state != "0A" and peer_port in (None, remote)
    }
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
        except OSError:
            continue  # closed meanwhile
    return held


# ------------------------------------------------------------------------------------------
# 1. request smuggling through an Upgrade request with a body
# ------------------------------------------------------------------------------------------
def forwarded_head_length(balancer: Balancer, recorder: RecordingBackend, carrier: bytes) -> int:
    """The length of the carrier's head as the balancer forwards it (Host, X-Forwarded-For, Via
    rewritten): an attacker learns it by trying; the test asks the recording backend."""
    recorder.clear()
    answers, _, _ = exchange(balancer.port, carrier, 1, WAIT)
    assert answers and answers[0].status == 200, answers
    (seen,) = recorder.received()
    recorder.clear()
    return len(seen.head)


def upgrade_with_body(target: str, length: int) -> bytes:
    return request_bytes(
        "GET", target, {**UPGRADE, "X-Request-ID": "attacker", "Content-Length": str(length)}, body=b"a" * length
    )


def attack_then_victims(
    balancer: Balancer, attack: bytes, carrier: bytes, after: bytes
) -> tuple[Answer, Answer, Answer]:
    """The attacker's Upgrade request, then a victim's request on another connection (the one
    whose first bytes a replica would take as the attacker's body), then the next request."""
    answers, data, _ = exchange(balancer.port, attack, 1, WAIT)
    assert answers, f"the attacker's request got no answer: {data[:300]!r}"
    results = [answers[0]]
    for request in (carrier, after):
        answers, data, _ = exchange(balancer.port, request, 1, WAIT)
        assert answers and answers[0].complete, f"no answer to {request[:60]!r}: {data[:300]!r}"
        assert MARKER not in data
        results.append(answers[0])
    return results[0], results[1], results[2]


def test_upgrade_with_a_body_smuggles_nothing_past_a_recording_backend(
    balancer: Balancer, recorder: RecordingBackend
) -> None:
    """The recording backend answers as soon as a head is in, as gunicorn does: a body the
    balancer announced but never sent would be read from the next request on that connection."""
    balancer.push([(fresh("smuggle"), recorder.port)])
    carrier = request_bytes("POST", "/carrier", {"X-Request-ID": "victim"}, body=SMUGGLED)
    length = forwarded_head_length(balancer, recorder, carrier)
    attack = upgrade_with_body("/attack", length)
    first, second, third = attack_then_victims(
        balancer, attack, carrier, request_bytes("GET", "/next", {"X-Request-ID": "next"})
    )

    seen = recorder.received()
    summary = [(r.method, r.target, len(r.body)) for r in seen]
    assert not recorder.protocol_errors(), (
        f"the backend read bytes that are no request: {recorder.protocol_errors()}; requests {summary}"
    )
    assert not [r for r in seen if b"SMUGGLED" in r.head], f"a smuggled request reached the backend: {summary}"
    refused = 400 <= first.status < 500
    expected = [("POST", "/carrier", SMUGGLED), ("GET", "/next", b"")]
    if not refused:  # forwarded as a plain request: with its whole body
        expected.insert(0, ("GET", "/attack", b"a" * length))
    assert [(r.method, r.target, r.body) for r in seen] == expected, summary
    # every client has the answer to its own request
    if not refused:
        assert first.status == 200 and first.json()["target"] == "/attack", first
    assert second.status == 200 and second.json()["target"] == "/carrier", (
        f"the victim got another's answer: {second.body!r}"
    )
    assert third.status == 200 and third.json()["target"] == "/next", (
        f"the next request got another's answer: {third.body!r}"
    )


@pytest.fixture(scope="module")
def flask_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """The project's replica as its image runs it (gunicorn, gthread, 4 threads), with the idle
    keep-alive of ``ringlb dev`` (30 s, so that reuse does not depend on speed) and an access
    log of every request line it served."""
    tmp = tmp_path_factory.mktemp("replica")
    port = free_port()
    log = tmp / "access.log"
    with open(tmp / "replica.log", "wb") as out:
        process = subprocess.Popen(
            replica_command(port, extra=["--access-logfile", str(log), "--access-logformat", "%(r)s"]),
            env=dict(os.environ, SERVER_ID="Smuggle Target"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: requests.get(f"http://127.0.0.1:{port}/heartbeat", timeout=2).status_code == 200,
            60,
            what="the replica's /heartbeat",
        )
        yield port, log
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_upgrade_with_a_body_smuggles_nothing_past_the_flask_replica(
    balancer: Balancer, recorder: RecordingBackend, flask_replica: tuple[int, Path]
) -> None:
    port, access_log = flask_replica
    name = fresh("victim")
    carrier = request_bytes("POST", "/carrier-path", {"X-Request-ID": "victim"}, body=SMUGGLED)
    balancer.push([(name, recorder.port)])  # the same member name: the same forwarded Host line
    length = forwarded_head_length(balancer, recorder, carrier)
    balancer.push([(name, port)])
    lines_before = len(access_log.read_text().splitlines())
    first, second, third = attack_then_victims(
        balancer,
        upgrade_with_body("/home", length),
        carrier,
        request_bytes("GET", "/next-path", {"X-Request-ID": "next"}),
    )

    def served() -> list[str]:
        lines = access_log.read_text().splitlines()[lines_before:]
        return [line for line in lines if not line.startswith("GET /heartbeat ")]

    lines = wait_until(
        lambda: (s := served()) and s[-1].startswith("GET /next-path ") and s,
        WAIT,
        what="the replica's access log line for the last request",
    )
    assert not [line for line in lines if "SMUGGLED" in line], f"the replica served a smuggled request: {lines}"
    expected = ["POST /carrier-path HTTP/1.1", "GET /next-path HTTP/1.1"]
    if first.status == 200:
        expected.insert(0, "GET /home HTTP/1.1")
    assert lines == expected
    # Flask answers an unknown path 404, which the balancer turns into the seed's 400 naming it.
    assert first.status == 400 or first.body.startswith(b'{"message": "Hello from Server: Smuggle Target"'), first
    assert second.status == 400 and b"'/carrier-path'" in second.body, (
        f"the victim got another's answer: {second.status} {second.body!r}"
    )
    assert third.status == 400 and b"'/next-path'" in third.body, (
        f"the next request got another's answer: {third.status} {third.body!r}"
    )


# ------------------------------------------------------------------------------------------
# 2. tunnels end whole, however they end
# ------------------------------------------------------------------------------------------
@pytest.fixture
def tunnels(tmp_path: Path) -> Iterator[Balancer]:
    process = Balancer(tmp_path, env={"RINGLB_MAX_CONNECTIONS": "4"})
    try:
        yield process
        process.assert_workers_unchanged()
    finally:
        process.stop()


def open_tunnel(port: int, end: str, key: str) -> socket.socket:
    sock = connect(port, WAIT)
    sock.sendall(request_bytes("GET", f"/tunnel?end={end}", {**UPGRADE, "X-Request-ID": key}))
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        assert chunk, f"tunnel {key}: closed without an answer (slots still held by ended tunnels?): {data[:300]!r}"
        data += chunk
    assert data.startswith(b"HTTP/1.1 101 "), f"tunnel {key}: not switched: {data[:300]!r}"
    assert data.endswith(b"\r\n\r\n"), f"tunnel {key}: bytes before the first echo: {data[:300]!r}"
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def test_every_ended_tunnel_closes_both_sides_and_frees_its_slot(tunnels: Balancer) -> None:
    backend = RawBackend("tunnel").start()
    try:
        tunnels.push([(fresh("tunnel"), backend.port)])
        worker = tunnels.worker()
        baseline = open_fds(worker)
        for i, end in enumerate(["client-close", "replica-close", "client-half", "replica-half"] * 3):
            mode = end if end.startswith("replica") else "echo"
            with open_tunnel(tunnels.port, mode, f"t{i}") as sock:
                sock.sendall(b"ping %d" % i)
                assert recv_exactly(sock, len(b"ping %d" % i)) == b"ping %d" % i
                if end == "client-half":
                    sock.shutdown(socket.SHUT_WR)  # the echo replica closes on this EOF
                if end != "client-close":
                    data, closed = read_all(sock, WAIT)
                    assert closed and data == b"", f"tunnel {i} ({end}): no end of stream seen: {data[:200]!r}"
                if end == "replica-half":
                    # The replica sends no more, but the client's direction still flows to it.
                    after = b"after the half-close %d" % i
                    sock.sendall(after)
                    wait_until(
                        lambda after=after: after in backend.snapshot().tunnel_bytes,
                        WAIT,
                        what="bytes sent after the replica's half-close to reach it",
                    )
                    sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: backend.snapshot().tunnels_open == 0, WAIT, what="every tunnel's replica side closed")
        wait_until(
            lambda: open_fds(worker) <= baseline,
            WAIT,
            what=f"the worker's descriptors back to {baseline} (leaked tunnel transports)",
        )
        answers, data, _ = exchange(
            tunnels.port, request_bytes("GET", "/ok?close=1", {"X-Request-ID": "fresh"}), 1, WAIT
        )
        assert answers and answers[0].status == 200, f"a fresh client after 12 tunnels: {data[:300]!r}"
    finally:
        backend.stop()


# ------------------------------------------------------------------------------------------
# 3. bytes after an Upgrade head, before the replica's 101, are bounded
# ------------------------------------------------------------------------------------------
MIB = 1 << 20
EARLY_SEND_LIMIT = 512 * MIB
EARLY_RSS_LIMIT = 64 * MIB


def send_until_refused(sock: socket.socket, total: int, budget: float, sample: Callable[[], None]) -> tuple[int, str]:
    """Send up to ``total`` bytes within ``budget`` s; returns (bytes sent, why it stopped):
    "blocked" (nothing more accepted for 3 s: the peer stopped reading and every buffer on the
    way is full), "closed", "sent all" or "time limit". ``sample`` runs after every 8 MiB."""
    sock.setblocking(False)
    piece = b"x" * MIB
    sent = 0
    deadline = time.monotonic() + budget
    next_sample = 0
    while sent < total:
        if sent >= next_sample:
            sample()
            next_sample += 8 * MIB
        if time.monotonic() > deadline:
            return sent, "time limit"
        if not select.select([], [sock], [], 3.0)[1]:
            return sent, "blocked"
        try:
            sent += sock.send(piece)
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return sent, "closed"
    return sent, "sent all"


def test_bytes_sent_before_the_101_are_bounded(limits: Balancer) -> None:
    backend = RawBackend("hold").start()
    try:
        limits.push([(fresh("hold"), backend.port)])
        baseline = limits.rss()
        peak = [baseline]

        def sample() -> None:
            peak[0] = max(peak[0], limits.rss())

        with connect(limits.port, WAIT) as sock:
            sock.sendall(request_bytes("GET", "/hold", {**UPGRADE, "X-Request-ID": "early"}))
            wait_until(lambda: backend.snapshot().hits["/hold"] == 1, WAIT, what="the upgrade head at the replica")
            sent, outcome = send_until_refused(sock, EARLY_SEND_LIMIT, 10.0, sample)
            sample()
        growth = peak[0] - baseline
        print(f"\nearly data: {sent / MIB:.1f} MiB sent before '{outcome}'; worker RSS +{growth / MIB:.1f} MiB")
        assert growth < EARLY_RSS_LIMIT, (
            f"the worker held {growth / MIB:.0f} MiB of early bytes ({sent / MIB:.0f} MiB sent)"
        )
        assert outcome in ("blocked", "closed"), f"the balancer kept reading: {sent / MIB:.0f} MiB taken ({outcome})"
        answers, data, _ = get(limits, "/ok", "after-early")
        assert answers and answers[0].status == 200, data[:300]
    finally:
        backend.stop()


# ------------------------------------------------------------------------------------------
# 4. slowloris against the connection cap; clients that do not read; idle tunnels
# ------------------------------------------------------------------------------------------
def test_a_new_client_is_answered_when_slowloris_holds_every_slot(limits: Balancer, raws: list[RawBackend]) -> None:
    limits.push([(fresh("cap"), raws[0].port)])
    slow: list[socket.socket] = []
    try:
        for _ in range(20):  # RINGLB_MAX_CONNECTIONS
            sock = connect(limits.port, WAIT)
            sock.sendall(b"GET /ok HTTP/1.1\r\nHost: test\r\nX-Request-ID: slow\r\n")  # never finished
            slow.append(sock)
        wait_until(lambda: accept_queue(limits.port) == 0, WAIT, what="the worker to accept the 20 slow clients")
        for i in range(3):
            answers, data, closed = get(limits, f"/ok?new={i}", f"new{i}")
            assert answers, (
                f"new client {i} was accepted and closed without an answer: {data[:300]!r} (closed={closed})"
            )
            status = answers[0].status
            assert status == 200 or (status == 503 and answers[0].header("Retry-After")), (
                f"new client {i}: {status} {answers[0].headers}"
            )
    finally:
        for sock in slow:
            sock.close()


def test_a_client_that_never_reads_is_closed_after_the_send_timeout(limits: Balancer, raws: list[RawBackend]) -> None:
    limits.push([(fresh("unread"), raws[0].port)])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.settimeout(WAIT)
        sock.connect((LOOPBACK, limits.port))
        sock.sendall(request_bytes("GET", f"/big?n={64 * MIB}", {"X-Request-ID": "unread"}))
        # Never read: the answer fills every buffer, then RINGLB_SEND_TIMEOUT (1 s) ends it. The
        # client may not hear of it (a FIN waits behind the unread bytes): the worker's side is
        # what must be let go.
        worker, client_port = limits.worker(), sock.getsockname()[1]
        wait_until(
            lambda: held_sockets(worker, limits.port, client_port) == 1, WAIT, what="the worker to take the client"
        )
        wait_until(
            lambda: held_sockets(worker, limits.port, client_port) == 0,
            15,
            what="the balancer to let go of a client that stopped reading",
        )
    finally:
        sock.close()
    answers, data, _ = get(limits, "/ok", "after-unread")
    assert answers and answers[0].status == 200, data[:300]


def test_an_idle_tunnel_is_closed_after_the_tunnel_idle_timeout(limits: Balancer) -> None:
    backend = RawBackend("idle").start()
    try:
        limits.push([(fresh("idle"), backend.port)])
        with open_tunnel(limits.port, "echo", "idle") as sock:
            sock.sendall(b"one message")
            assert recv_exactly(sock, 11) == b"one message"
            data, closed = read_all(sock, 15)  # then nothing either way: RINGLB_TUNNEL_IDLE_TIMEOUT is 1 s
            assert closed and data == b"", f"an idle tunnel stayed open: {data[:200]!r}"
        wait_until(lambda: backend.snapshot().tunnels_open == 0, WAIT, what="the tunnel's replica side closed")
    finally:
        backend.stop()


# ------------------------------------------------------------------------------------------
# 5. stray replica bytes never reach the next client
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block: whatever reaches its sockets meanwhile is
    read, after SIGCONT, in the order it arrived. It is stopped while it sleeps (in epoll_wait,
    which has then dropped the sockets it last reported: those would be read first, whatever
    came first)."""
    wait_until(lambda: proc.state(pid) == "S", WAIT, what=f"process {pid} asleep")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: proc.state(pid) == "T", WAIT, what=f"process {pid} stopped")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def unread(local: int | None = None, remote: int | None = None) -> int:
    """Bytes waiting in the receive queues of the connections matching these ports."""
    return sum(
        queue
        for lport, rport, state, queue, _ in tcp_table()
        if state != "0A" and local in (None, lport) and remote in (None, rport)
    )


@pytest.mark.parametrize("when", ["same", "late"])
@pytest.mark.parametrize("kind", ["head", "204", "length"])
def test_stray_replica_bytes_never_reach_the_next_client(
    balancer: Balancer, raws: list[RawBackend], kind: str, when: str
) -> None:
    """The stray bytes are a whole fake answer (``STRAY!``): after a HEAD answer, after a 204,
    or past a Content-Length; in the answer's own write, or in a later one on the idle
    connection. In the same write, a request pipelined behind the trigger is queued when the
    answer ends, so it takes the replica connection at once. In a later write, the next request
    from the same client is in the worker's socket first and the stray bytes second when it
    reads them (the worker is stopped meanwhile), so that the connection is taken before its
    read of the stray bytes. Then a request from another client."""
    raw = raws[0]
    balancer.push([(fresh(f"stray-{kind}-{when}"), raw.port)])
    method = "HEAD" if kind == "head" else "GET"
    expected = {"head": (200, b""), "204": (204, b""), "length": (200, b"hello")}[kind]
    strays = raw.snapshot().stray_sent

    def own(target: str) -> tuple[int, bytes]:
        return 200, f"{raw.name} {target}".encode()

    with connect(balancer.port, WAIT) as sock:
        trigger = request_bytes(method, f"/stray?kind={kind}&when={when}", {"X-Request-ID": "stray"})
        pipelined = [request_bytes("GET", "/ok?pipelined", {"X-Request-ID": "stray"})] if when == "same" else []
        sock.sendall(b"".join([trigger, *pipelined]))
        answers, data, closed = read_answers(sock, 1 + len(pipelined), WAIT, methods=[method, "GET"])
        assert MARKER not in data, f"stray bytes reached the pipelined request: {data[:300]!r}"
        assert [(a.status, a.body) for a in answers] == [expected] + [own("/ok?pipelined")] * len(pipelined), data[:500]
        assert not closed, "the client's connection was closed after complete answers"
        following = request_bytes("GET", "/ok?same-client", {"X-Request-ID": "stray"})
        if when == "same":
            wait_until(lambda: raw.snapshot().stray_sent > strays, WAIT, what="the replica to send its stray bytes")
            sock.sendall(following)
        else:
            with stopped(balancer.worker()):
                sock.sendall(following)
                wait_until(
                    lambda: unread(balancer.port, sock.getsockname()[1]),
                    WAIT,
                    what="the request in the worker's socket",
                )
                raw.release_stray()
                peer = raw.snapshot().stray_peer
                wait_until(lambda: unread(peer, raw.port), WAIT, what="the stray bytes in the worker's socket")
        answers, data, _ = read_answers(sock, 1, WAIT)
        assert MARKER not in data, f"stray bytes reached the same client: {data[:300]!r}"
        assert [(a.status, a.body) for a in answers] == [own("/ok?same-client")], data[:300]
    answers, data, _ = get(balancer, "/ok?other-client", "stray")
    assert MARKER not in data, f"stray bytes reached another client: {data[:300]!r}"
    assert [(a.status, a.body) for a in answers] == [own("/ok?other-client")], data[:300]


# ------------------------------------------------------------------------------------------
# lesser findings
# ------------------------------------------------------------------------------------------
def metric_samples(balancer: Balancer) -> list[tuple[str, dict[str, str], float]]:
    text = requests.get(f"{balancer.admin_url}/metrics", timeout=WAIT).text
    return [(s.name, s.labels, s.value) for s in prometheus.samples(text)]


def owners(balancer: Balancer, keys: list[str]) -> dict[str, bytes]:
    """Which backend answers each key (its name starts the body of ``/ok``)."""
    found = {}
    for key in keys:
        answers, data, _ = get(balancer, "/ok", key)
        assert answers and answers[0].status == 200, f"key {key}: {data[:300]!r}"
        found[key] = answers[0].body.split(b" ", 1)[0]
    return found


def one_bad_request(balancer: Balancer, raws: list[RawBackend], path: str) -> tuple[int, int, set[str]]:
    """Three members; ``path`` fails on every one of them. Returns (status the client got,
    replica hits of ``path``, the members ejected); checks that the keys' owners did not move."""
    names = [fresh(f"member{i}") for i in range(3)]
    balancer.push(list(zip(names, [r.port for r in raws])))
    keys = [f"key{i}" for i in range(12)]
    before = owners(balancer, keys)
    hits = sum(r.snapshot().hits[path] for r in raws)
    answers, data, _ = get(balancer, path, "the-bad-key")
    assert answers, f"no answer to {path}: {data[:300]!r}"
    after = owners(balancer, keys)
    # The counters reach /metrics at each worker's flush: once the requests just served are
    # counted, so is everything before them (ejections included).
    wait_until(
        lambda: (
            sum(
                v
                for n, labels, v in metric_samples(balancer)
                if n == "ringlb_requests_total" and labels["member"] in names and labels["code"] == "2xx"
            )
            >= 2 * len(keys)
        ),
        WAIT,
        what="the worker's counters flushed",
    )
    ejected = {
        labels["member"]
        for n, labels, v in metric_samples(balancer)
        if n == "ringlb_ejections_total" and labels["member"] in names and v > 0
    }
    assert after == before, "one request moved other keys off their own members"
    return answers[0].status, sum(r.snapshot().hits[path] for r in raws) - hits, ejected


def test_a_101_to_a_plain_request_is_a_502_and_ejects_no_one(balancer: Balancer, raws: list[RawBackend]) -> None:
    status, _, ejected = one_bad_request(balancer, raws, "/switch")
    assert status == 502
    assert len(ejected) < 3, f"one request's 101 ejected every member: {ejected}"
    wait_until(
        lambda: all(r.snapshot().switched_open == 0 for r in raws),
        WAIT,
        what="every switched replica connection closed",
    )


@pytest.mark.parametrize("path, status", [("/fail", 500), ("/reset", 502)])
def test_one_failing_get_is_not_sent_to_every_member(
    balancer: Balancer, raws: list[RawBackend], path: str, status: int
) -> None:
    got, hits, ejected = one_bad_request(balancer, raws, path)
    assert got == status
    assert hits < 3, f"one GET of {path} was sent to every member ({hits} times)"
    if path == "/fail":
        assert hits == 1, "a 500 is retried only with RINGLB_RETRY_5XX=1"
    assert len(ejected) < 3, f"one request's failures ejected every member: {ejected}"


def test_two_request_id_fields_are_refused_before_any_replica(balancer: Balancer, recorder: RecordingBackend) -> None:
    balancer.push([(fresh("dup"), recorder.port)])
    recorder.clear()
    request = b"GET /two-keys HTTP/1.1\r\nHost: test\r\nX-Request-ID: a\r\nX-Request-ID: b\r\n\r\n"
    answers, data, _ = exchange(balancer.port, request, 1, WAIT)
    assert answers and answers[0].status == 400, data[:300]
    answers, data, _ = get(balancer, "/sentinel", "one")  # anything forwarded before it is recorded before it
    assert answers and answers[0].status == 200, data[:300]
    assert [r.target for r in recorder.received()] == ["/sentinel"]


def test_an_answer_with_5000_header_fields_is_a_502(balancer: Balancer, raws: list[RawBackend]) -> None:
    balancer.push([(fresh("many"), raws[0].port)])
    answers, data, _ = get(balancer, "/many-headers", "many")
    assert answers and answers[0].status == 502, f"{len(data)} bytes: {data[:200]!r}"
    assert b"X-Many-" not in data


def test_per_member_series_follow_the_membership(balancer: Balancer, raws: list[RawBackend]) -> None:
    def member_labels() -> set[str]:
        return {labels["member"] for _, labels, _ in metric_samples(balancer) if "member" in labels}

    prefix = fresh("gone")
    for i in range(50):
        names = [f"{prefix}-{i}-a", f"{prefix}-{i}-b"]
        balancer.push([(names[0], raws[0].port), (names[1], raws[1].port)])
        answers, data, _ = get(balancer, "/count-me", f"k{i}")
        assert answers and answers[0].status == 200, data[:300]
        if i == 0:  # counted: the series of members that leave did exist
            wait_until(lambda names=names: set(names) & member_labels(), WAIT, what="the first members' series")
    last = set(names)

    def counted() -> bool:
        return (
            sum(
                v
                for n, labels, v in metric_samples(balancer)
                if n == "ringlb_requests_total" and labels["member"] in last
            )
            >= 1
        )

    wait_until(counted, WAIT, what="the last request counted")
    assert member_labels() == last


def test_control_endpoints_refuse_other_origins_and_foreign_hosts(local: LocalMode) -> None:
    evil = json.dumps({"n": 1, "hostnames": ["Evil"]})
    calls = [
        ("POST", "/add", evil),
        ("DELETE", "/rm", json.dumps({"n": 1, "hostnames": ["Server 1"]})),
        ("PUT", "/membership", json.dumps({"revision": 99, "members": []})),
    ]
    for method, path, body in calls:
        reply = requests.request(
            method,
            local.url + path,
            data=body,
            timeout=WAIT,
            headers={"Origin": "http://evil.example", "Content-Type": "application/json"},
        )
        assert reply.status_code == 403, f"{method} {path} from another origin: {reply.status_code} {reply.text}"
        reply = requests.request(
            method,
            local.url + path,
            data=body,
            timeout=WAIT,
            headers={"Host": "attacker.example", "Content-Type": "application/json"},
        )
        assert reply.status_code in (421, 403), (
            f"{method} {path} for Host attacker.example: {reply.status_code} {reply.text}"
        )
    assert local.rep() == {"N": 3, "replicas": ["Server 1", "Server 2", "Server 3"]}
    # curl -d: no Origin, Host 127.0.0.1:<port> or localhost:<port>; a page of the balancer's own origin
    reply = requests.post(local.url + "/add", data=json.dumps({"n": 1, "hostnames": ["S5"]}), timeout=WAIT)
    assert reply.status_code == 200, reply.text
    own = f"http://localhost:{local.port}"
    reply = requests.delete(
        own + "/rm", data=json.dumps({"n": 1, "hostnames": ["S5"]}), timeout=WAIT, headers={"Origin": own}
    )
    assert reply.status_code == 200, reply.text
    assert local.rep() == {"N": 3, "replicas": ["Server 1", "Server 2", "Server 3"]}
