"""What the status page shows, computed from the routing in force: pure functions, no I/O.

The endpoints (``GET /status/data``, ``GET /status/lookup``) hand these functions the strategy
objects the balancer routes with, the health flags, in-flight counts and counter samples they
read from the shared state, and serialize what comes back. Nothing here reads a clock, a file or
a socket, so everything is unit-tested with hand-built inputs.

Shares and moved fractions are each strategy's own report (``Strategy.shares``,
``Strategy.moved``: exact, from its tables: maglev entries, arcs of the ring's 2^64 circle, the
seed's request-id residues); between different kinds (a strategy switch) or sizes the moved
fraction is measured on a fixed sample of ``SAMPLE_KEYS`` keys, and the change record says so
(``"exact": false``). A non-affine strategy (round-robin, random) has no owner per key,
so a change to or from one has no moved fraction (``None``).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ringlb_ring import hashing

SAMPLE_KEYS = 20_000
WINDOW = 60.0  # seconds of history the page charts
MAX_CHANGES = 20  # change-log entries the page shows

# A member's health as the page labels it (shared.py stores it as a byte: 0 or an ejection code).
HEALTH_LABEL_HEALTHY = "healthy"
HEALTH_LABEL_EJECTED = "ejected"

Strategy = hashing.Strategy


# -- what a membership change moved ----------------------------------------------------------
def moved_fraction(before: Strategy, after: Strategy) -> float | None:
    """Fraction of the key space whose owner (by member name) differs between two strategies.

    Exact when the strategy can compare the two tables entry by entry (``Strategy.moved``);
    otherwise measured on ``SAMPLE_KEYS`` fixed keys (see ``moved_is_exact``). None when either
    strategy is not affine: no key has an owner to move.
    """
    return _moved(before, after)[0]


def moved_is_exact(before: Strategy, after: Strategy) -> bool:
    """Whether ``moved_fraction(before, after)`` is computed from the tables (not sampled)."""
    return _moved(before, after)[1]


def _moved(before: Strategy, after: Strategy) -> tuple[float | None, bool]:
    if not (before.affine and after.affine):
        return None, False
    exact = before.moved(after)
    if exact is not None:
        return exact, True
    keys = sample_keys()
    return sum(1 for key in keys if _owner_name(before, key) != _owner_name(after, key)) / len(keys), False


def sample_keys(count: int = SAMPLE_KEYS) -> list[str]:
    """The fixed keys a cross-strategy moved fraction is measured on (non-numeric, so the seed
    strategy hashes them into its id range like any header value)."""
    return [f"status-sample-{i}" for i in range(count)]


def _owner_name(strategy: Strategy, key: str) -> str | None:
    if not strategy.members:
        return None
    index = strategy.owner(key)
    return strategy.members[index] if index >= 0 else None


def change(before: Strategy, after: Strategy, revision: int, at: float) -> dict[str, Any]:
    """One change-log entry, to record when a new membership is put in force (``at`` is a
    Unix time). ``moved`` is a fraction of the key space in [0, 1]."""
    old, new = set(before.members), set(after.members)
    moved, exact = _moved(before, after)
    return {
        "revision": revision,
        "at": at,
        "added": [m for m in after.members if m not in old],
        "removed": [m for m in before.members if m not in new],
        "moved": moved,
        "exact": exact,
        "strategy": after.name,
    }


# -- a warm-up in progress ------------------------------------------------------------------
def ramp(config: hashing.HashingConfig, strategy: Strategy) -> dict[str, Any] | None:
    """Where a warm-up stands (None: none in progress): ``config.transition``'s two member
    lists and fraction, each member's share in the final table, and the fraction of the key
    space still to move there (exact: a warm-up table compares entry by entry with its final
    table, ``Strategy.moved``)."""
    transition = config.transition
    if transition is None:
        return None
    final = _final_table(transition.target, replace(config, transition=None))
    shares = dict(zip(final.members, final.shares(), strict=True))
    return {
        "from": list(transition.source),
        "to": list(transition.target),
        "fraction": transition.fraction,
        "remaining": strategy.moved(final),
        "finalShares": {name: shares.get(name, 0.0) for name in strategy.members},
    }


@functools.lru_cache(maxsize=2)
def _final_table(members: tuple[str, ...], config: hashing.HashingConfig) -> Strategy:
    """Built once per warm-up (the page polls every second; a table build costs milliseconds)."""
    return hashing.build(members, config)


# -- request and error rates -----------------------------------------------------------------
Sample = tuple[float, Mapping[str, tuple[int, int]]]


def series(
    samples: Sequence[Sample], now: float | None = None, window: float = WINDOW, names: Iterable[str] = ()
) -> dict[str, dict[str, list[Any]]]:
    """Per member, rates between consecutive samples of cumulative counters.

    ``samples``: (Unix time, {member name: (requests, errors)}) in time order, typically one a
    second; gaps are fine (a rate is the difference over the elapsed time). Returns
    ``{name: {"at": [t, ...], "rps": [...], "errorRate": [...]}}`` for the intervals ending
    within ``window`` seconds of ``now`` (default: the last sample's time), for every member
    named in a sample or in ``names``. A member missing from a sample counts as (0, 0): counters
    are created on a member's first request. ``errorRate`` is errors / requests in the interval,
    ``None`` when there were no requests; an interval where a counter went backwards (a
    balancer restart) has ``None`` rates.
    """
    out: dict[str, dict[str, list[Any]]] = {}
    for name in names:
        out[name] = {"at": [], "rps": [], "errorRate": []}
    if not samples:
        return out
    if now is None:
        now = samples[-1][0]
    for _, counts in samples:
        for name in counts:
            if name not in out:
                out[name] = {"at": [], "rps": [], "errorRate": []}
    zero = (0, 0)
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t1 <= t0 or t1 < now - window or t1 > now:
            continue
        for name, s in out.items():
            s["at"].append(round(t1, 3))
            a, b = c0.get(name, zero), c1.get(name, zero)
            if b[0] < a[0] or b[1] < a[1]:
                s["rps"].append(None)
                s["errorRate"].append(None)
                continue
            requests, errors = b[0] - a[0], b[1] - a[1]
            s["rps"].append(round(requests / (t1 - t0), 3))
            s["errorRate"].append(round(errors / requests, 4) if requests else None)
    return out


def keep_samples(samples: Sequence[Sample], sample: Sample, window: float = WINDOW) -> list[Sample]:
    """``samples`` plus ``sample``, without those older than needed for ``window`` seconds of
    rates (one sample before the window is kept: the first rate needs it)."""
    kept = [s for s in samples if s[0] < sample[0]] + [sample]
    cutoff = sample[0] - window
    start = 0
    while start + 1 < len(kept) and kept[start + 1][0] <= cutoff:
        start += 1
    return kept[start:]


# -- the documents ---------------------------------------------------------------------------
def data(
    membership: Any,
    strategy: Strategy,
    *,
    ejected: Mapping[str, str] | None = None,
    inflight: Sequence[int] = (),
    samples: Sequence[Sample] = (),
    changes: Sequence[Mapping[str, Any]] = (),
    hot: Sequence[Sequence[Any]] = (),
    now: float | None = None,
    window: float = WINDOW,
) -> dict[str, Any]:
    """The document of ``GET /status/data``.

    ``membership``: the Membership in force (revision, members with name and address, hashing,
    key); ``strategy``: the strategy built from it (``routing.strategy``); ``ejected``: name ->
    reason ("heartbeat", "connection", "5xx", or "" when unknown) of each ejected member;
    ``inflight``: in-flight requests per member index; ``samples``: see ``series``; ``changes``:
    change-log entries from ``change`` (any order; the newest ``MAX_CHANGES`` are returned,
    newest first); ``hot``: (key, requests/s, error/s) of the hottest keys, hottest first (the
    true rate is between ``rps - error`` and ``rps``); ``now``: Unix time of the answer. The
    document's ``transition`` is ``ramp``'s: null outside a warm-up.
    """
    ejected = ejected or {}
    share = strategy.shares()
    rates = series(samples, now, window, [m.name for m in membership.members])
    if now is None:
        now = samples[-1][0] if samples else 0.0
    members = []
    for i, m in enumerate(membership.members):
        s = rates.get(m.name, {"at": [], "rps": [], "errorRate": []})
        members.append(
            {
                "name": m.name,
                "address": m.address,
                "share": share[i] if i < len(share) else 0.0,
                "health": HEALTH_LABEL_EJECTED if m.name in ejected else HEALTH_LABEL_HEALTHY,
                "reason": ejected.get(m.name, ""),
                "inflight": inflight[i] if i < len(inflight) else 0,
                "rps": _last(s["rps"]),
                "errorRate": _last(s["errorRate"]),
                "series": s,
            }
        )
    config = membership.hashing
    log = sorted(changes, key=lambda c: c["revision"], reverse=True)[:MAX_CHANGES]
    return {
        "revision": membership.revision,
        "strategy": config.strategy,
        "hashing": {
            "tableSize": config.table_size,
            "vnodes": config.vnodes,
            "seedFormulas": config.seed_formulas,
        },
        "key": {"source": membership.key.source, "name": membership.key.name},
        "boundedLoad": float(config.bounded_load),
        "now": now,
        "window": window,
        "members": members,
        "changes": [dict(c) for c in log],
        "transition": ramp(config, strategy),
        "hotKeys": [
            {"key": key, "rps": rate, "error": error, "owner": _owner_name(strategy, key) if strategy.affine else None}
            for key, rate, error in hot
        ],
    }


def _last(values: Sequence[Any]) -> Any:
    for value in reversed(values):
        if value is not None:
            return value
    return None


def lookup(
    strategy: Strategy,
    key: str,
    *,
    ejected: Iterable[str] = (),
    inflight: Sequence[int] | None = None,
    bounded_load: float = 0.0,
) -> dict[str, Any]:
    """The document of ``GET /status/lookup?key=``: where the balancer sends a request whose key
    (the header or cookie value, or the client IP) is ``key``.

    ``preference`` is the strategy's order (owner first), ``owner`` its first entry, and
    ``route`` the member the balancer picks right now, as ``Engine.forward`` does: with bounded
    loads, ``bounded_choice`` over the preference order with ejected members last; otherwise
    the owner, or the first healthy member of the preference order when the owner is ejected.
    Raises ValueError for an empty key (the balancer gives keyless requests a random one).
    """
    if not key:
        raise ValueError("key: required, non-empty (a request without a key goes to a random owner)")
    members = strategy.members
    out: dict[str, Any] = {
        "key": key,
        "strategy": strategy.name,
        "owner": None,
        "route": None,
        "preference": [],
        "ejected": [],
        "position": strategy.position(key),
    }
    if not members:
        return out
    down = set(ejected)
    order = list(strategy.preference(key))
    healthy = [i for i in order if members[i] not in down] + [i for i in order if members[i] in down]
    if bounded_load:
        counts = list(inflight) if inflight is not None else []
        counts += [0] * (len(members) - len(counts))
        route = hashing.bounded_choice(iter(healthy), counts[: len(members)], bounded_load)
    else:
        route = order[0]  # the owner; one draw for a non-affine strategy, whose owner is per call
        if members[route] in down:
            route = healthy[0]
    out.update(
        owner=members[order[0]],
        route=members[route],
        preference=[members[i] for i in order],
        ejected=[members[i] for i in order if members[i] in down],
    )
    return out


def percent(fraction: float) -> str:
    """How the page prints a fraction (kept here so tests can compare with the page's text)."""
    return f"{100 * fraction:.1f} %" if math.isfinite(fraction) else "n/a"
