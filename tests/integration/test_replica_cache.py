"""The replicas' per-key cache model through ``ringlb dev --cache-size``: real processes on loopback.

The flags reach every replica as environment; the key the balancer hashed reaches the replica in
``X-Ringlb-Key``; under an affine strategy a key's later requests are hits on its owner, and the
replicas' own counters (``/metrics``) agree with the ``X-Cache`` answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from ringlb_harness.local import LocalMode
from ringlb_harness.prometheus import total

pytestmark = pytest.mark.integration

KEYS = [f"user-{i}" for i in range(30)]


def test_affine_routing_keeps_a_keys_cache_warm(tmp_path: Path) -> None:
    local = LocalMode(tmp_path, "--replicas", "2", "--cache-size", "100", "--miss-cost-ms", "1", "--strategy", "ring")
    try:
        local.wait_replicas(2)
        answers = []
        for _ in range(3):
            for key in KEYS:
                r = requests.get(f"{local.url}/home", headers={"X-Request-ID": key}, timeout=30)
                assert r.status_code == 200, r.text
                answers.append((key, r.json()["message"], r.headers.get("X-Cache")))
        addresses = [m["address"] for m in local.membership()["members"]]
        scraped = [requests.get(f"http://{a}/metrics", timeout=10).text for a in addresses]
    finally:
        leftovers = local.stop()
    assert not leftovers, f"processes outlived ringlb dev: {leftovers}"
    first, later = answers[: len(KEYS)], answers[len(KEYS) :]
    assert [c for _, _, c in first] == ["miss"] * len(KEYS)
    assert [c for _, _, c in later] == ["hit"] * len(later), later
    owners = {key: owner for key, owner, _ in first}
    assert all(owners[key] == owner for key, owner, _ in later)  # the same replica every time
    assert len(set(owners.values())) == 2  # both replicas hold keys
    assert sum(total(t, "ringlb_replica_cache_misses_total") for t in scraped) == len(KEYS)
    assert sum(total(t, "ringlb_replica_cache_hits_total") for t in scraped) == 2 * len(KEYS)
    assert all(total(t, "ringlb_replica_cache_size") == 100 for t in scraped)
