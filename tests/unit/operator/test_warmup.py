"""Warm-up on Kubernetes (spec.hashing.warmupSeconds): the step due as a pure function of the
status and the clock (ringlb_operator.warmup), and whole reconcile passes against FakeKube."""

from __future__ import annotations

import datetime
import itertools
import json
from dataclasses import replace
from importlib import resources
from typing import Any

import jsonschema
import pytest

from ringlb_balancer.status import model
from ringlb_operator import constants as c
from ringlb_operator import spec as spec_mod
from ringlb_operator import warmup
from ringlb_operator.reconcile import reconcile_once
from ringlb_operator.status import PushState
from ringlb_ring import hashing as h
from ringlb_ring import membership
from ringlb_ring.hashing import Transition
from ringlb_ring.keys import KeyConfig

from .conftest import OWNER, FakeKube, balancer_pod, resource, views
from .test_manifests import SAMPLE, errors
from .test_reconcile import FakePusher, conditions, converge

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
S = [f"Server {i}" for i in range(1, 6)]
SMALL = h.HashingConfig("maglev", table_size=1021)  # exact shares, built quickly


def at(seconds: float) -> str:
    return (T0 + datetime.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def rows(names: list[str]) -> dict[str, Any]:
    """A status whose last direct ring was ``names`` (as status.members says it)."""
    return {"members": [{"name": n, "pod": "", "ready": True} for n in names]}


# -- the step due -------------------------------------------------------------------------------
@pytest.mark.parametrize(("seconds", "steps"), [(1, 2), (4, 2), (5, 2), (10, 3), (20, 5), (60, 13), (3600, 20)])
def test_step_count(seconds: int, steps: int) -> None:
    assert warmup.schedule(seconds).steps == steps


@pytest.mark.parametrize(
    ("status", "target", "seconds", "strategy"),
    [
        (rows(S[:3]), S[:4], 0, "maglev"),  # off
        (rows(S[:3]), S[:4], 20, "seed"),  # a strategy without one final owner per key
        ({}, S[:4], 20, "maglev"),  # nothing published yet
        (rows(S[:3]), [], 20, "ring"),  # scaled to 0: no one to hand the keys to
        (rows(S[:3]), S[:3], 20, "ring"),  # no change
    ],
)
def test_direct_when_there_is_nothing_to_warm(status: dict, target: list[str], seconds: int, strategy: str) -> None:
    step = warmup.due(status, target, set(S), seconds, strategy, at(0))
    assert step == warmup.Due(tuple(target))
    assert step.next_in(at(0)) is None and warmup.status_block(step, None, OWNER, SMALL) is None


def test_scale_up_moves_a_slice_per_step_and_ends_with_the_direct_table() -> None:
    """20 s, 5 steps, 5 s apart: step k (fraction k/5) is due (k-1) x 5 s after the start, the
    direct table at 20 s; each pass works it out from the recorded start and the clock."""
    status = rows(S[:3])
    first = warmup.due(status, S[:4], set(S[:4]), 20, "maglev", at(0))
    assert first.ramp == warmup.Ramp(tuple(S[:3]), tuple(S[:4]), at(0))
    assert first.names == tuple(S[:4]) and first.transition == Transition(tuple(S[:3]), tuple(S[:4]), 0.2)
    assert (first.step, first.steps, first.next_in(at(0))) == (1, 5, 5.0)
    assert first.joining == ("Server 4",) and first.draining == ()
    status = {**status, "transition": warmup.status_block(first, None, OWNER, SMALL)}
    seen = []
    for t in (0, 4.9, 5, 9, 10, 15, 19.9):
        step = warmup.due(status, S[:4], set(S[:4]), 20, "maglev", at(t))
        seen.append((t, step.step, step.transition.fraction if step.transition else None))
        assert step.ramp == first.ramp  # the start is kept
    assert seen == [(0, 1, 0.2), (4.9, 1, 0.2), (5, 2, 0.4), (9, 2, 0.4), (10, 3, 0.6), (15, 4, 0.8), (19.9, 4, 0.8)]
    assert warmup.due(status, S[:4], set(S[:4]), 20, "maglev", at(9)).next_in(at(9)) == 1.0
    for t in (20, 500):
        assert warmup.due(status, S[:4], set(S[:4]), 20, "maglev", at(t)) == warmup.Due(tuple(S[:4]))


def test_a_clock_that_went_back_gives_the_first_step() -> None:
    status = {**rows(S[:3]), "transition": {"from": S[:3], "to": S[:4], "startedAt": at(100)}}
    assert warmup.due(status, S[:4], set(S), 20, "ring", at(90)).step == 1


def test_scale_down_keeps_the_leaving_member_routable_until_the_last_step() -> None:
    status = rows(S[:4])
    step = warmup.due(status, S[:3], set(S[:4]), 10, "ring", at(0))
    assert step.names == (*S[:3], "Server 4") and step.draining == ("Server 4",)
    status["transition"] = warmup.status_block(step, None, OWNER, h.HashingConfig("ring"))
    assert warmup.due(status, S[:3], set(S[:4]), 10, "ring", at(5)).names == (*S[:3], "Server 4")
    assert warmup.due(status, S[:3], set(S[:4]), 10, "ring", at(10)).names == tuple(S[:3])


def test_a_failed_member_leaves_at_once() -> None:
    """Scale-down in progress; the leaving replica stops being Ready: it is not servable any
    more, so the ring without it is published in this pass, not after the warm-up."""
    status = {**rows(S[:3]), "transition": {"from": S[:4], "to": S[:3], "startedAt": at(0)}}
    assert warmup.due(status, S[:3], set(S[:3]), 60, "maglev", at(1)) == warmup.Due(tuple(S[:3]))
    # A staying member fails during a scale-up: gone from both sides, the rest goes on.
    status = {**rows(S[:3]), "transition": {"from": S[:3], "to": S[:4], "startedAt": at(0)}}
    step = warmup.due(
        status, ["Server 1", "Server 3", "Server 4"], {"Server 1", "Server 3", "Server 4"}, 60, "maglev", at(1)
    )
    assert step.ramp == warmup.Ramp(("Server 1", "Server 3"), ("Server 1", "Server 3", "Server 4"), at(0))
    assert step.names == ("Server 1", "Server 3", "Server 4")


def test_a_new_target_during_a_warm_up_continues_from_the_same_start() -> None:
    status = {**rows(S[:4]), "transition": {"from": S[:3], "to": S[:4], "startedAt": at(0)}}
    step = warmup.due(status, S[:5], set(S), 20, "maglev", at(10))
    assert step.ramp == warmup.Ramp(tuple(S[:3]), tuple(S[:5]), at(0)) and step.step == 3
    assert step.joining == ("Server 4", "Server 5")
    # Scaled back to where it came from: nothing left to move.
    assert warmup.due(status, S[:3], set(S), 20, "maglev", at(10)) == warmup.Due(tuple(S[:3]))


@pytest.mark.parametrize(
    "transition",
    [
        "yes",
        {"from": "Server 1", "to": S[:2], "startedAt": at(0)},
        {"from": S[:1], "to": S[:2], "startedAt": "yesterday"},
        {"from": S[:1], "to": [1, 2], "startedAt": at(0)},
        {"to": S[:2], "startedAt": at(0)},
    ],
)
def test_a_record_that_cannot_be_used_is_ignored(transition: Any) -> None:
    assert warmup.read({"transition": transition}) is None


# -- status, shares, events -------------------------------------------------------------------
def test_status_block_shares_are_the_balancers() -> None:
    """The shares in status are those of the table every balancer pod builds from the
    document (its status page shows the same), and are computed once per step."""
    step = warmup.due(rows(S[:4]), ["Server 1", "Server 2", "Server 5"], set(S), 20, "maglev", at(0))
    block = warmup.status_block(step, None, OWNER, SMALL)
    assert block is not None
    table = h.build(list(step.names), replace(SMALL, transition=step.transition))
    share = dict(zip(table.members, table.shares()))
    assert block["members"] == [
        {"name": "Server 5", "pod": "web-server-5", "state": "Joining", "share": round(share["Server 5"], 6)},
        {"name": "Server 3", "pod": "web-server-3", "state": "Draining", "share": round(share["Server 3"], 6)},
        {"name": "Server 4", "pod": "web-server-4", "state": "Draining", "share": round(share["Server 4"], 6)},
    ]
    assert 0 < share["Server 5"] < 1 / 3 and 0 < share["Server 3"] < 1 / 4
    assert (block["step"], block["steps"], block["fraction"], block["nextStepAt"]) == (1, 5, 0.2, at(5))
    kept = {**block, "members": [{**m, "share": 0.5} for m in block["members"]]}
    assert warmup.status_block(step, kept, OWNER, SMALL) == kept  # same step: not rebuilt
    later = warmup.due({"transition": block}, ["Server 1", "Server 2", "Server 5"], set(S), 20, "maglev", at(5))
    assert warmup.status_block(later, kept, OWNER, SMALL)["members"] != kept["members"]


def test_next_step_time_is_rounded_up() -> None:
    step = warmup.due(rows(S[:2]), S[:3], set(S), 7, "ring", at(0))  # 2 steps, 7 s apart
    assert warmup.status_block(step, None, OWNER, h.HashingConfig("ring"))["nextStepAt"] == at(7)
    step = warmup.due(rows(S[:2]), S[:3], set(S), 11, "ring", at(0))  # 3 steps, 5.5 s apart
    assert step.next_in(at(0)) == 5.5
    assert warmup.status_block(step, None, OWNER, h.HashingConfig("ring"))["nextStepAt"] == at(6)


def test_events_once_per_step_and_at_the_end() -> None:
    first = warmup.due(rows(S[:4]), ["Server 1", "Server 2", "Server 3", "Server 5"], set(S), 20, "maglev", at(0))
    block = warmup.status_block(first, None, OWNER, SMALL)
    found = warmup.events(None, block, first.names, 7)
    assert [(e.type, e.reason) for e in found] == [("Normal", c.Reason.WARMING_UP), ("Normal", c.Reason.DRAINING)]
    draining = block["members"][1]["share"]
    assert (
        found[1].message
        == f"Server 4 (pod web-server-4) hands its keys over: share {draining:.1%}, step 1/5 at revision 7"
    )
    assert warmup.events(block, block, first.names, 7) == []  # the same step again: nothing
    end = warmup.events(block, None, ("Server 1", "Server 2", "Server 3", "Server 5"), 11)
    assert [e.message for e in end] == [
        "Server 5 (pod web-server-5): full share at revision 11",
        "Server 4 (pod web-server-4): share 0 at revision 11; its pod is deleted once every balancer pod holds it",
    ]


def test_progress_names_the_draining_pod() -> None:
    step = warmup.due(rows(S[:4]), S[:3], set(S), 20, "maglev", at(0))
    reason, message = warmup.progress(warmup.status_block(step, None, OWNER, SMALL))
    assert reason == c.Reason.DRAINING and "Server 4 (web-server-4) share" in message and "step 1/5" in message
    step = warmup.due(rows(S[:3]), S[:4], set(S), 20, "maglev", at(0))
    assert warmup.progress(warmup.status_block(step, None, OWNER, SMALL))[0] == c.Reason.WARMING_UP
    assert warmup.progress(None) is None


# -- the spec -----------------------------------------------------------------------------------
def test_spec_field_range_and_strategy() -> None:
    assert spec_mod.parse({}).hashing.warmup_seconds == 0
    assert spec_mod.parse({"hashing": {"warmupSeconds": 3600}}).hashing.warmup_seconds == 3600
    for bad in (-1, 3601):
        with pytest.raises(spec_mod.SpecError, match=r"spec\.hashing\.warmupSeconds"):
            spec_mod.parse({"hashing": {"warmupSeconds": bad}})
    # The CRD's schema (kubectl apply) refuses the same, and a string, naming the field.
    for bad in (-1, 3601, "10", 1.5):
        found = errors({**SAMPLE, "spec": {"hashing": {"warmupSeconds": bad}}})
        assert found and all(e.startswith("spec/hashing/warmupSeconds: ") for e in found), found
    assert errors({**SAMPLE, "spec": {"hashing": {"warmupSeconds": 0}}}) == []
    s = spec_mod.parse({"hashing": {"warmupSeconds": 30, "strategy": "seed"}})
    assert spec_mod.problems("web", s) == [
        (
            "spec.hashing.warmupSeconds: a warm-up needs strategy maglev or ring (each key has one final owner "
            "to move to), not 'seed'; set it to 0 or change the strategy"
        )
    ]


# -- whole passes ---------------------------------------------------------------------------------
BALANCERS = [balancer_pod("b-1", "10.1.0.1"), balancer_pod("b-2", "10.1.0.2")]


def warm_spec(replicas: int, seconds: int = 20) -> dict[str, Any]:
    return {"replicas": replicas, "hashing": {"strategy": "maglev", "tableSize": 1021, "warmupSeconds": seconds}}


def run(kube: FakeKube, res: dict[str, Any], pusher: FakePusher, t: float, ready: bool = True):
    out = reconcile_once(kube, pusher, res, views(kube, ready) + BALANCERS, at(t))
    res["status"] = out.status
    return out


def openapi(name: str) -> jsonschema.Draft4Validator:
    """A component schema of the balancer's openapi.json. OpenAPI 3.0's schemas are draft-4
    style (boolean exclusiveMinimum) with ``nullable``, spelled here as a type list."""

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: convert(v) for k, v in node.items()}
            if node.pop("nullable", False):
                node["type"] = [node["type"], "null"]
            return node
        return [convert(v) for v in node] if isinstance(node, list) else node

    doc = convert(json.loads(resources.files("ringlb_balancer").joinpath("openapi.json").read_text()))
    return jsonschema.Draft4Validator({**doc, "$ref": f"#/components/schemas/{name}"})


def test_openapi_documents_the_membership_and_status_of_issue_17() -> None:
    """Key sources with a fallback, the non-affine strategies and a warm-up step are documented
    (an unknown field would be refused: additionalProperties is false); so are a change to a
    non-affine strategy, which moves no owner (moved null), and a hot key without an owner."""
    doc = membership.Membership(
        3,
        (membership.Member("Server 1", "10.0.0.1", 5000),),
        h.HashingConfig("random"),
        KeyConfig("query", "user", 0, (KeyConfig("path-segment", "", 1), KeyConfig("client-ip", ""))),
    ).to_json()
    assert not list(openapi("Membership").iter_errors(doc))
    step = warmup.due(rows(S[:1]), S[:2], set(S), 20, "ring", at(0))
    members = [{"name": n, "address": f"10.0.0.{i}:5000"} for i, n in enumerate(step.names, start=1)]
    warm = {
        "revision": 4,
        **membership.content(members, replace(h.HashingConfig("ring"), transition=step.transition), KeyConfig()),
    }
    membership.parse(warm)
    assert not list(openapi("Membership").iter_errors(warm))
    for fraction in (0, 1):
        warm["hashing"]["transition"]["fraction"] = fraction
        assert list(openapi("Membership").iter_errors(warm))

    ring = h.build(S[:3], h.HashingConfig("ring"))
    baseline = h.build(S[:3], h.HashingConfig("round-robin"))
    change = model.change(ring, baseline, 5, 1.0)
    assert change["moved"] is None and not list(openapi("StatusChange").iter_errors(change))
    state = membership.Membership(
        5,
        tuple(membership.Member(n, "10.0.0.1", 6000 + i) for i, n in enumerate(S[:3])),
        h.HashingConfig("round-robin"),
    )
    data = model.data(state, baseline, changes=[change], hot=[("user-1", 2.0, 0.5)], now=1.0)
    assert data["hotKeys"][0]["owner"] is None and not list(openapi("StatusData").iter_errors(data))


def test_scale_up_publishes_each_step_with_its_own_revision(kube: FakeKube) -> None:
    res = resource(warm_spec(3))
    pusher = FakePusher()
    st = converge(kube, res, pusher, BALANCERS)
    r0 = st["ringRevision"]
    assert "transition" not in st
    res["spec"] = warm_spec(4)
    run(kube, res, pusher, 0)  # creates web-server-4; the ring does not change while it starts
    assert res["status"]["ringRevision"] == r0 and "transition" not in res["status"]
    out = run(kube, res, pusher, 1)  # Ready: the warm-up starts
    doc = pusher.documents[-1]
    assert doc["revision"] == r0 + 1 and [m["name"] for m in doc["members"]] == S[:4]
    assert doc["hashing"]["transition"] == {"from": S[:3], "to": S[:4], "fraction": 0.2}
    assert out.status["transition"]["startedAt"] == at(1) and out.status["transition"]["step"] == 1
    assert out.retry_in == pytest.approx(5.25)  # the next step's time (+ DUE_MARGIN)
    assert conditions(out.status)["Progressing"]["reason"] == c.Reason.WARMING_UP
    assert conditions(out.status)["Ready"]["status"] == "True"  # every replica serves meanwhile
    assert {e.reason for e in out.events} == {c.Reason.WARMING_UP, c.Reason.PUSHED}
    # Saved before the push: a restarted operator finds the warm-up and its start.
    early = next(p for p in kube.status_patches if p.get("ringRevision") == r0 + 1)
    assert early["transition"]["startedAt"] == at(1)

    writes, patches, pushes = len(kube.writes), len(kube.status_patches), len(pusher.documents)
    out = run(kube, res, pusher, 3)  # nothing due: nothing written
    assert (len(kube.writes), len(kube.status_patches)) == (writes, patches) and not out.events
    assert pusher.documents[pushes:] == [doc]  # the pods were asked whether they hold it, that is all

    revisions = [doc["revision"]]
    for t in (6, 11, 16):
        run(kube, res, pusher, t)
        revisions.append(pusher.documents[-1]["revision"])
        assert pusher.documents[-1]["hashing"]["transition"]["fraction"] == pytest.approx((len(revisions)) / 5)
    out = run(kube, res, pusher, 21)
    final = pusher.documents[-1]
    assert "transition" not in final["hashing"] and [m["name"] for m in final["members"]] == S[:4]
    assert revisions + [final["revision"]] == list(range(r0 + 1, r0 + 6))
    early = next(p for p in kube.status_patches if p.get("ringRevision") == r0 + 5)
    assert early["transition"] is None  # removed by the merge patch, before the push
    assert conditions(out.status)["Progressing"]["status"] == "False"
    assert [e.message for e in out.events if e.reason == c.Reason.WARMING_UP] == [
        f"Server 4 (pod web-server-4): full share at revision {r0 + 5}"
    ]
    run(kube, res, pusher, 22)
    assert "transition" not in res["status"]  # the next status leaves it out
    # Every document pushed is one the balancer accepts and documents.
    validator = openapi("Membership")
    for pushed in pusher.documents:
        membership.parse(pushed)
        assert not list(validator.iter_errors(pushed))


def test_every_step_moves_keys_only_towards_their_new_owner(kube: FakeKube) -> None:
    res = resource(warm_spec(3))
    pusher = FakePusher()
    r0 = converge(kube, res, pusher, BALANCERS)["ringRevision"]
    res["spec"] = warm_spec(4)
    for t in (0, 1, 6, 11, 16, 21):
        run(kube, res, pusher, t)
    tables = []
    for doc in {d["revision"]: d for d in pusher.documents if d["revision"] >= r0}.values():
        parsed = membership.parse(doc)
        tables.append(h.build(parsed.names, parsed.hashing))
    keys = [f"user-{i}" for i in range(2000)]
    owners = [[t.members[t.owner(k)] for k in keys] for t in tables]
    assert len(tables) == 6
    moved = [sum(a != b for a, b in zip(owners[0], o)) for o in owners]
    assert moved == sorted(moved) and moved[0] == 0 < moved[1] < moved[-1]
    for before, after in itertools.pairwise(owners):
        for old, new, final in zip(before, after, owners[-1]):
            assert new in (old, final)  # a key moves once, to its final owner, and never back


def test_scale_down_drains_the_leaving_pod_before_deleting_it(kube: FakeKube) -> None:
    res = resource(warm_spec(4, 10))
    pusher = FakePusher()
    converge(kube, res, pusher, BALANCERS)
    res["spec"] = warm_spec(3, 10)
    out = run(kube, res, pusher, 0)
    assert "web-server-4" in kube.pods()  # held while it hands its keys over
    doc = pusher.documents[-1]
    assert [m["name"] for m in doc["members"]] == S[:4]
    assert doc["hashing"]["transition"] == {"from": S[:4], "to": S[:3], "fraction": pytest.approx(1 / 3)}
    progressing = conditions(out.status)["Progressing"]
    assert progressing["reason"] == c.Reason.DRAINING and "Server 4 (web-server-4) share" in progressing["message"]
    [row] = out.status["transition"]["members"]
    assert row["state"] == "Draining" and 0 < row["share"] < 0.25
    assert [e.reason for e in out.events if e.reason in (c.Reason.DRAINING, c.Reason.DELETED)] == [c.Reason.DRAINING]
    assert out.retry_in == pytest.approx(5.25)  # the next step (3 steps over 10 s), not every second

    out = run(kube, res, pusher, 10)
    assert [m["name"] for m in pusher.documents[-1]["members"]] == S[:3]
    assert "web-server-4" not in kube.pods()  # acknowledged by both balancer pods: deleted
    reasons = [e.reason for e in out.events]
    assert c.Reason.DRAINING in reasons and c.Reason.DELETED in reasons
    assert res["status"].get("transition") is None


def test_the_draining_pod_stays_until_every_balancer_holds_the_last_step(kube: FakeKube) -> None:
    res = resource(warm_spec(4, 10))
    converge(kube, res, FakePusher(), BALANCERS)
    res["spec"] = warm_spec(3, 10)
    run(kube, res, FakePusher(), 0)
    deaf = FakePusher({"b-2": PushState("b-2", False, 0, "unreachable: ConnectTimeout")})
    run(kube, res, deaf, 10)
    assert "web-server-4" in kube.pods() and "transition" not in deaf.documents[-1]["hashing"]
    run(kube, res, FakePusher(), 11)
    assert "web-server-4" not in kube.pods()


def test_a_draining_pod_that_fails_leaves_at_once(kube: FakeKube) -> None:
    res = resource(warm_spec(4, 60))
    pusher = FakePusher()
    converge(kube, res, pusher, BALANCERS)
    res["spec"] = warm_spec(3, 60)
    run(kube, res, pusher, 0)
    assert "web-server-4" in kube.pods()
    failing = [v if v.name != "web-server-4" else replace(v, ready=False) for v in views(kube)]
    out = reconcile_once(kube, pusher, res, failing + BALANCERS, at(1))
    assert [m["name"] for m in pusher.documents[-1]["members"]] == S[:3]
    assert "transition" not in pusher.documents[-1]["hashing"]
    assert "web-server-4" not in kube.pods() and out.status.get("transition") is None


def test_a_restarted_operator_publishes_the_same_step(kube: FakeKube) -> None:
    res = resource(warm_spec(3))
    converge(kube, res, FakePusher(), BALANCERS)
    res["spec"] = warm_spec(4)
    run(kube, res, FakePusher(), 0)
    run(kube, res, FakePusher(), 1)
    revision = res["status"]["ringRevision"]
    fresh = FakePusher()
    out = reconcile_once(kube, fresh, dict(res), views(kube) + BALANCERS, at(4))
    assert out.status["ringRevision"] == revision and fresh.documents[-1]["hashing"]["transition"]["fraction"] == 0.2
    out = reconcile_once(kube, fresh, dict(res), views(kube) + BALANCERS, at(6))
    assert out.status["ringRevision"] == revision + 1


def test_without_warm_up_nothing_changes(kube: FakeKube) -> None:
    res = resource({"replicas": 3})
    pusher = FakePusher()
    converge(kube, res, pusher, BALANCERS)
    res["spec"] = {"replicas": 4}
    converge(kube, res, pusher, BALANCERS)
    assert all("transition" not in d["hashing"] for d in pusher.documents)
    assert all("transition" not in p for p in kube.status_patches)
