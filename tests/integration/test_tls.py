"""TLS on the public listener: a real balancer process on loopback, certificates made
here with trustme, clients of the standard library (``ssl``, ``requests``).

Rotation is observed, not timed: the test rewrites the files and waits (a generous deadline)
for new connections to present the new certificate; the slow handshake is checked by its
outcome (the connection is closed), not by when.
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trustme

from ringlb_harness.backends.main import MainBackend
from ringlb_harness.backends.server import BLOCK
from ringlb_harness.balancer import Balancer, membership_doc
from ringlb_harness.http1 import read_answers, request_bytes, split_answer
from ringlb_harness.local import LocalMode
from ringlb_harness.net import LOOPBACK, read_all, wait_until
from ringlb_harness.prometheus import total

pytestmark = pytest.mark.integration

WAIT = 60.0  # a deadline for what must come; generous, the machine is shared
HEAD_TIMEOUT = 3
MIB = 1 << 20


class Certs:
    """A CA and the balancer's certificate files, which ``issue`` rewrites in place."""

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.cert, self.key, self.ca_file = tmp / "tls.crt", tmp / "tls.key", tmp / "ca.pem"
        self.trust(trustme.CA())
        self.sha = self.issue(self.ca)

    def trust(self, ca: trustme.CA) -> None:
        """The CA clients trust from now on (``ca_file`` for requests)."""
        self.ca = ca
        ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, ca: trustme.CA) -> str:
        """Write a leaf for 127.0.0.1 issued by ``ca`` (chain, then key); returns its SHA-256."""
        leaf = ca.issue_cert(LOOPBACK, "localhost")
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        tmp_cert, tmp_key = self.cert.with_name("cert.new"), self.key.with_name("key.new")
        tmp_cert.write_bytes(chain)
        tmp_key.write_bytes(leaf.private_key_pem.bytes())
        tmp_key.replace(self.key)
        tmp_cert.replace(self.cert)
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())).hexdigest()

    def client(self, ca: trustme.CA | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        (ca or self.ca).configure_trust(context)
        context.set_alpn_protocols(["http/1.1"])
        return context


class TlsBalancer(Balancer):
    """The balancer process with ``RINGLB_TLS_CERT``/``KEY``: its public URL is https."""

    def __init__(
        self, tmp: Path, certs: Certs, env: dict[str, str] | None = None, workers: int = 1, **kwargs: object
    ) -> None:
        self.certs = certs
        self.workers = workers
        tls_env = {"RINGLB_TLS_CERT": str(certs.cert), "RINGLB_TLS_KEY": str(certs.key), **(env or {})}
        super().__init__(tmp, env=tls_env, workers=workers, **kwargs)

    @property
    def https(self) -> str:
        return self.url.replace("http://", "https://")

    def get(self, path: str, **kwargs: object) -> requests.Response:
        """GET over TLS trusting our CA (per request: REQUESTS_CA_BUNDLE would override a session's)."""
        return self.session.get(f"{self.https}{path}", verify=str(self.certs.ca_file), timeout=WAIT, **kwargs)

    def _up(self) -> bool:
        try:
            ok = requests.get(f"{self.https}/healthz", timeout=1, verify=str(self.certs.ca_file)).status_code == 200
            if ok and self.admin_url != self.url:
                ok = requests.get(f"{self.admin_url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False
        return ok and len(self.worker_pids()) == self.workers  # every worker up before workers0 is taken

    def connect(self, context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection((LOOPBACK, self.port), timeout=WAIT)
        return (context or self.certs.client()).wrap_socket(raw, server_hostname=LOOPBACK)

    def served_sha(self) -> str:
        """The SHA-256 of the certificate a new connection is shown, whoever issued it."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with self.connect(context) as sock:
            return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()

    def metric(self, name: str, **labels: str) -> float:
        return total(requests.get(f"{self.admin_url}/metrics", timeout=10).text, name, **labels)


@pytest.fixture(scope="module")
def backend() -> Iterator[MainBackend]:
    server = MainBackend(name="main").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory, certs: Certs, backend: MainBackend) -> Iterator[TlsBalancer]:
    process = TlsBalancer(
        tmp_path_factory.mktemp("tls"),
        certs,
        workers=2,
        env={
            "RINGLB_MAX_BODY": "0",
            "RINGLB_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
        },
    )
    process.push([("main", backend.port)])
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def no_worker_crash(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "balancer" in request.fixturenames:
        request.getfixturevalue("balancer").assert_workers_unchanged()


def test_a_client_that_trusts_the_ca_gets_the_seed_api_over_tls(balancer: TlsBalancer) -> None:
    rep = balancer.get("/rep")
    assert rep.status_code == 200 and rep.json()["message"] == {"N": 1, "replicas": ["main"]}
    home = balancer.get("/home", headers={"X-Request-ID": "42"})
    assert home.status_code == 200, home.text
    assert home.json()["server"] == "main" and home.json()["target"] == "/home"
    forwarded = {name.lower(): value for name, value in home.json()["headers"]}
    assert forwarded["x-forwarded-proto"] == "https"
    admin = requests.get(f"{balancer.admin_url}/healthz", timeout=WAIT)  # the admin listener stays plain HTTP
    assert admin.status_code == 200
    with balancer.connect() as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert sock.selected_alpn_protocol() == "http/1.1"


def test_a_client_that_does_not_trust_the_ca_is_refused(balancer: TlsBalancer) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{balancer.https}/rep", timeout=WAIT)  # the system's CAs only


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_is_refused_and_1_2_accepted(balancer: TlsBalancer) -> None:
    old = balancer.certs.client()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 would not even offer 1.1 otherwise
    with pytest.raises(ssl.SSLError) as refused:
        balancer.connect(old).close()
    # uvloop closes without an alert, asyncio's loop sends protocol_version: refused either way.
    assert refused.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING"), refused.value
    tls12 = balancer.certs.client()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with balancer.connect(tls12) as sock:
        assert sock.version() == "TLSv1.2"


def test_plain_http_on_the_public_port_gets_no_answer_and_the_admin_port_stays_plain(balancer: TlsBalancer) -> None:
    with socket.create_connection((LOOPBACK, balancer.port), timeout=WAIT) as sock:
        sock.sendall(request_bytes("GET", "/rep"))
        data, closed = read_all(sock, timeout=WAIT)
    assert closed and not data.startswith(b"HTTP/"), data[:200]
    assert requests.get(f"{balancer.admin_url}/healthz", timeout=WAIT).status_code == 200


def test_a_stalled_handshake_is_closed_by_the_head_deadline(balancer: TlsBalancer) -> None:
    with socket.create_connection((LOOPBACK, balancer.port), timeout=WAIT) as sock:
        sock.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        _data, closed = read_all(sock, timeout=WAIT)
    assert closed, f"a handshake stalled {WAIT:g} s was still open (RINGLB_HEAD_TIMEOUT={HEAD_TIMEOUT})"


def test_server_sent_events_and_a_download_stream_through_tls(balancer: TlsBalancer) -> None:
    with balancer.connect() as sock:
        sock.sendall(request_bytes("GET", "/sse?n=5&gap=50", {"X-Request-ID": "sse", "Accept": "text/event-stream"}))
        answers, data, _ = read_answers(sock, timeout=WAIT)
    assert answers and answers[0].complete, data[:300]
    assert [int(i) for i in re.findall(rb"^id: (\d+)$", answers[0].body, re.M)] == list(range(5))

    n = 32 * MIB
    with balancer.connect() as sock:
        sock.sendall(request_bytes("GET", f"/download?n={n}&id=tls", {"X-Request-ID": "dl", "Connection": "close"}))
        data, closed = read_all(sock, timeout=WAIT * 2, limit=n + 4096)
    answer, _ = split_answer(data, closed)
    assert answer.status == 200 and answer.complete, data[:300]
    assert answer.body == (BLOCK * (n // len(BLOCK) + 1))[:n]


def test_a_chunked_upload_streams_through_tls(balancer: TlsBalancer, backend: MainBackend) -> None:
    n = 16 * MIB
    with balancer.connect() as sock:
        sock.sendall(request_bytes("POST", "/upload?id=tls", {"X-Request-ID": "up", "Transfer-Encoding": "chunked"}))
        piece = b"%x\r\n%s\r\n" % (MIB, BLOCK)
        for _ in range(n // MIB):
            sock.sendall(piece)
        sock.sendall(b"0\r\n\r\n")
        answers, data, _ = read_answers(sock, timeout=WAIT * 2)
    assert answers and answers[0].status == 200, data[:300]
    assert answers[0].json() == {"bytes": n, "chunked": True, "done": True}


def test_websocket_over_wss(balancer: TlsBalancer) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage

    ws = WSConnection(ConnectionType.CLIENT)
    events: list[object] = []
    with balancer.connect() as sock:

        def pump(until: type, size: int = 1) -> None:
            """Read until ``size`` bytes of ``until`` messages came (a message may come in parts)."""
            deadline = time.monotonic() + WAIT
            while sum(len(e.data) if hasattr(e, "data") else 1 for e in events if isinstance(e, until)) < size:
                assert time.monotonic() < deadline, f"no {until.__name__} within {WAIT:g} s; events {events}"
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                data = sock.recv(65536)
                ws.receive_data(data or None)
                events.extend(ws.events())
                if not data:
                    break

        sock.sendall(ws.send(Request(host="test", target="/ws", extra_headers=[(b"X-Request-ID", b"ws")])))
        pump(AcceptConnection)
        sock.sendall(ws.send(TextMessage(data="hello over wss")))
        pump(TextMessage)
        blob = b"\x00\xffbinary" * 1000  # in one TLS record: the test backend echoes each part it reads
        sock.sendall(ws.send(BytesMessage(data=blob)))
        pump(BytesMessage, len(b"echo: " + blob))
        sock.sendall(ws.send(CloseConnection(code=1000)))
        pump(CloseConnection)
    assert [e.data for e in events if isinstance(e, TextMessage)] == ["echo: hello over wss"]
    assert b"".join(bytes(e.data) for e in events if isinstance(e, BytesMessage)) == b"echo: " + blob


def test_rotation_reaches_new_connections_and_open_ones_continue(balancer: TlsBalancer) -> None:
    certs = balancer.certs
    failed_before = balancer.metric("ringlb_tls_reloads_total", result="failed")
    loaded_before = balancer.metric("ringlb_tls_reloads_total", result="loaded")
    assert balancer.served_sha() == certs.sha
    kept = balancer.connect()
    try:
        kept.sendall(request_bytes("GET", "/home", {"X-Request-ID": "1"}))
        assert read_answers(kept, timeout=WAIT)[0][0].status == 200

        new_ca = trustme.CA()
        new_sha = certs.issue(new_ca)
        # Two workers poll on their own: wait until several new connections in a row see it.
        wait_until(
            lambda: all(balancer.served_sha() == new_sha for _ in range(6)),
            WAIT,
            what="new connections shown the new certificate",
        )
        with balancer.connect(certs.client(new_ca)) as sock:
            sock.sendall(request_bytes("GET", "/rep", {"Connection": "close"}, host=LOOPBACK))
            assert read_answers(sock, timeout=WAIT)[0][0].status == 200

        kept.sendall(request_bytes("GET", "/home", {"X-Request-ID": "2"}))  # began under the old certificate
        assert read_answers(kept, timeout=WAIT)[0][0].status == 200
    finally:
        kept.close()
    wait_until(
        lambda: balancer.metric("ringlb_tls_reloads_total", result="loaded") >= loaded_before + 2,
        WAIT,
        what="both workers counted a reload",
    )
    assert balancer.metric("ringlb_tls_reloads_total", result="failed") == failed_before
    certs.trust(new_ca)  # later tests trust the CA in force
    certs.sha = new_sha


def test_a_malformed_certificate_keeps_the_old_one_and_is_counted(balancer: TlsBalancer) -> None:
    certs = balancer.certs
    failed_before = balancer.metric("ringlb_tls_reloads_total", result="failed")
    certs.cert.write_text("-----BEGIN CERTIFICATE-----\nthis is not a certificate\n-----END CERTIFICATE-----\n")
    try:
        wait_until(
            lambda: balancer.metric("ringlb_tls_reloads_total", result="failed") >= failed_before + 2,
            WAIT,
            what="both workers counted the failed reload",
        )
        assert "TLS certificate not reloaded, still serving sha256 " + certs.sha in balancer.log_path.read_text()
        assert all(balancer.served_sha() == certs.sha for _ in range(4))
        assert balancer.get("/rep").status_code == 200
    finally:
        certs.sha = certs.issue(certs.ca)
    wait_until(
        lambda: all(balancer.served_sha() == certs.sha for _ in range(4)), WAIT, what="the repaired files served"
    )


def test_status_page_metrics_and_pushes_on_a_single_tls_listener(tmp_path: Path, backend: MainBackend) -> None:
    """Without an admin listener (the seed's one-port layout) everything is behind TLS."""
    certs = Certs(tmp_path / "certs")
    with TlsBalancer(tmp_path / "one", certs, admin=False) as process:
        push = process.session.put(
            f"{process.https}/membership",
            json=membership_doc(1, [("main", backend.port)]),
            headers={"Authorization": f"Bearer {process.token}"},
            timeout=WAIT,
            verify=str(certs.ca_file),
        )
        assert push.status_code == 200, push.text
        page = process.get("/status")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        data = process.get("/status/data")
        assert data.status_code == 200 and data.json()
        metrics = process.get("/metrics").text
        assert 'ringlb_tls_reloads_total{result="failed"} 0.0' in metrics
        home = process.get("/home", headers={"X-Request-ID": "7"})
        assert home.status_code == 200 and home.json()["server"] == "main"


def test_a_balancer_with_files_that_do_not_load_does_not_start(tmp_path: Path) -> None:
    certs = Certs(tmp_path / "certs")
    certs.key.write_text("no key here")
    with pytest.raises(AssertionError, match="do not load as a PEM certificate chain and its private key"):
        TlsBalancer(tmp_path / "bad", certs)


def test_ringlb_dev_with_tls(tmp_path: Path) -> None:
    certs = Certs(tmp_path / "certs")
    mode = LocalMode(tmp_path / "dev", "--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    try:
        url = f"https://127.0.0.1:{mode.port}"
        ca = str(certs.ca_file)
        wait_until(
            lambda: requests.get(f"{url}/rep", timeout=10, verify=ca).json()["message"]["N"] == 3,
            WAIT,
            what="three replicas behind the TLS port",
        )
        home = requests.get(f"{url}/home", headers={"X-Request-ID": "424242"}, timeout=WAIT, verify=ca)
        assert home.status_code == 200 and home.json()["message"].startswith("Hello from Server: ")
        printed = wait_until(
            lambda: "balancer on https://" in (p := mode.printed()) and p,
            WAIT,
            what="ringlb dev saying where the balancer is",
        )
        status = re.search(r"status page (http://127\.0\.0\.1:\d+/status)", printed)
        assert status, printed
        assert requests.get(status.group(1), timeout=WAIT).status_code == 200
    finally:
        leftovers = mode.stop()
    assert not leftovers, f"processes outlived ringlb dev: {leftovers}"


def test_ringlb_dev_refuses_half_a_pair() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ringlb_balancer.local.cli", "dev", "--tls-cert", "x.pem"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode != 0 and "--tls-cert and --tls-key go together" in done.stderr
