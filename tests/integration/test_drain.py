"""SIGTERM as Kubernetes sends it to a balancer pod being deleted: not ready at once, still
serving while endpoints catch up (each answer ends its connection), then gone."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ringlb_harness.backends.main import MainBackend
from ringlb_harness.balancer import Balancer
from ringlb_harness.net import wait_until

pytestmark = pytest.mark.integration

DRAIN = 6.0  # long enough that a few requests fit in the window on a loaded machine
ANSWERS_IN_WINDOW = 3


@pytest.fixture
def backend() -> Iterator[MainBackend]:
    server = MainBackend(name="main").start()
    yield server
    server.stop()


def test_sigterm_turns_readyz_503_keeps_serving_then_exits(tmp_path: Path, backend: MainBackend) -> None:
    balancer = Balancer(tmp_path, workers=2, env={"RINGLB_DRAIN_SECONDS": str(DRAIN)})
    try:
        assert balancer.push([("main", backend.port)]).status_code == 200
        session = requests.Session()
        assert session.get(f"{balancer.url}/readyz", timeout=30).status_code == 200
        assert session.get(f"{balancer.url}/home", timeout=30).headers.get("Connection") != "close"

        sent = time.monotonic()
        balancer.process.send_signal(signal.SIGTERM)
        wait_until(
            lambda: session.get(f"{balancer.admin_url}/readyz", timeout=30).status_code == 503,
            30,
            what="/readyz 503 after SIGTERM",
        )
        # Within the drain window requests are still answered, by whichever worker takes them,
        # and each connection ends after its answer, so a client moves on to a pod that stays.
        for served in range(ANSWERS_IN_WINDOW):
            reply = requests.get(f"{balancer.url}/home", headers={"X-Request-ID": str(served)}, timeout=30)
            assert reply.status_code == 200 and reply.headers.get("Connection") == "close"
        balancer.process.wait(timeout=DRAIN + 60)
        assert time.monotonic() - sent >= DRAIN - 0.5  # it did not leave before the window
    finally:
        balancer.stop()


def _wait_replaced(balancer: Balancer, old: set[int]) -> None:
    wait_until(
        lambda: len(balancer.worker_pids() - old) == 2 and not balancer.worker_pids() & old,
        60,
        what="two new workers, the old ones gone",
    )


def _assert_ready_and_keeping_alive(balancer: Balancer) -> None:
    for _ in range(4):  # a new connection each time: each worker answers some of them
        assert requests.get(f"{balancer.admin_url}/readyz", timeout=30).status_code == 200
        reply = requests.get(f"{balancer.url}/home", headers={"X-Request-ID": "k"}, timeout=30)
        assert reply.status_code == 200 and reply.headers.get("Connection") != "close"
    assert balancer.process.poll() is None


def test_sighup_replaces_the_workers_and_the_balancer_stays_ready(tmp_path: Path, backend: MainBackend) -> None:
    """A reload's SIGTERM to the old workers is not the balancer's: the new workers must keep
    /readyz 200 and keep-alive answers (the drain flag the workers share is the balancer's)."""
    balancer = Balancer(tmp_path, workers=2, env={"RINGLB_DRAIN_SECONDS": "1"})
    try:
        assert balancer.push([("main", backend.port)]).status_code == 200
        old = balancer.worker_pids()
        balancer.process.send_signal(signal.SIGHUP)
        _wait_replaced(balancer, old)
        _assert_ready_and_keeping_alive(balancer)
    finally:
        balancer.stop()


def test_sighup_while_the_first_workers_boot_keeps_the_balancer_ready(tmp_path: Path, backend: MainBackend) -> None:
    """The reload comes before the first workers finished booting: they are still the old ones
    (a worker's generation is fixed when the master forks it, not when it starts serving)."""
    balancer = Balancer(tmp_path, workers=2, env={"RINGLB_DRAIN_SECONDS": "1"}, wait=False)
    try:
        wait_until(lambda: len(balancer.worker_pids()) == 2, 60, what="the first two workers forked")
        old = balancer.worker_pids()
        balancer.process.send_signal(signal.SIGHUP)
        _wait_replaced(balancer, old)
        assert balancer.push([("main", backend.port)]).status_code == 200
        _assert_ready_and_keeping_alive(balancer)
    finally:
        balancer.stop()
