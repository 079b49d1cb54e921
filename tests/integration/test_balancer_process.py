"""The balancer under gunicorn with several workers, in front of echo servers on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from ringlb_balancer.local.supervisor import balancer_command
from ringlb_harness.net import free_port, wait_until

TOKEN = "push-token"
WORKERS = 4
WAIT = 30.0  # a deadline for an answer that comes: generous, it costs nothing when things are fast


class Echo(BaseHTTPRequestHandler):
    """Answers every request with what it received, so tests can see what was forwarded."""

    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass  # trailer section
        else:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length) if length else b""
        if self.path == "/slow":
            time.sleep(0.02)
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = json.dumps(
            {
                "server": self.server.name,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("latin-1"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Upstream", "echo")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _echo

    def log_message(self, *args: object) -> None:
        pass


class EchoServer(ThreadingHTTPServer):
    request_queue_size = 256  # the default 5 refuses connections under the concurrent tests
    daemon_threads = True


def start_echo(name: str) -> ThreadingHTTPServer:
    server = EchoServer(("127.0.0.1", 0), Echo)
    server.name = name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class BalancerProcess:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "balancer.log", "wb")  # noqa: SIM115 - open until stop(), which closes it
        env = dict(
            os.environ,
            RINGLB_BIND=f"127.0.0.1:{self.port}",
            RINGLB_WORKERS=str(WORKERS),
            RINGLB_MEMBERSHIP_TOKEN=TOKEN,
            RINGLB_HEALTH_INTERVAL="0.2",
            RINGLB_MAX_BODY="4096",
            RINGLB_DRAIN_SECONDS="0",
        )
        self.process = subprocess.Popen(
            balancer_command(),
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        # Up, or gone (then say so at once rather than wait out the deadline).
        wait_until(
            lambda: self.process.poll() is not None or requests.get(f"{self.url}/healthz", timeout=WAIT).ok,
            60,
            what="balancer up",
        )
        assert self.process.poll() is None, (
            f"balancer exited with {self.process.returncode}; see {tmp / 'balancer.log'}"
        )
        self.revision = 0

    def push(self, members: list[tuple[str, int]], **extra: object) -> requests.Response:
        self.revision += 1
        doc = {
            "revision": self.revision,
            "members": [{"name": n, "address": f"127.0.0.1:{p}"} for n, p in members],
            **extra,
        }
        return requests.put(
            f"{self.url}/membership", json=doc, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=WAIT
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=45)  # in-flight requests get gunicorn's graceful_timeout (20 s)
        self.log.close()


@pytest.fixture(scope="module")
def echoes() -> Iterator[list[ThreadingHTTPServer]]:
    servers = [start_echo(f"E{i}") for i in range(1, 4)]
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def balancer(tmp_path: Path, echoes: list[ThreadingHTTPServer]) -> Iterator[BalancerProcess]:
    process = BalancerProcess(tmp_path)
    reply = process.push([(s.name, s.server_address[1]) for s in echoes])
    assert reply.status_code == 200, reply.text
    yield process
    process.stop()


def fresh_connection_get(url: str, key: str) -> dict:
    """A new TCP connection per request, so consecutive requests land on different workers."""
    with requests.Session() as session:
        return session.get(url, headers={"X-Request-ID": key, "Connection": "close"}, timeout=WAIT).json()


def test_membership_is_in_force_in_every_worker_when_the_push_returns(balancer, echoes) -> None:
    only = echoes[2]
    reply = balancer.push([(only.name, only.server_address[1])])
    assert reply.status_code == 200
    # Right after the 200, every connection (spread over 4 workers) routes with the new ring.
    servers = {fresh_connection_get(f"{balancer.url}/x", str(k))["server"] for k in range(60)}
    assert servers == {only.name}
    assert requests.get(f"{balancer.url}/rep", timeout=WAIT).json()["message"] == {"N": 1, "replicas": [only.name]}


def test_stale_malformed_and_unauthorized_pushes_change_nothing(balancer, echoes) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = requests.get(f"{balancer.url}/membership", timeout=WAIT).json()
    stale = {"revision": 1, "members": []}
    bad = [
        ({"revision": 99, "members": [{"name": "x"}]}, auth, 400),
        ({"revision": 99, "members": [], "hashing": {"strategy": "best"}}, auth, 400),
        (stale | {"revision": 0}, auth, 400),
        ({"revision": 99, "members": []}, {}, 401),
        ({"revision": 99, "members": []}, {"Authorization": "Bearer nope"}, 401),
    ]
    for doc, headers, code in bad:
        reply = requests.put(f"{balancer.url}/membership", json=doc, headers=headers, timeout=WAIT)
        assert reply.status_code == code, (doc, reply.text)
    reply = requests.put(f"{balancer.url}/membership", data=b"{not json", headers=auth, timeout=WAIT)
    assert reply.status_code == 400
    # same revision as in force but other content → 409; an identical re-push → 200
    in_force = before | {"members": []}
    assert requests.put(f"{balancer.url}/membership", json=in_force, headers=auth, timeout=WAIT).status_code == 409
    again = requests.put(f"{balancer.url}/membership", json=before, headers=auth, timeout=WAIT)
    assert again.status_code == 200 and again.json()["changed"] is False
    assert requests.get(f"{balancer.url}/membership", timeout=WAIT).json() == before


def test_every_method_query_and_body_is_forwarded(balancer) -> None:
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        reply = requests.request(
            method,
            f"{balancer.url}/some/path?a=1&b=%20x",
            data=b"payload" if method != "GET" else None,
            headers={"X-Request-ID": "k1", "X-Custom": "kept"},
            timeout=WAIT,
        )
        assert reply.status_code == 200, (method, reply.text)
        seen = reply.json()
        assert seen["method"] == method
        assert seen["path"] == "/some/path?a=1&b=%20x"
        assert seen["headers"]["x-custom"] == "kept"
        assert seen["body"] == ("payload" if method != "GET" else "")
        assert reply.headers["X-Upstream"] == "echo"
    head = requests.head(f"{balancer.url}/h", headers={"X-Request-ID": "k1"}, timeout=WAIT)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) > 0 and head.content == b""


def test_hop_by_hop_headers_are_stripped_and_forwarding_headers_added(balancer) -> None:
    reply = requests.get(
        f"{balancer.url}/h",
        headers={
            "X-Request-ID": "k2",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "drop me",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "203.0.113.9",
        },
        timeout=WAIT,
    )
    seen = reply.json()["headers"]
    assert "x-secret" not in seen and "keep-alive" not in seen
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["host"].startswith("127.0.0.1:")


def test_chunked_request_body_is_streamed_chunked(balancer) -> None:
    reply = requests.post(f"{balancer.url}/c", data=iter([b"ab", b"cd"]), headers={"X-Request-ID": "k3"}, timeout=WAIT)
    seen = reply.json()
    # Streamed, not buffered: the replica gets the body chunk by chunk as the client sends it.
    assert seen["body"] == "abcd" and seen["headers"]["transfer-encoding"] == "chunked"
    assert "content-length" not in seen["headers"]


def test_body_over_the_limit_is_refused_with_413(balancer) -> None:
    reply = requests.post(f"{balancer.url}/c", data=b"x" * 5000, timeout=WAIT)
    assert reply.status_code == 413
    assert reply.json() == {"message": "<Error> request body exceeds 4096 bytes (RINGLB_MAX_BODY)", "status": "failure"}


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_no_open_proxy_and_malformed_requests_get_400(balancer) -> None:
    answer = raw(balancer.port, b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    answer = raw(balancer.port, b"NOT A REQUEST\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    answer = raw(balancer.port, b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    # the balancer still serves after all that
    assert requests.get(f"{balancer.url}/rep", timeout=WAIT).status_code == 200


def test_dead_member_is_ejected_and_its_keys_rerouted(balancer, echoes, tmp_path) -> None:
    dead_port = free_port()  # nothing listens here: connection refused
    members = [(s.name, s.server_address[1]) for s in echoes] + [("Dead", dead_port)]
    assert balancer.push(members).status_code == 200
    for k in range(200):  # every key answered, including those the dead member owns
        reply = requests.post(f"{balancer.url}/p", data=b"x", headers={"X-Request-ID": str(k)}, timeout=WAIT)
        assert reply.status_code == 200, reply.text
    metrics = requests.get(f"{balancer.url}/metrics", timeout=WAIT).text
    assert 'ringlb_ejections_total{member="Dead"' in metrics


def test_5xx_answers_are_retried_for_gets_only(balancer) -> None:
    reply = requests.get(f"{balancer.url}/status/503", headers={"X-Request-ID": "k5"}, timeout=WAIT)
    assert reply.status_code == 503  # every member answers 503: the last answer is passed on
    reply = requests.post(f"{balancer.url}/status/500", headers={"X-Request-ID": "k5"}, timeout=WAIT)
    assert reply.status_code == 500
    retries = requests.get(f"{balancer.url}/metrics", timeout=WAIT).text
    assert "ringlb_retries_total" in retries


def test_no_members_means_503(balancer) -> None:
    assert balancer.push([]).status_code == 200
    reply = requests.get(f"{balancer.url}/home", timeout=WAIT)
    assert reply.status_code == 503
    assert reply.json() == {"message": "<Error> no replica is available", "status": "failure"}
    ready = requests.get(f"{balancer.url}/readyz", timeout=WAIT)
    assert ready.status_code == 503  # nothing to route to: not ready, so endpoints skip it
    assert ready.json()["status"] == "no members in the ring"


def hot_key_spread(balancer: BalancerProcess) -> set[str]:
    """Which servers answer 320 concurrent requests that all carry the same key."""

    def burst(_: int) -> set[str]:
        with requests.Session() as session:
            return {
                session.get(f"{balancer.url}/slow", headers={"X-Request-ID": "hot"}, timeout=WAIT).json()["server"]
                for _ in range(20)
            }

    with ThreadPoolExecutor(16) as pool:
        return set().union(*pool.map(burst, range(16)))


def test_bounded_load_spreads_a_hot_key(balancer, echoes) -> None:
    members = [(s.name, s.server_address[1]) for s in echoes]
    assert len(hot_key_spread(balancer)) == 1, "plain consistent hashing sends one key to one member"
    assert balancer.push(members, hashing={"boundedLoad": 1.25}).status_code == 200
    assert len(hot_key_spread(balancer)) == 3, "with bounded load the overflow walks on to the others"
