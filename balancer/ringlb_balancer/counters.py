"""Request counters: plain integers on the hot path, written out once a second, summed on scrape.

prometheus_client's multiprocess mode writes an mmap'd file on every increment; profiled under
load that was a tenth of the balancer's CPU per request. Here each process counts in its own
lists and writes one small JSON file to the shared state directory per second; ``/metrics`` and
``/status`` sum the files of every process, living or dead, so totals never go backwards when
a worker is replaced.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import Any

# Seconds to the first byte of the replica's answer.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
FAILURE_REASONS = ("empty", "upstream", "timeout", "internal", "overload")
# Per member: answers by status class, then retries sent to it, then ejections by reason.
EJECTION_REASONS = ("connection", "5xx", "heartbeat")
_RETRIES = len(CLASSES)
_EJECTIONS = _RETRIES + 1
_WIDTH = _EJECTIONS + len(EJECTION_REASONS)
HOT_KEYS = 20  # the hot keys a process reports, and the status page shows


class Counters:
    """One process's counters; ``flush`` makes them visible to the others."""

    def __init__(self, state_dir: str | os.PathLike[str], pid: int | None = None) -> None:
        self.path = Path(state_dir) / f"counters-{pid or os.getpid()}.json"
        self.members: dict[str, list[int]] = {}
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.latency = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.hot: list[tuple[str, float, float]] = []  # (key, requests/s, error/s) of the last window

    def row(self, name: str) -> list[int]:
        """The live list for ``name``: the engine keeps it per member index, so counting an
        answer is one list increment, not a dictionary lookup."""
        row = self.members.get(name)
        if row is None:
            row = self.members[name] = [0] * _WIDTH
        return row

    def retain(self, names: list[str]) -> None:
        """Drop the rows of members that left: series of names that come and go (a rolling
        update gives every pod a new one) would otherwise grow ``/metrics`` without bound."""
        members = self.members
        kept = set(names)
        for name in [n for n in members if n not in kept]:
            del members[name]

    def answered(self, row: list[int], status: int, seconds: float) -> None:
        row[min(status // 100, 5) - 1] += 1
        self.latency[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def retried(self, row: list[int]) -> None:
        row[_RETRIES] += 1

    def ejected(self, row: list[int], reason: str) -> None:
        row[_EJECTIONS + EJECTION_REASONS.index(reason)] += 1

    def failure(self, reason: str) -> None:
        self.failures[reason] += 1

    def flush(self) -> None:
        doc = {
            "members": self.members,
            "failures": self.failures,
            "latency": self.latency,
            "latency_sum": self.latency_sum,
            "hot": self.hot,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)


def totals(state_dir: str | os.PathLike[str], names: list[str] | None = None) -> dict[str, Any]:
    """Every process's counters summed: ``members`` maps a name to
    ``{"answers": {class: n}, "retries": n, "ejections": {reason: n}}``, for the members in
    ``names`` only when given (the files of exited workers still hold members that left)."""
    wanted = None if names is None else set(names)
    members: dict[str, list[int]] = {}
    failures = dict.fromkeys(FAILURE_REASONS, 0)
    latency = [0] * (len(BUCKETS) + 1)
    latency_sum = 0.0
    hot: dict[str, list[float]] = {}
    for path in Path(state_dir).glob("counters-*.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # replaced while we read it: the next scrape has it
        for name, row in doc["members"].items():
            if wanted is not None and name not in wanted:
                continue
            mine = members.setdefault(name, [0] * _WIDTH)
            for i, value in enumerate(row[:_WIDTH]):
                mine[i] += value
        for reason, value in doc["failures"].items():
            failures[reason] = failures.get(reason, 0) + value
        for i, value in enumerate(doc["latency"]):
            latency[i] += value
        latency_sum += doc["latency_sum"]
        for key, rate, error in doc.get("hot", ()):
            mine_hot = hot.setdefault(key, [0.0, 0.0])
            mine_hot[0] += rate
            mine_hot[1] += error
    return {
        "members": {
            name: {
                "answers": dict(zip(CLASSES, row[:_RETRIES])),
                "retries": row[_RETRIES],
                "ejections": dict(zip(EJECTION_REASONS, row[_EJECTIONS:])),
            }
            for name, row in members.items()
        },
        "failures": failures,
        "latency": latency,
        "latency_sum": latency_sum,
        # Each process's top keys summed: a key hot in one worker only is still listed.
        "hot": sorted(((k, r, e) for k, (r, e) in hot.items()), key=lambda h: -h[1])[:HOT_KEYS],
    }
