"""ringlb against nginx on the same request streams: what a backend receives must be the same.

hypothesis builds streams of connections (derandomized: the same 40 streams on every run), each
a few valid and invalid requests, pipelined in one write or sent one after another, sometimes
ended by a request cut short and the connection closed. The same stream goes through nginx
(Debian's package, the configuration written below: HTTP/1.1 and keep-alive to the backend) and
through ringlb, each to a recording backend of its own (ringlb_harness/backends/recording.py, a strict
h11 server). The two backends must see the same requests in the same order: method, target,
decoded body, and the header fields neither proxy owns.

Fields a proxy adds, drops or rewrites are left out of the comparison (``OWNED``): Host, Via,
X-Forwarded-*, X-Real-IP, X-Ringlb-Key, the hop-by-hop fields, and the framing (nginx buffers a
chunked body and sends it with Content-Length; ringlb streams it chunked): bodies are compared
decoded. Generated field names have no underscore, which nginx drops (underscores_in_headers).

Deliberate differences, where ringlb refuses (400 and closes) what nginx passes on:
- two ``X-Request-ID`` fields: an ambiguous routing key;
- an Upgrade request with a body, Content-Length or chunked: its body would be read by a replica
  that refuses the upgrade as the next request (request smuggling);
- an absolute-form target (``GET http://host/path``): ringlb is no forward proxy;
- a line ending in a bare LF: a lenient replica behind it splits on LF, a strict one does not
  (a request-target injection).
And one where ringlb forwards and nginx goes on: an Upgrade request without a body is forwarded
by both (nginx without its Upgrade field), but the bytes after it on that connection belong to
the tunnel ringlb would open, so ringlb answers it and closes, reading no further request.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from ringlb_harness.backends.recording import Recorded, RecordingBackend
from ringlb_harness.balancer import Balancer
from ringlb_harness.http1 import Malformed, read_answers
from ringlb_harness.net import connect, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.nginx]

WAIT = 10.0  # an answer or a close comes at once on loopback; generous for a loaded machine
INSTALL = "apt-get install -y nginx-light"
OWNED = frozenset(
    {
        "host",
        "via",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "x-ringlb-key",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "expect",
        "content-length",
        "transfer-encoding",
    }
)
EARLY_EOF = "peer closed connection without sending complete message body"  # a request cut short, on purpose

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream recorder {{
    server 127.0.0.1:{backend};
    keepalive 8;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://recorder;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
    }}
  }}
}}
"""


# ------------------------------------------------------------------------------------------
# the two proxies, each in front of its own recording backend
# ------------------------------------------------------------------------------------------
@dataclass
class Proxy:
    name: str
    port: int
    backend: RecordingBackend


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        pytest.fail(f"the differential test needs nginx from Debian: {INSTALL}")
    return found


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    binary = nginx_binary()
    tmp = tmp_path_factory.mktemp("nginx")
    backend = RecordingBackend("behind-nginx").start()
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, backend=backend.port, port=port))
    with open(tmp / "nginx.out", "wb") as out:
        process = subprocess.Popen(
            [binary, "-e", str(tmp / "error.log"), "-c", str(conf), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: (
                (process.poll() is None and requests.get(f"http://127.0.0.1:{port}/up", timeout=2).ok)
                or process.poll() is not None
            ),
            30,
            what="nginx to answer",
        )
        if process.poll() is not None:
            pytest.fail(f"nginx exited {process.returncode}: {(tmp / 'error.log').read_text(errors='replace')[-2000:]}")
        yield Proxy("nginx", port, backend)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        backend.stop()


@pytest.fixture(scope="module")
def ringlb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    backend = RecordingBackend("behind-ringlb").start()
    process = Balancer(tmp_path_factory.mktemp("differential"))
    try:
        process.push([("recorder", backend.port)])
        yield Proxy("ringlb", process.port, backend)
        process.assert_workers_unchanged()
    finally:
        process.stop()
        backend.stop()


# ------------------------------------------------------------------------------------------
# the streams
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One generated request; ``kind`` says how it is spoiled (``valid``, or a name below)."""

    kind: str
    method: str
    query: str
    fields: tuple[tuple[str, str], ...]
    body: bytes
    chunks: tuple[bytes, ...] | None  # sent chunked when not None
    trailer: bool

    def wire(self, ident: str) -> bytes:
        target = f"/d/{ident}{self.query}"
        method = self.method
        head = [("Host", "differential.test"), *self.fields]
        body = self.body
        if self.chunks is not None:
            head.append(("Transfer-Encoding", "chunked"))
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in self.chunks) + b"0\r\n"
            body += b"X-Trailer: t\r\n\r\n" if self.trailer else b"\r\n"
        elif body or method in ("POST", "PUT", "PATCH"):
            head.append(("Content-Length", str(len(body))))
        kind = self.kind
        if kind in SPOILED:
            return SPOILED[kind](ident)
        if kind == "upgrade":
            head += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
        elif kind == "upgrade-with-body":
            head += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
            if self.chunks is None and not body:
                body = b"hello"
                head.append(("Content-Length", "5"))
        elif kind == "two-request-ids":
            head += [("X-Request-ID", "one"), ("X-Request-ID", "two")]
        elif kind == "absolute-form":
            target = "http://differential.test" + target
        line_end = "\n" if kind == "bare-lf" else "\r\n"
        text = f"{method} {target} HTTP/1.1{line_end}" + "".join(f"{n}: {v}{line_end}" for n, v in head) + line_end
        return text.encode("latin-1") + body


def _spoiled(template: str) -> Callable[[str], bytes]:
    return lambda ident: template.replace("{ident}", ident).encode("latin-1")


# Refused by both proxies (400, 501) and forwarded by neither.
SPOILED = {
    "bad-chunk-size": _spoiled(
        "POST /d/{ident} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nxx\r\n0\r\n\r\n"
    ),
    "length-and-chunked": _spoiled(
        "POST /d/{ident} HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n0\r\n\r\n"
    ),
    "no-host": _spoiled("GET /d/{ident} HTTP/1.1\r\nX-Test: 1\r\n\r\n"),
    "two-hosts": _spoiled("GET /d/{ident} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    "length-not-a-number": _spoiled("POST /d/{ident} HTTP/1.1\r\nHost: t\r\nContent-Length: 3a\r\n\r\nabc"),
    "negative-length": _spoiled("POST /d/{ident} HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n"),
    "space-before-colon": _spoiled("GET /d/{ident} HTTP/1.1\r\nHost: t\r\nX-Test : 1\r\n\r\n"),
    "folded-field": _spoiled("GET /d/{ident} HTTP/1.1\r\nHost: t\r\nX-Test: 1\r\n 2\r\n\r\n"),
    "nul-in-value": _spoiled("GET /d/{ident} HTTP/1.1\r\nHost: t\r\nX-Test: a\x00b\r\n\r\n"),
    "space-in-target": _spoiled("GET /d/{ident} x HTTP/1.1\r\nHost: t\r\n\r\n"),
    "lower-case-method": _spoiled("get /d/{ident} HTTP/1.1\r\nHost: t\r\n\r\n"),
    # A coding neither proxy decodes: nginx answers 501; forwarding the body as plain chunked
    # would hand the replica gzip bytes it was not told about.
    "gzip-then-chunked": _spoiled(
        "POST /d/{ident} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
}
RINGLB_REFUSES = frozenset({"two-request-ids", "upgrade-with-body", "absolute-form", "bare-lf"})  # see the docstring
KINDS = ["valid"] * 12 + ["upgrade"] + sorted(RINGLB_REFUSES) + sorted(SPOILED)

# nginx refuses a second Authorization or If-None-Match (and other single fields) that ringlb
# forwards: only fields that are lists by definition repeat here.
REPEATABLE = {"X-Test", "Cookie"}
FIELD_NAMES = [
    "Accept",
    "Accept-Language",
    "User-Agent",
    "Cookie",
    "Cache-Control",
    "If-None-Match",
    "Authorization",
    "X-Test",
    "X-Other",
    "Dnt",
]
VALUE = st.from_regex(r"[!-~]([ !-~]{0,20}[!-~])?", fullmatch=True)
TOKEN = st.from_regex(r"[A-Za-z0-9._~-]{1,12}", fullmatch=True)


@st.composite
def requests_(draw: st.DrawFn) -> Request:
    kind = draw(st.sampled_from(KINDS))
    method = draw(st.sampled_from(["GET", "GET", "HEAD", "DELETE", "OPTIONS", "POST", "POST", "PUT", "PATCH"]))
    if kind.startswith("upgrade"):
        method = "GET"
    fields = draw(
        st.lists(
            st.tuples(st.sampled_from(FIELD_NAMES), VALUE),
            max_size=5,
            unique_by=lambda f: f[0] if f[0] not in REPEATABLE else object(),
        )
    )
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), ("X-Request-ID", draw(TOKEN)))
    query = draw(st.sampled_from(["", "", f"?q={draw(TOKEN)}", f"?a={draw(TOKEN)}&b={draw(TOKEN)}"]))
    with_body = method in ("POST", "PUT", "PATCH") or (kind == "upgrade-with-body") or draw(st.integers(0, 9)) == 0
    if kind == "upgrade" or method == "HEAD":
        with_body = False  # a HEAD with a body: both proxies would forward it, not worth the framing cases
    chunks = None
    body = b""
    trailer = False
    if with_body:
        if draw(st.booleans()):
            chunks = tuple(draw(st.lists(st.binary(min_size=1, max_size=700), min_size=0, max_size=4)))
            trailer = draw(st.booleans())
        else:
            body = draw(st.binary(max_size=3000))
    return Request(kind, method, query, tuple(fields), body, chunks, trailer)


@dataclass(frozen=True)
class Connection:
    requests: tuple[Request, ...]
    pipelined: bool  # all in one write, else each after the answer to the one before
    cut: int  # > 0: then the first ``cut`` bytes of one more request, and the connection closed


@st.composite
def connections(draw: st.DrawFn) -> Connection:
    reqs = tuple(draw(st.lists(requests_(), min_size=1, max_size=4)))
    cut = draw(st.integers(1, 200)) if draw(st.integers(0, 3)) == 0 else 0
    return Connection(reqs, draw(st.booleans()), cut)


STREAMS = st.lists(connections(), min_size=1, max_size=3)


def every_kind() -> list[Connection]:
    """One connection per kind, that kind first and a valid request after it: the generated
    streams may reach a kind only behind another that closes the connection first."""
    plain = Request("valid", "GET", "?after", (("X-Test", "after"),), b"", None, False)
    stream = []
    for kind in dict.fromkeys(KINDS):
        method = "POST" if kind in ("valid", "upgrade-with-body") else "GET"
        request = Request(kind, method, "", (("Accept", "*/*"),), b"payload" if method == "POST" else b"", None, False)
        stream.append(Connection((request, plain), kind != "valid", 0))
    return stream


# ------------------------------------------------------------------------------------------
# sending, and what ringlb should have forwarded given what nginx did
# ------------------------------------------------------------------------------------------
def replay(proxy: Proxy, stream: list[Connection]) -> list[str]:
    """Send the stream through ``proxy``, a connection at a time; returns what the client saw
    per connection (for the failure message)."""
    seen = []
    for c, conn in enumerate(stream):
        wires = [r.wire(f"{c}-{i}") for i, r in enumerate(conn.requests)]
        # A request a proxy refuses as malformed is answered with a body whatever its method:
        # the proxy cannot trust a method it read from a request it could not parse.
        methods = ["GET" if r.kind in SPOILED or r.kind in RINGLB_REFUSES else r.method for r in conn.requests]
        cut = conn.requests[0].wire(f"{c}-cut")
        tail = cut[: min(conn.cut, len(cut) - 1)] if conn.cut else b""  # never the whole request
        statuses: list[int] = []
        with connect(proxy.port, WAIT) as sock:
            try:
                if conn.pipelined:
                    sock.sendall(b"".join(wires) + tail)
                    statuses = status_list(sock, len(wires), methods)
                else:
                    for i, wire in enumerate(wires):
                        sock.sendall(wire)
                        got = status_list(sock, 1, methods[i:])
                        statuses += got
                        if len(got) < 1:
                            break
                    else:
                        sock.sendall(tail)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the proxy closed: what it forwarded is what counts
        seen.append(f"connection {c}: {' '.join(map(str, statuses)) or 'no answer'}")
    return seen


def status_list(sock: socket.socket, count: int, methods: list[str]) -> list[int]:
    try:
        answers, _, _ = read_answers(sock, count, WAIT, methods)
    except Malformed as exc:
        raise AssertionError(f"a proxy's answers are not HTTP/1.1: {exc}") from None
    return [a.status for a in answers if a.complete]


def comparable(request: Recorded) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
    fields = tuple((n, v) for n, v in request.headers if n.lower() not in OWNED)
    return request.method, request.target, fields, request.body


def ringlb_expected(stream: list[Connection], nginx_saw: list[Recorded]) -> list[tuple]:
    """What nginx's backend received, less what ringlb deliberately does not forward: a request
    of a kind it refuses, and on that connection everything after it or after an upgrade."""
    dropped = set()
    for c, conn in enumerate(stream):
        for i, request in enumerate(conn.requests):
            if request.kind in RINGLB_REFUSES or request.kind == "upgrade":
                start = i if request.kind in RINGLB_REFUSES else i + 1
                dropped |= {f"/d/{c}-{j}" for j in range(start, len(conn.requests))}
                break
    return [comparable(r) for r in nginx_saw if r.target.split("?", 1)[0] not in dropped]


def describe(stream: list[Connection], only: int | None = None) -> str:
    lines = []
    for c, conn in enumerate(stream):
        if only is not None and c != only:
            continue
        lines.append(
            f"connection {c} ({'pipelined' if conn.pipelined else 'one by one'}"
            f"{f', then {conn.cut} bytes and close' if conn.cut else ''}):"
        )
        lines += [f"  {r.wire(f'{c}-{i}')[:160]!r}" for i, r in enumerate(conn.requests)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
@settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure names its stream below
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream=STREAMS)
@example(stream=every_kind())
def test_backends_behind_nginx_and_ringlb_receive_the_same_requests(
    nginx: Proxy, ringlb: Proxy, stream: list[Connection]
) -> None:
    for proxy in (nginx, ringlb):
        proxy.backend.clear()
    clients = {proxy.name: replay(proxy, stream) for proxy in (nginx, ringlb)}
    # A request is recorded when its body ends, before the backend answers it: every request
    # whose answer a client read is in. One cut short never is (the recording backend notes the
    # early end of its body, which is expected here).
    saw = {proxy.name: proxy.backend.received() for proxy in (nginx, ringlb)}
    for proxy in (nginx, ringlb):
        errors = [e for e in proxy.backend.protocol_errors() if EARLY_EOF not in e]
        assert not errors, f"{proxy.name} sent its backend bytes that are no HTTP/1.1: {errors}\n{describe(stream)}"
    expected = ringlb_expected(stream, saw["nginx"])
    got = [comparable(r) for r in saw["ringlb"]]
    if got != expected:
        first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        differing = (got[first : first + 1] or expected[first : first + 1])[0][1]
        c = int(differing.split("/")[2].split("-")[0])
        raise AssertionError(
            f"the backends' requests differ at #{first}:\n  ringlb forwarded {got[first : first + 1]}\n"
            f"  expected (nginx's, less ringlb's deliberate refusals) {expected[first : first + 1]}\n"
            f"ringlb targets {[g[1] for g in got]}\nexpected      {[e[1] for e in expected]}\n"
            f"the clients of connection {c} saw: nginx {clients['nginx'][c]}; ringlb {clients['ringlb'][c]}\n"
            f"{describe(stream, only=c)}"
        )
