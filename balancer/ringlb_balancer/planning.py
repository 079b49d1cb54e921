"""The seed API's ``/add`` and ``/rm`` planning: the current replicas and a request body in, the new list out.

Part of the balancer's API (its bodies, limits and ``<Error>`` messages); the name rules it
applies come from ``ringlb_ring.naming``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ringlb_ring.naming import MAX_REPLICAS, PlanError, check_name, check_unique, dns_name, generate


def _parse_body(body: object, verb: str) -> tuple[int, list[str]]:
    if not isinstance(body, dict):
        raise PlanError('<Error> body must be a JSON object like {"n": 1, "hostnames": []}')
    unknown = set(body) - {"n", "hostnames"}
    if unknown:
        raise PlanError(f"<Error> unknown field(s): {', '.join(sorted(unknown))}")
    n = body.get("n")
    if not isinstance(n, int) or isinstance(n, bool):
        raise PlanError('<Error> "n" is required and must be an integer')
    if not 1 <= n <= MAX_REPLICAS:
        raise PlanError(f'<Error> "n" must be between 1 and {MAX_REPLICAS}')
    hostnames = body.get("hostnames", [])
    if not isinstance(hostnames, list):
        raise PlanError('<Error> "hostnames" must be a list of strings')
    if len(hostnames) > n:
        raise PlanError(f"<Error> Length of hostname list is more than {verb} instances")
    return n, [check_name(h) for h in hostnames]


def plan_add(current: Sequence[str], body: object) -> list[str]:
    """The replica list after a seed ``POST /add``: named ones first, then generated names."""
    n, hostnames = _parse_body(body, "newly added")
    clash = [h for h in hostnames if dns_name(h) in {dns_name(c) for c in current}]
    if clash:
        raise PlanError(f"<Error> hostname(s) already in use: {', '.join(clash)}")
    check_unique(hostnames)
    if len(current) + n > MAX_REPLICAS:
        raise PlanError(f"<Error> adding {n} would make {len(current) + n} replicas; the cap is {MAX_REPLICAS}")
    added = hostnames + generate(list(current) + hostnames, n - len(hostnames))
    return list(current) + added


def plan_remove(current: Sequence[str], body: object, rng: random.Random | None = None) -> list[str]:
    """The replica list after a seed ``DELETE /rm``: the named ones, then random others."""
    n, hostnames = _parse_body(body, "removable")
    check_unique(hostnames)
    missing = [h for h in hostnames if h not in current]
    if missing:
        raise PlanError(f"<Error> not a current replica: {', '.join(missing)}")
    if n > len(current):
        raise PlanError(f"<Error> cannot remove {n} replicas: only {len(current)} exist")
    others = [c for c in current if c not in hostnames]
    victims = set(hostnames) | set((rng or random).sample(others, n - len(hostnames)))
    return [c for c in current if c not in victims]
