"""Unit tests for RoutingStore (publish / current across processes) and SharedState."""

from __future__ import annotations

import dataclasses
import zlib

import pytest

from ringlb_balancer.routing import Routing, RoutingStore, StaleRevision
from ringlb_balancer.shared import EJECTION_CODES, HEALTHY, MAX_WORKERS, SharedState
from ringlb_ring import hashing
from ringlb_ring.hashing.ketama import Ring
from ringlb_ring.hashing.maglev import Maglev
from ringlb_ring.membership import EMPTY, KeyConfig, Member, Membership, MembershipError, parse
from ringlb_ring.naming import MAX_REPLICAS

EJECTED = EJECTION_CODES["connection"]


def membership(revision: int, names: list[str], strategy: str = "ring", **key) -> Membership:
    return parse(
        {
            "revision": revision,
            "members": [{"name": n, "address": f"127.0.0.1:{port(n)}"} for n in names],
            "hashing": {"strategy": strategy, "tableSize": 257},
            "key": key or {"source": "header", "name": "X-Request-ID"},
        }
    )


S3 = ["Server 1", "Server 2", "Server 3"]


def port(name: str) -> int:
    """A member keeps its address across memberships, as a replica that stays does."""
    return 10_000 + zlib.crc32(name.encode()) % 50_000


@pytest.fixture
def two_processes(tmp_path):
    """Two independent views of one state dir, as two gunicorn workers would have."""
    return RoutingStore(SharedState(tmp_path)), RoutingStore(SharedState(tmp_path))


def test_initial_routing_is_empty(tmp_path):
    store = RoutingStore(SharedState(tmp_path))
    routing = store.current()
    assert routing.membership == EMPTY
    assert routing.membership.names == []
    assert store.revision == 0 and store.shared.revision == 0
    assert routing.key_header == b"x-request-id" and routing.key_plan.headers == {b"x-request-id"}


def test_publish_is_seen_by_another_process(two_processes):
    a, b = two_processes
    m = membership(1, S3)
    routing, changed = a.publish(m)
    assert changed is True and routing.membership == m
    assert a.shared.revision == 1
    seen = b.current()
    assert seen.membership == m
    assert seen.membership.names == S3
    assert isinstance(seen.strategy, Ring)
    assert [seen.strategy.owner(f"k{i}") for i in range(200)] == [routing.strategy.owner(f"k{i}") for i in range(200)]
    # unchanged revision: the same object, no reload
    assert b.current() is seen


def test_later_revision_replaces(two_processes):
    a, b = two_processes
    a.publish(membership(1, S3))
    b.current()
    _routing, changed = b.publish(membership(5, S3 + ["S4"], strategy="maglev"))
    assert changed
    assert a.current().membership.names == S3 + ["S4"]
    assert isinstance(a.current().strategy, Maglev)
    assert a.current().strategy.table_size == 257


def test_stale_revision(two_processes):
    a, b = two_processes
    a.publish(membership(3, S3))
    with pytest.raises(StaleRevision) as exc:
        b.publish(membership(2, S3 + ["S4"]))
    assert str(exc.value) == "revision 2 is stale: revision 3 is in force"
    assert b.current().membership.names == S3
    assert a.shared.revision == 3


def test_same_revision_same_content_is_accepted_unchanged(two_processes):
    a, b = two_processes
    first, _ = a.publish(membership(4, S3))
    routing, changed = b.publish(membership(4, S3))
    assert changed is False
    assert routing.membership == first.membership


def test_same_revision_different_content_is_stale(two_processes):
    a, b = two_processes
    a.publish(membership(4, S3))
    with pytest.raises(StaleRevision) as exc:
        b.publish(membership(4, ["Server 1", "Server 2"]))
    assert str(exc.value) == "revision 4 is stale: revision 4 is in force"
    with pytest.raises(StaleRevision):
        b.publish(membership(4, S3, strategy="seed"))  # same members, other hashing
    assert b.current().membership == membership(4, S3)


def test_health_flags_carried_over_for_members_that_stay(two_processes):
    a, b = two_processes
    a.publish(membership(1, S3))
    a.shared.set_health(1, "connection")  # Server 2 ejected
    assert b.shared.ejected(1)
    # Server 1 leaves, Server 2 and 3 stay (new indexes 0, 1), S9 is new
    b.publish(membership(2, ["Server 2", "Server 3", "S9"]))
    assert a.shared.health_flags(3) == bytes([EJECTED, HEALTHY, HEALTHY])
    assert a.shared.ejected(0) and not a.shared.ejected(1) and not a.shared.ejected(2)


def test_health_flags_reset_for_new_members(two_processes):
    a, b = two_processes
    a.publish(membership(1, S3))
    for i in range(3):
        a.shared.set_health(i, "connection")
    b.publish(membership(2, ["S7", "S8"]))
    assert a.shared.health_flags(2) == bytes([HEALTHY, HEALTHY])


def test_member_with_a_new_address_is_a_new_member(two_processes):
    a, b = two_processes
    a.publish(membership(1, S3))
    a.shared.set_health(0, "connection")
    moved = dataclasses.replace(
        membership(2, S3),
        members=(
            dataclasses.replace(membership(2, S3).members[0], port=9999),
            *membership(2, S3).members[1:],
        ),
    )
    b.publish(moved)
    assert a.shared.health_flags(3) == bytes([HEALTHY, HEALTHY, HEALTHY])


def test_publish_refuses_a_membership_the_strategy_cannot_place(tmp_path):
    """Built without parse (which caps members): publish itself must refuse, not half-apply."""
    store = RoutingStore(SharedState(tmp_path))
    too_many = Membership(
        revision=1,
        members=tuple(Member(f"S{i}", "127.0.0.1", 7000 + i) for i in range(57)),
        hashing=hashing.HashingConfig(strategy="seed"),
    )
    with pytest.raises(MembershipError) as exc:
        store.publish(too_many)
    assert str(exc.value) == "hashing: seed strategy holds at most 56 members (512 slots / 9 virtual servers each)"
    assert store.shared.revision == 0
    assert store.current().membership == EMPTY
    assert not (tmp_path / "routing.pickle").exists()


def test_publish_to_empty_membership_then_back(two_processes):
    a, b = two_processes
    a.publish(membership(1, S3))
    b.publish(membership(2, []))
    assert a.current().membership.names == []
    a.publish(membership(3, ["S1"]))
    assert b.current().membership.names == ["S1"]


def test_routing_build_key_header_is_lower_case():
    m = membership(1, S3, source="header", name="X-My-Key")
    assert Routing.build(m).key_header == b"x-my-key"
    assert Membership(revision=1, key=KeyConfig("cookie", "Session")).key.name == "Session"


def test_publish_survives_a_fresh_process_after_restart(tmp_path):
    a = RoutingStore(SharedState(tmp_path))
    a.publish(membership(9, S3, strategy="seed"))
    c = RoutingStore(SharedState(tmp_path))  # started later: loads the pickled routing
    assert c.current().membership.revision == 9
    assert c.current().strategy.server_ids == [1, 2, 3]
    with pytest.raises(StaleRevision):
        c.publish(membership(8, S3))


# ---------------------------------------------------------------------------------------------
# SharedState
# ---------------------------------------------------------------------------------------------


def test_shared_revision_and_health_across_instances(tmp_path):
    s1, s2 = SharedState(tmp_path), SharedState(tmp_path)
    assert s1.revision == 0
    s1.revision = 2**63 - 1
    assert s2.revision == 2**63 - 1
    s2.write_health_flags(bytes([EJECTED, HEALTHY, EJECTED]))
    assert s1.health_flags(3) == bytes([1, 0, 1])
    assert s1.ejected(0) and not s1.ejected(1) and s1.ejected(2)
    s1.set_health(0, None)
    assert not s2.ejected(0)
    s1.set_health(MAX_REPLICAS - 1, "connection")
    assert s2.ejected(MAX_REPLICAS - 1)


def test_rows_slots_and_inflight_totals(tmp_path):
    s1, s2 = SharedState(tmp_path), SharedState(tmp_path)
    row = s1.row()
    assert s1.row() == row  # claimed once per process
    # Same pid in one test process: a second instance finds this pid's row and reuses it.
    assert s2.row() == row
    assert s1.slot(3) == row * MAX_REPLICAS + 3
    s1.inflight[s1.slot(0)] += 2
    s1.inflight[s1.slot(2)] += 5
    assert s2.total_inflight(3) == [2, 0, 5]
    # another process's row (simulated: written directly, as that worker would)
    other = (row + 1) % MAX_WORKERS
    s2.inflight[other * MAX_REPLICAS + 0] += 1
    s2.inflight[other * MAX_REPLICAS + 1] += 4
    assert s1.total_inflight(3) == [3, 4, 5]
    assert s1.total_inflight(1) == [3]
    s1.clear_row()
    assert s2.total_inflight(3) == [1, 4, 0]


def test_row_of_a_dead_process_is_reclaimed(tmp_path, monkeypatch):
    import ringlb_balancer.shared as shared_mod

    s = SharedState(tmp_path)
    # every row owned by some other pid; all but row 5 alive
    for r in range(MAX_WORKERS):
        shared_mod._PID.pack_into(s.map, shared_mod._PIDS_AT + 4 * r, 10_000_000 + r)
    monkeypatch.setattr(shared_mod, "_alive", lambda pid: pid != 10_000_005)
    assert s.row() == 5


def test_all_rows_taken_is_an_error(tmp_path, monkeypatch):
    import ringlb_balancer.shared as shared_mod

    s = SharedState(tmp_path)
    for r in range(MAX_WORKERS):
        shared_mod._PID.pack_into(s.map, shared_mod._PIDS_AT + 4 * r, 10_000_000 + r)
    monkeypatch.setattr(shared_mod, "_alive", lambda pid: True)
    with pytest.raises(RuntimeError, match=f"more than {MAX_WORKERS} balancer processes"):
        s.row()


def test_locked_is_reentrant_across_instances_sequentially(tmp_path):
    s1, s2 = SharedState(tmp_path), SharedState(tmp_path)
    with s1.locked():
        s1.revision = 5
    with s2.locked():
        assert s2.revision == 5


def test_state_file_has_fixed_size(tmp_path):
    import ringlb_balancer.shared as shared_mod

    SharedState(tmp_path)
    assert (tmp_path / "shared.bin").stat().st_size == shared_mod._SIZE
    SharedState(tmp_path)  # reopening does not grow or truncate it
    assert (tmp_path / "shared.bin").stat().st_size == shared_mod._SIZE


def test_a_key_with_another_source_or_a_fallback_has_no_direct_header():
    cookie = parse({"revision": 1, "members": [], "key": {"source": "cookie", "name": "sid"}})
    fallback = parse(
        {
            "revision": 1,
            "members": [],
            "key": {"source": "header", "name": "X-S", "fallback": [{"source": "client-ip"}]},
        }
    )
    assert Routing.build(cookie).key_header == b"" and Routing.build(cookie).key_plan.headers == {b"cookie"}
    assert Routing.build(fallback).key_header == b""
