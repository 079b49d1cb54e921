"""What the status page shows over time, kept in the shared state directory so that every
worker answers the same: the last membership changes, and a minute of counter samples.

The master writes both (a push is published under the shared lock; the health thread samples
once per interval); workers only read. Files are replaced atomically, so a reader sees the old
or the new list, never half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ringlb_balancer import counters
from ringlb_balancer.status.model import keep_samples

CHANGES = "status-changes.json"
SAMPLES = "status-samples.json"
KEEP_CHANGES = 20


def _read(path: Path) -> list[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def _write(path: Path, doc: list[Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Appends are read-modify-write, by the master and every worker: one at a time."""
    with open(state_dir / "status.lock", "a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


def record_change(state_dir: Path, entry: dict[str, Any]) -> None:
    path = state_dir / CHANGES
    with _locked(state_dir):
        _write(path, sorted(_read(path) + [entry], key=lambda e: e["revision"])[-KEEP_CHANGES:])


def changes(state_dir: Path) -> list[dict[str, Any]]:
    return _read(state_dir / CHANGES)


def record_sample(state_dir: Path, names: list[str]) -> None:
    """Append the summed counters (requests and 5xx answers) of the members in ``names`` as of
    now: members that left drop out of the samples as the window moves on."""
    totals = counters.totals(state_dir, names)["members"]
    sample = (
        time.time(),
        {name: (sum(row["answers"].values()), row["answers"]["5xx"]) for name, row in totals.items()},
    )
    with _locked(state_dir):
        _write(state_dir / SAMPLES, keep_samples(samples(state_dir), sample))


def samples(state_dir: Path) -> list[tuple[float, dict[str, tuple[int, int]]]]:
    return [(at, {n: tuple(v) for n, v in members.items()}) for at, members in _read(state_dir / SAMPLES)]
