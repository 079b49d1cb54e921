"""Warm-up tables (ringlb_ring.hashing.warmup): a membership change moved a slice at a time.

Properties, over random member lists, one member added or removed, and step counts: every key's
owner at every step is its old owner or its final owner, and once it reached the final owner it
never goes back; the last step is the direct table; the moved part grows monotonically as k/S.
Checked on every Maglev entry and every ring arc (the whole key space), and on sample keys
through ``owner`` and ``preference`` as the balancer calls them.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringlb_ring import hashing as h
from ringlb_ring.hashing import warmup
from ringlb_ring.hashing.ketama import CIRCLE
from ringlb_ring.membership import MembershipError, content, parse

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIGS = {
    "maglev": h.HashingConfig("maglev", table_size=1009),
    "ring": h.HashingConfig("ring", vnodes=40),
}
KEYS = [f"user-{i}" for i in range(400)]


@st.composite
def changes(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """(old, new): one member added, or one removed (old keeps at least two)."""
    ids = draw(st.lists(st.integers(1, 99), min_size=1, max_size=8, unique=True))
    names = [f"S{i}" for i in ids]
    if len(names) >= 2 and draw(st.booleans()):
        gone = draw(st.sampled_from(names))
        return names, [n for n in names if n != gone]
    return names, names + ["Joiner"] if draw(st.booleans()) else names[:1] + ["Joiner"] + names[1:]


def tables(old: list[str], new: list[str], steps: int, config: h.HashingConfig) -> list[h.Strategy]:
    return [h.build(s.members, replace(config, transition=s.transition)) for s in warmup.plan(old, new, steps)]


def owner_names(strategy: h.Strategy) -> list[str]:
    """The owner of every part of the key space, by name: each Maglev entry, or each arc of the
    ring cut at every point of the old and final rings (where any step can change owner)."""
    if strategy.name == "maglev":
        return [strategy.members[i] for i in strategy.table]
    return [strategy.members[strategy.owners[bisect.bisect(strategy.points, b) % len(strategy.points)]] for b in BOUNDS]


def arc_lengths() -> list[int]:
    return [(BOUNDS[(j + 1) % len(BOUNDS)] - b) % CIRCLE or CIRCLE for j, b in enumerate(BOUNDS)]


BOUNDS: list[int] = []


@PROPS
@pytest.mark.parametrize("kind", CONFIGS)
@given(change=changes(), steps=st.integers(1, 8))
def test_keys_move_only_toward_their_final_owner_and_never_back(kind, change, steps):
    old, new = change
    config = CONFIGS[kind]
    direct_old, direct_new = h.build(old, config), h.build(new, config)
    steps_built = tables(old, new, steps, config)
    if kind == "ring":
        BOUNDS[:] = sorted(set(direct_old.points) | set(direct_new.points))
    before, after = owner_names(direct_old), owner_names(direct_new)
    weights = [1] * len(before) if kind == "maglev" else arc_lengths()
    changing = sum(w for w, b, a in zip(weights, before, after) if b != a)
    arrived = [False] * len(before)
    moved_so_far = 0
    for k, strategy in enumerate(steps_built, start=1):
        now = owner_names(strategy)
        moved = 0
        for i, (b, a, o) in enumerate(zip(before, after, now)):
            assert o in (b, a), f"step {k}: part {i} went to {o}, neither {b} nor {a}"
            if arrived[i]:
                assert o == a, f"step {k}: part {i} went back to {o}"
            if o == a and b != a:
                arrived[i] = True
                moved += weights[i]
        assert moved >= moved_so_far  # monotone
        moved_so_far = moved
        target = k / steps * changing
        if kind == "maglev":
            assert moved == round(target)
        else:  # whole arcs move: short of k/S by less than one arc
            assert target - max(weights) <= moved <= target + 1e-6 * CIRCLE
    # The last step is the direct table of the new members, entry for entry.
    last = steps_built[-1]
    assert last.members == direct_new.members
    if kind == "maglev":
        assert last.table == direct_new.table
    else:
        assert (last.points, last.owners) == (direct_new.points, direct_new.owners)


@PROPS
@pytest.mark.parametrize("kind", CONFIGS)
@given(change=changes(), steps=st.integers(2, 6))
def test_keys_through_owner_and_preference(kind, change, steps):
    old, new = change
    config = CONFIGS[kind]
    direct_old, direct_new = h.build(old, config), h.build(new, config)
    built = tables(old, new, steps, config)
    union = built[0].members
    assert set(union) == set(old) | set(new) and union[: len(new)] == tuple(new)
    leaving = [m for m in old if m not in new]
    reached: set[str] = set()
    for strategy in built:
        for key in KEYS:
            was, will = direct_old.members[direct_old.owner(key)], direct_new.members[direct_new.owner(key)]
            now = strategy.members[strategy.owner(key)]
            assert now in (was, will)
            if key in reached:
                assert now == will
            if now == will:
                reached.add(key)
            order = [strategy.members[i] for i in strategy.preference(key)]
            assert order[0] == now and sorted(order) == sorted(strategy.members)
            if strategy is not built[-1]:  # then the final table's order, then the leaving members
                final_order = [direct_new.members[i] for i in direct_new.preference(key)]
                assert order[1:] == [m for m in final_order + leaving if m != now]


@pytest.mark.parametrize("kind", CONFIGS)
def test_a_joining_member_share_grows_by_steps_and_a_leaving_one_shrinks(kind):
    config = CONFIGS[kind]
    names = [f"S{i}" for i in range(1, 6)]
    grow = [s.shares()[s.members.index("S6")] for s in tables(names, names + ["S6"], 4, config)]
    final = h.build(names + ["S6"], config).shares()[5]
    for k, share in enumerate(grow, start=1):
        assert math.isclose(share, k / 4 * final, abs_tol=0.01), (k, share, final)
    shrink = [
        s.shares()[s.members.index("S3")] if "S3" in s.members else 0.0
        for s in tables(names, ["S1", "S2", "S4", "S5"], 4, config)
    ]
    start = h.build(names, config).shares()[2]
    for k, share in enumerate(shrink, start=1):
        assert math.isclose(share, (1 - k / 4) * start, abs_tol=0.01), (k, share, start)


def test_plan_shape():
    steps = warmup.plan(["A", "B", "C"], ["A", "C"], 4)
    assert [s.members for s in steps] == [("A", "C", "B")] * 3 + [("A", "C")]
    assert [s.transition.fraction for s in steps[:3]] == [0.25, 0.5, 0.75]
    assert steps[0].transition == warmup.Transition(("A", "B", "C"), ("A", "C"), 0.25)
    assert steps[-1].transition is None
    assert warmup.plan(["A"], ["A", "B"], 1) == [warmup.Step(("A", "B"), None)]


@pytest.mark.parametrize(
    ("old", "new", "steps", "message"),
    [
        (["A"], ["A", "B"], 0, "steps must be between 1 and 100, got 0"),
        (["A"], ["A", "B"], 101, "steps must be between 1 and 100, got 101"),
        (["A", "B"], ["B", "A"], 3, "transition: from and to are the same members"),
        ([], ["A"], 3, "transition.from: at least one member"),
        (["A"], [], 3, "transition.to: at least one member"),
        (["A", "A"], ["A"], 3, "transition.from: member names must be unique"),
    ],
)
def test_plan_refuses(old, new, steps, message):
    with pytest.raises(ValueError) as exc:
        warmup.plan(old, new, steps)
    assert str(exc.value).startswith(message), str(exc.value)


def test_build_refuses_a_transition_it_cannot_blend():
    t = warmup.Transition(("A", "B"), ("A",), 0.5)
    with pytest.raises(ValueError, match="transition: only for strategies maglev, ring, not 'seed'"):
        h.build(["A", "B"], h.HashingConfig("seed", transition=t))
    with pytest.raises(
        ValueError, match=r"transition: members must be exactly the members of from and to; missing \['B'\]"
    ):
        h.build(["A"], h.HashingConfig("ring", transition=t))
    with pytest.raises(ValueError, match=r"transition\.fraction: strictly between 0 and 1"):
        h.build(["A", "B"], h.HashingConfig("ring", transition=replace(t, fraction=1.0)))


# -- the membership document's hashing.transition ---------------------------------------------
def doc_of(members: list[str], transition: dict | None, strategy: str = "ring") -> dict:
    hashing: dict = {"strategy": strategy}
    if transition is not None:
        hashing["transition"] = transition
    return {
        "revision": 1,
        "members": [{"name": m, "address": f"127.0.0.1:{6000 + i}"} for i, m in enumerate(members)],
        "hashing": hashing,
    }


def test_document_round_trip_routes_like_the_plan():
    config = CONFIGS["maglev"]
    for step in warmup.plan(["S1", "S2", "S3"], ["S1", "S3"], 3):
        hashing = replace(config, transition=step.transition)
        members = [{"name": m, "address": f"127.0.0.1:{6000 + i}"} for i, m in enumerate(step.members)]
        doc = {"revision": 5, **content(members, hashing, parse({"revision": 1, "members": []}).key)}
        parsed = parse(doc)
        assert parsed.hashing == hashing
        assert h.build(parsed.names, parsed.hashing).table == h.build(list(step.members), hashing).table
        assert ("transition" in doc["hashing"]) == (step.transition is not None)


@pytest.mark.parametrize(
    ("members", "transition", "message"),
    [
        (["A", "B"], [], "hashing.transition: must be an object with exactly from, to and fraction"),
        (
            ["A", "B"],
            {"from": ["A", "B"], "to": ["A"]},
            "hashing.transition: must be an object with exactly from, to and fraction",
        ),
        (
            ["A", "B"],
            {"from": "A", "to": ["A"], "fraction": 0.5},
            "hashing.transition.from: a list of at most 56 member names",
        ),
        (
            ["A", "B"],
            {"from": ["A", "B"], "to": ["A", "x y!"], "fraction": 0.5},
            "hashing.transition.to: <Error> invalid hostname 'x y!'",
        ),
        (
            ["A", "B"],
            {"from": ["A", "B"], "to": ["A"], "fraction": "0.5"},
            "hashing.transition.fraction: a number strictly between 0 and 1",
        ),
        (
            ["A", "B"],
            {"from": ["A", "B"], "to": ["A"], "fraction": True},
            "hashing.transition.fraction: a number strictly between 0 and 1",
        ),
        (
            ["A", "B"],
            {"from": ["A", "B"], "to": ["A"], "fraction": 0},
            "hashing: transition.fraction: strictly between 0 and 1",
        ),
        (
            ["A", "B"],
            {"from": ["A", "B"], "to": ["A"], "fraction": 1},
            "hashing: transition.fraction: strictly between 0 and 1",
        ),
        (
            ["A", "B"],
            {"from": ["A", "B"], "to": ["B", "A"], "fraction": 0.5},
            "hashing: transition: from and to are the same members",
        ),
        (
            ["A"],
            {"from": ["A", "B"], "to": ["A"], "fraction": 0.5},
            "hashing.transition: members must be exactly the members of from and to; missing ['B']",
        ),
        (
            ["A", "B", "C"],
            {"from": ["A", "B"], "to": ["A"], "fraction": 0.5},
            "hashing.transition: members must be exactly the members of from and to; not in from or to ['C']",
        ),
    ],
)
def test_document_transition_errors(members, transition, message):
    with pytest.raises(MembershipError) as exc:
        parse(doc_of(members, transition))
    assert str(exc.value).startswith(message), str(exc.value)


def test_document_transition_needs_a_strategy_with_final_owners():
    with pytest.raises(MembershipError, match="hashing: transition: only for strategies maglev, ring, not 'random'"):
        parse(doc_of(["A", "B"], {"from": ["A", "B"], "to": ["A"], "fraction": 0.5}, strategy="random"))


@given(
    seconds=st.floats(0.5, 3600),
    step_seconds=st.sampled_from([1.0, 5.0]),
    times=st.lists(st.floats(-10, 4000), min_size=2, max_size=20),
)
def test_a_schedule_moves_forward_only_and_ends_at_the_direct_table(seconds, step_seconds, times) -> None:
    """Later is never an earlier step; the next step is due after now; past ``seconds`` the ramp
    is over (None: push the direct table of the target)."""
    schedule = warmup.Schedule(seconds, step_seconds, 2, 20)
    source, target = ("a", "b", "c"), ("a", "b", "c", "d")
    seen = 0
    for elapsed in sorted(times):
        due = schedule.due(source, target, elapsed)
        if elapsed >= seconds:
            assert due is None
            continue
        assert due is not None and 2 <= due.steps <= 20
        assert seen <= due.step < due.steps and due.next_in > max(0.0, elapsed)
        assert due.current.transition is not None and due.current.transition.fraction == due.step / due.steps
        seen = due.step
    assert schedule.due(source, source, 0.0) is None and schedule.due((), target, 0.0) is None
