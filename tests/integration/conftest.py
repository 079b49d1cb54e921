"""Integration tier: real processes on loopback, no cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ringlb_harness.local import LocalMode

pytestmark = pytest.mark.integration


def _local_mode(tmp: Path) -> Iterator[LocalMode]:
    mode = LocalMode(tmp)
    try:
        mode.wait_replicas(3)
        yield mode
    finally:
        leftovers = mode.stop()
        assert not leftovers, f"processes outlived ringlb dev: {leftovers}"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    """One local-mode stack per test module, started as ``make dev`` starts it; tests using it
    must leave it with the seed's three replicas, in order."""
    yield from _local_mode(tmp_path_factory.mktemp("local"))


@pytest.fixture
def own_local(tmp_path: Path) -> Iterator[LocalMode]:
    """A local-mode stack for one test that changes the ring beyond repair (random removals)."""
    yield from _local_mode(tmp_path)


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
