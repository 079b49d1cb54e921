#!/usr/bin/env python3
"""Load generator for ringlb (and the seed system it replaces).

Sends N GET requests (default 10,000) to a URL (default http://127.0.0.1:5000/home) from
``--concurrency`` threads, each with its own ``requests.Session`` (keep-alive), every request
carrying a random 6-digit ``X-Request-ID`` as the seed's client did. It counts the answers per
replica (the ``Hello from Server: <id>`` message of the JSON body), failures by kind and latency
percentiles, and writes them as JSON (``--json``) and/or CSV (``--csv``).

Every run is bounded in count (``-n``) and in time (``--max-seconds``).

Importable: ``run_load(url, n, concurrency, ...) -> LoadResult`` is what scripts/analysis.py,
scripts/affinity.py and the tests reuse; with ``rate`` and ``open_loop=True`` it is an open-loop
generator (requests sent on a fixed schedule, latency counted from each one's scheduled time), and
``zipf_keys`` draws a skewed key stream for it.

    .venv/bin/python scripts/loadgen.py -n 10000 -c 8 --json out.json --csv out.csv
"""

from __future__ import annotations

import argparse
import bisect
import csv
import itertools
import json
import math
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:5000/home"
GREETING = re.compile(r"Hello from Server: (.+)$")


def random_request_id(rng: random.Random) -> str:
    """A random 6-digit request id, as the seed's client sent (100000..999999)."""
    return str(rng.randint(100_000, 999_999))


@dataclass
class Sample:
    """One request, kept only when ``record=True`` (A-3 needs the timeline)."""

    start: float  # seconds since the run started (time.monotonic based)
    end: float
    replica: str | None  # who answered, None on failure
    failure: str | None  # failure kind, None on success
    key: str | None
    cache: str | None = None  # the replica's X-Cache answer ("hit", "miss"), None without one


@dataclass
class LoadResult:
    url: str
    requested: int
    concurrency: int
    sent: int = 0
    ok: int = 0
    per_replica: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    stopped_by_time: bool = False
    started_at: float = 0.0  # time.monotonic() at start, to align samples with other clocks
    samples: list[Sample] = field(default_factory=list)
    failure_examples: dict[str, list[str]] = field(default_factory=dict)  # first few per kind

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def throughput(self) -> float:
        return self.sent / self.duration_s if self.duration_s else 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the successful requests' latency, in ms."""
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        rank = max(1, math.ceil(p / 100 * len(data)))
        return data[rank - 1]

    def percentiles(self) -> dict[str, float | None]:
        """p50/p90/p99/p99.9/max in ms; None when nothing succeeded (JSON has no NaN)."""
        if not self.latencies_ms:
            return {"p50": None, "p90": None, "p99": None, "p99.9": None, "max": None}
        figures: dict[str, float | None] = {f"p{p:g}": round(self.percentile(p), 3) for p in (50, 90, 99, 99.9)}
        return figures | {
            "max": round(max(self.latencies_ms), 3),
        }

    def summary(self) -> dict[str, Any]:
        total = sum(self.per_replica.values())
        return {
            "url": self.url,
            "requested": self.requested,
            "concurrency": self.concurrency,
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "failures": dict(self.failures),
            "per_replica": dict(sorted(self.per_replica.items())),
            "share": {k: round(v / total, 4) for k, v in sorted(self.per_replica.items())} if total else {},
            "duration_s": round(self.duration_s, 3),
            "throughput_rps": round(self.throughput, 1),
            "latency_ms": self.percentiles(),
            "stopped_by_time": self.stopped_by_time,
            "failure_examples": self.failure_examples,
        }


def zipf_keys(count: int, keys: int, exponent: float, seed: int | None = None) -> list[str]:
    """``count`` keys ``key-0`` .. ``key-<keys-1>`` drawn with P(key-r) proportional to
    1 / (r + 1) ** exponent (Zipf: a few hot keys, a long tail), by inverse CDF over the
    cumulative weights, so the stream is reproducible from ``seed`` in any process."""
    if count < 0 or keys < 1 or not 0 <= exponent <= 10:
        raise ValueError("count must be >= 0, keys >= 1 and exponent between 0 and 10")
    cumulative = list(itertools.accumulate(1 / (r**exponent) for r in range(1, keys + 1)))
    rng = random.Random(seed)
    total = cumulative[-1]
    return [f"key-{bisect.bisect(cumulative, rng.random() * total)}" for _ in range(count)]


def classify(exc: BaseException) -> str:
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        if "Connection refused" in text:
            return "connection_refused"
        if "RemoteDisconnected" in text or "Connection aborted" in text or "reset" in text:
            return "connection_reset"
        if isinstance(exc, requests.exceptions.ReadTimeout) or "Read timed out" in text:
            return "read_timeout"
        return "connection_error"
    if isinstance(exc, requests.exceptions.Timeout):
        return "read_timeout"
    return type(exc).__name__


def _replica_of(response: requests.Response) -> str | None:
    try:
        message = response.json()["message"]
    except (ValueError, KeyError, TypeError):
        return None
    match = GREETING.match(message) if isinstance(message, str) else None
    return match.group(1) if match else None


class _Progress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, total: int, enabled: bool, width: int = 30) -> None:
        self.total = max(total, 1)
        self.enabled = enabled
        self.width = width
        self.last = 0.0
        self.t0 = time.monotonic()

    def update(self, done: int, failed: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * self.width)
        rate = done / (now - self.t0) if now > self.t0 else 0.0
        sys.stderr.write(f"\r[{bar:<{self.width}}] {done}/{self.total} {frac:6.1%} {rate:7.0f} req/s failed={failed}")
        sys.stderr.flush()

    def close(self, done: int, failed: int) -> None:
        if self.enabled:
            self.update(done, failed, force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


def run_load(
    url: str = DEFAULT_URL,
    n: int = 10_000,
    concurrency: int = 8,
    *,
    timeout: float = 5.0,
    max_seconds: float = 120.0,
    rate: float = 0.0,
    key_header: str = "X-Request-ID",
    key_fn: Callable[[random.Random, int], str | None] | None = None,
    seed: int | None = None,
    headers: dict[str, str] | None = None,
    progress: bool | None = None,
    record: bool = False,
    stop: threading.Event | None = None,
    open_loop: bool = False,
) -> LoadResult:
    """Send ``n`` GETs to ``url`` from ``concurrency`` threads and count who answered.

    - ``key_fn(rng, i)`` returns the key for request ``i`` (default: a random 6-digit id); None
      sends no key header (the balancer then picks a random key, as the seed did).
    - ``rate`` > 0 caps the total request rate (requests/s), for "light load" runs.
    - The run stops after ``n`` requests, after ``max_seconds``, or when ``stop`` is set.
    - ``record`` keeps one ``Sample`` per request (timeline for failure analysis).
    - ``open_loop`` (with ``rate``): request ``i`` is due at ``i / rate`` and its latency counts
      from then, so a stall shows in the percentiles instead of slowing the sender down
      (no coordinated omission); give enough ``concurrency`` for the requests in flight.
    """
    if open_loop and rate <= 0:
        raise ValueError("open_loop needs a rate")
    if n < 0 or concurrency < 1:
        raise ValueError("n must be >= 0 and concurrency >= 1")
    result = LoadResult(url=url, requested=n, concurrency=concurrency)
    stop = stop or threading.Event()
    lock = threading.Lock()
    next_index = [0]
    done = [0]
    master_rng = random.Random(seed)
    thread_seeds = [master_rng.getrandbits(64) for _ in range(concurrency)]
    key_fn = key_fn or (lambda rng, i: random_request_id(rng))
    progress_bar = _Progress(n, sys.stderr.isatty() if progress is None else progress)
    t0 = time.monotonic()
    result.started_at = t0
    deadline = t0 + max_seconds

    def claim() -> int | None:
        with lock:
            i = next_index[0]
            if i >= n or stop.is_set():
                return None
            now = time.monotonic()
            if now >= deadline:
                result.stopped_by_time = True
                return None
            next_index[0] = i + 1
        if rate > 0:
            wait = t0 + i / rate - time.monotonic()
            if wait > 0:
                if stop.wait(min(wait, max(deadline - time.monotonic(), 0))):
                    return None
                if time.monotonic() >= deadline:
                    with lock:
                        result.stopped_by_time = True
                    return None
        return i

    def worker(thread_seed: int) -> None:
        rng = random.Random(thread_seed)
        session = requests.Session()
        base_headers = dict(headers or {})
        local_ok: Counter = Counter()
        local_lat: list[float] = []
        local_samples: list[Sample] = []
        sent = 0
        try:
            while (i := claim()) is not None:
                key = key_fn(rng, i)
                req_headers = dict(base_headers)
                if key is not None:
                    req_headers[key_header] = key
                start = t0 + i / rate if open_loop else time.monotonic()
                replica = failure = cache = None
                detail = ""
                try:
                    response = session.get(url, headers=req_headers, timeout=timeout)
                    cache = response.headers.get("X-Cache")
                    if response.status_code != 200:
                        failure = f"http_{response.status_code}"
                        detail = response.text[:300]
                    else:
                        replica = _replica_of(response)
                        if replica is None:
                            failure = "bad_body"
                            detail = response.text[:300]
                except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                    failure = classify(exc)
                    detail = f"{type(exc).__name__}: {exc}"[:300]
                end = time.monotonic()
                sent += 1
                if failure is None:
                    local_ok[replica] += 1
                    local_lat.append((end - start) * 1000)
                if record:
                    local_samples.append(Sample(start - t0, end - t0, replica, failure, key, cache))
                with lock:
                    done[0] += 1
                    if failure:
                        result.failures[failure] += 1
                        examples = result.failure_examples.setdefault(failure, [])
                        if len(examples) < 3:
                            examples.append(f"t={start - t0:.3f}s key={key}: {detail}")
                    d, f = done[0], sum(result.failures.values())
                progress_bar.update(d, f)
        finally:
            session.close()
            with lock:
                result.sent += sent
                result.per_replica.update(local_ok)
                result.latencies_ms.extend(local_lat)
                result.samples.extend(local_samples)

    threads = [
        threading.Thread(target=worker, args=(s,), name=f"loadgen-{k}", daemon=True) for k, s in enumerate(thread_seeds)
    ]
    for t in threads:
        t.start()
    for t in threads:
        # a request can outlive the deadline by at most its timeout
        t.join(max(deadline - time.monotonic(), 0) + timeout + 1)
    result.duration_s = time.monotonic() - t0
    result.ok = sum(result.per_replica.values())
    result.samples.sort(key=lambda s: s.start)
    progress_bar.close(done[0], result.failed)
    return result


def write_json(result: LoadResult, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(result.summary(), fh, indent=2)
        fh.write("\n")


def write_csv(result: LoadResult, path: str) -> None:
    """One row per replica (and one per failure kind): kind, name, count, share."""
    total = result.sent or 1
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kind", "name", "count", "share"])
        for name, count in sorted(result.per_replica.items()):
            writer.writerow(["replica", name, count, round(count / total, 6)])
        for kind, count in sorted(result.failures.items()):
            writer.writerow(["failure", kind, count, round(count / total, 6)])


def format_summary(result: LoadResult) -> str:
    s = result.summary()
    lines = [
        f"{s['sent']} requests to {s['url']} in {s['duration_s']} s "
        f"({s['throughput_rps']} req/s, concurrency {s['concurrency']})"
        + (" [stopped by --max-seconds]" if s["stopped_by_time"] else ""),
    ]
    for name, count in s["per_replica"].items():
        lines.append(f"  {name:<20} {count:>7}  {s['share'][name]:6.1%}")
    lines.append(f"  failed: {s['failed']} {s['failures'] or ''}".rstrip())
    lat = s["latency_ms"]
    lines.append("  latency ms: " + " ".join(f"{k}={v}" for k, v in lat.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"target (default {DEFAULT_URL})")
    parser.add_argument("-n", "--requests", type=int, default=10_000, help="request count (default 10000)")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="threads (default 8)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop after this long (default 120)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in s (default 5)")
    parser.add_argument("--rate", type=float, default=0.0, help="cap on total req/s (default: none)")
    parser.add_argument("--key-header", default="X-Request-ID", help="header carrying the key")
    parser.add_argument("--no-key", action="store_true", help="send no key header (balancer picks one)")
    parser.add_argument("--seed", type=int, default=None, help="RNG seed for reproducible keys")
    parser.add_argument("--json", help="write the summary as JSON here")
    parser.add_argument("--csv", help="write per-replica counts as CSV here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.requests < 0 or args.concurrency < 1 or args.max_seconds <= 0:
        parser.error("--requests must be >= 0, --concurrency >= 1, --max-seconds > 0")
    result = run_load(
        args.url,
        args.requests,
        args.concurrency,
        timeout=args.timeout,
        max_seconds=args.max_seconds,
        rate=args.rate,
        key_header=args.key_header,
        key_fn=(lambda rng, i: None) if args.no_key else None,
        seed=args.seed,
        progress=False if args.quiet else None,
    )
    print(format_summary(result))
    if args.json:
        write_json(result, args.json)
    if args.csv:
        write_csv(result, args.csv)
    return 0 if result.failed == 0 and result.sent > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
