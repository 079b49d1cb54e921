"""`make bench`: the balancer and nginx side by side, over the same replicas, in one run.

Starts three replicas (gunicorn, as in the images), nginx with `hash $http_x_request_id
consistent` over them, and the balancer (gunicorn, membership pushed as the operator does);
drives each with wrk (random X-Request-ID per request) in alternating rounds, and prints a table
and the ratio line. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = """
local counter = 0
local tid = 0
setup = function(thread) tid = tid + 1; thread:set("tid", tid) end
init = function(args) math.randomseed(os.time() * 1000 + (tid or 0)) end
request = function()
  return wrk.format("GET", "/home", {["X-Request-ID"] = tostring(math.random(100000, 999999))})
end
"""
NGINX_CONF = """
worker_processes {nginx_workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream replicas {{
    hash $http_x_request_id consistent;
{servers}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503;
    }}
  }}
}}
"""


def ensure_tools() -> None:
    missing = [p for p, b in (("nginx-light", "nginx"), ("wrk", "wrk")) if not shutil.which(b)]
    if missing:
        print(f"installing {', '.join(missing)} with apt-get", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env).returncode:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)  # a new machine's lists are empty
            subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {timeout:g}s")


def run_wrk(url: str, script: Path, seconds: int, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {"rps": rps, "p50": pct["50"], "p99": pct["99"], "errors": errors, "requests": total}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def plot(summary: dict[str, dict[str, float]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    colors = ["#7f7f7f", "#1f77b4"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, (metric, label) in zip(axes, (("rps", "requests/s (higher is better)"),
                                          ("p50", "p50 latency, ms (lower is better)"),
                                          ("p99", "p99 latency, ms (lower is better)"))):
        values = [summary[n][metric] for n in names]
        bars = ax.bar(names, values, color=colors)
        ax.bar_label(bars, fmt="%.0f" if metric == "rps" else "%.1f")
        ax.set_title(label, fontsize=10)
        ax.margins(y=0.15)
    fig.suptitle(f"ringlb vs nginx, same 3 replicas; {os.cpu_count()} cores, wrk -c{args.connections}, "
                 f"median of {args.rounds} x {args.seconds}s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per target")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="balancer gunicorn workers")
    parser.add_argument("--nginx-workers", default="1")
    parser.add_argument("--strategy", default="maglev")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--plot", help="also draw req/s and p99 side by side into this PNG")
    args = parser.parse_args()
    ensure_tools()

    tmp = Path(tempfile.mkdtemp(prefix="ringlb-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp / "processes.log", "ab")

    def start(cmd: list[str], env: dict[str, str] | None = None) -> None:
        procs.append(subprocess.Popen(cmd, env=dict(os.environ, **(env or {})), stdout=log, stderr=log))

    try:
        ports = [free_port() for _ in range(3)]
        for i, port in enumerate(ports, 1):
            start([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                   "--worker-class", "gthread", "--threads", "4", "--keep-alive", "30",
                   "--no-control-socket", "ringlb_replica.wsgi:app"], {"SERVER_ID": f"Server {i}"})
        nginx_port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            tmp=tmp, port=nginx_port, nginx_workers=args.nginx_workers,
            servers="\n".join(f"    server 127.0.0.1:{p};" for p in ports)))
        start(["nginx", "-c", str(conf), "-g", "daemon off;"])
        lb_port = free_port()
        token = "bench"
        start([sys.executable, "-m", "gunicorn", "-c", "python:ringlb_balancer.gunicorn_conf",
               "ringlb_balancer.wsgi:app"],
              {"RINGLB_BIND": f"127.0.0.1:{lb_port}", "RINGLB_WORKERS": str(args.workers),
               "RINGLB_MEMBERSHIP_TOKEN": token})
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/heartbeat")
        wait_http(f"http://127.0.0.1:{lb_port}/healthz")
        members = [{"name": f"Server {i}", "address": f"127.0.0.1:{p}"} for i, p in enumerate(ports, 1)]
        reply = requests.put(f"http://127.0.0.1:{lb_port}/membership",
                             json={"revision": 1, "members": members, "hashing": {"strategy": args.strategy}},
                             headers={"Authorization": f"Bearer {token}"}, timeout=5)
        reply.raise_for_status()
        wait_http(f"http://127.0.0.1:{nginx_port}/home")
        script = tmp / "random-id.lua"
        script.write_text(WRK_SCRIPT)
        targets = {"nginx": f"http://127.0.0.1:{nginx_port}/home", "ringlb": f"http://127.0.0.1:{lb_port}/home"}
        for url in targets.values():  # warm up pools and caches
            run_wrk(url, script, 2, args.connections, args.wrk_threads)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for r in range(args.rounds):
            for name, url in targets.items():
                results[name].append(run_wrk(url, script, args.seconds, args.connections, args.wrk_threads))
                print(f"round {r + 1} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {
        name: {k: statistics.median(r[k] for r in rounds) for k in ("rps", "p50", "p99")}
        | {"errors": sum(r["errors"] for r in rounds), "requests": sum(r["requests"] for r in rounds)}
        for name, rounds in results.items()
    }
    print(f"\nmachine: {os.cpu_count()} cores; wrk -t{args.wrk_threads} -c{args.connections} "
          f"{args.rounds}x{args.seconds}s per target, medians; balancer: {args.workers} "
          f"workers, strategy {args.strategy}")
    print(f"{'target':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'requests':>9}")
    for name, s in summary.items():
        print(f"{name:<8} {s['rps']:>10.0f} {s['p50']:>8.2f} {s['p99']:>8.2f} {s['errors']:>7} {s['requests']:>9}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "rounds": results}, indent=2))
    if args.plot:
        plot(summary, args, Path(args.plot))
    ratio = summary["ringlb"]["rps"] / summary["nginx"]["rps"]
    p99_ratio = summary["ringlb"]["p99"] / summary["nginx"]["p99"]
    print(f"ratio_vs_nginx={ratio:.2f} p99_ratio={p99_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
