"""Ctrl-C at any moment of ``ringlb dev``'s start-up leaves no process behind.

Once, a Ctrl-C within the first second left two replica gunicorn workers stuck on a lock and
deaf to SIGTERM after their master was gone. Here the signal lands at seeded random moments of
start-up (before the handlers, while the balancer and the replicas are forked, while they
import, while the first membership is pushed), sent as a terminal sends it: SIGINT to the
foreground process group. Every process of the stack carries a tag in its environment, so one
that escaped the tree (an orphan reparented to init) is found too.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from ringlb_harness.local import LocalMode
from ringlb_harness.proc import alive, descendants, start_ticks

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("RINGLB_INTERRUPT_SEED", "18"))
ROUNDS = int(os.environ.get("RINGLB_INTERRUPT_ROUNDS", "6"))
LATEST = 1.5  # seconds after start: the signal lands within the start-up


def watch_tree(local: LocalMode, seen: dict[int, int], done: threading.Event) -> None:
    """Record every process below ``ringlb dev`` (with its start time, so a PID reused later is
    not taken for it) until ``done``: the tree as it was, for the report if one outlives it."""
    while not done.wait(0.01):
        for pid in descendants(local.process.pid):
            if pid not in seen and (ticks := start_ticks(pid)) is not None:
                seen[pid] = ticks


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_ctrl_c_at_a_random_moment_of_start_up_leaves_no_process(tmp_path: Path, round_: int) -> None:
    delay = random.Random(f"{SEED}-{round_}").uniform(0, LATEST)
    local = LocalMode(tmp_path)
    seen: dict[int, int] = {}
    done = threading.Event()
    watcher = threading.Thread(target=watch_tree, args=(local, seen, done), daemon=True)
    watcher.start()
    try:
        # The wait is the scenario (when the signal lands), not a stand-in for a condition.
        done.wait(delay)
        local.interrupt()
        print(f"Ctrl-C {delay:.3f}s after start, {len(seen)} processes below ringlb dev by then")
        left = local.stop(sig=None)
    finally:
        done.set()
        watcher.join()
    tree_left = {pid: ticks for pid, ticks in seen.items() if alive(pid, ticks)}
    assert not left and not tree_left, (
        f"seed {SEED} round {round_}: Ctrl-C {delay:.3f}s after start left {left or tree_left} "
        f"(of {len(seen)} processes seen); output:\n{local.printed()[-3000:]}"
    )
