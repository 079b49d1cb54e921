"""A short hypothesis fuzz of the request path over raw sockets (CI): no worker crash, no hang,
every answer a well-formed HTTP/1.1 response (h11 as the client-side parser). ``make fuzz``
runs the same property for minutes (scripts/fuzz.py)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from ringlb_harness.backends.main import MainBackend
from ringlb_harness.balancer import Balancer
from ringlb_harness.fuzzing import check_one, run_for

pytestmark = pytest.mark.integration

BUDGET_S = float(os.environ.get("RINGLB_FUZZ_SECONDS", "12"))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    backend = MainBackend().start()
    process = Balancer(
        tmp_path_factory.mktemp("fuzz"),
        env={"RINGLB_HEAD_TIMEOUT": "2", "RINGLB_FIRST_BYTE_TIMEOUT": "2", "RINGLB_MAX_BODY": "4096"},
    )
    process.push([("fuzz", backend.port)])
    yield process
    process.stop()
    backend.stop()


def test_request_path_fuzz(target: Balancer) -> None:
    outcomes: Counter[str] = Counter()

    def example(data: bytes, splits: list[int]) -> None:
        outcomes[check_one(target.port, data, splits).split(" ")[0]] += 1
        target.assert_workers_unchanged()

    ran = run_for(BUDGET_S, example)
    print(f"\nfuzz: {ran} connections in {BUDGET_S:.0f} s: {dict(outcomes.most_common(12))}")
    assert ran > 50, "too few examples ran to mean anything"
    target.assert_workers_unchanged()
    assert requests.get(f"{target.url}/echo", headers={"X-Request-ID": "after"}, timeout=30).status_code == 200
