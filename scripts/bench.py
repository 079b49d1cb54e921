"""`make bench`: the balancer against nginx (and HAProxy), in two tables, in one run.

Table 1, the replica bench: three replicas (the project's Flask app under gunicorn, as in the
images), nginx with `hash $http_x_request_id consistent` over them, and the balancer (gunicorn,
membership pushed as the operator does). Throughput and latency of the whole system.

Table 2, the overhead bench: three backends that answer from memory (ONE nginx process with three
`return 200` servers on three ports), so the backends are never the limit; in front of them nginx
(`hash $http_x_request_id consistent`, 1 worker), HAProxy (`balance hdr(X-Request-ID)` +
`hash-type consistent`, 1 thread) and the balancer (1 gunicorn worker). Besides req/s and
latency, the CPU seconds of each balancer's process tree (utime + stime of every process in it,
from /proc, read before and after each round) divided by the requests served: CPU µs/request.
The same table has nginx and the balancer terminating TLS with one certificate (trustme, made
here): `-tls` rows over keep-alive connections, `-tls-new` rows with a new connection per
request (`Connection: close`: wrk reconnects, and resumes the TLS session when the server
offers it; the table says whether each did).

Both tables: wrk with a random X-Request-ID per request, alternating rounds so every target sees
the same machine state, medians. The last line is
`ratio_vs_nginx=R p99_ratio=P cpu_ratio=C tls_cpu_ratio=T tls_new_cpu_ratio=H` (R and P from
table 1, C, T and H from table 2: ringlb's CPU per request over nginx's, plain, TLS keep-alive,
TLS new connection per request).
All traffic stays on 127.0.0.1; every process is started here and stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from ringlb_balancer.local.supervisor import replica_command
from ringlb_harness.balancer import Balancer
from ringlb_harness.net import free_port
from ringlb_harness.proc import cpu_seconds, descendants

ROOT = Path(__file__).resolve().parent.parent

WRK_SCRIPT = """
local counter = 0
local tid = 0
setup = function(thread) tid = tid + 1; thread:set("tid", tid) end
init = function(args) math.randomseed(os.time() * 1000 + (tid or 0)) end
request = function()
  return wrk.format("GET", "/home", {{["X-Request-ID"] = tostring(math.random(100000, 999999)){close}}})
end
"""
CLOSE_HEADER = ', ["Connection"] = "close"'  # one connection per request: wrk reconnects
NGINX_COMMON = """
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 4096; }}
"""
NGINX_TEMP = """
  access_log off;
  client_body_temp_path {tmp}/{name}-body; proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fcgi; uwsgi_temp_path {tmp}/{name}-uwsgi; scgi_temp_path {tmp}/{name}-scgi;
"""
# The balancer nginx: the same configuration in both tables.
NGINX_CONF = (
    NGINX_COMMON
    + """
worker_processes {nginx_workers};
http {{"""
    + NGINX_TEMP
    + """
  keepalive_requests 1000000;
  upstream replicas {{
    hash $http_x_request_id consistent;
{servers}
    keepalive 32;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port}{ssl};
{tls}
    location / {{
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503;
    }}
  }}
}}
"""
)
# The overhead bench's backends: one nginx process, three ports, the replica's /home answer.
BACKENDS_CONF = (
    NGINX_COMMON
    + """
worker_processes 1;
http {{"""
    + NGINX_TEMP
    + """
  keepalive_requests 1000000;
  default_type application/json;
{servers}
}}
"""
)
BACKEND_SERVER = """  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 '{{"message": "Hello from Server: Server {i}", "status": "successful"}}\\n'; }}
  }}"""
HAPROXY_CONF = """
global
  nbthread 1
  maxconn 4096
  pidfile {tmp}/haproxy.pid
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend front
  bind 127.0.0.1:{port}
  default_backend replicas
backend replicas
  balance hdr(X-Request-ID)
  hash-type consistent
{servers}
"""
# nginx's TLS as an operator would write it; sessions (tickets) left at the default, as in the
# balancer (the standard library's server defaults).
NGINX_TLS = """    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;"""
TOOLS = (("nginx-light", "nginx"), ("wrk", "wrk"), ("haproxy", "haproxy"), ("linux-perf", "perf"))
BALANCERS = ("nginx", "haproxy", "ringlb", "nginx-tls", "ringlb-tls", "nginx-tls-new", "ringlb-tls-new")


def ensure_tools(binaries: set[str]) -> None:
    missing = [pkg for pkg, binary in TOOLS if binary in binaries and not shutil.which(binary)]
    if missing:
        print(f"installing {', '.join(missing)} with apt-get", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env).returncode:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)  # a new machine's lists are empty
            subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def wait_http(url: str, timeout: float = 20.0, verify: str | bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1, verify=verify).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout:g}s")


def run_wrk(
    url: str, script: Path, seconds: int, connections: int, threads: int, tree: int | None = None
) -> dict[str, float]:
    """One wrk run; with ``tree`` (a root PID) also the CPU seconds that process tree spent."""
    before = cpu_seconds(tree) if tree else 0.0
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    cpu = cpu_seconds(tree) - before if tree else 0.0
    rps = float(_found(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(_found(r"(\d+) requests in", out).group(1))
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    result = {"rps": rps, "p50": pct["50"], "p99": pct["99"], "errors": errors, "requests": total}
    if tree:
        result |= {"cpu_s": round(cpu, 3), "cpu_us": cpu / max(total, 1) * 1e6}
    return result


def _found(pattern: str, text: str) -> re.Match[str]:
    """``pattern`` in wrk's output, which has it unless wrk failed: then the output says why."""
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"wrk's output has no {pattern!r}:\n{text}")
    return m


def _ms(text: str) -> float:
    value, unit = _found(r"^([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


class Processes:
    """Processes started by this script, each logging to its own file; stopped by PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen[bytes], int]] = []
        self.balancers: list[Balancer] = []  # ringlb (ringlb_harness.balancer), logging in tmp too

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, stop: int = signal.SIGTERM
    ) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "ab") as log:  # the child holds its own copy
            proc = subprocess.Popen(cmd, env=dict(os.environ, **(env or {})), stdout=log, stderr=log)
        self.procs.append((name, proc, stop))
        return proc

    def check(self) -> None:
        for name, proc, _ in self.procs + [(b.log_path.stem, b.process, signal.SIGINT) for b in self.balancers]:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")

    def stop(self) -> None:
        for balancer in self.balancers:
            balancer.stop()  # SIGINT: gunicorn's quick shutdown
        self.balancers.clear()
        for _, proc, sig in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(sig)
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def tail(self, lines: int = 15) -> str:
        out = []
        for log in sorted(self.tmp.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            if text:
                out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)


def start_ringlb(
    procs: Processes, workers: int, members: list[tuple[str, int]], strategy: str, tls: Certificate | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """The balancer exactly as the image runs it, its membership pushed as the operator does
    (with ``tls``, to a plain admin port, as in the pods)."""
    env = {"RINGLB_DRAIN_SECONDS": "0"}
    if tls:
        env |= {"RINGLB_TLS_CERT": str(tls.chain), "RINGLB_TLS_KEY": str(tls.key)}
    balancer = Balancer(
        procs.tmp,
        token="bench",
        admin=tls is not None,
        workers=workers,
        env=env,
        name="ringlb-tls" if tls else "ringlb",
        wait=False,  # its public port may speak TLS: ready once the admin port answers
        health_interval=None,
    )
    procs.balancers.append(balancer)
    wait_http(f"{balancer.admin_url}/healthz")
    balancer.push(members, hashing={"strategy": strategy})
    return balancer.process, balancer.port


def alternate(
    targets: dict[str, str],
    trees: dict[str, int],
    args: argparse.Namespace,
    script: Path,
    label: str,
    scripts: dict[str, Path] | None = None,
) -> dict[str, list[dict[str, float]]]:
    """Rounds of every target in turn; ``scripts`` gives some targets another wrk script."""
    scripts = scripts or {}
    for name, url in targets.items():  # warm up pools and caches
        run_wrk(url, scripts.get(name, script), args.warmup, args.connections, args.wrk_threads)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for r in range(args.rounds):
        for name, url in targets.items():
            results[name].append(
                run_wrk(
                    url, scripts.get(name, script), args.seconds, args.connections, args.wrk_threads, trees.get(name)
                )
            )
            print(f"{label} round {r + 1} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    return results


def summarize(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    summary = {}
    for name, rounds in results.items():
        keys = ["rps", "p50", "p99"] + (["cpu_us"] if "cpu_us" in rounds[0] else [])
        summary[name] = {k: statistics.median(r[k] for r in rounds) for k in keys} | {
            "errors": sum(r["errors"] for r in rounds),
            "requests": sum(r["requests"] for r in rounds),
        }
    return summary


def replica_bench(args: argparse.Namespace, tmp: Path, script: Path) -> dict[str, list[dict[str, float]]]:
    procs = Processes(tmp / "replicas")
    procs.tmp.mkdir()
    try:
        ports = [free_port() for _ in range(3)]
        for i, port in enumerate(ports, 1):
            procs.start(
                f"replica{i}",
                replica_command(port),
                {"SERVER_ID": f"Server {i}"},
                stop=signal.SIGINT,
            )
        nginx_port = free_port()
        conf = procs.tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=procs.tmp,
                name="nginx",
                port=nginx_port,
                nginx_workers=args.nginx_workers,
                ssl="",
                tls="",
                servers="\n".join(f"    server 127.0.0.1:{p};" for p in ports),
            )
        )
        procs.start("nginx", ["nginx", "-c", str(conf), "-g", "daemon off;"])
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/heartbeat")
        _, lb_port = start_ringlb(
            procs, args.workers, [(f"Server {i}", p) for i, p in enumerate(ports, 1)], args.strategy
        )
        wait_http(f"http://127.0.0.1:{nginx_port}/home")
        targets = {"nginx": f"http://127.0.0.1:{nginx_port}/home", "ringlb": f"http://127.0.0.1:{lb_port}/home"}
        results = alternate(targets, {}, args, script, "replicas")
        procs.check()
        return results
    except Exception:
        print(procs.tail(), file=sys.stderr)
        raise
    finally:
        procs.stop()


@dataclass(frozen=True)
class Certificate:
    """The one certificate every TLS target serves (trustme: an ECDSA leaf for 127.0.0.1)."""

    chain: Path
    key: Path
    ca: Path


def make_certificate(tmp: Path) -> Certificate:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert = Certificate(tmp / "chain.pem", tmp / "key.pem", tmp / "ca.pem")
    cert.chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(cert.key))
    ca.cert_pem.write_to_path(str(cert.ca))
    return cert


def tls_probe(url: str, cert: Certificate) -> dict[str, Any]:
    """What wrk's reconnects get from a TLS target: wrk speaks TLS 1.2 and offers the previous
    connection's session, so a `-tls-new` row measures full handshakes only where ``resumed``
    is false. Two connections from a TLS 1.2 client, the second offering the first's session."""
    port = int(url.split(":")[2].split("/")[0])
    context = ssl.create_default_context(cafile=str(cert.ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    session, found = None, {}
    for _ in range(2):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as conn,
        ):
            conn.sendall(b"GET /home HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: 1\r\nConnection: close\r\n\r\n")
            while conn.recv(65536):
                pass
            session = conn.session
            found = {"version": conn.version(), "cipher": (conn.cipher() or ("?",))[0], "resumed": conn.session_reused}
    return found


def start_target(
    procs: Processes, server: str, ports: list[int], args: argparse.Namespace, cert: Certificate | None
) -> tuple[subprocess.Popen[bytes], str]:
    """One balancer of the overhead table in front of the backends: nginx, haproxy or ringlb,
    ``-tls`` terminating TLS with ``cert``; its process and URL."""
    base, tls = server.removesuffix("-tls"), server.endswith("-tls")
    port = free_port()
    if base == "nginx":
        conf = procs.tmp / f"{server}.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=procs.tmp,
                name=server,
                port=port,
                nginx_workers=1,
                ssl=" ssl" if tls else "",
                tls=NGINX_TLS.format(cert=cert.chain, key=cert.key) if tls and cert else "",
                servers="\n".join(f"    server 127.0.0.1:{p};" for p in ports),
            )
        )
        proc = procs.start(server, ["nginx", "-c", str(conf), "-g", "daemon off;"])
    elif base == "haproxy":
        conf = procs.tmp / "haproxy.cfg"
        conf.write_text(
            HAPROXY_CONF.format(
                tmp=procs.tmp,
                port=port,
                servers="\n".join(f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(ports, 1)),
            )
        )
        proc = procs.start("haproxy", ["haproxy", "-db", "-f", str(conf)], stop=signal.SIGTERM)
    else:
        proc, port = start_ringlb(
            procs, 1, [(f"Server {i}", p) for i, p in enumerate(ports, 1)], args.strategy, cert if tls else None
        )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/home"
    wait_http(url, verify=str(cert.ca) if tls and cert else True)
    return proc, url


def overhead_bench(
    args: argparse.Namespace, tmp: Path, script: Path, close_script: Path
) -> tuple[dict[str, list[dict[str, float]]], dict[str, dict[str, Any]]]:
    """The rounds of every target, and what ``tls_probe`` found of each TLS one."""
    procs = Processes(tmp / "overhead")
    procs.tmp.mkdir()
    try:
        ports = [free_port() for _ in range(3)]
        conf = procs.tmp / "backends.conf"
        conf.write_text(
            BACKENDS_CONF.format(
                tmp=procs.tmp,
                name="backends",
                servers="\n".join(BACKEND_SERVER.format(port=p, i=i) for i, p in enumerate(ports, 1)),
            )
        )
        procs.start("backends", ["nginx", "-c", str(conf), "-g", "daemon off;"])
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/home")
        cert = (
            make_certificate(procs.tmp) if any(name.endswith(("-tls", "-tls-new")) for name in args.balancers) else None
        )
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        trees: dict[str, int] = {}
        targets: dict[str, str] = {}
        scripts: dict[str, Path] = {}
        for name in args.balancers:
            server = name.removesuffix("-new")  # a -tls-new row loads its -tls server
            if server not in servers:
                servers[server] = start_target(procs, server, ports, args, cert)
            proc, targets[name] = servers[server]
            trees[name] = proc.pid
            if name != server:
                scripts[name] = close_script
        probes = {
            server: tls_probe(url, cert) for server, (_, url) in servers.items() if cert and url.startswith("https")
        }
        results = alternate(targets, trees, args, script, "overhead", scripts)
        if args.profile and "ringlb" in trees:
            profile(trees["ringlb"], targets["ringlb"], script, args)
        procs.check()
        return results, probes
    except Exception:
        print(procs.tail(), file=sys.stderr)
        raise
    finally:
        procs.stop()


def profile(master: int, url: str, script: Path, args: argparse.Namespace) -> None:
    """perf on the ringlb worker under the overhead load: where its CPU goes by shared object
    (kernel, libpython, the compiled proxy modules, llhttp, uvloop) and by symbol. perf, not a
    Python sampler: the per-request modules are compiled, and half the cost is in the kernel."""
    ensure_tools({"perf"})
    # the one worker of the overhead bench: the busiest process below the master
    worker = max(descendants(master), key=cpu_seconds)
    prefix, seconds = Path(args.profile), args.profile_seconds
    prefix.parent.mkdir(parents=True, exist_ok=True)
    data = prefix.with_suffix(".perf.data")
    record = subprocess.Popen(
        ["perf", "record", "-q", "-F", "499", "-p", str(worker), "-o", str(data), "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    load = run_wrk(url, script, seconds, args.connections, args.wrk_threads, master)
    _, err = record.communicate(timeout=seconds + 30)
    if record.returncode:
        raise RuntimeError(f"perf record failed: {err.decode(errors='replace')[-500:]}")
    reports = [
        f"perf, ringlb worker under the overhead load: {load['rps']:.0f} req/s, "
        f"{load.get('cpu_us', 0):.0f} CPU µs/request (process tree)"
    ]
    for sort, top in (("dso", 12), ("dso,sym", 30)):
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort, "--percent-limit", "0.5"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [line for line in out.splitlines() if line.strip() and not line.startswith("#")]
        reports += ["", f"by {sort} (top {top}):", *rows[:top]]
    data.unlink()
    text = "\n".join(reports) + "\n"
    prefix.with_suffix(".txt").write_text(text)
    print(text, file=sys.stderr)


def print_table(title: str, summary: dict[str, dict[str, float]]) -> None:
    cpu = any("cpu_us" in s for s in summary.values())
    width = max(8, *(len(name) for name in summary))
    print(title)
    print(
        f"{'target':<{width}} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
        + (f" {'CPU µs/req':>11}" if cpu else "")
        + f" {'errors':>7} {'requests':>9}"
    )
    for name, s in summary.items():
        print(
            f"{name:<{width}} {s['rps']:>10.0f} {s['p50']:>8.2f} {s['p99']:>8.2f}"
            + (f" {s['cpu_us']:>11.1f}" if cpu else "")
            + f" {s['errors']:>7} {s['requests']:>9}"
        )


def plot(tables: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["figure.constrained_layout.use"] = True
    colors = {"nginx": "#7f7f7f", "haproxy": "#ff7f0e", "ringlb": "#1f77b4"}
    rows = [(name, summary) for name, summary in tables.items() if summary]
    fig = plt.figure(figsize=(11, 3.9 * len(rows)))
    for sub, (table, summary) in zip(fig.subfigures(len(rows), 1, squeeze=False)[:, 0], rows):
        names = list(summary)
        if table == "replicas":
            metrics = (
                ("rps", "req/s (higher is better)"),
                ("p50", "p50 latency, ms"),
                ("p99", "p99 latency, ms (lower is better)"),
            )
            heading = (
                f"replica bench: 3 Flask replicas; ringlb {args.workers} workers, nginx {args.nginx_workers} worker"
            )
        else:
            metrics = (
                ("rps", "req/s"),
                ("p99", "p99 latency, ms"),
                ("cpu_us", "balancer CPU µs per request (lower is better)"),
            )
            heading = (
                "overhead bench: backends answer from memory; each balancer 1 worker / 1 thread; "
                "-tls: TLS, keep-alive; -tls-new: a new TLS connection per request"
            )
        for ax, (metric, label) in zip(sub.subplots(1, 3), metrics):
            bars = ax.bar(names, [summary[n][metric] for n in names], color=[colors[n.split("-")[0]] for n in names])
            for bar, name in zip(bars, names):
                bar.set_hatch("xx" if name.endswith("-tls-new") else "//" if name.endswith("-tls") else "")
            ax.bar_label(bars, fmt="%.0f" if metric in ("rps", "cpu_us") else "%.1f")
            if len(names) > 3:
                ax.tick_params(axis="x", labelrotation=35, labelsize=8)
            ax.set_title(label, fontsize=10)
            ax.margins(y=0.15)
        sub.suptitle(heading, fontsize=10, fontweight="bold")
    fig.suptitle(
        f"ringlb vs nginx / HAProxy; {os.cpu_count()} cores, wrk -t{args.wrk_threads} "
        f"-c{args.connections}, median of {args.rounds} x {args.seconds}s",
        fontsize=10,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, help="per round (default 10; --quick 3)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per target (default 3; --quick 1)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up per target (default 2; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 3 s per target")
    parser.add_argument(
        "--tables", default="replicas,overhead", help="which tables: replicas, overhead or both (default)"
    )
    parser.add_argument(
        "--balancers", default=",".join(BALANCERS), help=f"of the overhead table (default {','.join(BALANCERS)})"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="balancer gunicorn workers, replica table")
    parser.add_argument("--nginx-workers", default="1", help="nginx workers, replica table")
    parser.add_argument("--strategy", default="maglev")
    parser.add_argument("--json", help="also write the figures (every round) here")
    parser.add_argument(
        "--plot",
        nargs="?",
        const=str(ROOT / "docs" / "benchmarks.png"),
        help="also draw both tables into this PNG (default docs/benchmarks.png)",
    )
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="after the overhead rounds, perf the ringlb worker under the same load: "
        "PREFIX.txt (CPU by shared object and by symbol)",
    )
    parser.add_argument("--profile-seconds", type=int, default=10)
    args = parser.parse_args()
    for name, normal, quick in (("seconds", 10, 3), ("rounds", 3, 1), ("warmup", 2, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    args.balancers = [b.strip() for b in args.balancers.split(",") if b.strip()]
    if set(tables) - {"replicas", "overhead"} or set(args.balancers) - set(BALANCERS):
        parser.error(f"--tables takes replicas,overhead; --balancers takes {','.join(BALANCERS)}")
    ensure_tools({"nginx", "wrk"} | ({"haproxy"} if "overhead" in tables and "haproxy" in args.balancers else set()))

    tmp = Path(tempfile.mkdtemp(prefix="ringlb-bench-"))
    script, close_script = tmp / "random-id.lua", tmp / "random-id-close.lua"
    script.write_text(WRK_SCRIPT.format(close=""))
    close_script.write_text(WRK_SCRIPT.format(close=CLOSE_HEADER))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    probes: dict[str, dict[str, Any]] = {}
    load = os.getloadavg()
    try:
        if "replicas" in tables:
            results["replicas"] = replica_bench(args, tmp, script)
        if "overhead" in tables:
            results["overhead"], probes = overhead_bench(args, tmp, script, close_script)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summaries = {name: summarize(r) for name, r in results.items()}
    load_after = os.getloadavg()

    print(
        f"\nmachine: {os.cpu_count()} cores, load average {load[0]:.2f} before, {load_after[0]:.2f} after; "
        f"wrk -t{args.wrk_threads} -c{args.connections}, {args.rounds}x{args.seconds}s per target, medians"
    )
    if "replicas" in summaries:
        print_table(
            f"\nreplica bench: 3 Flask replicas; balancer {args.workers} workers, nginx "
            f"{args.nginx_workers} worker, strategy {args.strategy}",
            summaries["replicas"],
        )
    if "overhead" in summaries:
        print_table(
            "\noverhead bench: 3 backends answering from memory (one nginx); each balancer 1 "
            "worker / 1 thread; CPU = the balancer's process tree; -tls: TLS with one certificate, "
            "keep-alive; -tls-new: a new TLS connection per request",
            summaries["overhead"],
        )
        for server, probe in probes.items():
            print(
                f"{server}: wrk's TLS {probe['version']} {probe['cipher']}; a new connection "
                f"{'resumes the session (abbreviated handshake)' if probe['resumed'] else 'makes a full handshake'}"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "load_average": [load[0], load_after[0]],
                    "summary": summaries,
                    "rounds": results,
                    "tls": probes,
                },
                indent=2,
                default=str,
            )
        )
    if args.plot:
        plot(summaries, args, Path(args.plot))
    last = []
    if "replicas" in summaries:
        s = summaries["replicas"]
        last += [
            f"ratio_vs_nginx={s['ringlb']['rps'] / s['nginx']['rps']:.2f}",
            f"p99_ratio={s['ringlb']['p99'] / s['nginx']['p99']:.2f}",
        ]
    for field, row in (("cpu_ratio", ""), ("tls_cpu_ratio", "-tls"), ("tls_new_cpu_ratio", "-tls-new")):
        s = summaries.get("overhead") or {}
        if {f"ringlb{row}", f"nginx{row}"} <= set(s):
            last.append(f"{field}={s[f'ringlb{row}']['cpu_us'] / s[f'nginx{row}']['cpu_us']:.2f}")
    print(" ".join(last))
    return 0


if __name__ == "__main__":
    sys.exit(main())
