#!/usr/bin/env python3
"""A-5: what cache affinity buys per strategy, what membership events cost, what a warm-up saves.

    make affinity                                   # everything, a few minutes on 2 cores
    .venv/bin/python scripts/affinity.py --strategies maglev --no-warmup-runs   # one strategy

An open-loop Zipf key stream (``ringlb_harness.load.OpenLoad`` over ``zipf_keys``)
goes through ``ringlb dev`` with cache replicas (``--cache-size``, ``--miss-cost-ms``); each
answer's ``X-Cache`` header says hit or miss. One run per strategy (round-robin, random, ring,
maglev, maglev with bounded load 1.25): every key requested once, a fill period, a steady
window (hit rate, p50/p99), then events at fixed times: scale N -> N+1 (``POST /add``), back to
N (``DELETE /rm`` of Server 1, a warm member), a replica SIGKILLed (the supervisor respawns it), a balancer restart
(SIGHUP to its gunicorn master: new workers, the old ones drain). Then two maglev runs with
only the scale-up and the scale-down, ``--warmup 0`` and ``--warmup W``, spaced W + settle
seconds apart. Per event: keys moved (from the tables before and after), lost hits (misses
above the steady rate, summed until the next event), peak miss rate (the most misses in one
second), time back to the steady hit rate, p99 until the next event, failed requests. Last, two
steady-only maglev runs where one key takes ``--hot-share`` of the requests, without and with
bounded load: hit rate and p99, overall and the hot key's.

W defaults to 60 s: a key that moves is a miss only when next requested, and the tail keys of
this Zipf stream come every few seconds, so a step every second of a short warm-up still lands
the misses of several steps in the same second; a longer ramp spreads them thinner.

Writes docs/analysis/affinity.json and affinity-*.png; the last line printed is
``hit_rate_maglev=H hit_rate_round_robin=R warmup_peak_miss_ratio=P warmup_p99_ratio=Q failed=F``:
P is the larger of (peak miss rate with warm-up / without) over the scale-up and the
scale-down, Q the p99 during the two warm-up events over the steady p99 of the same run, F every
failed request of every run.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import requests

from ringlb_harness.load import OpenLoad, Sample, zipf_keys
from ringlb_harness.local import LocalMode
from ringlb_harness.net import wait_until
from ringlb_harness.stats import percentile
from ringlb_ring import hashing
from ringlb_ring.membership import parse

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "analysis"
STRATEGIES = {  # label -> (strategy, bounded load)
    "round-robin": ("round-robin", 0.0),
    "random": ("random", 0.0),
    "ring": ("ring", 0.0),
    "maglev": ("maglev", 0.0),
    "maglev-bounded": ("maglev", 1.25),
}
EVENTS = ("scale-up", "scale-down", "replica-kill", "balancer-restart")
VICTIM = "Server 2"  # SIGKILLed
LEAVER = "Server 1"  # removed by the scale-down: a warm member, whose keys land on others' caches
HOT_KEY = "key-hot"  # the hot-key runs' one key that takes ``hot_share`` of all requests
HOT_RUNS = {"maglev-hot": 0.0, "maglev-bounded-hot": 1.25}  # label -> bounded load
SMOOTH = 5  # seconds of trailing window for "back to the steady hit rate"
TOLERANCE = 0.02  # ... within this much of it (plus 3 standard errors of the window)


def log(msg: str) -> None:
    print(f"[affinity {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    replicas: int = 4
    keys: int = 400
    exponent: float = 0.6
    rate: float = 120.0
    cache_size: int = 160
    miss_cost_ms: float = 10.0
    warmup: float = 60.0
    hot_share: float = 0.2
    fill: float = 5.0  # seconds of load before the steady window
    steady: float = 12.0
    spacing: float = 10.0  # seconds between the events of a strategy run
    settle: float = 8.0  # seconds after a warm-up before the next event of a warm-up run
    concurrency: int = 32
    seed: int = 5


# ----------------------------------------------------------------------------------------------
# Pure: per-second bins, steady state, one event's figures
# ----------------------------------------------------------------------------------------------
@dataclass
class Bin:
    requests: int = 0
    hits: int = 0
    misses: int = 0
    failed: int = 0


def binned(samples: Sequence[Sample], end: float) -> list[Bin]:
    """One bin per second of ``[0, end)`` by scheduled send time."""
    bins = [Bin() for _ in range(math.ceil(end))]
    for s in samples:
        b = int(s.start)
        if not 0 <= b < len(bins):
            continue
        bins[b].requests += 1
        if s.failure:
            bins[b].failed += 1
        elif s.cache == "hit":
            bins[b].hits += 1
        elif s.cache == "miss":
            bins[b].misses += 1
    return bins


def latencies(samples: Sequence[Sample], start: float, end: float) -> list[float]:
    return [(s.end - s.start) * 1000 for s in samples if start <= s.start < end and not s.failure]


def steady_state(samples: Sequence[Sample], bins: Sequence[Bin], start: float, end: float) -> dict[str, Any]:
    window = bins[int(start) : int(end)]
    hits, misses = sum(b.hits for b in window), sum(b.misses for b in window)
    lat = latencies(samples, start, end)
    return {
        "from_s": start,
        "to_s": end,
        "requests": sum(b.requests for b in window),
        "hit_rate": hits / (hits + misses) if hits + misses else None,
        "misses_per_s": misses / len(window) if window else None,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "failed": sum(b.failed for b in window),
    }


def recovery(bins: Sequence[Bin], start: int, end: int, steady_hit: float) -> float | None:
    """Seconds from ``start`` until the trailing ``SMOOTH``-second hit rate is back within
    tolerance of ``steady_hit`` and stays there until ``end``; None if it never is."""
    back = None
    for b in range(start, end):
        window = bins[max(start, b + 1 - SMOOTH) : b + 1]
        hits, misses = sum(x.hits for x in window), sum(x.misses for x in window)
        if not hits + misses:
            back = None
            continue
        rate = hits / (hits + misses)
        slack = TOLERANCE + 3 * math.sqrt(max(steady_hit * (1 - steady_hit), 1e-6) / (hits + misses))
        back = (b + 1 - start if back is None else back) if rate >= steady_hit - slack else None
    return back


def event_figures(
    samples: Sequence[Sample], bins: Sequence[Bin], at: float, until: float, steady: dict[str, Any]
) -> dict[str, Any]:
    """Lost hits, peak miss rate, recovery, p99 and failures of the event at ``at`` (seconds
    into the run) up to ``until`` (the next event or the end)."""
    first, last = int(at), min(int(until), len(bins))
    window = bins[first:last]
    lat = latencies(samples, at, until)
    return {
        "at_s": round(at, 2),
        "until_s": round(until, 2),
        "lost_hits": round(sum(b.misses - steady["misses_per_s"] for b in window), 1),
        "peak_miss_rate": max((b.misses for b in window), default=0),
        "back_to_steady_s": recovery(bins, first, last, steady["hit_rate"]),
        "p99_ms": percentile(lat, 99),
        "failed": sum(b.failed for b in window),
        "requests": sum(b.requests for b in window),
    }


def hot_figures(samples: Sequence[Sample], start: float, end: float) -> dict[str, Any]:
    """What the hot key does in the steady window: its share of the requests, its own hit rate
    and p99, how many replicas answered it, and the busiest replica's share of all answers."""
    window = [s for s in samples if start <= s.start < end]
    hot = [s for s in window if s.key == HOT_KEY]
    answered = [s for s in hot if not s.failure]
    hits = sum(1 for s in answered if s.cache == "hit")
    served = collections.Counter(s.replica for s in window if s.replica)
    return {
        "share": len(hot) / len(window) if window else None,
        "hit_rate": hits / len(answered) if answered else None,
        "p99_ms": percentile(latencies(hot, start, end), 99),
        "replicas": len({s.replica for s in answered}),
        "busiest_replica_share": max(served.values()) / sum(served.values()) if served else None,
    }


def moved(before: dict[str, Any], after: dict[str, Any], keys: Sequence[str]) -> float | None:
    """Fraction of ``keys`` whose owner differs between two membership documents; None for
    strategies where the key does not choose the member."""
    a, b = parse(before), parse(after)
    ta, tb = hashing.build(a.names, a.hashing), hashing.build(b.names, b.hashing)
    if not (ta.affine and tb.affine):
        return None
    return len(hashing.keys_moved(ta, tb, keys)) / len(keys)


# ----------------------------------------------------------------------------------------------
# I/O: a ringlb dev stack, its events, one run
# ----------------------------------------------------------------------------------------------
def names(doc: dict[str, Any]) -> list[str]:
    return [m["name"] for m in doc["members"]]


class Stack(LocalMode):
    """``ringlb dev`` as a user runs it (ringlb_harness.local), plus its membership waits."""

    def when(self, wanted: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The membership in force once ``wanted`` holds for it."""

        def found() -> dict[str, Any] | None:
            doc = self.membership()
            return doc if wanted(doc) else None

        doc = wait_until(found, timeout, what)
        assert doc is not None  # wait_until returns a truthy answer or raises
        return doc

    def settled(self) -> dict[str, Any]:
        """The membership once no warm-up step is in force."""
        return self.when(lambda d: "transition" not in d["hashing"], 120, "the last warm-up step")

    def scale(self, method: str, path: str, name: str) -> None:
        reply = self.session.request(method, f"{self.url}{path}", json={"n": 1, "hostnames": [name]}, timeout=120)
        if reply.status_code != 200:
            raise RuntimeError(f"{method} {path} {name}: {reply.status_code} {reply.text}")


def event_actions(stack: Stack, extra: str) -> dict[str, Any]:
    def kill() -> None:
        for pid in stack.replica_pids(VICTIM):
            os.kill(pid, signal.SIGKILL)  # our own children: the replica's master and worker

    def restart() -> None:
        for pid in stack.running("ringlb_balancer.wsgi:app"):
            os.kill(pid, signal.SIGHUP)

    return {
        "scale-up": lambda: stack.scale("POST", "/add", extra),
        "scale-down": lambda: stack.scale("DELETE", "/rm", LEAVER),
        "replica-kill": kill,
        "balancer-restart": restart,
    }


def run(
    label: str,
    strategy: str,
    bounded: float,
    warmup: float,
    events: Sequence[str],
    spacing: float,
    opts: Settings,
    workdir: Path,
    hot: float = 0.0,
) -> dict[str, Any]:
    """One ``ringlb dev`` stack under the Zipf load (with ``hot``: that share of the requests
    replaced by one key, ``HOT_KEY``), the events at fixed times; figures."""
    args = [
        "--replicas",
        str(opts.replicas),
        "--strategy",
        strategy,
        "--cache-size",
        str(opts.cache_size),
        "--miss-cost-ms",
        str(opts.miss_cost_ms),
        "--warmup",
        str(warmup),
    ]
    if bounded:
        args += ["--bounded-load", str(bounded)]
    stack = Stack(workdir / label, *args)
    keys = [f"key-{r}" for r in range(opts.keys)]
    extra = f"Server {opts.replicas + 1}"
    start = opts.fill + opts.steady
    times = {name: start + i * spacing for i, name in enumerate(events)}
    duration = start + len(events) * spacing
    stream = zipf_keys(int(duration * opts.rate), opts.keys, opts.exponent, opts.seed)
    if hot:
        draw = random.Random(opts.seed + 1)
        stream = [HOT_KEY if draw.random() < hot else key for key in stream]
        keys.append(HOT_KEY)
    marks: dict[str, dict[str, Any]] = {}
    try:
        stack.wait_replicas(opts.replicas)
        with requests.Session() as s:  # every key once: the caches start from the whole key set
            for key in keys:
                s.get(f"{stack.url}/home", headers={"X-Request-ID": key}, timeout=30)
        load = OpenLoad(f"{stack.url}/home", opts.rate, stream, timeout=10.0, connections=opts.concurrency).start()
        t0 = load.result.started_at
        actions = event_actions(stack, extra)
        for name in events:
            time.sleep(max(0.0, t0 + times[name] - time.monotonic()))  # a benchmark's schedule, not a wait
            before = stack.membership()
            t = time.monotonic()
            actions[name]()
            if name == "replica-kill":
                during = stack.when(lambda d: VICTIM not in names(d), 30, f"{VICTIM} out of the ring")
                after = stack.when(
                    lambda d: VICTIM in names(d) and "transition" not in d["hashing"], 120, f"{VICTIM} back"
                )
                change = moved(before, during, keys)
            else:
                after = stack.settled()
                change = moved(before, after, keys)
            marks[name] = {
                "t": t,
                "done": time.monotonic(),
                "keys_moved": change,
                "revisions": [before["revision"], after["revision"]],
            }
            log(f"{label}: {name} at {t - t0:.1f} s, in force after {time.monotonic() - t:.1f} s, keys moved {change}")
        outcome = load.join()
    finally:
        leftovers = stack.stop()
        if leftovers:
            log(f"{label}: killed leftover processes {sorted(leftovers)}")
    samples = outcome.samples
    bins = binned(samples, duration)
    steady = steady_state(samples, bins, opts.fill, start)
    figures = {}
    for i, name in enumerate(events):
        at = marks[name]["t"] - outcome.started_at
        until = marks[events[i + 1]]["t"] - outcome.started_at if i + 1 < len(events) else duration
        figures[name] = {
            "keys_moved": marks[name]["keys_moved"],
            "revisions": marks[name]["revisions"],
            "in_force_after_s": round(marks[name]["done"] - marks[name]["t"], 2),
            **event_figures(samples, bins, at, until, steady),
        }
    log(
        f"{label}: steady hit rate {steady['hit_rate']:.3f}, p50 {steady['p50_ms']:.1f} ms, "
        f"p99 {steady['p99_ms']:.1f} ms; {outcome.sent} requests, {outcome.failed} failed {dict(outcome.failures)}"
    )
    return {
        "label": label,
        "strategy": strategy,
        "bounded_load": bounded,
        "warmup_s": warmup,
        "steady": steady,
        **({"hot": hot_figures(samples, opts.fill, start)} if hot else {}),
        "events": figures,
        "requests": outcome.sent,
        "failed": outcome.failed,
        "failures": dict(outcome.failures),
        "failure_examples": outcome.failure_examples,
        "series": {
            "hit_rate": [round(b.hits / (b.hits + b.misses), 4) if b.hits + b.misses else None for b in bins],
            "misses": [b.misses for b in bins],
            "requests": [b.requests for b in bins],
        },
    }


# ----------------------------------------------------------------------------------------------
# Summary, plots, docs
# ----------------------------------------------------------------------------------------------
def summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The last line's figures (None where a run was skipped)."""
    steady = {k: v["steady"]["hit_rate"] for k, v in runs.items()}
    out: dict[str, Any] = {
        "hit_rate_maglev": steady.get("maglev"),
        "hit_rate_round_robin": steady.get("round-robin"),
        "warmup_peak_miss_ratio": None,
        "warmup_p99_ratio": None,
        "failed": sum(v["failed"] for v in runs.values()),
    }
    abrupt, warm = runs.get("maglev-warmup-0"), runs.get("maglev-warmup")
    if abrupt and warm:
        out["warmup_peak_miss_ratio"] = max(
            warm["events"][e]["peak_miss_rate"] / max(abrupt["events"][e]["peak_miss_rate"], 1)
            for e in ("scale-up", "scale-down")
        )
        p99s = [warm["events"][e]["p99_ms"] for e in ("scale-up", "scale-down")]
        out["warmup_p99_ratio"] = max(p99s) / warm["steady"]["p99_ms"]
        out["lost_hits_warmup"] = sum(warm["events"][e]["lost_hits"] for e in ("scale-up", "scale-down"))
        out["lost_hits_abrupt"] = sum(abrupt["events"][e]["lost_hits"] for e in ("scale-up", "scale-down"))
    return out


def last_line(s: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "nan" if v is None else f"{v:.3f}"

    return (
        f"hit_rate_maglev={f(s['hit_rate_maglev'])} hit_rate_round_robin={f(s['hit_rate_round_robin'])} "
        f"warmup_peak_miss_ratio={f(s['warmup_peak_miss_ratio'])} warmup_p99_ratio={f(s['warmup_p99_ratio'])} "
        f"failed={s['failed']}"
    )


def plot_timelines(runs: dict[str, dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 2.1 * len(runs)), sharex=False, squeeze=False)
    for ax, (label, r) in zip(axes[:, 0], runs.items()):
        rates = r["series"]["hit_rate"]
        ax.plot(range(len(rates)), [x if x is not None else math.nan for x in rates], lw=1, color="tab:blue")
        ax.axhline(r["steady"]["hit_rate"], color="grey", lw=0.8, ls=":")
        for name, e in r["events"].items():
            ax.axvline(e["at_s"], color="tab:red", lw=0.8)
            ax.text(e["at_s"] + 0.3, 0.05, name, fontsize=7, color="tab:red", rotation=90, va="bottom")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("hit rate")
        ax.set_title(f"{label} (steady {r['steady']['hit_rate']:.3f})", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds (1 s bins)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_events(runs: dict[str, dict[str, Any]], path: Path) -> None:
    metrics = [
        ("keys_moved", "keys moved (fraction)"),
        ("lost_hits", "lost hits"),
        ("peak_miss_rate", "peak misses / s"),
        ("back_to_steady_s", "s back to steady"),
        ("p99_ms", "p99 during (ms)"),
        ("failed", "failed requests"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    labels = [label for label, r in runs.items() if r["events"]]  # the hot-key runs have none
    width = 0.8 / max(len(labels), 1)
    for ax, (metric, title) in zip(axes.flat, metrics):
        for j, label in enumerate(labels):
            values = [runs[label]["events"].get(e, {}).get(metric) for e in EVENTS]
            xs = [i + j * width for i in range(len(EVENTS))]
            ax.bar(xs, [v if v is not None else 0 for v in values], width, label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(EVENTS))], EVENTS, fontsize=8)
        ax.set_title(title, fontsize=9)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shown(v: Any, fmt: str = "{:.1f}") -> str:
    """A figure for the tables: — where there is none."""
    return "—" if v is None else fmt.format(v)


def table(runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| run | steady hit rate | p50 ms | p99 ms | event | keys moved | lost hits | peak misses/s | "
        "back to steady s | p99 during ms | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in runs.items():
        s = r["steady"]
        for i, (name, e) in enumerate(r["events"].items()):
            head = (
                f"| {label} | {shown(s['hit_rate'], '{:.3f}')} | {shown(s['p50_ms'])} | {shown(s['p99_ms'])} "
                if i == 0
                else "| | | | "
            )
            lines.append(
                head + f"| {name} | {shown(e['keys_moved'], '{:.3f}')} | {shown(e['lost_hits'], '{:.0f}')} | "
                f"{e['peak_miss_rate']} | {shown(e['back_to_steady_s'], '{:.0f}')} | {shown(e['p99_ms'])} | "
                f"{e['failed']} |"
            )
    return "\n".join(lines)


def hot_table(runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| run | bounded load | hit rate | p50 ms | p99 ms | hot key's share | its hit rate | its p99 ms | "
        "replicas answering it | busiest replica's share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in runs.items():
        if "hot" not in r:
            continue
        s, h = r["steady"], r["hot"]
        lines.append(
            f"| {label} | {r['bounded_load'] or 'off'} | {shown(s['hit_rate'], '{:.3f}')} | {shown(s['p50_ms'])} | "
            f"{shown(s['p99_ms'])} | {shown(h['share'], '{:.3f}')} | {shown(h['hit_rate'], '{:.3f}')} | "
            f"{shown(h['p99_ms'])} | "
            f"{h['replicas']} | {shown(h['busiest_replica_share'], '{:.3f}')} |"
        )
    return "\n".join(lines)


def goals(s: dict[str, Any]) -> list[str]:
    """The issue's goals on the defaults, each with whether this run met it."""

    def check(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    p, q = s["warmup_peak_miss_ratio"], s["warmup_p99_ratio"]
    lost_w, lost_a = s.get("lost_hits_warmup"), s.get("lost_hits_abrupt")
    shown_p, shown_q = ("—" if v is None else f"{v:.3f}" for v in (p, q))
    return [
        f"- `warmup_peak_miss_ratio` ≤ 0.33: {check(None if p is None else p <= 0.33)} ({shown_p})",
        f"- `warmup_p99_ratio` ≤ 1.5: {check(None if q is None else q <= 1.5)} ({shown_q})",
        f"- `failed` = 0: {check(s['failed'] == 0)} ({s['failed']})",
        f"- lost hits with warm-up ≤ without: {check(None if lost_w is None else lost_w <= lost_a)} "
        f"({'—' if lost_w is None else f'{lost_w:.0f} against {lost_a:.0f}'})",
    ]


def readme_section(result: dict[str, Any], command: str) -> str:
    o, s = result["settings"], result["summary"]
    failures = [
        f"{label} {name}: {e['failed']}"
        for label, r in result["runs"].items()
        for name, e in r["events"].items()
        if e["failed"]
    ]
    return "\n".join(
        [
            "## A-5 — cache affinity, membership events and warm-up",
            "",
            f"Generated by `scripts/affinity.py` on {time.strftime('%Y-%m-%d %H:%M %Z')}: `{command}`, "
            f"{result['runtime_s']} s on {result['cores']} cores shared with load generator, balancer and replicas "
            "(and with whatever else runs on the machine: latencies are the machine's as much as the balancer's). "
            "Raw numbers: [affinity.json](affinity.json).",
            "",
            f"Set-up: `ringlb dev` with {o['replicas']} replicas, each caching {o['cache_size']} keys (LRU, "
            f"`--cache-size`) and sleeping {o['miss_cost_ms']:g} ms on a miss (`--miss-cost-ms`); {o['keys']} keys "
            f"drawn Zipf with exponent {o['exponent']:g} (`ringlb_harness.load.zipf_keys`), sent open-loop at "
            f"{o['rate']:g} req/s (`ringlb_harness.load.OpenLoad`: each request leaves at its scheduled time and its "
            f"latency counts from then) over at most {o['concurrency']} keep-alive connections; hit or miss from each "
            "answer's `X-Cache`. Every key is requested once before the load; the steady window is seconds "
            f"{o['fill']:g}..{o['fill'] + o['steady']:g}; the events "
            f"follow {o['spacing']:g} s apart: `POST /add` of Server {o['replicas'] + 1}, `DELETE /rm` of Server 1 "
            "(a warm member), SIGKILL of Server 2's gunicorn master and worker (the supervisor respawns it), SIGHUP "
            "to the balancer's gunicorn master (new workers, the old ones drain). The warm-up comparison runs "
            f"maglev twice with only the scale-up and the scale-down, {o['warmup'] + o['settle']:g} s apart: "
            f"`--warmup 0` and `--warmup {o['warmup']:g}`.",
            "",
            "Per event, until the next one: *keys moved* is the fraction of the keys whose owner differs between "
            "the tables before and after (for the kill: while the replica is out); *lost hits* the misses above "
            "the steady rate, summed; *peak misses/s* the most misses in one second; *back to steady* the seconds "
            f"until the trailing {SMOOTH}-second hit rate is within {TOLERANCE:g} (plus 3 standard errors) of the "
            "steady one and stays there (—: not before the next event, an empty bar in the plot); *p99 during* "
            "the p99 latency of the requests sent.",
            "",
            "![hit rate over time](affinity-hit-rate.png)",
            "",
            "![events](affinity-events.png)",
            "",
            table(result["runs"]),
            "",
            f"One hot key: maglev without and with bounded load (c = {HOT_RUNS['maglev-bounded-hot']:g}), "
            f"the same stream but {o['hot_share']:.0%} of the requests replaced by one key, `{HOT_KEY}`; "
            f"figures over the steady window (no events). With bounded load a request for the hot key goes to "
            "the next member of its preference order whenever its owner holds more than c times the mean "
            "in-flight count, so the key ends up cached on several replicas: each such first request there is "
            "a miss, the owner's queue is shorter. It acts only on an owner that is busier than the others by "
            "that factor: at a rate the replicas absorb, few requests are ever placed elsewhere (the replicas "
            "answering the hot key say how many).",
            "",
            hot_table(result["runs"]),
            "",
            "```",
            last_line(s),
            "```",
            "",
            "Goals (on these defaults):",
            "",
            *goals(s),
            "",
            "The p99 ratio compares the p99 of the requests sent during a warm-up with the steady p99 of the same "
            "run. When every key fits the caches the steady p99 is a hit's; a miss costs "
            f"{o['miss_cost_ms']:g} ms more, so any event window with over 1 % misses has a p99 near the miss "
            "cost, warm-up or not: the ratio then says how much slower a miss is than a hit, and the peak "
            "misses per second are what shows the warm-up spreading the misses out.",
            "",
            "Failed requests by event: " + ("; ".join(failures) if failures else "none") + ".",
            "",
        ]
    )


def write_readme(section: str, path: Path) -> None:
    """Replace this analysis's section of ``path`` (or append it), leaving the others alone."""
    text = path.read_text() if path.exists() else ""
    head, marker, rest = text.partition("## A-5 ")
    if marker:
        following = rest.find("\n## ")
        tail = rest[following + 1 :] if following >= 0 else ""
    else:
        head, tail = text.rstrip() + "\n\n", ""
    path.write_text(head + section + ("\n" + tail if tail else ""))


def main(argv: list[str] | None = None) -> int:
    d = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="comma-separated labels of the strategy runs"
    )
    parser.add_argument("--no-warmup-runs", action="store_true", help="skip the two maglev warm-up comparison runs")
    parser.add_argument("--no-hot-runs", action="store_true", help="skip the two hot-key runs")
    for name, value in asdict(d).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    parser.add_argument("--out", type=Path, default=OUT, help="where the JSON and the plots go")
    args = parser.parse_args(argv)
    opts = replace(d, **{k: getattr(args, k) for k in asdict(d)})
    chosen = [s for s in args.strategies.split(",") if s]
    if unknown := [s for s in chosen if s not in STRATEGIES]:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    if not (
        1 <= opts.replicas <= 20
        and 1 <= opts.keys <= 1_000_000
        and 0 < opts.rate <= 2000
        and opts.spacing > 0
        and 0 <= opts.warmup <= 600
        and 0 < opts.hot_share < 1
        and opts.fill >= 0
        and opts.steady >= 1
    ):
        parser.error(
            "out of range: --replicas 1..20, --keys 1..1000000, --rate 0..2000, --warmup 0..600, "
            "--hot-share strictly between 0 and 1, --spacing > 0, --steady >= 1"
        )
    t_start = time.monotonic()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ringlb-affinity-") as tmp:
        for label in chosen:
            strategy, bounded = STRATEGIES[label]
            runs[label] = run(label, strategy, bounded, 0.0, EVENTS, opts.spacing, opts, Path(tmp))
        if not args.no_warmup_runs:
            for label, warmup in (("maglev-warmup-0", 0.0), ("maglev-warmup", opts.warmup)):
                runs[label] = run(
                    label, "maglev", 0.0, warmup, ("scale-up", "scale-down"), opts.warmup + opts.settle, opts, Path(tmp)
                )
        if not args.no_hot_runs:
            for label, bounded in HOT_RUNS.items():
                runs[label] = run(label, "maglev", bounded, 0.0, (), opts.spacing, opts, Path(tmp), opts.hot_share)
    result: dict[str, Any] = {
        "settings": asdict(opts),
        "cores": os.cpu_count(),
        "runtime_s": round(time.monotonic() - t_start),
        "summary": summary(runs),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "affinity.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_timelines(runs, args.out / "affinity-hit-rate.png")
    plot_events(runs, args.out / "affinity-events.png")
    command = "make affinity" + (
        f" ARGS='{' '.join(argv if argv is not None else sys.argv[1:])}'"
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    write_readme(readme_section(result, command), args.out / "README.md")
    print(table(runs))
    print(json.dumps(result["summary"]))
    print(last_line(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
