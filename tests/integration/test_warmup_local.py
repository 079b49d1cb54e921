"""``ringlb dev --warmup``: a scale-up and a graceful scale-down carried out in steps, under load.

Real processes on loopback: the supervisor pushes one membership per step, each with its own
revision; the balancer's change log holds every step with the fraction of the key space it
moved, exactly what the plan's tables move; the routing of a fixed key set is checked against
the table of whatever revision is in force when probed; the leaving replica is stopped only
after the last step; no request of a steady keyed load fails.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from ringlb_balancer.local.warmup import schedule
from ringlb_balancer.status import moved_fraction
from ringlb_harness.local import LocalMode
from ringlb_harness.net import wait_until
from ringlb_harness.proc import pids_listening
from ringlb_ring import hashing
from ringlb_ring.hashing import warmup as plan_tables
from ringlb_ring.membership import parse

pytestmark = pytest.mark.integration

WARMUP = 4  # seconds: schedule(WARMUP).steps is 5 pushes, one a second
OLD = ["Server 1", "Server 2", "Server 3"]
NEW = [*OLD, "S4"]
PROBE = [f"probe-{i}" for i in range(40)]  # the fixed key set whose routing is checked per revision
LOAD_KEYS = [f"user-{i}" for i in range(300)]
CONFIG = hashing.HashingConfig("maglev", table_size=1009)


class Load:
    """A steady keyed load from one thread: at most ``limit`` requests, until ``stop()``."""

    def __init__(self, url: str, limit: int = 20_000) -> None:
        self.url, self.limit = url, limit
        self.answers: Counter[str] = Counter()  # replica -> answers
        self.failures: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with requests.Session() as session:
            for i in range(self.limit):
                if self.done.is_set():
                    return
                try:
                    r = session.get(
                        f"{self.url}/home", headers={"X-Request-ID": LOAD_KEYS[i % len(LOAD_KEYS)]}, timeout=30
                    )
                    if r.status_code == 200:
                        self.answers[r.json()["message"].removeprefix("Hello from Server: ")] += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))

    def stop(self) -> None:
        self.done.set()
        self.thread.join(60)


class Prober:
    """Routes ``PROBE`` at the revision in force and compares with that revision's table. Called
    from ``wait_until``, which takes an exception for "not yet": mismatches are collected instead."""

    def __init__(self, local: LocalMode) -> None:
        self.local = local
        self.session = requests.Session()
        self.checked: dict[int, float | None] = {}  # revision -> transition fraction (None: direct)
        self.mismatches: list[str] = []

    def probe(self) -> None:
        doc = self.local.membership()
        if doc["revision"] in self.checked:
            return
        membership = parse(doc)
        table = hashing.build(membership.names, membership.hashing)
        routed = {}
        for key in PROBE:
            r = self.session.get(f"{self.local.url}/home", headers={"X-Request-ID": key}, timeout=30)
            routed[key] = r.json()["message"].removeprefix("Hello from Server: ") if r.status_code == 200 else r.text
        if self.local.membership()["revision"] != doc["revision"]:
            return  # the table changed while probing: nothing to compare with
        wrong = {k: v for k, v in routed.items() if v != table.members[table.owner(k)]}
        if wrong:
            self.mismatches.append(f"revision {doc['revision']}: {wrong}")
        transition = membership.hashing.transition
        self.checked[doc["revision"]] = transition.fraction if transition else None


def changes_after(local: LocalMode, revision: int, count: int) -> list[dict]:
    def found() -> list[dict] | None:
        log = local.session.get(f"{local.url}/status/data", timeout=10).json()["changes"]
        newer = sorted((c for c in log if c["revision"] > revision), key=lambda c: c["revision"])
        return newer if len(newer) >= count else None

    return wait_until(found, 30, interval=0.1, what=f"{count} change-log entries after revision {revision}")


def expected_moves(old: list[str], new: list[str]) -> list[float]:
    """What each step of the plan moves, computed from the tables as the balancer does."""
    tables = [hashing.build(old, CONFIG)] + [
        hashing.build(s.members, replace(CONFIG, transition=s.transition))
        for s in plan_tables.plan(old, new, schedule(WARMUP).steps)
    ]
    return [moved_fraction(a, b) for a, b in itertools.pairwise(tables)]


def test_scale_up_and_down_move_keys_in_steps_without_a_failed_request(tmp_path: Path) -> None:
    local = LocalMode(
        tmp_path,
        "--replicas",
        "3",
        "--warmup",
        str(WARMUP),
        "--strategy",
        "maglev",
        "--table-size",
        "1009",
        "--cache-size",
        "1000",
        "--miss-cost-ms",
        "1",
    )
    load = None
    try:
        local.wait_replicas(3)
        before_up = local.membership()["revision"]
        load = Load(local.url)
        prober = Prober(local)

        added = local.session.post(f"{local.url}/add", json={"n": 1, "hostnames": ["S4"]}, timeout=60)
        assert added.status_code == 200, added.text  # S4 is in the ring: its first slice
        assert added.json()["message"]["replicas"] == NEW
        wait_until(
            lambda: prober.probe() or "transition" not in local.membership()["hashing"],
            60,
            interval=0.02,
            what="the last step of the scale-up",
        )
        prober.probe()
        up = changes_after(local, before_up, schedule(WARMUP).steps)
        s4_port = int(next(m["address"] for m in local.membership()["members"] if m["name"] == "S4").rsplit(":")[1])

        before_down = up[-1]["revision"]
        removal: dict = {}
        rm = threading.Thread(
            target=lambda: removal.update(
                reply=local.session.delete(f"{local.url}/rm", json={"n": 1, "hostnames": ["S4"]}, timeout=60)
            )
        )
        rm.start()
        wait_until(lambda: prober.probe() or not rm.is_alive(), 60, interval=0.02, what="/rm to return")
        rm.join()
        assert removal["reply"].status_code == 200, removal["reply"].text
        assert removal["reply"].json()["message"]["replicas"] == OLD  # returned after the last step
        down = changes_after(local, before_down, schedule(WARMUP).steps)
        wait_until(lambda: not pids_listening(s4_port), 60, what="S4's process to stop after its hand-over")
        prober.probe()
        load.stop()
    finally:
        if load is not None:
            load.stop()
        leftovers = local.stop()
    assert not leftovers, f"processes outlived ringlb dev: {leftovers}"

    # every step pushed with a revision of its own, moving what the plan's table moves
    steps = schedule(WARMUP).steps
    assert [c["revision"] for c in up] == list(range(before_up + 1, before_up + 1 + steps))
    assert [c["added"] for c in up] == [["S4"]] + [[]] * (steps - 1)
    assert [c["moved"] for c in up] == pytest.approx(expected_moves(OLD, NEW))
    at_once = moved_fraction(hashing.build(OLD, CONFIG), hashing.build(NEW, CONFIG))
    assert all(0 < c["moved"] < at_once / 2 for c in up), up  # a slice each, not all at once
    assert sum(c["moved"] for c in up) == pytest.approx(at_once)
    # the leaving replica stays in the ring, handing its keys over, until the last step
    assert [c["revision"] for c in down] == list(range(before_down + 1, before_down + 1 + steps))
    assert [c["removed"] for c in down] == [[]] * (steps - 1) + [["S4"]]
    assert [c["moved"] for c in down] == pytest.approx(expected_moves(NEW, OLD))
    # routing matched the table in force at every revision probed, the final ones included
    assert prober.mismatches == []
    assert prober.checked[up[-1]["revision"]] is None and prober.checked[down[-1]["revision"]] is None
    assert load.failures == [], load.failures[:5]
    assert load.answers["S4"] > 0 and sum(load.answers.values()) > 0
