"""Unit tests for ringlb_ring.membership: the pushed membership document and its address format."""

from __future__ import annotations

import copy
import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringlb_ring import membership as mb
from ringlb_ring.hashing import HashingConfig, build
from ringlb_ring.membership import KeyConfig, Member, Membership, MembershipError, format_address, parse, parse_address
from ringlb_ring.naming import MAX_REPLICAS, dns_name


def doc(**overrides):
    base = {
        "revision": 7,
        "members": [
            {"name": "Server 1", "address": "127.0.0.1:5001"},
            {"name": "Server 2", "address": "127.0.0.1:5002"},
            {"name": "Server 3", "address": "[::1]:5003"},
        ],
        "hashing": {
            "strategy": "ring",
            "tableSize": 257,
            "vnodes": 40,
            "seedFormulas": "original",
            "boundedLoad": 1.25,
        },
        "key": {"source": "cookie", "name": "session"},
    }
    base.update(overrides)
    return base


def error(document) -> str:
    with pytest.raises(MembershipError) as exc:
        parse(document)
    return str(exc.value)


def test_valid_document():
    m = parse(doc())
    assert m == Membership(
        revision=7,
        members=(
            Member("Server 1", "127.0.0.1", 5001),
            Member("Server 2", "127.0.0.1", 5002),
            Member("Server 3", "::1", 5003),
        ),
        hashing=HashingConfig(strategy="ring", table_size=257, vnodes=40, seed_formulas="original", bounded_load=1.25),
        key=KeyConfig(source="cookie", name="session"),
    )
    assert m.names == ["Server 1", "Server 2", "Server 3"]
    assert m.members[0].address == "127.0.0.1:5001"


def test_defaults_for_optional_sections():
    m = parse({"revision": 1, "members": []})
    assert m.hashing == HashingConfig() and m.key == KeyConfig()
    assert m.key.source == "header" and m.key.name == "X-Request-ID"
    assert parse({"revision": 1, "members": [], "hashing": {}, "key": {}}) == m
    assert parse({"revision": 1, "members": [], "key": {"name": "X-Id"}}).key == KeyConfig("header", "X-Id")
    assert parse({"revision": 1, "members": [], "key": {"source": "client-ip"}}).key.source == "client-ip"
    assert mb.EMPTY.revision == 0 and mb.EMPTY.members == ()


@pytest.mark.parametrize("bad", [None, [], "x", 1, json.dumps(doc())])
def test_body_not_an_object(bad):
    assert error(bad) == "body must be a JSON object with revision, members, hashing"


def test_unknown_top_level_fields():
    assert error(doc(extra=1, other=2)) == "unknown field(s): extra, other"


@pytest.mark.parametrize("revision", [None, 0, -1, 2**63, 2**64, 1.0, "1", True, False, [1]])
def test_bad_revision(revision):
    assert error(doc(revision=revision)) == "revision: required, an integer from 1 to 2^63-1"


def test_missing_revision():
    d = doc()
    del d["revision"]
    assert error(d) == "revision: required, an integer from 1 to 2^63-1"


@pytest.mark.parametrize("revision", [1, 2**63 - 1])
def test_revision_bounds(revision):
    assert parse(doc(revision=revision)).revision == revision


@pytest.mark.parametrize("members", [None, {}, "Server 1", 3])
def test_members_not_a_list(members):
    assert error(doc(members=members)) == "members: required, a list of {name, address}"


def test_missing_members():
    d = doc()
    del d["members"]
    assert error(d) == "members: required, a list of {name, address}"


def test_too_many_members():
    members = [{"name": f"S{i}", "address": f"127.0.0.1:{6000 + i}"} for i in range(MAX_REPLICAS + 1)]
    assert error(doc(members=members, hashing={})) == f"members: at most {MAX_REPLICAS}"
    assert len(parse(doc(members=members[:MAX_REPLICAS], hashing={})).members) == MAX_REPLICAS


@pytest.mark.parametrize(
    "member",
    [
        "Server 1",
        None,
        {"name": "S1"},
        {"address": "127.0.0.1:1"},
        {"name": "S1", "address": "127.0.0.1:1", "weight": 2},
    ],
)
def test_member_shape(member):
    assert error(doc(members=[member])) == "members[0]: must be an object with exactly name and address"


@pytest.mark.parametrize("name", ["", "bad!", 5, None, "x" * 41, True])
def test_member_bad_name(name):
    assert error(doc(members=[{"name": name, "address": "127.0.0.1:1"}])).startswith(
        f"members[0].name: <Error> invalid hostname {name!r}"
    )


def test_member_name_with_trailing_newline():
    assert error(doc(members=[{"name": "S1\n", "address": "127.0.0.1:1"}])).startswith("members[0].name:")


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (5001, "members[1]: address must be a string 'IP:port'"),
        (None, "members[1]: address must be a string 'IP:port'"),
        ("127.0.0.1", "members[1]: address must be a string 'IP:port'"),
        ("localhost:5000", "members[1]: address host must be an IP address, got 'localhost'"),
        ("replica.svc:5000", "members[1]: address host must be an IP address, got 'replica.svc'"),
        (":5000", "members[1]: address host must be an IP address, got ''"),
        ("256.0.0.1:5000", "members[1]: address host must be an IP address, got '256.0.0.1'"),
        ("127.0.0.1:0", "members[1]: address port must be 1-65535, got '0'"),
        ("127.0.0.1:65536", "members[1]: address port must be 1-65535, got '65536'"),
        ("127.0.0.1:", "members[1]: address port must be 1-65535, got ''"),
        ("127.0.0.1:-1", "members[1]: address port must be 1-65535, got '-1'"),
        ("127.0.0.1:80a", "members[1]: address port must be 1-65535, got '80a'"),
        ("127.0.0.1: 80", "members[1]: address port must be 1-65535, got ' 80'"),
        # '²' is str.isdigit() but not int()-able: must be refused like any other bad port
        ("127.0.0.1:\u00b2", "members[1]: address port must be 1-65535, got '²'"),
        ("[127.0.0.1]:80", "members[1]: address host: only IPv6 hosts take brackets, got '[127.0.0.1]'"),
        ("[fd00::1:80", "members[1]: address host must be an IP address, got '[fd00::1'"),
        ("[]:80", "members[1]: address host must be an IP address, got ''"),
        # Addresses no replica can have: the balancer would forward to the metadata service,
        # to everyone, or nowhere.
        ("0.0.0.0:80", "members[1]: address host 0.0.0.0 is unspecified: no replica listens there"),
        ("[::]:80", "members[1]: address host :: is unspecified: no replica listens there"),
        ("169.254.169.254:80", "members[1]: address host 169.254.169.254 is link-local: no replica listens there"),
        ("[fe80::1]:80", "members[1]: address host fe80::1 is link-local: no replica listens there"),
        ("224.0.0.1:80", "members[1]: address host 224.0.0.1 is multicast: no replica listens there"),
        ("[ff02::1]:80", "members[1]: address host ff02::1 is multicast: no replica listens there"),
        ("255.255.255.255:80", "members[1]: address host 255.255.255.255 is broadcast: no replica listens there"),
    ],
)
def test_member_bad_address(address, message):
    members = [{"name": "A", "address": "10.0.0.1:80"}, {"name": "B", "address": address}]
    assert error(doc(members=members)) == message


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("10.1.2.3:80", "10.1.2.3", 80),
        ("[fd12::1]:8080", "fd12::1", 8080),
        ("::1:5000", "::1", 5000),
        ("1.2.3.4:65535", "1.2.3.4", 65535),
        ("[FD00:0:0::1]:5000", "fd00::1", 5000),
    ],
)
def test_member_good_address(address, host, port):
    m = parse(doc(members=[{"name": "A", "address": address}]))
    assert (m.members[0].host, m.members[0].port) == (host, port)


@pytest.mark.parametrize(
    ("host", "port", "address"),
    [
        ("10.0.0.7", 5000, "10.0.0.7:5000"),
        ("fd00::1", 5000, "[fd00::1]:5000"),
        ("FD00:0000::0001", 5001, "[fd00::1]:5001"),
    ],
)
def test_format_address_round_trips(host, port, address):
    assert format_address(host, port) == address
    assert parse_address(address) == (str(ipaddress.ip_address(host)), port)
    assert format_address(*parse_address(address)) == address
    assert Member("A", *parse_address(address)).address == address


def test_ipv6_member_is_echoed_as_pushed():
    """The operator compares the echoed document with what it pushed: IPv6 must come back unchanged."""
    pushed = doc(members=[{"name": "A", "address": format_address("fd00::a", 5000)}])
    assert parse(pushed).to_json()["members"] == [{"name": "A", "address": "[fd00::a]:5000"}]
    legacy = doc(members=[{"name": "A", "address": "fd00::a:5000"}])
    assert parse(legacy).to_json()["members"] == [{"name": "A", "address": "[fd00::a]:5000"}]


def test_format_address_refuses_names():
    with pytest.raises(ValueError):
        format_address("replica.svc", 5000)


def test_duplicate_names():
    members = [{"name": "S1", "address": "127.0.0.1:1"}, {"name": "S1", "address": "127.0.0.1:2"}]
    assert error(doc(members=members)) == "members: <Error> hostname 'S1' is listed twice"
    members[1]["name"] = "s1"
    assert error(doc(members=members)) == "members: <Error> hostnames 'S1' and 's1' map to the same pod name 's1'"


def test_duplicate_addresses():
    members = [{"name": "S1", "address": "127.0.0.1:80"}, {"name": "S2", "address": "127.0.0.1:80"}]
    assert error(doc(members=members)) == "members: two members share an address"
    members[1]["address"] = "127.0.0.1:080"  # same address spelled differently
    assert error(doc(members=members)) == "members: two members share an address"
    members = [{"name": "S1", "address": "[fd00::1]:80"}, {"name": "S2", "address": "fd00:0::1:80"}]
    assert error(doc(members=members)) == "members: two members share an address"


@pytest.mark.parametrize(
    ("hashing", "message"),
    [
        ([], "hashing: must be an object"),
        ("maglev", "hashing: must be an object"),
        (None, "hashing: must be an object"),
        ({"algorithm": "ring"}, "hashing.algorithm: unknown field"),
        ({"table_size": 257}, "hashing.table_size: unknown field"),
        ({"strategy": 1}, "hashing.strategy: wrong type"),
        ({"strategy": None}, "hashing.strategy: wrong type"),
        ({"tableSize": 257.0}, "hashing.tableSize: wrong type"),
        ({"tableSize": "257"}, "hashing.tableSize: wrong type"),
        ({"tableSize": True}, "hashing.tableSize: wrong type"),
        ({"vnodes": False}, "hashing.vnodes: wrong type"),
        ({"seedFormulas": 1}, "hashing.seedFormulas: wrong type"),
        ({"boundedLoad": "1.25"}, "hashing.boundedLoad: wrong type"),
        ({"boundedLoad": True}, "hashing.boundedLoad: wrong type"),
        (
            {"strategy": "consistent"},
            "hashing: unknown strategy 'consistent'; use one of maglev, ring, seed, round-robin, random",
        ),
        ({"tableSize": 256}, "hashing: table_size must be a prime between 257 and 1000003"),
        ({"vnodes": 0}, "hashing: vnodes must be between 1 and 1000"),
        ({"seedFormulas": "new"}, "hashing: seed_formulas must be 'original' or 'reissue'"),
        ({"boundedLoad": 0.9}, "hashing: bounded_load must be 0 (off) or between 1.0 and 10.0"),
        ({"boundedLoad": float("nan")}, "hashing: bounded_load must be 0 (off) or between 1.0 and 10.0"),
        ({"boundedLoad": float("inf")}, "hashing: bounded_load must be 0 (off) or between 1.0 and 10.0"),
    ],
)
def test_bad_hashing(hashing, message):
    assert error(doc(hashing=hashing)) == message


def test_bounded_load_accepts_int_and_zero():
    assert parse(doc(hashing={"boundedLoad": 2})).hashing.bounded_load == 2
    assert parse(doc(hashing={"boundedLoad": 0})).hashing.bounded_load == 0


OBJECT = "key: must be an object with source and name or index (and optionally fallback)"
SOURCES = "key.source: one of header, cookie, query, path-segment, client-ip"
NAME_CHARS = "key.name: at most 128 letters, digits and !#$%&'*+.^_`|~-"
SEGMENT = "key.index: an integer from 0 (the first segment) to 63"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ([], OBJECT),
        (None, OBJECT),
        ({"source": "header", "name": "X", "extra": 1}, OBJECT),
        ({"source": "query2"}, SOURCES),
        ({"source": None}, SOURCES),
        ({"source": ["header"]}, SOURCES),
        ({"source": "header", "name": ""}, "key.name: the header name is required"),
        ({"source": "header", "name": "   "}, "key.name: the header name is required"),
        ({"source": "cookie", "name": 5}, "key.name: a string"),
        ({"source": "header", "name": None}, "key.name: a string"),
        ({"source": "query"}, "key.name: the query name is required"),
        ({"source": "header", "name": "X Id"}, NAME_CHARS),
        ({"source": "cookie", "name": "a;b"}, NAME_CHARS),
        ({"source": "query", "name": "x" * 129}, NAME_CHARS),
        ({"source": "path-segment", "name": "x", "index": 1}, "key.name: a path segment has no name; use index"),
        ({"source": "header", "name": "X", "index": 1}, "key.index: only for source path-segment"),
        ({"source": "path-segment", "index": -1}, SEGMENT),
        ({"source": "path-segment", "index": 64}, SEGMENT),
        ({"source": "path-segment", "index": True}, SEGMENT),
        ({"source": "path-segment", "index": "1"}, SEGMENT),
        ({"source": "header", "name": "X", "fallback": {}}, "key.fallback: a list of at most 4 sources"),
        (
            {"source": "header", "name": "X", "fallback": [{"source": "client-ip"}] * 5},
            "key.fallback: a list of at most 4 sources",
        ),
        (
            {"source": "header", "name": "X", "fallback": [{"source": "cookie"}]},
            "key.fallback[0].name: the cookie name is required",
        ),
        (
            {"source": "header", "name": "X", "fallback": [{"source": "client-ip", "fallback": []}]},
            "key.fallback[0]: must be an object with source and name or index",
        ),
    ],
)
def test_bad_key(key, message):
    assert error(doc(key=key)) == message


@pytest.mark.parametrize("name", [5, None])
def test_client_ip_key_with_non_string_name(name):
    """A document that passes parse must be routable ("parsing is strict and total"): a
    non-string key name must be refused even when source is client-ip, or normalized."""
    try:
        m = parse(doc(key={"source": "client-ip", "name": name}))
    except MembershipError as exc:
        assert str(exc).startswith("key.name")
        return
    build(m.names, m.hashing)  # must not raise: whatever parses can be routed with


def test_seed_strategy_member_cap_is_checked_by_parse():
    """Seed holds at most 56 members (512 slots / 9): one more is refused by parse itself."""
    members = [{"name": f"S{i}", "address": f"127.0.0.1:{6000 + i}"} for i in range(57)]
    assert error(doc(members=members, hashing={"strategy": "seed"})) == "members: at most 56"
    assert MAX_REPLICAS == 56


def test_seed_strategy_56_members_build():
    members = [{"name": f"S{i}", "address": f"127.0.0.1:{6000 + i}"} for i in range(56)]
    m = parse(doc(members=members, hashing={"strategy": "seed"}))
    assert len(build(m.names, m.hashing).members) == 56


def test_to_json_shape():
    assert parse(doc()).to_json() == {
        "revision": 7,
        "members": [
            {"name": "Server 1", "address": "127.0.0.1:5001"},
            {"name": "Server 2", "address": "127.0.0.1:5002"},
            {"name": "Server 3", "address": "[::1]:5003"},
        ],
        "hashing": {
            "strategy": "ring",
            "tableSize": 257,
            "vnodes": 40,
            "seedFormulas": "original",
            "boundedLoad": 1.25,
        },
        "key": {"source": "cookie", "name": "session"},
    }


def test_to_json_round_trip():
    m = parse(doc())
    again = parse(json.loads(json.dumps(m.to_json())))
    assert again == m
    assert parse(mb.Membership(revision=3).to_json()) == mb.Membership(revision=3)


def test_parse_does_not_mutate_input():
    d = doc()
    before = copy.deepcopy(d)
    parse(d)
    assert d == before


_name = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9 ._-]{0,8}[A-Za-z0-9])?\Z")
# Routable unicast only: unspecified, link-local, multicast and broadcast hosts are refused.
_ipv4 = (
    st.tuples(st.integers(1, 223), *[st.integers(0, 255)] * 3)
    .map(lambda t: ".".join(map(str, t)))
    .filter(lambda a: not a.startswith("169.254."))
)


@settings(max_examples=100, deadline=None)
@given(
    revision=st.integers(1, 2**63 - 1),
    names=st.lists(_name, max_size=8, unique_by=dns_name),
    hosts=st.lists(_ipv4, min_size=8, max_size=8),
    ports=st.lists(st.integers(1, 65535), min_size=8, max_size=8, unique=True),
    strategy=st.sampled_from(["maglev", "ring", "seed"]),
    vnodes=st.integers(1, 1000),
    bounded=st.one_of(st.just(0), st.floats(1.0, 10.0)),
    source=st.sampled_from(["header", "cookie", "client-ip"]),
)
def test_to_json_round_trip_property(revision, names, hosts, ports, strategy, vnodes, bounded, source):
    members = [{"name": n, "address": f"{h}:{p}"} for n, h, p in zip(names, hosts, ports)]
    d = {
        "revision": revision,
        "members": members,
        "hashing": {"strategy": strategy, "vnodes": vnodes, "boundedLoad": bounded, "tableSize": 257},
        "key": {"source": source, "name": "X-Key"},
    }
    m = parse(d)
    assert parse(json.loads(json.dumps(m.to_json()))) == m
    assert m.to_json()["members"] == members
