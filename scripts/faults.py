#!/usr/bin/env python3
"""Fault figures for ringlb under steady load: what a client sees when a part of it dies.

    make faults                                   # every scenario, about 3 minutes on 2 cores
    .venv/bin/python scripts/faults.py --only replica-kill,master-kill --doc ''

Each scenario starts a fresh ``ringlb dev`` stack (supervisor, a gunicorn balancer with two
ProxyWorker workers, three gunicorn replicas) on a free loopback port, drives it with a steady
open-loop load (default 200 req/s of ``GET /home`` with a random 6-digit ``X-Request-ID``,
asyncio + aiohttp, keep-alive connections, 10 s client timeout), injects one fault after
``--before`` seconds and counts, from the client's side:

- **failed of total**: requests that got no answer or an answer other than the replica's
  (GET: 200 with "Hello from Server: ..."; POST: the replica's 405, as it serves only GET);
- **outage**: the longest stretch with failures: from the start of a failed request to the end
  of the last one, failures less than 1 s apart joined; 0 when nothing failed;
- latency p99 / max of the answered requests (a stopped replica shows up there, not as failures).

Scenarios: ``replica-kill`` (SIGKILL the gunicorn master and worker of one replica),
``replica-stop`` (SIGSTOP them 5 s, then SIGCONT), ``worker-kill`` (SIGKILL one balancer
worker), ``master-kill`` (SIGKILL the balancer's gunicorn master), ``supervisor-kill``
(SIGKILL ``ringlb dev`` itself: nothing restarts it; what happens to its children),
``scale`` (20 parallel calls, 10 ``POST /add {"n": 1}`` and 10 ``DELETE /rm {"n": 1}``), and
``post-replica-kill`` (the replica SIGKILL under a load of non-idempotent POSTs: failures are
counted apart, and the replicas' access logs show whether any POST reached a replica twice).

Processes are found from /proc: the children of the ``ringlb dev`` process, replicas by the
``--bind`` port in their command line matched with ``GET /membership``. Every process a stack
started is remembered with its start time and killed by PID at the end if still there, also on
Ctrl-C; all traffic stays on 127.0.0.1. Prints one table and writes ``docs/faults.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ringlb_harness.load import LoadResult, OpenLoad, Sample, random_request_id
from ringlb_harness.local import LocalMode
from ringlb_harness.proc import alive, children, cmdline, start_ticks
from ringlb_harness.prometheus import total
from ringlb_harness.stats import percentile

ROOT = Path(__file__).resolve().parent.parent
VICTIM = "Server 2"
ACCESS_LINE = re.compile(r"^POST /home (\d{3}) (\S+)\s*$")
SCENARIOS = (
    "replica-kill",
    "replica-stop",
    "worker-kill",
    "master-kill",
    "supervisor-kill",
    "scale",
    "post-replica-kill",
)


def log(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# One ``ringlb dev`` stack
# ----------------------------------------------------------------------------------------------
class Stack(LocalMode):
    """``ringlb dev`` (harness LocalMode, stopped with the script if it dies) whose every process
    is remembered with its start time, so that a signal never reaches a PID reused since."""

    def __init__(self, workdir: Path, replicas: int = 3, env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, "--replicas", str(replicas), env=env, die_with_parent=True)
        self.workdir = workdir
        self.replicas = replicas
        self.seen: dict[int, int] = {}  # pid -> start ticks, every process of this stack ever seen
        self.stopped: set[int] = set()  # SIGSTOPped by us: SIGCONT before stopping the stack
        self.lock = threading.Lock()

    # -- processes ------------------------------------------------------------------------
    def track(self) -> None:
        """Remember every live process below the supervisor (respawned ones too)."""
        todo = [self.process.pid]
        while todo:
            pid = todo.pop()
            for kid in children(pid):
                ticks = start_ticks(kid)
                if ticks is not None:
                    with self.lock:
                        self.seen.setdefault(kid, ticks)
                    todo.append(kid)

    def live_seen(self) -> list[int]:
        with self.lock:
            items = list(self.seen.items())
        return [pid for pid, ticks in items if alive(pid, ticks)]

    def replica_port(self, name: str) -> int:
        address = next(m["address"] for m in self.membership()["members"] if m["name"] == name)
        return int(address.rsplit(":", 1)[1])

    def replica_masters(self) -> dict[int, int]:
        """bind port -> gunicorn master pid of that replica."""
        found = {}
        for pid in self.running("ringlb_replica.wsgi:app"):
            args = cmdline(pid)
            if "--bind" in args:
                found[int(args[args.index("--bind") + 1].rsplit(":", 1)[1])] = pid
        return found

    def signal(self, pids: list[int], sig: int) -> None:
        for pid in pids:
            ticks = self.seen.get(pid)
            if ticks is None or alive(pid, ticks):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if sig == signal.SIGSTOP:
            self.stopped.update(pids)
        elif sig == signal.SIGCONT:
            self.stopped.difference_update(pids)

    # -- readiness and stop ---------------------------------------------------------------
    def ring(self, timeout: float = 2.0) -> list[str]:
        return self.session.get(f"{self.url}/rep", timeout=timeout).json()["message"]["replicas"]

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds until ``/rep`` lists every replica."""
        t0 = time.monotonic()
        self.wait_replicas(self.replicas, timeout)
        self.track()
        return time.monotonic() - t0

    def stop(self) -> list[int]:  # type: ignore[override] # the PIDs left, not their command lines: what the table counts
        """SIGCONT what we stopped, Ctrl-C to the supervisor (it stops its children), then
        SIGKILL by PID whatever of this stack is still there. Returns the PIDs that had to be killed."""
        if self.process.poll() is None:
            self.track()
        if self.stopped:
            self.signal(sorted(self.stopped), signal.SIGCONT)
        return sorted(super().stop())


# ----------------------------------------------------------------------------------------------
# Load: open loop (ringlb_harness.load.OpenLoad)
# ----------------------------------------------------------------------------------------------
def open_load(url: str, rate: float, seconds: float, method: str, seed: int) -> OpenLoad:
    """``rate`` requests/s for ``seconds`` s, each with its own random key (GET: a 6-digit id, as
    the seed's client sent; POST: unique, so that each POST is found once in the replicas'
    access logs)."""
    rng = random.Random(seed)
    count = int(rate * seconds)
    if method == "GET":
        keys = [random_request_id(rng) for _ in range(count)]
    else:
        keys = [f"p{i:05d}x{rng.randrange(10**6):06d}" for i in range(count)]
    body = (lambda i: b'{"order": %d}' % i) if method == "POST" else None
    return OpenLoad(url, rate, keys, method=method, body=body)


class Monitor:
    """Every 0.1 s: GET /healthz (its latency) and GET /rep (the ring), and track processes."""

    def __init__(self, stack: Stack, member: str = "") -> None:
        self.stack = stack
        self.member = member  # also poll /metrics: is this member in rotation (not ejected)?
        self.polls: list[tuple[float, float | None, list[str] | None]] = []  # (t, healthz s, /rep)
        self.up: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="monitor")

    def start(self) -> Monitor:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.wait(0.1):
            t = time.monotonic()
            if self.stack.process.poll() is None:
                self.stack.track()
            health: float | None = None
            ring: list[str] | None = None
            try:
                if session.get(f"{self.stack.url}/healthz", timeout=5).status_code == 200:
                    health = time.monotonic() - t
                ring = session.get(f"{self.stack.url}/rep", timeout=2).json()["message"]["replicas"]
            except (requests.RequestException, ValueError, KeyError, TypeError):
                pass
            self.polls.append((t, health, ring))
            if self.member:
                try:
                    t = time.monotonic()
                    text = session.get(f"{self.stack.url}/metrics", timeout=2).text
                    value = total(text, "ringlb_member_up", member=self.member)
                    self.up.append((t, value > 0))
                except requests.RequestException:
                    pass
        session.close()


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def figures(result: LoadResult, t_fault: float) -> dict[str, Any]:
    """The figures of one scenario; sample times are seconds since the load started, shifted
    onto the clock of ``t_fault``."""
    t_fault -= result.started_at
    records = result.samples
    failed = [r for r in records if r.failure is not None]
    windows: list[tuple[float, float]] = []
    for r in failed:
        if windows and r.start - windows[-1][1] < 1.0:
            windows[-1] = (windows[-1][0], max(windows[-1][1], r.end))
        else:
            windows.append((r.start, r.end))
    longest = max(windows, key=lambda w: w[1] - w[0], default=None)
    lat = result.latencies_ms
    return {
        "total": len(records),
        "failed": len(failed),
        "kinds": dict(Counter(r.failure for r in failed).most_common()),
        "outage_s": round(longest[1] - longest[0], 3) if longest else 0.0,
        "outage_from_s": round(longest[0] - t_fault, 3) if longest else None,
        "first_failure_s": round(failed[0].start - t_fault, 3) if failed else None,
        "last_failure_end_s": round(max(r.end for r in failed) - t_fault, 3) if failed else None,
        "p50_ms": round(percentile(lat, 50) or 0, 1) if lat else None,
        "p99_ms": round(percentile(lat, 99) or 0, 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "over_1s": sum(1 for x in lat if x > 1000),
        "answers": dict(sorted(result.per_replica.items())),
    }


def first_after(
    polls: list[tuple[float, float | None, list[str] | None]],
    t: float,
    pred: Callable[[float | None, list[str] | None], bool],
) -> float | None:
    return next((p[0] - t for p in polls if p[0] >= t and pred(p[1], p[2])), None)


def ejection(monitor: Monitor, t: float) -> tuple[float | None, float | None]:
    """When the victim left rotation (ringlb_member_up 0) after ``t``, and when it came back."""
    out = next((ts - t for ts, up in monitor.up if ts >= t and not up), None)
    back = next((ts - t for ts, up in monitor.up if out is not None and ts >= t + out and up), None)
    return out, back


def fmt(v: float | None, unit: str = " s", digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}{unit}"


# ----------------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------------
@dataclass
class Opts:
    rate: float
    seconds: float
    before: float
    workdir: Path
    seed: int
    scale_replicas: int = 3


@dataclass
class Outcome:
    name: str
    title: str
    figures: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    orphans: list[int] = field(default_factory=list)
    ready_s: float = 0.0


def run_scenario(name: str, opts: Opts) -> Outcome:
    workdir = opts.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    env = {}
    if name == "post-replica-kill":
        # gunicorn reads GUNICORN_CMD_ARGS: the replicas log each request with its key, which
        # tells how often each POST reached a replica (the balancer writes no access log).
        env["GUNICORN_CMD_ARGS"] = "--access-logfile - --access-logformat '%(m)s %(U)s %(s)s %({x-request-id}i)s'"
    stack = Stack(workdir, replicas=opts.scale_replicas if name == "scale" else 3, env=env)
    monitor: Monitor | None = None
    load: OpenLoad | None = None
    try:
        ready = stack.wait_ready()
        log(f"{name}: stack ready on {stack.url} in {ready:.1f} s (supervisor pid {stack.process.pid})")
        monitor = Monitor(stack, member=VICTIM if "replica" in name else "").start()
        method = "POST" if name == "post-replica-kill" else "GET"
        seconds = {"supervisor-kill": opts.before + 5.0, "scale": 40.0}.get(name, opts.seconds)
        load = open_load(f"{stack.url}/home", opts.rate, seconds, method, opts.seed).start()
        time.sleep(opts.before)
        metrics_before = metrics(stack)
        outcome = FAULTS[name](stack, load, monitor, opts)
        result = load.join()
        monitor.stop()
        if name not in ("master-kill", "supervisor-kill"):  # a new balancer's counters start at 0
            metrics_after = metrics(stack)
            retries = total(metrics_after, "ringlb_retries_total") - total(metrics_before, "ringlb_retries_total")
            ejections = total(metrics_after, "ringlb_ejections_total") - total(metrics_before, "ringlb_ejections_total")
            outcome.notes.append(f"balancer retries {retries:.0f}, ejections {ejections:.0f}")
        outcome.figures = figures(result, outcome.extra.pop("t_fault"))
        outcome.notes = [n.format(**outcome.figures) if "{over_1s}" in n else n for n in outcome.notes]
        outcome.ready_s = ready
        if name == "post-replica-kill":
            post_check(stack, result.samples, outcome)
        return outcome
    finally:
        if load is not None:
            load.stop()
        if monitor is not None:
            monitor.stop()
        orphans = stack.stop()
        if orphans:
            log(f"{name}: killed {len(orphans)} leftover process(es) by PID: {orphans}")
        stack_orphans[name] = orphans


stack_orphans: dict[str, list[int]] = {}


def metrics(stack: Stack) -> str:
    try:
        return stack.session.get(f"{stack.url}/metrics", timeout=5).text
    except requests.RequestException:
        return ""


def replica_kill(stack: Stack, load: OpenLoad, monitor: Monitor, opts: Opts, title: str = "") -> Outcome:
    port = stack.replica_port(VICTIM)
    pids = stack.replica_pids(VICTIM)
    t = time.monotonic()
    stack.signal(pids, signal.SIGKILL)
    respawned = None
    while time.monotonic() - t < opts.seconds - opts.before:
        master = stack.replica_masters().get(port)
        if respawned is None and master is not None and master not in pids:
            respawned = time.monotonic() - t
        time.sleep(0.02)
    gone = first_after(monitor.polls, t, lambda h, ring: ring is not None and VICTIM not in ring)
    back = (
        first_after(monitor.polls, t + (gone or 0), lambda h, ring: ring is not None and VICTIM in ring)
        if gone is not None
        else None
    )
    out, _up = ejection(monitor, t)
    return Outcome(
        "",
        title or f"replica SIGKILL ({VICTIM}: gunicorn master + worker)",
        {},
        notes=[
            f"ejected after {fmt(out)}" if out is not None else "",
            f"left /rep after {fmt(gone)}" if gone is not None else "never left /rep (between two polls)",
            f"respawned by the supervisor after {fmt(respawned)}",
            f"back in /rep after {fmt((gone or 0) + back) if back is not None else '–'}",
        ],
        extra={"t_fault": t, "killed": pids},
    )


def replica_stop(stack: Stack, load: OpenLoad, monitor: Monitor, opts: Opts) -> Outcome:
    pids = stack.replica_pids(VICTIM)
    t = time.monotonic()
    stack.signal(pids, signal.SIGSTOP)
    time.sleep(5.0)
    t_cont = time.monotonic()
    stack.signal(pids, signal.SIGCONT)
    time.sleep(max(0.0, opts.seconds - opts.before - 5.0))
    gone = first_after(monitor.polls, t, lambda h, ring: ring is not None and VICTIM not in ring)
    back = first_after(monitor.polls, t_cont, lambda h, ring: ring is not None and VICTIM in ring)
    out, up = ejection(monitor, t)
    return Outcome(
        "",
        f"replica SIGSTOP 5 s, then SIGCONT ({VICTIM})",
        {},
        notes=[
            f"ejected after {fmt(out)} (heartbeats), in rotation again {fmt(up - (t_cont - t) if up else None)} "
            "after SIGCONT"
            if out is not None
            else "never ejected",
            f"left /rep after {fmt(gone)}, back {fmt(back)} after SIGCONT" if gone is not None else "stayed in /rep",
            "answered requests slower than 1 s: {over_1s} "
            "(sent to it before the ejection; they move to the next member when it is ejected)",
        ],
        extra={"t_fault": t},
    )


def worker_kill(stack: Stack, load: OpenLoad, monitor: Monitor, opts: Opts) -> Outcome:
    master = stack.balancer_master()
    assert master is not None
    workers = children(master)
    victim = workers[0]
    t = time.monotonic()
    stack.signal([victim], signal.SIGKILL)
    replaced = None
    while time.monotonic() - t < opts.seconds - opts.before:
        if replaced is None and len([w for w in children(master) if w not in workers]) >= 1:
            replaced = time.monotonic() - t
        time.sleep(0.02)
    return Outcome(
        "",
        "balancer worker SIGKILL (1 of 2)",
        {},
        notes=[
            f"gunicorn started a new worker after {fmt(replaced)}",
        ],
        extra={"t_fault": t},
    )


def master_kill(stack: Stack, load: OpenLoad, monitor: Monitor, opts: Opts) -> Outcome:
    master = stack.balancer_master()
    assert master is not None
    workers = children(master)
    t = time.monotonic()
    stack.signal([master], signal.SIGKILL)
    new_master = workers_gone = None
    while time.monotonic() - t < opts.seconds - opts.before:
        now = time.monotonic() - t
        current = stack.balancer_master()
        if new_master is None and current is not None and current != master:
            new_master = now
        if workers_gone is None and not any(alive(w, stack.seen.get(w)) for w in workers):
            workers_gone = now
        time.sleep(0.02)
    # by the monitor's polls: down = /healthz unanswered or an empty ring (the new balancer
    # before the supervisor's push); up again = both fine after that
    down = first_after(monitor.polls, t, lambda h, ring: h is None or not ring)
    up = (
        first_after(monitor.polls, t + down, lambda h, ring: h is not None and bool(ring)) if down is not None else None
    )
    return Outcome(
        "",
        "balancer master SIGKILL (the supervisor restarts the balancer)",
        {},
        notes=[
            f"old workers exited after {fmt(workers_gone)}",
            f"supervisor started a new balancer after {fmt(new_master)}",
            f"polls: refused or empty ring from {fmt(down)} to {fmt(down + up if up is not None else None)}"
            if down is not None
            else "polls saw no gap",
        ],
        extra={"t_fault": t},
    )


def supervisor_kill(stack: Stack, load: OpenLoad, monitor: Monitor, opts: Opts) -> Outcome:
    stack.track()
    before = stack.live_seen()
    t = time.monotonic()
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait(5)
    all_gone = None
    while time.monotonic() - t < 10.0:
        if not stack.live_seen():
            all_gone = time.monotonic() - t
            break
        time.sleep(0.02)
    left = stack.live_seen()
    refused = first_after(monitor.polls, t, lambda h, ring: h is None)
    return Outcome(
        "",
        "supervisor (`ringlb dev`) SIGKILL",
        {},
        notes=[
            f"{len(before)} child processes got SIGTERM (PR_SET_PDEATHSIG) and stopped: all gone after {fmt(all_gone)}"
            if all_gone is not None
            else f"{len(left)} of {len(before)} still running 10 s later: {left}",
            f"the balancer stopped answering after {fmt(refused)}; nothing restarts it (no outage end: "
            "the stack is down until `ringlb dev` is started again)",
        ],
        extra={"t_fault": t, "children": len(before), "left": left},
    )


def scale(stack: Stack, load: OpenLoad, monitor: Monitor, opts: Opts) -> Outcome:
    calls: list[dict[str, Any]] = [{} for _ in range(20)]
    barrier = threading.Barrier(20)

    def call(i: int) -> None:
        method, path = ("POST", "/add") if i % 2 == 0 else ("DELETE", "/rm")
        try:
            barrier.wait(10)
        except threading.BrokenBarrierError:
            pass
        t0 = time.monotonic()
        try:
            r = requests.request(method, f"{stack.url}{path}", json={"n": 1}, timeout=45)
            calls[i] = {
                "call": path,
                "status": r.status_code,
                "s": time.monotonic() - t0,
                "N": (r.json().get("message") or {}).get("N") if r.status_code == 200 else None,
                "body": r.text[:160] if r.status_code != 200 else "",
            }
        except requests.RequestException as exc:
            calls[i] = {"call": path, "status": type(exc).__name__, "s": time.monotonic() - t0}

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(20)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(50)
    t_done = time.monotonic()
    time.sleep(2.0)
    load.stop()
    durations = sorted(c["s"] for c in calls if "s" in c)
    statuses = Counter(f"{c['call']} {c['status']}" for c in calls)
    health = [h for (ts, h, _) in monitor.polls if t <= ts <= t_done and h is not None]
    misses = sum(1 for (ts, h, _) in monitor.polls if t <= ts <= t_done and h is None)
    try:
        final = len(stack.ring(5))
    except (requests.RequestException, ValueError, KeyError):
        final = None
    sizes = [len(r) for (ts, _, r) in monitor.polls if ts >= t and r is not None]
    ring_polls = [(ts, r) for (ts, _, r) in monitor.polls if ts >= t and r is not None]
    empty = sum(b[0] - a[0] for a, b in itertools.pairwise(ring_polls) if not a[1])
    refusals: dict[str, Any] = {}
    for c in calls:
        if c.get("status") != 200:
            refusals.setdefault(f"{c['call']} {c['status']}", c.get("body", ""))
    return Outcome(
        "",
        "20 parallel scale calls (10 × /add n=1, 10 × /rm n=1)",
        {},
        notes=[
            "calls: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
            f"call duration p50 {fmt(percentile(durations, 50))}, max {fmt(max(durations) if durations else None)}",
            f"/healthz during the calls: max {fmt(max(health) * 1000 if health else None, ' ms', 0)}"
            + (f", {misses} poll(s) without an answer" if misses else ""),
            f"ring size during the calls {min(sizes, default='?')}..{max(sizes, default='?')}, {final} at the end"
            + (f"; ring empty for {empty:.1f} s" if empty else ""),
            *(f"{k}: {v.strip()}" for k, v in refusals.items()),
        ],
        extra={"t_fault": t, "calls": calls},
    )


def post_replica_kill(stack: Stack, load: OpenLoad, monitor: Monitor, opts: Opts) -> Outcome:
    out = replica_kill(stack, load, monitor, opts, title=f"POSTs (non-idempotent) during replica SIGKILL ({VICTIM})")
    return out


def post_check(stack: Stack, records: list[Sample], outcome: Outcome) -> None:
    """How often each POST reached a replica, from the replicas' access logs."""
    time.sleep(0.5)  # the last access lines
    seen: Counter = Counter()
    for path in stack.log_dir.glob("*.log"):
        if path.name == "balancer.log":
            continue
        for line in path.read_text(errors="replace").splitlines():
            if m := ACCESS_LINE.match(line):
                seen[m.group(2)] += 1
    sent = {r.key for r in records}
    twice = {k: c for k, c in seen.items() if c > 1 and k in sent}
    failed = [r for r in records if r.failure is not None]
    delivered_failed = sum(1 for r in failed if seen.get(r.key))
    outcome.notes += [
        f"POSTs that reached a replica twice: {len(twice)} (replica access logs: {sum(seen.values())} "
        f"POST lines for {len(sent)} POSTs sent)",
        f"of the {len(failed)} failed POSTs, {len(failed) - delivered_failed} are in no access log (in flight "
        "on the killed replica, which logs after answering; not resent) and "
        f"{delivered_failed} were answered by a replica but the answer was lost",
    ]
    outcome.extra["twice"] = twice


FAULTS: dict[str, Callable[[Stack, OpenLoad, Monitor, Opts], Outcome]] = {
    "replica-kill": replica_kill,
    "replica-stop": replica_stop,
    "worker-kill": worker_kill,
    "master-kill": master_kill,
    "supervisor-kill": supervisor_kill,
    "scale": scale,
    "post-replica-kill": post_replica_kill,
}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| # | scenario | failed of total | failures | outage | first / last failure after the fault "
        "| p99 / max latency | what happened |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, o in enumerate(outcomes, 1):
        f = o.figures
        kinds = ", ".join(f"{k} {v}" for k, v in f["kinds"].items()) or "–"
        outage = fmt(f["outage_s"]) if f["failed"] else "0"
        if o.name == "supervisor-kill" and f["failed"]:
            outage = f"≥ {fmt(f['outage_s'])} (permanent)"
        span = f"{fmt(f['first_failure_s'])} / {fmt(f['last_failure_end_s'])}" if f["failed"] else "–"
        lat = f"{fmt(f['p99_ms'], ' ms', 0)} / {fmt(f['max_ms'], ' ms', 0)}"
        notes = "; ".join(n for n in o.notes if n).replace("|", "\\|").replace("\n", " ")
        rows.append(
            f"| {i} | {o.title} | {f['failed']} of {f['total']} | {kinds} | {outage} | {span} | {lat} | {notes} |"
        )
    return "\n".join(rows)


def machine() -> dict[str, str]:
    model = ""
    try:
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def write_doc(
    path: Path,
    outcomes: list[Outcome],
    command: str,
    info: dict[str, str],
    load_before: str,
    load_after: str,
    opts: Opts,
    elapsed: float,
    skipped: dict[str, str],
) -> None:
    text = f"""# Faults under load

What a client sees when a part of ringlb dies while it serves a steady load: the fault figures
(replica SIGKILL and SIGSTOP, balancer worker and master SIGKILL, supervisor
restart, 20 parallel scale calls), measured by [`scripts/faults.py`](../scripts/faults.py).

```console
$ {command}
```

Each scenario runs on a fresh `ringlb dev` stack (supervisor, balancer = gunicorn master + 2
`ProxyWorker` workers, 3 gunicorn replicas, all on 127.0.0.1) under an open-loop load of
{opts.rate:.0f} req/s of `GET /home` with a random 6-digit `X-Request-ID` (asyncio + aiohttp,
keep-alive connections, 10 s client timeout); the fault comes {opts.before:.0f} s into a
{opts.seconds:.0f} s run (the supervisor case runs {opts.before + 5:.0f} s, the scale case until
2 s after the last call has answered).

- **failed of total**: requests without the replica's answer (GET: 200 "Hello from Server";
  POST: the replica's 405, since replicas serve only GET; any balancer error, refused or reset
  connection, or client timeout counts as failed);
- **outage**: the longest stretch with failures, from the start of the first failed request to
  the end of the last, failures less than 1 s apart joined; "first / last failure" are measured
  from the moment the signal was sent;
- **p99 / max latency** of the answered requests: a stopped replica shows up here.

## Results

Machine: {info["cores"]} cores ({info["cpu"]}), Linux {info["kernel"]}, Python {info["python"]}.
Load on the machine (`uptime`) before the run: `{load_before}`; after: `{load_after}`
(a Kubernetes cluster was running on the same machine). The whole run took {elapsed:.0f} s.

{table(outcomes)}
"""
    if skipped:
        text += "\nNot run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + "\n"
    text += """
## What the scenarios do

1. **replica SIGKILL**: the gunicorn master and its worker of `Server 2` (found as the child of
   `ringlb dev` whose `--bind` port is `Server 2`'s address in `GET /membership`) get SIGKILL.
   The balancer sees refused connections and resends only what is safe to resend; the
   supervisor respawns the replica on the same port, so its keys come back to it.
2. **replica SIGSTOP 5 s**: the same two processes are stopped, then continued. Nothing is
   refused: requests to the stopped replica wait until heartbeats eject it, those already sent
   wait until it runs again (the figure is the max latency, not failures).
3. **balancer worker SIGKILL**: one of the two `ProxyWorker` processes; requests in flight on
   its connections are lost with it (a client sees a closed connection), gunicorn's master
   starts a new worker, the other worker keeps serving.
4. **balancer master SIGKILL**: the gunicorn master only. Its workers notice that their parent
   changed and exit; the supervisor sees the balancer gone, starts a new one on the same port
   and pushes the membership again. Until then connections are refused.
5. **supervisor SIGKILL**: `ringlb dev` itself. It cannot be restarted from inside (it is the
   top of the stack, nothing watches it); its children were started with
   `PR_SET_PDEATHSIG = SIGTERM`, so the balancer and the replicas stop cleanly when it dies
   (no orphans), and the load fails from then on: the figure is how fast and how cleanly the
   stack goes away, not an outage that ends.
6. **20 parallel scale calls**: 10 `POST /add {"n": 1}` and 10 `DELETE /rm {"n": 1}` at once
   (interleaved, released together) while the load runs; each call answers when its own change
   is in force. `/rm` without names removes random replicas from the *desired* list, ready or
   still starting: from 3 replicas, the removals can take all three ready ones while the added
   ones are still booting, and the ring is then empty (every request 503 "no replica is
   available") until they are ready; an `/add` whose new replica a concurrent `/rm` took away
   never sees its own change in force and answers 504 after `RINGLB_SCALE_TIMEOUT` (20 s in local
   mode). Which replicas go is random, so these figures vary from run to run;
   `ARGS="--only scale --scale-replicas 11"` starts from 11 so the ring cannot empty.
7. **POSTs during replica SIGKILL**: the same kill as 1 under a load of POSTs with unique keys;
   the replicas write an access log (`GUNICORN_CMD_ARGS`) with each request's key, so the run
   counts how often each POST reached a replica. A POST whose connection was refused may be
   sent to the next replica; one that may have reached the dead replica is answered 502 and
   not sent again (RFC 9110 §9.2.2).
"""
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--rate", type=float, default=200.0, help="requests/s (default 200)")
    ap.add_argument("--seconds", type=float, default=12.0, help="load per scenario (default 12)")
    ap.add_argument("--before", type=float, default=3.0, help="seconds of load before the fault (default 3)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--scale-replicas",
        type=int,
        default=3,
        help="replicas at the start of the scale scenario (default 3; 11 keeps the ring from emptying)",
    )
    ap.add_argument("--doc", default=str(ROOT / "docs" / "faults.md"), help="'' to write no doc")
    ap.add_argument("--json", default="", help="also write the figures as JSON here")
    ap.add_argument("--keep", default="", help="keep the stacks' logs in this directory")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s): {unknown}")
    if not 1 <= args.rate <= 2000 or not 5 <= args.seconds <= 60 or not 1 <= args.before < args.seconds - 5:
        ap.error("rate 1..2000, seconds 5..60, before 1..seconds-5")

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ringlb-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    opts = Opts(args.rate, args.seconds, args.before, workdir, args.seed, args.scale_replicas)
    load_before = uptime()
    t0 = time.monotonic()
    outcomes: list[Outcome] = []
    skipped: dict[str, str] = {}
    try:
        for name in names:
            try:
                outcome = run_scenario(name, opts)
            except (RuntimeError, AssertionError, requests.RequestException, KeyError, StopIteration) as exc:
                log(f"{name}: not measured: {exc!r}")
                skipped[name] = f"{type(exc).__name__}: {exc}"
                continue
            outcome.name = name
            outcome.orphans = stack_orphans.get(name, [])
            if outcome.orphans:
                outcome.notes.append(f"{len(outcome.orphans)} process(es) outlived the stack's stop")
            outcomes.append(outcome)
            f = outcome.figures
            log(
                f"{name}: {f['failed']} failed of {f['total']} {f['kinds']}, outage {f['outage_s']} s, "
                f"p99 {f['p99_ms']} ms, max {f['max_ms']} ms; " + "; ".join(n for n in outcome.notes if n)
            )
    except KeyboardInterrupt:
        log("interrupted: every stack started has been stopped")
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - t0
    load_after = uptime()
    print(table(outcomes))
    print(f"\n{machine()['cores']} cores; before: {load_before}\nafter: {load_after}; {elapsed:.0f} s")
    command = (
        "make faults"
        if not argv and len(sys.argv) == 1
        else ".venv/bin/python scripts/faults.py " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    if args.doc:
        write_doc(Path(args.doc), outcomes, command, machine(), load_before, load_after, opts, elapsed, skipped)
        log(f"wrote {args.doc}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "name": o.name,
                        "title": o.title,
                        "figures": o.figures,
                        "notes": o.notes,
                        "extra": {k: v for k, v in o.extra.items() if k != "t_fault"},
                    }
                    for o in outcomes
                ],
                indent=2,
                default=str,
            )
        )
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
