"""The closed-loop generator (ringlb_harness.load) and its command line (scripts/loadgen.py)
against a tiny in-process HTTP server on loopback (no balancer needed)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from ringlb_harness import load

LOADGEN = Path(__file__).resolve().parents[2] / "scripts" / "loadgen.py"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    keys: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        key = self.headers.get("X-Request-ID", "")
        Handler.keys.append(key)
        if self.path == "/fail":
            body, code = b'{"message": "boom", "status": "failure"}', 500
        else:
            server = f"Server {int(key) % 3 + 1}" if key.isdigit() else "Server 0"
            body, code = json.dumps({"message": f"Hello from Server: {server}", "status": "successful"}).encode(), 200
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server():
    Handler.keys = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_counts_per_replica_and_keys(server: str, tmp_path: Path) -> None:
    result = load.run_load(server + "/home", 300, 4, progress=False, seed=1)
    assert result.sent == 300 and result.ok == 300 and result.failed == 0
    assert set(result.per_replica) == {"Server 1", "Server 2", "Server 3"}
    assert all(len(k) == 6 and k.isdigit() for k in Handler.keys)
    assert result.percentile(50) <= result.percentile(99)
    load.write_json(result, str(tmp_path / "r.json"))
    load.write_csv(result, str(tmp_path / "r.csv"))
    assert json.loads((tmp_path / "r.json").read_text())["ok"] == 300
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert sum(int(r["count"]) for r in rows) == 300


def test_failures_by_kind_and_bounds(server: str) -> None:
    failed = load.run_load(server + "/fail", 20, 2, progress=False)
    assert failed.failures == {"http_500": 20}
    refused = load.run_load("http://127.0.0.1:9/home", 5, 1, progress=False, timeout=1)
    assert refused.failed == 5 and "connection_refused" in refused.failures
    timed = load.run_load(server + "/home", 10_000, 2, progress=False, rate=20, max_seconds=0.5)
    assert timed.stopped_by_time and timed.sent < 30


def test_open_loop_counts_every_request_on_its_schedule(server: str) -> None:
    keys = [str(100_000 + i) for i in range(60)]
    result = load.OpenLoad(server + "/home", 200, keys).start().join()
    assert result.sent == 60 and result.ok == 60 and result.failed == 0
    assert [s.key for s in result.samples] == keys  # sorted by due time: the keys' order
    assert [s.start for s in result.samples] == pytest.approx([i / 200 for i in range(60)])
    assert sorted(Handler.keys) == sorted(keys)
    assert set(result.per_replica) == {"Server 1", "Server 2", "Server 3"}
    failed = load.OpenLoad(server + "/fail", 100, ["1"] * 10).start().join()
    assert failed.failures == {"http_500": 10} and failed.ok == 0
    refused = load.OpenLoad("http://127.0.0.1:9/home", 100, ["1"] * 5, timeout=5).start().join()
    assert refused.failures == {"refused": 5}


def test_cli(server: str, tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    run = subprocess.run(
        [sys.executable, str(LOADGEN), "--url", server + "/home", "-n", "50", "-c", "2", "--json", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # the script runs from anywhere: it imports the installed harness
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["sent"] == 50
    assert "50 requests" in run.stdout
