"""Unit tests for ringlb_balancer.planning: the seed API's /add and /rm bodies turned into replica lists."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringlb_balancer.planning import plan_add, plan_remove
from ringlb_ring import naming
from ringlb_ring.naming import MAX_REPLICAS, PlanError

SEED3 = ["Server 1", "Server 2", "Server 3"]
SEED7 = ["Server 1", "Server 2", "Server 3", "S5", "S4", "S10", "S11"]
ADD_TOO_MANY = "<Error> Length of hostname list is more than newly added instances"
RM_TOO_MANY = "<Error> Length of hostname list is more than removable instances"
N_TYPE = '<Error> "n" is required and must be an integer'
N_RANGE = f'<Error> "n" must be between 1 and {MAX_REPLICAS}'


def plan_error(fn, *args, **kwargs) -> str:
    with pytest.raises(PlanError) as exc:
        fn(*args, **kwargs)
    return str(exc.value)


# ---------------------------------------------------------------------------------------------
# The seed contract's cases
# ---------------------------------------------------------------------------------------------


def test_seed_add_example():
    assert plan_add(SEED3, {"n": 4, "hostnames": ["S5", "S4", "S10", "S11"]}) == SEED7


def test_seed_add_too_many_hostnames():
    assert plan_error(plan_add, SEED3, {"n": 3, "hostnames": ["S5", "S4", "S10", "S11"]}) == ADD_TOO_MANY
    # the length check comes first, before any name is looked at
    assert plan_error(plan_add, SEED3, {"n": 1, "hostnames": ["bad!", "Server 1"]}) == ADD_TOO_MANY


def test_seed_rm_example():
    rng = random.Random(42)
    after = plan_remove(SEED7, {"n": 3, "hostnames": ["S5", "S4"]}, rng)
    assert len(after) == 4
    assert "S5" not in after and "S4" not in after
    assert after == [c for c in SEED7 if c in after]  # order kept
    others = ["Server 1", "Server 2", "Server 3", "S10", "S11"]
    (victim,) = random.Random(42).sample(others, 1)
    assert after == [c for c in SEED7 if c not in {"S5", "S4", victim}]


def test_seed_rm_too_many_hostnames():
    assert plan_error(plan_remove, SEED7, {"n": 1, "hostnames": ["S5", "S4"]}) == RM_TOO_MANY
    assert plan_error(plan_remove, SEED3, {"n": 1, "hostnames": ["nope", "Server 1"]}) == RM_TOO_MANY


def test_hostnames_are_optional():
    assert plan_add(SEED3, {"n": 2}) == SEED3 + ["Server 4", "Server 5"]
    assert plan_add(SEED3, {"n": 2, "hostnames": []}) == SEED3 + ["Server 4", "Server 5"]
    assert plan_add(SEED3, {"n": 3, "hostnames": ["S5"]}) == SEED3 + ["S5", "Server 4", "Server 5"]
    assert len(plan_remove(SEED3, {"n": 2}, random.Random(1))) == 1


# ---------------------------------------------------------------------------------------------
# Decisions the seed left open
# ---------------------------------------------------------------------------------------------


def test_add_existing_name_is_refused():
    assert plan_error(plan_add, SEED3, {"n": 1, "hostnames": ["Server 2"]}) == (
        "<Error> hostname(s) already in use: Server 2"
    )
    # a name equal to a member's DNS form is the same pod: refused too
    assert plan_error(plan_add, SEED3, {"n": 2, "hostnames": ["server-2", "SERVER_3"]}) == (
        "<Error> hostname(s) already in use: server-2, SERVER_3"
    )


def test_remove_non_member_is_refused():
    assert plan_error(plan_remove, SEED3, {"n": 1, "hostnames": ["S9"]}) == "<Error> not a current replica: S9"
    # names are matched exactly on removal
    assert plan_error(plan_remove, SEED3, {"n": 2, "hostnames": ["server 1", "Server 2"]}) == (
        "<Error> not a current replica: server 1"
    )


@pytest.mark.parametrize("fn", [plan_add, plan_remove])
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, N_TYPE),
        ({"hostnames": ["S5"]}, N_TYPE),
        ({"n": None}, N_TYPE),
        ({"n": "2"}, N_TYPE),
        ({"n": 2.0}, N_TYPE),
        ({"n": True}, N_TYPE),
        ({"n": False}, N_TYPE),
        ({"n": [1]}, N_TYPE),
        ({"n": 0}, N_RANGE),
        ({"n": -1}, N_RANGE),
        ({"n": MAX_REPLICAS + 1}, N_RANGE),
        ({"n": 10**30}, N_RANGE),
        ({"n": 1, "hostnames": "S5"}, '<Error> "hostnames" must be a list of strings'),
        ({"n": 1, "hostnames": {"S5": 1}}, '<Error> "hostnames" must be a list of strings'),
        ({"n": 1, "hostnames": None}, '<Error> "hostnames" must be a list of strings'),
        ({"n": 1, "extra": 1}, "<Error> unknown field(s): extra"),
        ({"n": 1, "b": 1, "a": 2}, "<Error> unknown field(s): a, b"),
        (None, '<Error> body must be a JSON object like {"n": 1, "hostnames": []}'),
        ([1], '<Error> body must be a JSON object like {"n": 1, "hostnames": []}'),
        ("n=1", '<Error> body must be a JSON object like {"n": 1, "hostnames": []}'),
        (3, '<Error> body must be a JSON object like {"n": 1, "hostnames": []}'),
    ],
)
def test_bad_bodies(fn, body, message):
    assert plan_error(fn, SEED3, body) == message


def test_n_above_cap_and_total_cap():
    assert plan_error(plan_add, SEED3, {"n": MAX_REPLICAS + 1}) == N_RANGE
    assert plan_error(plan_add, SEED3, {"n": MAX_REPLICAS - 2}) == (
        f"<Error> adding {MAX_REPLICAS - 2} would make {MAX_REPLICAS + 1} replicas; the cap is {MAX_REPLICAS}"
    )
    assert len(plan_add(SEED3, {"n": MAX_REPLICAS - 3})) == MAX_REPLICAS


def test_remove_more_than_exist():
    assert plan_error(plan_remove, SEED3, {"n": 4}) == "<Error> cannot remove 4 replicas: only 3 exist"
    assert plan_error(plan_remove, [], {"n": 1}) == "<Error> cannot remove 1 replicas: only 0 exist"


def test_remove_all_leaves_none():
    assert plan_remove(SEED3, {"n": 3}) == []
    assert plan_remove(SEED3, {"n": 3, "hostnames": ["Server 3", "Server 1", "Server 2"]}) == []


def test_generated_names_take_the_smallest_unused_number():
    assert plan_add(["Server 1", "Server 3"], {"n": 3}) == ["Server 1", "Server 3", "Server 2", "Server 4", "Server 5"]
    assert plan_add([], {"n": 3}) == SEED3
    # a named hostname takes its number away from the generator
    assert plan_add(SEED3, {"n": 2, "hostnames": ["Server 4"]}) == SEED3 + ["Server 4", "Server 5"]
    # and so does a member whose DNS form is a generated name's
    assert plan_add(["server-1", "S2"], {"n": 2}) == ["server-1", "S2", "Server 2", "Server 3"]


def test_duplicate_names_in_one_request():
    assert plan_error(plan_add, SEED3, {"n": 2, "hostnames": ["S5", "S5"]}) == "<Error> hostname 'S5' is listed twice"
    assert plan_error(plan_remove, SEED7, {"n": 2, "hostnames": ["S5", "S5"]}) == (
        "<Error> hostname 'S5' is listed twice"
    )


@pytest.mark.parametrize(
    ("a", "b", "dns"),
    [("S5", "s5", "s5"), ("web_1", "web.1", "web-1"), ("Web 1", "web-1", "web-1"), ("a..b", "A_b", "a-b")],
)
def test_names_mapping_to_the_same_dns_name_are_refused(a, b, dns):
    assert plan_error(plan_add, SEED3, {"n": 2, "hostnames": [a, b]}) == (
        f"<Error> hostnames {a!r} and {b!r} map to the same pod name {dns!r}"
    )


@pytest.mark.parametrize("name", ["", " S5", "S5!", "S5\n", "a" * 41, 5, None])
def test_invalid_names_in_a_body_are_refused(name):
    message = f"<Error> invalid hostname {name!r}: {naming.NAME_RULE}"
    assert plan_error(plan_add, SEED3, {"n": 1, "hostnames": [name]}) == message
    assert plan_error(plan_remove, SEED3, {"n": 1, "hostnames": [name]}) == message


def test_random_removal_uses_the_rng():
    current = [f"S{i}" for i in range(1, 21)]
    body = {"n": 5, "hostnames": ["S3"]}
    first = plan_remove(current, body, random.Random(123))
    assert first == plan_remove(current, body, random.Random(123))
    others = [c for c in current if c != "S3"]
    victims = {"S3", *random.Random(123).sample(others, 4)}
    assert first == [c for c in current if c not in victims]
    results = {tuple(plan_remove(current, body, random.Random(s))) for s in range(20)}
    assert len(results) > 1  # not always the same victims


def test_plans_do_not_mutate_their_input():
    current = list(SEED3)
    body = {"n": 2, "hostnames": ["S5"]}
    plan_add(current, body)
    plan_remove(current, {"n": 1}, random.Random(0))
    assert current == SEED3 and body == {"n": 2, "hostnames": ["S5"]}


name_st = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9 ._-]{0,10}[A-Za-z0-9])?\Z")


@settings(max_examples=150, deadline=None)
@given(
    current=st.lists(name_st, max_size=10, unique_by=naming.dns_name),
    n=st.integers(1, 8),
    hostnames=st.lists(name_st, max_size=8),
)
def test_plan_add_properties(current, n, hostnames):
    body = {"n": n, "hostnames": hostnames}
    try:
        after = plan_add(current, body)
    except PlanError as exc:
        msg = str(exc)
        dns = [naming.dns_name(h) for h in hostnames]
        assert len(hostnames) > n or set(dns) & {naming.dns_name(c) for c in current} or len(set(dns)) < len(dns), msg
        return
    assert after[: len(current)] == current
    assert after[len(current) : len(current) + len(hostnames)] == hostnames
    assert len(after) == len(current) + n
    assert len({naming.dns_name(a) for a in after}) == len(after)
    for generated in after[len(current) + len(hostnames) :]:
        assert generated.startswith("Server ")


@settings(max_examples=150, deadline=None)
@given(data=st.data(), current=st.lists(name_st, min_size=1, max_size=10, unique_by=naming.dns_name))
def test_plan_remove_properties(data, current):
    n = data.draw(st.integers(1, len(current)))
    hostnames = data.draw(st.lists(st.sampled_from(current), max_size=n, unique=True))
    after = plan_remove(current, {"n": n, "hostnames": hostnames}, random.Random(data.draw(st.integers())))
    assert len(after) == len(current) - n
    assert not set(hostnames) & set(after)
    assert after == [c for c in current if c in after]
