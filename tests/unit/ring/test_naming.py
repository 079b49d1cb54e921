"""Unit tests for ringlb_ring.naming: name rules, DNS forms, generated names, desired identities."""

from __future__ import annotations

import string

import pytest

from ringlb_ring import naming
from ringlb_ring.naming import PlanError

SEED3 = ["Server 1", "Server 2", "Server 3"]


def test_generate_takes_the_smallest_unused_numbers():
    assert naming.generate(["Server 1", "Server 3"], 3) == ["Server 2", "Server 4", "Server 5"]
    assert naming.generate([], 3) == SEED3
    # a member whose DNS form is a generated name's takes that number too
    assert naming.generate(["server-1", "S2"], 2) == ["Server 2", "Server 3"]
    assert naming.generate(["SERVER 2"], 2) == ["Server 1", "Server 3"]
    assert naming.generate([], 0) == []


def test_check_unique():
    naming.check_unique(["S5", "S4", "Server 1"])
    naming.check_unique([])
    with pytest.raises(PlanError, match=r"^<Error> hostname 'S5' is listed twice$"):
        naming.check_unique(["S5", "S4", "S5"])


@pytest.mark.parametrize(
    ("a", "b", "dns"),
    [("S5", "s5", "s5"), ("web_1", "web.1", "web-1"), ("Web 1", "web-1", "web-1"), ("a..b", "A_b", "a-b")],
)
def test_check_unique_compares_dns_names(a, b, dns):
    with pytest.raises(PlanError) as exc:
        naming.check_unique([a, b])
    assert str(exc.value) == f"<Error> hostnames {a!r} and {b!r} map to the same pod name {dns!r}"


INVALID_NAMES = [
    "",
    " S5",
    "S5 ",
    "-S5",
    "S5-",
    "S5!",
    "S/5",
    "S:5",
    "Sé",
    "a" * 41,
    "S5\n",
    "S5\r\n",
    "\nS5",
    "S\t5",
    5,
    None,
    ["S5"],
]


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_are_refused(name):
    with pytest.raises(PlanError) as exc:
        naming.check_name(name)
    assert str(exc.value) == f"<Error> invalid hostname {name!r}: {naming.NAME_RULE}"


@pytest.mark.parametrize("name", ["a", "7", "S5", "Server 1", "web_1.prod-2", "a" * 40, "A b"])
def test_valid_names(name):
    assert naming.check_name(name) == name


@pytest.mark.parametrize(
    ("replicas", "hostnames", "expected"),
    [
        (3, [], SEED3),
        (0, [], []),
        (0, ["S5"], []),
        (5, ["S5", "S4"], ["S5", "S4", "Server 1", "Server 2", "Server 3"]),
        (1, ["S5", "S4"], ["S5"]),
        (3, ["Server 2"], ["Server 2", "Server 1", "Server 3"]),
        (2, ["server-1"], ["server-1", "Server 2"]),
    ],
)
def test_desired_identities(replicas, hostnames, expected):
    assert naming.desired_identities(replicas, hostnames) == expected


def test_desired_identities_scale_down_then_up_brings_back_the_same_names():
    spec = ["S5", "S4", "S10"]
    assert naming.desired_identities(6, spec)[:4] == naming.desired_identities(4, spec)
    assert naming.desired_identities(6, spec) == ["S5", "S4", "S10", "Server 1", "Server 2", "Server 3"]


@pytest.mark.parametrize(
    ("name", "dns"),
    [("Server 1", "server-1"), ("S10", "s10"), ("web_1.prod", "web-1-prod"), ("A  B", "a-b"), ("x--y", "x-y")],
)
def test_dns_name(name, dns):
    assert naming.dns_name(name) == dns


def test_name_pattern_alphabet():
    # the documented rule, character by character
    allowed_inside = set(string.ascii_letters + string.digits + " ._-")
    for ch in map(chr, range(32, 127)):
        ok = ch in allowed_inside
        assert (naming.NAME_PATTERN.match(f"a{ch}b") is not None) == ok, ch
