"""Load for ringlb (and the seed system it replaces): GET requests counted per replica (the
``Hello from Server: <id>`` message of the JSON body), failures by kind, latency percentiles.

Two generators, both bounded in count and in time, both giving a ``LoadResult``:

- ``run_load``: closed loop. ``concurrency`` threads, each with its own ``requests.Session``
  (keep-alive), each sending its next request when the last one is answered; ``rate`` caps the
  total. What scripts/loadgen.py, scripts/analysis.py and the tests drive.
- ``OpenLoad``: open loop. Request ``i`` leaves at ``i / rate`` s whatever came back before
  (asyncio + aiohttp, keep-alive connections), and its latency counts from then: a stall shows
  in the figures instead of slowing the sender down (no coordinated omission). What
  scripts/faults.py and scripts/affinity.py drive.

Keys: a random 6-digit ``X-Request-ID`` as the seed's client sent (``random_request_id``), or a
skewed stream (``zipf_keys``).
"""

from __future__ import annotations

import asyncio
import bisect
import csv
import itertools
import json
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import requests

from ringlb_harness.stats import percentile

DEFAULT_URL = "http://127.0.0.1:5000/home"
GREETING = re.compile(r"Hello from Server: (.+)$")


def random_request_id(rng: random.Random) -> str:
    """A random 6-digit request id, as the seed's client sent (100000..999999)."""
    return str(rng.randint(100_000, 999_999))


@dataclass
class Sample:
    """One request, kept when ``run_load(record=True)`` and always by ``OpenLoad``."""

    start: float  # seconds since the run started (time.monotonic based); open loop: when it was due
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
        """Nearest-rank percentile of the successful requests' latency, in ms; NaN without any."""
        value = percentile(self.latencies_ms, p)
        return float("nan") if value is None else value

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


def replica_of(body: bytes) -> str | None:
    """Who answered, from a replica's ``/home`` body; None for any other body."""
    try:
        message = json.loads(body)["message"]
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
) -> LoadResult:
    """Send ``n`` GETs to ``url`` from ``concurrency`` threads (closed loop) and count who answered.

    - ``key_fn(rng, i)`` returns the key for request ``i`` (default: a random 6-digit id); None
      sends no key header (the balancer then picks a random key, as the seed did).
    - ``rate`` > 0 caps the total request rate (requests/s), for "light load" runs.
    - The run stops after ``n`` requests, after ``max_seconds``, or when ``stop`` is set.
    - ``record`` keeps one ``Sample`` per request (timeline for failure analysis).
    """
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
                start = time.monotonic()
                replica = failure = cache = None
                detail = ""
                try:
                    response = session.get(url, headers=req_headers, timeout=timeout)
                    cache = response.headers.get("X-Cache")
                    if response.status_code != 200:
                        failure = f"http_{response.status_code}"
                        detail = response.text[:300]
                    else:
                        replica = replica_of(response.content)
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


class OpenLoad:
    """An open-loop load in a thread with its own event loop: request ``i`` (key ``keys[i]``)
    leaves ``i / rate`` s after the start, over keep-alive connections (at most ``connections``;
    default: twice the rate plus 50, so that the schedule is never held back), each with a
    ``timeout`` s budget. Bounded by ``len(keys)`` and the schedule; ``stop()`` ends it early.

    A GET counts as answered when it gets 200 with a replica's greeting; a POST when it gets the
    replica's own 405 (replicas serve GET only: the answer proves the request was delivered),
    ``body(i)`` its body. Latency counts from the due time. ``join()`` gives the ``LoadResult``,
    every request a ``Sample``."""

    def __init__(
        self,
        url: str,
        rate: float,
        keys: Sequence[str],
        *,
        method: str = "GET",
        body: Callable[[int], bytes] | None = None,
        timeout: float = 10.0,
        connections: int | None = None,
    ) -> None:
        if rate <= 0 or method not in ("GET", "POST"):
            raise ValueError("rate must be > 0 and method GET or POST")
        self.url, self.rate, self.keys, self.method, self.body, self.timeout = url, rate, keys, method, body, timeout
        self.connections = connections or int(rate * 2) + 50
        self.result = LoadResult(url=url, requested=len(keys), concurrency=self.connections)
        self._stop = threading.Event()
        self._started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"open-load-{method}")

    def start(self) -> OpenLoad:
        self.thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the load thread did not start within 30 s")
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> LoadResult:
        """Wait for the last request (its due time plus its timeout, and some slack)."""
        self.thread.join(len(self.keys) / self.rate + self.timeout + 15)
        if self.thread.is_alive():
            self._stop.set()
            raise RuntimeError("the load thread did not finish in time")
        if self.error:
            raise self.error
        return self.result

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by join
            self.error = exc
            self._started.set()

    async def _main(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=3.0)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            t0 = self.result.started_at = time.monotonic()
            self._started.set()
            await asyncio.gather(*(self._one(session, t0, i) for i in range(len(self.keys))))
        result = self.result
        result.duration_s = time.monotonic() - t0
        result.samples.sort(key=lambda s: s.start)
        result.sent = len(result.samples)
        result.ok = sum(1 for s in result.samples if s.failure is None)

    async def _one(self, session: aiohttp.ClientSession, t0: float, i: int) -> None:
        due = t0 + i / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._stop.is_set():
            return
        key = self.keys[i]
        replica = cache = failure = None
        detail = ""
        try:
            async with session.request(
                self.method,
                self.url,
                headers={"X-Request-ID": key},
                data=self.body(i) if self.body else None,
            ) as r:
                content = await r.read()
                status = r.status
                cache = r.headers.get("X-Cache")
            if self.method == "GET" and status == 200:
                replica = replica_of(content)
                if replica is None:
                    failure, detail = "bad_body", content[:300].decode(errors="replace")
            elif not (self.method == "POST" and status == 405):
                failure, detail = f"http_{status}", content[:300].decode(errors="replace")
        except TimeoutError:
            failure = "client_timeout"
        except aiohttp.ClientConnectorError as exc:
            failure = "refused" if isinstance(exc.os_error, ConnectionRefusedError) else "connect_error"
        except aiohttp.ServerDisconnectedError:
            failure = "disconnected"
        except aiohttp.ClientPayloadError:
            failure = "truncated"
        except aiohttp.ClientOSError as exc:
            reset = isinstance(exc.__cause__ or exc, ConnectionResetError) or exc.errno == 104
            failure = "reset" if reset else "os_error"
        except aiohttp.ClientError as exc:
            failure = type(exc).__name__
        end = time.monotonic()
        result = self.result
        result.samples.append(Sample(due - t0, end - t0, replica, failure, key, cache))
        if failure is None:
            result.latencies_ms.append((end - due) * 1000)
            if replica is not None:
                result.per_replica[replica] += 1
        else:
            result.failures[failure] += 1
            examples = result.failure_examples.setdefault(failure, [])
            if len(examples) < 3:
                examples.append(f"t={due - t0:.3f}s key={key}: {failure} {detail}".rstrip())


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
