"""For every tier: the code under test is the code in the tree."""

from __future__ import annotations

from pathlib import Path

import pytest

BALANCER = Path(__file__).resolve().parents[1] / "balancer" / "ringlb_balancer"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Python imports a compiled module before its source: one compiled before its .py was last
    edited would test yesterday's code. ``make venv`` (which every make target runs) recompiles.
    The code is in the group library (``proxy__mypyc``); the per-module files only load it."""
    library = next(BALANCER.glob("proxy__mypyc.*.so"), None)
    if library is None:
        return  # not compiled: the sources run
    for shim in BALANCER.glob("*.so"):
        source = BALANCER / f"{shim.name.split('.', 1)[0]}.py"
        if source.exists() and source.stat().st_mtime > library.stat().st_mtime:
            pytest.exit(
                f"{source.name} changed after the balancer's hot modules were compiled: run "
                "`make venv` to recompile (or delete balancer/ringlb_balancer/*.so)",
                returncode=4,
            )
