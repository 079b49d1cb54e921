"""Consistent-hashing strategies behind one registry: pure functions of a member list, no I/O.

Every strategy is built once per membership change and then answers lookups from a precomputed
table, because lookups sit on the balancer's per-request path and membership changes are rare.
A strategy maps a key to a *preference order* of member indexes: the first is the owner, the rest
are where a request goes when the owner is ejected or over its bounded load. One module per
algorithm (``maglev``, ``ketama`` for "ring", ``seed``, and ``baseline`` for the non-affine
``round-robin`` and ``random`` it is measured against); a new strategy is one module plus one
entry in ``STRATEGIES``. A config with a ``transition`` builds a warm-up table (``warmup``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from ringlb_ring.hashing import warmup
from ringlb_ring.hashing.base import Strategy, hash64, is_prime
from ringlb_ring.hashing.baseline import Random, RoundRobin
from ringlb_ring.hashing.ketama import DEFAULT_VNODES, Ring
from ringlb_ring.hashing.maglev import DEFAULT_MAGLEV_TABLE_SIZE, Maglev
from ringlb_ring.hashing.seed import DEFAULT_FORMULAS, FORMULAS, Seed
from ringlb_ring.hashing.warmup import Transition

__all__ = [
    "DEFAULT_MAGLEV_TABLE_SIZE",
    "DEFAULT_STRATEGY",
    "DEFAULT_VNODES",
    "STRATEGIES",
    "HashingConfig",
    "Strategy",
    "Transition",
    "bounded_choice",
    "build",
    "hash64",
    "keys_moved",
]

DEFAULT_STRATEGY: Final = "maglev"  # Final: a literal type, as the operator's spec field has


@dataclass(frozen=True)
class HashingConfig:
    """The hashing settings the operator or supervisor pushes with a membership."""

    strategy: str = DEFAULT_STRATEGY
    table_size: int = DEFAULT_MAGLEV_TABLE_SIZE
    vnodes: int = DEFAULT_VNODES
    seed_formulas: str = DEFAULT_FORMULAS  # "original" or "reissue"
    bounded_load: float = 0.0  # 0 disables; otherwise c >= 1, e.g. 1.25
    transition: Transition | None = None  # a warm-up step in force (ringlb_ring.hashing.warmup)

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if self.seed_formulas not in FORMULAS:
            raise ValueError("seed_formulas must be 'original' or 'reissue'")
        if self.bounded_load and not 1.0 <= self.bounded_load <= 10.0:
            raise ValueError("bounded_load must be 0 (off) or between 1.0 and 10.0")
        if not 1 <= self.vnodes <= 1000:
            raise ValueError("vnodes must be between 1 and 1000")
        if not (is_prime(self.table_size) and 257 <= self.table_size <= 1_000_003):
            raise ValueError("table_size must be a prime between 257 and 1000003")
        if self.transition is not None:
            if self.strategy not in warmup.WARMUP_STRATEGIES:
                raise ValueError(
                    f"transition: only for strategies {', '.join(warmup.WARMUP_STRATEGIES)}, not {self.strategy!r}"
                )
            self.transition.validate()


Builder = Callable[[Sequence[str], HashingConfig], Strategy]

STRATEGIES: dict[str, Builder] = {
    "maglev": lambda members, config: Maglev(members, config.table_size),
    "ring": lambda members, config: Ring(members, config.vnodes),
    "seed": lambda members, config: Seed(members, *FORMULAS[config.seed_formulas]),
    "round-robin": lambda members, config: RoundRobin(members),
    "random": lambda members, config: Random(members),
}
"""Strategy name (as in ``HashingConfig.strategy`` and the CRD) → builder; the order is the
order users see (CLI choices, error messages)."""


def build(members: Sequence[str], config: HashingConfig = HashingConfig()) -> Strategy:
    """Build the strategy ``config`` names over ``members`` (in the given order); with a
    transition, the warm-up table between its two member lists (``members`` must be their union)."""
    config.validate()
    transition = config.transition
    if transition is None:
        return STRATEGIES[config.strategy](members, config)
    transition.check_members(members)
    direct = replace(config, transition=None)
    old = STRATEGIES[config.strategy](transition.source, direct)
    new = STRATEGIES[config.strategy](transition.target, direct)
    return warmup.blend(members, old, new, transition.fraction)


def bounded_choice(preference: Iterable[int], inflight: Sequence[int], factor: float) -> int:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2018).

    The first member in preference order whose in-flight count is below
    ceil(factor × mean), where the mean counts the request being placed. Some member always
    qualifies because the cap is at least the mean.
    """
    total = sum(inflight) + 1
    cap = math.ceil(factor * total / len(inflight))
    first = -1
    for index in preference:
        if first < 0:
            first = index
        if inflight[index] < cap:
            return index
    return first


def keys_moved(before: Strategy, after: Strategy, keys: Iterable[str]) -> list[str]:
    """The keys whose owner (by name) differs between two strategies."""
    return [key for key in keys if before.members[before.owner(key)] != after.members[after.owner(key)]]
