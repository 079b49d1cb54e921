"""TLS on the public listener: the server context, and new certificates without a restart.

asyncio fixes one ``SSLContext`` per server when it is created. To serve a renewed certificate
(a Kubernetes Secret update swaps the ``..data`` symlink of its volume; cert-manager renews ahead
of expiry) without closing the listener, that first context is only the *listener's*: its
``sni_callback``, which OpenSSL calls on every ClientHello (with or without a server name), points
the connection at the context built from the newest files, the ssl module's documented way to
choose a context per connection. Open connections keep the context they began with.

Each worker polls the files' ``stat`` (the link target's inode, size and mtime) from its serving
loop; a change is loaded into a fresh context, and a file that does not load leaves the previous
context in place, so a half-written or wrong Secret never takes TLS down. Reload outcomes are
counted per process in the shared state directory, as ``counters`` does, for ``/metrics``.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from pathlib import Path
from typing import Any

CHECK_INTERVAL = 1.0  # seconds between two stats of the files; the issue allows 10 s to rotate
ALPN = ("http/1.1",)
OUTCOMES = ("loaded", "failed")

Stamp = tuple[tuple[int, int, int, int], ...]


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The standard library's server defaults (no compression, forward-secret ciphers, the
    server's cipher order), TLS 1.2 at least, no renegotiation, ALPN ``http/1.1`` only: the
    proxy speaks HTTP/1.1, and a client offering only h2 should fail the handshake, not guess."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(list(ALPN))
    context.load_cert_chain(cert, key)
    return context


def load_error(cert: str, key: str) -> str | None:
    """What is wrong with the pair, said so an operator can fix it; None when it loads."""
    for path in (cert, key):
        if not os.path.isfile(path):
            return f"{path}: no such file"
    try:
        server_context(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        return _unloadable(cert, key, exc)
    return None


def _unloadable(cert: str, key: str, exc: Exception) -> str:
    return f"{cert} and {key} do not load as a PEM certificate chain and its private key: {exc}"


def stamp(*paths: str) -> Stamp:
    """What changes when a file is replaced or rewritten; ``os.stat`` follows the symlinks, so a
    Secret volume's ``..data`` swap shows as a new inode."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def fingerprint(cert: str) -> str:
    """SHA-256 of the leaf certificate (the first PEM block), as ``openssl x509 -fingerprint
    -sha256`` prints it without colons: what the log says was loaded."""
    text = Path(cert).read_text(encoding="ascii", errors="replace")
    end = text.find(ssl.PEM_FOOTER)
    if end < 0:
        return "?"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text[: end + len(ssl.PEM_FOOTER)])).hexdigest()


class Rotation:
    """The listener's context and the one new handshakes get; ``check`` follows the files.

    Built once per worker; the first load must succeed (``Settings.check`` has tried it in the
    master, so a bad pair stops the balancer at start with a message, not a respawn loop).
    """

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self.stamp: Stamp | None = stamp(cert, key)
        self.current = server_context(cert, key)
        self.listener = self.current
        self.listener.sni_callback = self._choose
        self.fingerprint = fingerprint(cert)
        self.counts = dict.fromkeys(OUTCOMES, 0)

    def _choose(self, conn: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            conn.context = current

    def check(self) -> tuple[bool, str] | None:
        """Load the files again if they changed since the last attempt. Returns (loaded,
        message for the log), or None when nothing changed; a failure keeps the context in
        force and is counted once per change of the files, not once per poll."""
        try:
            now: Stamp | None = stamp(self.cert, self.key)
        except OSError as exc:
            now = None
            error = f"cannot read {exc.filename}: {exc.strerror}"
        if now == self.stamp:
            return None
        self.stamp = now
        if now is not None:
            try:
                context = server_context(self.cert, self.key)
                leaf = fingerprint(self.cert)
            except (ssl.SSLError, OSError, ValueError) as exc:
                error = _unloadable(self.cert, self.key, exc)
            else:
                self.current, self.fingerprint = context, leaf
                self.counts["loaded"] += 1
                return True, f"TLS certificate reloaded: sha256 {leaf}"
        self.counts["failed"] += 1
        return False, f"TLS certificate not reloaded, still serving sha256 {self.fingerprint}: {error}"

    def write(self, state_dir: str | os.PathLike[str], pid: int | None = None) -> None:
        """Publish this process's counts for ``/metrics`` (atomically, as ``counters`` does)."""
        path = Path(state_dir) / f"tls-{pid or os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.counts))
        os.replace(tmp, path)


def totals(state_dir: str | os.PathLike[str]) -> dict[str, int] | None:
    """Reload outcomes summed over every process, living or dead (so totals never go back when
    a worker is replaced); None when no process serves TLS here."""
    found = False
    sums = dict.fromkeys(OUTCOMES, 0)
    for path in Path(state_dir).glob("tls-*.json"):
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # replaced while we read it: the next scrape has it
        found = True
        for outcome in OUTCOMES:
            sums[outcome] += int(doc.get(outcome, 0))
    return sums if found else None
