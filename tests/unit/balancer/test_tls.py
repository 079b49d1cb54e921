"""The TLS context and its rotation (``ringlb_balancer.tls``), with handshakes run in memory:
two ``SSLObject``s joined by memory BIOs, certificates made here with trustme."""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path

import pytest
import trustme

from ringlb_balancer import tls
from ringlb_balancer.config import Settings

HOST = "ringlb.test"


class Pair:
    """A client and a server ``SSLObject`` joined in memory; ``pump`` moves bytes both ways."""

    def __init__(self, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
        self.s_in, self.s_out, self.c_in, self.c_out = (ssl.MemoryBIO() for _ in range(4))
        self.server = server_ctx.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.client = client_ctx.wrap_bio(self.c_in, self.c_out, server_hostname=HOST)

    def pump(self) -> None:
        if data := self.c_out.read():
            self.s_in.write(data)
        if data := self.s_out.read():
            self.c_in.write(data)

    def handshake(self) -> Pair:
        done = {"client": False, "server": False}
        for _ in range(10):
            for side, obj in (("client", self.client), ("server", self.server)):
                if not done[side]:
                    try:
                        obj.do_handshake()
                        done[side] = True
                    except ssl.SSLWantReadError:
                        pass
                self.pump()
            if all(done.values()):
                return self
        raise AssertionError(f"handshake did not complete: {done}")

    def roundtrip(self, data: bytes) -> bytes:
        self.client.write(data)
        self.pump()
        got = self.server.read(len(data) + 100)
        self.server.write(got.upper())
        self.pump()
        return self.client.read(len(data) + 100)

    def leaf_sha256(self) -> str:
        return hashlib.sha256(self.client.getpeercert(binary_form=True)).hexdigest()


def client_for(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["http/1.1"])
    return context


def write_pair(ca: trustme.CA, cert: Path, key: Path) -> str:
    """A leaf for HOST issued by ``ca`` written as the chain and key files; returns its SHA-256."""
    leaf = ca.issue_cert(HOST)
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())).hexdigest()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "tls.crt", tmp_path / "tls.key"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_a_client_that_trusts_the_ca_gets_tls_1_2_or_later_and_http_1_1(
    ca: trustme.CA, files: tuple[Path, Path]
) -> None:
    cert, key = files
    sha = write_pair(ca, cert, key)
    pair = Pair(tls.server_context(str(cert), str(key)), client_for(ca)).handshake()
    assert pair.client.version() in ("TLSv1.2", "TLSv1.3")
    assert pair.client.selected_alpn_protocol() == "http/1.1"
    assert pair.leaf_sha256() == sha == tls.fingerprint(str(cert))
    assert pair.roundtrip(b"ping") == b"PING"


def test_tls_1_2_is_accepted(ca: trustme.CA, files: tuple[Path, Path]) -> None:
    cert, key = files
    write_pair(ca, cert, key)
    client = client_for(ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    pair = Pair(tls.server_context(str(cert), str(key)), client).handshake()
    assert pair.client.version() == "TLSv1.2"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_a_client_offering_only_tls_1_1_is_refused(ca: trustme.CA, files: tuple[Path, Path]) -> None:
    cert, key = files
    write_pair(ca, cert, key)
    client = client_for(ca)
    client.minimum_version = ssl.TLSVersion.TLSv1
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 would not even offer 1.1 otherwise
    pair = Pair(tls.server_context(str(cert), str(key)), client)
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()  # the client did send its TLS 1.1 hello
    pair.pump()
    with pytest.raises(ssl.SSLError) as refused:
        pair.server.do_handshake()
    assert refused.value.reason == "UNSUPPORTED_PROTOCOL"


def test_a_client_offering_only_h2_is_not_answered_with_another_protocol(
    ca: trustme.CA, files: tuple[Path, Path]
) -> None:
    cert, key = files
    write_pair(ca, cert, key)
    client = client_for(ca)
    client.set_alpn_protocols(["h2"])
    pair = Pair(tls.server_context(str(cert), str(key)), client).handshake()
    assert pair.client.selected_alpn_protocol() is None  # no h2: a client falls back to HTTP/1.1


def test_rotation_serves_new_files_to_new_handshakes_while_open_connections_continue(files: tuple[Path, Path]) -> None:
    cert, key = files
    old_ca, new_ca = trustme.CA(), trustme.CA()
    old_sha = write_pair(old_ca, cert, key)
    rotation = tls.Rotation(str(cert), str(key))
    before = Pair(rotation.listener, client_for(old_ca)).handshake()
    assert rotation.check() is None  # nothing changed

    new_sha = write_pair(new_ca, cert, key)
    loaded, message = rotation.check() or (None, "")
    assert loaded is True and new_sha in message
    assert rotation.counts == {"loaded": 1, "failed": 0}

    after = Pair(rotation.listener, client_for(new_ca)).handshake()
    assert after.leaf_sha256() == new_sha
    assert before.leaf_sha256() == old_sha
    assert before.roundtrip(b"still open") == b"STILL OPEN"
    with pytest.raises(ssl.SSLCertVerificationError):  # the old certificate is no longer served
        Pair(rotation.listener, client_for(old_ca)).handshake()


@pytest.mark.parametrize("damage", ["garbage cert", "key of another cert", "empty key", "missing key"])
def test_files_that_do_not_load_keep_the_old_certificate_and_are_counted_once(
    ca: trustme.CA, files: tuple[Path, Path], damage: str
) -> None:
    cert, key = files
    sha = write_pair(ca, cert, key)
    rotation = tls.Rotation(str(cert), str(key))
    if damage == "garbage cert":
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    elif damage == "key of another cert":
        key.write_bytes(trustme.CA().issue_cert(HOST).private_key_pem.bytes())
    elif damage == "empty key":
        key.write_bytes(b"")
    else:
        key.unlink()
    loaded, message = rotation.check() or (None, "")
    assert loaded is False
    assert f"still serving sha256 {sha}" in message and (str(key) in message or str(cert) in message), message
    assert rotation.check() is None  # the same broken files: not counted again
    assert rotation.counts == {"loaded": 0, "failed": 1}
    assert Pair(rotation.listener, client_for(ca)).handshake().leaf_sha256() == sha

    fixed = write_pair(ca, cert, key)  # a good pair lands later: it is taken
    assert (rotation.check() or (None,))[0] is True
    assert Pair(rotation.listener, client_for(ca)).handshake().leaf_sha256() == fixed


def test_a_secret_volume_symlink_swap_is_seen(tmp_path: Path) -> None:
    """The kubelet writes a Secret's new version to a new directory and renames ``..data``,
    a symlink, onto it; ``tls.crt`` links to ``..data/tls.crt``."""
    volume = tmp_path / "volume"
    volume.mkdir()
    first, second = volume / "..2024_01", volume / "..2024_02"
    first.mkdir()
    second.mkdir()
    old_ca, new_ca = trustme.CA(), trustme.CA()
    write_pair(old_ca, first / "tls.crt", first / "tls.key")
    new_sha = write_pair(new_ca, second / "tls.crt", second / "tls.key")
    os.symlink(first.name, volume / "..data")
    for name in ("tls.crt", "tls.key"):
        os.symlink(f"..data/{name}", volume / name)
    rotation = tls.Rotation(str(volume / "tls.crt"), str(volume / "tls.key"))

    os.symlink(second.name, volume / "..data_tmp")
    os.replace(volume / "..data_tmp", volume / "..data")
    assert (rotation.check() or (None,))[0] is True
    assert Pair(rotation.listener, client_for(new_ca)).handshake().leaf_sha256() == new_sha


def test_counts_are_summed_over_processes(tmp_path: Path, ca: trustme.CA, files: tuple[Path, Path]) -> None:
    assert tls.totals(tmp_path) is None  # no process serves TLS: no metric
    cert, key = files
    write_pair(ca, cert, key)
    rotation = tls.Rotation(str(cert), str(key))
    rotation.counts = {"loaded": 2, "failed": 1}
    rotation.write(tmp_path, pid=101)
    rotation.counts = {"loaded": 1, "failed": 3}
    rotation.write(tmp_path, pid=102)
    assert tls.totals(tmp_path) == {"loaded": 3, "failed": 4}


def test_load_error_says_what_is_wrong(ca: trustme.CA, files: tuple[Path, Path]) -> None:
    cert, key = files
    assert tls.load_error(str(cert), str(key)) == f"{cert}: no such file"
    write_pair(ca, cert, key)
    assert tls.load_error(str(cert), str(key)) is None
    key.write_text("not a key")
    error = tls.load_error(str(cert), str(key))
    assert error is not None and "do not load as a PEM certificate chain and its private key" in error


def test_settings_refuse_half_a_pair_and_a_pair_that_does_not_load(ca: trustme.CA, files: tuple[Path, Path]) -> None:
    cert, key = files
    with pytest.raises(SystemExit, match="both RINGLB_TLS_CERT and RINGLB_TLS_KEY"):
        Settings.from_env({"RINGLB_TLS_CERT": "/x.pem"})
    with pytest.raises(SystemExit, match="no such file"):
        Settings.from_env({"RINGLB_TLS_CERT": str(cert), "RINGLB_TLS_KEY": str(key)})
    write_pair(ca, cert, key)
    settings = Settings.from_env({"RINGLB_TLS_CERT": str(cert), "RINGLB_TLS_KEY": str(key)})
    assert (settings.tls_cert, settings.tls_key) == (str(cert), str(key))
