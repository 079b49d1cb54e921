"""A scaler as the local supervisor offers it (``GET``/``PUT /replicas``), pushing the new
membership to a balancer as ``ringlb dev`` does."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ringlb_harness.net import LOOPBACK


class FakeScaler:
    """``GET``/``PUT /replicas`` (the supervisor's scaling API, bearer ``token``); every accepted
    change is pushed to ``push_url`` (a balancer's admin URL) by a pusher thread. Member
    addresses are 127.0.1.<i>:<port>, one per name (nothing needs to listen there)."""

    def __init__(
        self, push_url: str, push_token: str, names: list[str], port_for_all: int, token: str = "scaler-token"
    ) -> None:
        import requests

        self.push_url = push_url.rstrip("/") + "/membership"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {push_token}"
        self.token = token
        self.port_for_all = port_for_all
        self.desired = list(names)
        self.version = 1
        self.revision = 0
        self.lock = threading.Lock()
        self.push_lock = threading.Lock()
        self.addresses: dict[str, int] = {}
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.push_times: list[float] = []
        self.push_failures: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, code: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    self._reply(401, {"error": "bad token"})
                    return False
                return True

            def do_GET(self) -> None:
                if self._authorized():
                    with outer.lock:
                        self._reply(200, {"replicas": outer.desired, "version": str(outer.version)})

            def do_PUT(self) -> None:
                doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self._authorized():
                    return
                with outer.lock:
                    if str(doc.get("version")) != str(outer.version):
                        self._reply(409, {"error": "version conflict"})
                        return
                    outer.desired = list(doc["replicas"])
                    outer.version += 1
                    self._reply(200, {"replicas": outer.desired, "version": str(outer.version)})
                outer.wake.set()

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.pusher = threading.Thread(target=self._push_loop, daemon=True)
        self.pusher.start()

    def _address(self, name: str) -> str:
        if name not in self.addresses:
            self.addresses[name] = len(self.addresses) + 1
        return f"127.0.1.{self.addresses[name]}:{self.port_for_all}"

    def push_now(self) -> float:
        """Push the desired list as the next revision; returns the seconds the PUT took."""
        with self.push_lock:
            with self.lock:
                names = list(self.desired)
            self.revision += 1
            doc = {"revision": self.revision, "members": [{"name": n, "address": self._address(n)} for n in names]}
            start = time.perf_counter()
            try:
                reply = self.session.put(self.push_url, json=doc, timeout=30)
                elapsed = time.perf_counter() - start
                if reply.status_code != 200:
                    self.push_failures.append(f"{reply.status_code} {reply.text[:200]}")
            except Exception as exc:  # noqa: BLE001 - any failure is recorded for the test to assert on
                elapsed = time.perf_counter() - start
                self.push_failures.append(repr(exc))
            self.push_times.append(elapsed)
            return elapsed

    def _push_loop(self) -> None:
        while not self.stopping.is_set():
            if self.wake.wait(0.2):
                self.wake.clear()
                self.push_now()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
