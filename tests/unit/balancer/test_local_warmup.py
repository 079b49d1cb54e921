"""Unit tests for ringlb_balancer.local.warmup: which membership ``ringlb dev --warmup`` pushes when.

The supervisor's loop is replayed on a fake clock: ``due`` is asked at each moment, and its ramp
is kept as the supervisor keeps it (once the step is in force).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from ringlb_balancer.local.warmup import Due, Ramp, due, schedule
from ringlb_ring import hashing
from ringlb_ring.hashing.warmup import MAX_STEPS

OLD = ("Server 1", "Server 2", "Server 3")
UP = ("Server 1", "Server 2", "Server 3", "Server 4")
KEYS = [f"user-{i}" for i in range(3000)]


def replay(published, target, servable, seconds, times, strategy="maglev"):
    """``due`` at each of ``times`` (seconds), the ramp kept between calls; the list of Dues."""
    ramp, out = None, []
    for now in times:
        step = due(ramp, published, target, servable, seconds, strategy, now)
        ramp = step.ramp
        if ramp is None:
            published = step.names
        out.append(step)
    return out


@pytest.mark.parametrize("seconds, steps", [(0.5, 4), (3, 4), (4, 5), (10, 11), (10.9, 11), (1000, MAX_STEPS)])
def test_one_step_a_second_within_bounds(seconds, steps):
    assert schedule(seconds).steps == steps


@pytest.mark.parametrize("seconds, strategy", [(0, "maglev"), (10, "round-robin"), (10, "random"), (10, "seed")])
def test_without_warm_up_the_target_is_pushed_at_once(seconds, strategy):
    assert due(None, OLD, UP, set(UP), seconds, strategy, 100.0) == Due(UP)


@pytest.mark.parametrize("published", [(), UP])
def test_nothing_to_warm_from_or_nothing_changing_is_direct(published):
    # start-up (no table in force yet) and an unchanged ring
    assert due(None, published, UP, set(UP), 10, "maglev", 100.0) == Due(UP)


def test_a_scale_up_moves_in_steps_then_ends_on_the_direct_table():
    seconds = 4.0  # 5 steps, one a second: 1..4 at 0, 1, 2, 3 s; the direct table at 4 s
    times = [100.0, 100.5, 101.0, 102.0, 102.999, 103.0, 103.5, 104.0, 110.0]
    steps = replay(OLD, UP, set(UP), seconds, times)
    assert [s.step for s in steps] == [1, 1, 2, 3, 3, 4, 4, 0, 0]
    assert [s.transition.fraction if s.transition else None for s in steps] == [
        0.2,
        0.2,
        0.4,
        0.6,
        0.6,
        0.8,
        0.8,
        None,
        None,
    ]
    for s in steps[:7]:
        assert s.names == UP and s.steps == 5
        assert s.ramp == Ramp(OLD, UP, 100.0)  # one start, kept
        assert (s.transition.source, s.transition.target) == (OLD, UP)
    assert [s.next_at for s in steps[:7]] == [101.0, 101.0, 102.0, 103.0, 103.0, 104.0, 104.0]
    assert steps[-1] == steps[-2] == Due(UP)


def test_each_step_gives_the_joining_member_more_keys_and_no_key_moves_back():
    config = hashing.HashingConfig("maglev", table_size=1009)
    steps = replay(OLD, UP, set(UP), 4.0, [0.0, 1.0, 2.0, 3.0, 4.0])
    tables = [hashing.build(s.names, replace(config, transition=s.transition)) for s in steps]
    before, after = hashing.build(OLD, config), hashing.build(UP, config)
    joined = []
    for table in tables:
        owners = {k: table.members[table.owner(k)] for k in KEYS}
        joined.append(sum(1 for o in owners.values() if o == "Server 4"))
        for k, o in owners.items():  # either where it was, or where it is going
            assert o in (before.members[before.owner(k)], after.members[after.owner(k)])
    assert joined == sorted(joined) and len(set(joined)) == len(joined)  # grows at every step
    assert joined[-1] == sum(1 for k in KEYS if after.owner(k) == 3)


def test_a_scale_down_keeps_the_leaving_member_routable_until_the_last_step():
    # Server 4 left the desired list but still runs: it hands its keys over.
    steps = replay(UP, OLD, set(UP), 4.0, [0.0, 1.0, 2.0, 3.0, 4.0])
    assert [s.names for s in steps] == [UP] * 4 + [OLD]
    assert [s.transition.fraction for s in steps[:4]] == [0.2, 0.4, 0.6, 0.8]
    assert all((s.transition.source, s.transition.target) == (UP, OLD) for s in steps[:4])
    assert steps[-1] == Due(OLD)


def test_a_member_that_dies_leaves_at_once():
    # no warm-up in force: Server 3 died (neither in the target nor servable)
    alive = {"Server 1", "Server 2", "Server 4"}
    assert due(None, UP, ("Server 1", "Server 2", "Server 4"), alive, 10, "maglev", 0.0).names == (
        "Server 1",
        "Server 2",
        "Server 4",
    )
    # a leaving member dies during its hand-over: the rest of its keys go at once
    handing_over = Ramp(UP, OLD, 0.0)
    assert due(handing_over, UP, OLD, set(OLD), 4.0, "maglev", 1.5) == Due(OLD)


def test_a_member_that_dies_during_a_scale_up_leaves_the_source_and_the_ramp_goes_on():
    ramp = Ramp(OLD, UP, 0.0)
    target = ("Server 1", "Server 3", "Server 4")  # Server 2 died
    step = due(ramp, OLD, target, set(target), 4.0, "maglev", 1.5)
    assert step.ramp == Ramp(("Server 1", "Server 3"), target, 0.0)
    assert step.step == 2 and step.names == target
    assert step.transition.source == ("Server 1", "Server 3")


def test_a_new_target_during_a_ramp_keeps_its_start_and_source():
    ramp = Ramp(OLD, UP, 0.0)
    five = (*UP, "Server 5")
    step = due(ramp, OLD, five, set(five), 4.0, "maglev", 2.5)
    assert step.ramp == Ramp(OLD, five, 0.0)
    assert step.step == 3 and step.names == five and step.transition.fraction == pytest.approx(0.6)
    assert due(ramp, OLD, five, set(five), 4.0, "maglev", 4.0) == Due(five)  # ends when it would have


def test_a_clock_before_the_start_gives_the_first_step():
    step = due(Ramp(OLD, UP, 10.0), OLD, UP, set(UP), 4.0, "ring", 9.0)
    assert step.step == 1 and step.transition.fraction == pytest.approx(0.2)


def test_a_late_supervisor_skips_to_the_step_due_now():
    # no pass between 0.1 s and 2.5 s (a loaded machine): the step due at 2.5 s is the third
    steps = replay(OLD, UP, set(UP), 4.0, [0.1, 2.5])
    assert [s.step for s in steps] == [1, 3]
