"""Replica identities: name rules, DNS forms, generated names and the replica cap.

Shared, so that the balancer, the local supervisor and the operator agree on what a name may be.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_REPLICAS = 56
"""Cap on replicas behind one balancer, whatever the strategy: the seed strategy holds 56 at
most (512 slots / 9 virtual servers), and one cap for all keeps a strategy switch always valid.
/add beyond it is refused with 400; the CRD schema and the membership API use the same cap."""

NAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 ._-]{0,38}[A-Za-z0-9])?$")
"""Also the CRD's pattern (ECMA syntax, hence ``$``); match it with ``fullmatch``, since
Python's ``$`` also matches before a trailing newline."""
NAME_RULE = "1-40 characters: letters, digits, space, '.', '_' or '-', starting and ending with a letter or digit"
GENERATED_PREFIX = "Server "


class PlanError(ValueError):
    """A name or name list that must be refused (400 in the APIs); the message is shown to the client."""


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
            raise PlanError(f"<Error> hostnames {seen[key]!r} and {name!r} map to the same pod name {key!r}")
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
