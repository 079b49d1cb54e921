"""What the status page shows over time, kept in the shared state directory so that every
worker answers the same: the last membership changes, and a minute of counter samples.

The master writes both (a push is published under the shared lock; the health thread samples
once per interval); workers only read. Files are replaced atomically, so a reader sees the old
or the new list, never half of one.
"""

from __future__ import annotations

import json
import os
import time
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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def record_change(state_dir: Path, entry: dict[str, Any]) -> None:
    path = state_dir / CHANGES
    _write(path, (_read(path) + [entry])[-KEEP_CHANGES:])


def changes(state_dir: Path) -> list[dict[str, Any]]:
    return _read(state_dir / CHANGES)


def record_sample(state_dir: Path) -> None:
    """Append the summed counters (requests and 5xx answers per member) as of now."""
    totals = counters.totals(state_dir)["members"]
    sample = (time.time(), {
        name: (sum(row["answers"].values()), row["answers"]["5xx"]) for name, row in totals.items()
    })
    path = state_dir / SAMPLES
    previous = [(at, {n: tuple(v) for n, v in members.items()}) for at, members in _read(path)]
    _write(path, keep_samples(previous, sample))  # type: ignore[arg-type]


def samples(state_dir: Path) -> list[tuple[float, dict[str, tuple[int, int]]]]:
    return [(at, {n: tuple(v) for n, v in members.items()}) for at, members in _read(state_dir / SAMPLES)]
