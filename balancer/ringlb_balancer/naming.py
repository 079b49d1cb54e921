"""Replica identities: validation, generated names and the seed's /add and /rm planning.

Pure functions shared by the balancer, the local supervisor and the operator, so that the three
agree on what a name may be and which replicas a request adds or removes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

MAX_REPLICAS = 56
"""Cap on replicas behind one balancer, whatever the strategy: the seed strategy holds 56 at
most (512 slots / 9 virtual servers), and one cap for all keeps a strategy switch always valid.
/add beyond it is refused with 400; the CRD schema and the membership API use the same cap."""

NAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 ._-]{0,38}[A-Za-z0-9])?$")
"""Also the CRD's pattern (ECMA syntax, hence ``$``); match it with ``fullmatch``, since
Python's ``$`` also matches before a trailing newline."""
NAME_RULE = (
    "1-40 characters: letters, digits, space, '.', '_' or '-', starting and ending with a "
    "letter or digit"
)
GENERATED_PREFIX = "Server "


class PlanError(ValueError):
    """A request the seed API must refuse with 400; the message is shown to the client."""


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise PlanError(f"<Error> invalid hostname {name!r}: {NAME_RULE}")
    return name


def dns_name(name: str) -> str:
    """The DNS-safe form used in pod names: ``Server 1`` → ``server-1``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def check_unique(names: Sequence[str]) -> None:
    """Names must be distinct, and so must their DNS forms (they become pod names)."""
    seen: dict[str, str] = {}
    for name in names:
        key = dns_name(name)
        if key in seen:
            if seen[key] == name:
                raise PlanError(f"<Error> hostname {name!r} is listed twice")
            raise PlanError(
                f"<Error> hostnames {seen[key]!r} and {name!r} map to the same pod name {key!r}"
            )
        seen[key] = name


def generate(existing: Sequence[str], count: int) -> list[str]:
    """``count`` new names in the seed's style, ``Server <k>`` with the smallest unused k."""
    taken = {dns_name(n) for n in existing}
    names: list[str] = []
    k = 1
    while len(names) < count:
        candidate = f"{GENERATED_PREFIX}{k}"
        if dns_name(candidate) not in taken:
            names.append(candidate)
            taken.add(dns_name(candidate))
        k += 1
    return names


def desired_identities(replicas: int, hostnames: Sequence[str]) -> list[str]:
    """The ring identities a spec asks for: the first ``replicas`` hostnames, then generated
    names for the rest. ``kubectl scale`` changes only ``replicas``, so scaling down drops the
    last names first and scaling up brings back the same generated names."""
    chosen = list(hostnames[:replicas])
    return chosen + generate(chosen, replicas - len(chosen))


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
        raise PlanError(
            f"<Error> adding {n} would make {len(current) + n} replicas; the cap is {MAX_REPLICAS}"
        )
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
