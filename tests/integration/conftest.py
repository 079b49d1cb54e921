"""Integration tier: real processes on loopback, no cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.procs import LocalMode

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    """One local-mode stack per test module, started as ``make dev`` starts it."""
    mode = LocalMode(tmp_path_factory.mktemp("local"))
    try:
        mode.wait_replicas(3)
        yield mode
    finally:
        leftovers = mode.stop()
        assert not leftovers, f"processes outlived ringlb dev: {leftovers}"


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
