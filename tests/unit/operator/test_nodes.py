"""Pods on lost nodes: the node view, the pure decision (which pod, when, how), the tolerations the
pods carry, the reconcile pass against the in-memory cluster, and the node wake-ups."""

from __future__ import annotations

import asyncio
import copy
import datetime
from typing import Any

import kopf
import pytest

from ringlb_operator import children, handlers, lost_nodes, push, spec
from ringlb_operator import constants as c
from ringlb_operator.lost_nodes import DELETE, FORCE, KEEP, WAIT
from ringlb_operator.observe import NodeView, PodView, node_view, pod_view
from ringlb_operator.reconcile import DUE_MARGIN, reconcile_once
from ringlb_operator.status import PushState
from ringlb_operator.timestamps import format_time, parse_time

from .conftest import DEADLINE, OWNER, FakeKube, balancer_pod, resource, running, until, views
from .test_handlers import Pusher, Stopped, _Log
from .test_reconcile import FakePusher, conditions

T0 = "2025-01-01T00:00:00Z"  # the node's Ready condition turned Unknown/False


def at(seconds: int) -> str:
    start = parse_time(T0)
    assert start is not None
    return format_time(start + datetime.timedelta(seconds=seconds))


UNREACHABLE = NodeView("w2", "Unknown", T0, ((c.TAINT_UNREACHABLE, T0),))
NOT_READY = NodeView("w2", "False", T0, ((c.TAINT_NOT_READY, T0),))
HEALTHY = NodeView("w2", "True", "2024-12-31T00:00:00Z")


# --- the node view ------------------------------------------------------------------------------
def node_body(ready: str | None, since: str = T0, taints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    conditions = [{"type": "MemoryPressure", "status": "Unknown"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready, "lastTransitionTime": since})
    return {"metadata": {"name": "w2"}, "spec": {"taints": taints or []}, "status": {"conditions": conditions}}


def test_node_view_of_a_stopped_worker() -> None:
    """What `docker stop` of a kind worker looks like ~50 s later."""
    body = node_body(
        "Unknown",
        T0,
        [
            {"key": c.TAINT_UNREACHABLE, "effect": "NoSchedule", "timeAdded": at(-5)},  # not NoExecute: ignored
            {"key": c.TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": at(1)},
            {"key": "dedicated", "effect": "NoExecute"},
        ],
    )
    view = node_view(body)
    assert view == NodeView("w2", "Unknown", T0, ((c.TAINT_UNREACHABLE, at(1)),))
    assert view.down and view.silent and view.since == T0 and view.state == "unreachable"
    assert view.taint_key == c.TAINT_UNREACHABLE


@pytest.mark.parametrize(
    "ready,taints,down,silent,since",
    [
        ("True", [], False, False, ""),
        (
            "True",
            [{"key": c.TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": T0}],
            False,
            False,
            "",
        ),  # Ready wins
        ("False", [], True, False, T0),  # kubelet reports NotReady: it can still confirm deletions
        ("False", [{"key": c.TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": at(-20)}], True, True, at(-20)),
        ("Unknown", [], True, True, T0),
        (None, [{"key": c.TAINT_NOT_READY, "effect": "NoExecute", "timeAdded": T0}], True, False, T0),
        (None, [], False, False, ""),  # a node that just registered
    ],
)
def test_node_view_states(
    ready: str | None, taints: list[dict[str, Any]], down: bool, silent: bool, since: str
) -> None:
    view = node_view(node_body(ready, T0, taints))
    assert (view.down, view.silent, view.since) == (down, silent, since)


# --- the pure decision ----------------------------------------------------------------------------
def replica(
    ready: bool = False,
    deleting_at: str = "",
    node: str = "w2",
    owner_uid: str = OWNER.uid,
    template: dict[str, Any] | None = None,
) -> PodView:
    body = running(children.replica_pod(OWNER, spec.parse({"template": template or {}}), "Server 2"), "10.0.0.2", ready)
    body["spec"]["nodeName"] = node
    body["metadata"]["ownerReferences"][0]["uid"] = owner_uid
    if deleting_at:
        body["metadata"]["deletionTimestamp"] = deleting_at
    return pod_view(body)


FOREVER = [{"key": c.TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]
TOLERATE_ALL = [{"operator": "Exists"}]
CASES = [
    # (case, node, pod kwargs, template, seconds since T0, expected action, expected due offset)
    ("unreachable, not yet", UNREACHABLE, {}, {}, 10, WAIT, 30),
    ("unreachable, due", UNREACHABLE, {}, {}, 30, FORCE, 30),
    ("unreachable, evicted: the grace period cannot be kept", UNREACHABLE, {"deleting_at": at(40)}, {}, 31, FORCE, 30),
    ("unreachable, evicted, not yet", UNREACHABLE, {"deleting_at": at(40)}, {}, 29, WAIT, 30),
    ("not ready: graceful delete first", NOT_READY, {}, {}, 30, DELETE, 30),
    ("not ready, deleted: its grace period first", NOT_READY, {"deleting_at": at(40)}, {}, 35, WAIT, 40),
    ("not ready, grace period over", NOT_READY, {"deleting_at": at(40)}, {}, 40, FORCE, 40),
    ("not ready, deleted long ago", NOT_READY, {"deleting_at": at(5)}, {}, 30, FORCE, 30),
    ("delay from the spec", UNREACHABLE, {}, {"unreachableNodeSeconds": 120}, 60, WAIT, 120),
    ("delay 0: at once", UNREACHABLE, {}, {"unreachableNodeSeconds": 0}, 0, FORCE, 0),
    (
        "user tolerates longer",
        UNREACHABLE,
        {},
        {"tolerations": [{**FOREVER[0], "tolerationSeconds": 100}]},
        60,
        WAIT,
        100,
    ),
    (
        "user tolerates shorter: the delay still holds",
        UNREACHABLE,
        {},
        {"tolerations": [{**FOREVER[0], "tolerationSeconds": 5}]},
        20,
        WAIT,
        30,
    ),
    ("user tolerates for ever", UNREACHABLE, {}, {"tolerations": FOREVER}, 3600, KEEP, None),
    ("user tolerates every taint", NOT_READY, {}, {"tolerations": TOLERATE_ALL}, 3600, KEEP, None),
    (
        "user tolerates, but the pod is being deleted",
        UNREACHABLE,
        {"deleting_at": at(40)},
        {"tolerations": FOREVER},
        30,
        FORCE,
        30,
    ),
    (
        "a NoSchedule toleration does not keep it",
        UNREACHABLE,
        {},
        {"tolerations": [{**FOREVER[0], "effect": "NoSchedule"}]},
        30,
        FORCE,
        30,
    ),
    (
        "a not-ready toleration does not cover unreachable",
        UNREACHABLE,
        {},
        {"tolerations": [{**FOREVER[0], "key": c.TAINT_NOT_READY}]},
        30,
        FORCE,
        30,
    ),
]


@pytest.mark.parametrize("case,node,pod,template,elapsed,action,due", CASES, ids=[row[0] for row in CASES])
def test_stranded_replica_decision(
    case: str, node: NodeView, pod: dict[str, Any], template: dict[str, Any], elapsed: int, action: str, due: int | None
) -> None:
    s = spec.parse({"replicas": 3, "template": template})
    [found] = lost_nodes.stranded_replicas(OWNER, s, [replica(**pod)], {"w2": node}, at(elapsed))
    assert (found.action, found.due) == (action, at(due) if due is not None else ""), case
    assert found.pod == "web-server-2" and found.identity == "Server 2" and found.since == T0 and found.uid
    if action == WAIT:
        assert found.seconds_left(at(elapsed)) == (due or 0) - elapsed
    else:
        assert found.seconds_left(at(elapsed)) is None


@pytest.mark.parametrize(
    "case,pod,nodes",
    [
        ("node healthy", replica(), {"w2": HEALTHY}),
        ("node not in the index (not listed yet, or deleted: pod GC's)", replica(), {}),
        ("pod still Ready (its kubelet still reports it)", replica(ready=True), {"w2": NOT_READY}),
        ("pod not scheduled", replica(node=""), {"w2": UNREACHABLE}),
        ("not ours", replica(owner_uid="someone-else"), {"w2": UNREACHABLE}),
        (
            "a balancer pod (the Deployment's)",
            balancer_pod("web-balancer-x", "10.1.0.1", ready=False, node="w2"),
            {"w2": UNREACHABLE},
        ),
        ("node down without a time", replica(), {"w2": NodeView("w2", "Unknown", "")}),
    ],
)
def test_pods_left_alone(case: str, pod: PodView, nodes: dict[str, NodeView]) -> None:
    assert lost_nodes.stranded_replicas(OWNER, spec.parse({}), [pod], nodes, at(3600)) == [], case


def test_a_retired_pod_stuck_on_a_lost_node_is_cleared_too() -> None:
    """Scaled down while its node was lost: not wanted any more, but its Terminating object stays
    for ever unless someone force-deletes it."""
    body = running(children.replica_pod(OWNER, spec.parse({}), "Server 9"), "10.0.0.9", ready=False)
    body["spec"]["nodeName"] = "w2"
    body["metadata"]["deletionTimestamp"] = at(10)
    [found] = lost_nodes.stranded_replicas(
        OWNER, spec.parse({"replicas": 3}), [pod_view(body)], {"w2": UNREACHABLE}, at(30)
    )
    assert found.pod == "web-server-9" and found.action == FORCE


@pytest.mark.parametrize(
    "tolerations,key,expected",
    [
        ([], c.TAINT_UNREACHABLE, (False, None)),
        ([{"key": c.TAINT_UNREACHABLE, "operator": "Exists"}], c.TAINT_UNREACHABLE, (True, None)),
        ([{"key": c.TAINT_UNREACHABLE, "operator": "Equal", "value": ""}], c.TAINT_UNREACHABLE, (True, None)),
        ([{"key": c.TAINT_UNREACHABLE, "operator": "Equal", "value": "x"}], c.TAINT_UNREACHABLE, (False, None)),
        (
            [
                {"key": c.TAINT_UNREACHABLE, "effect": "NoExecute", "tolerationSeconds": 60},
                {"key": c.TAINT_UNREACHABLE, "operator": "Exists", "tolerationSeconds": 20},
            ],
            c.TAINT_UNREACHABLE,
            (True, 20.0),
        ),
        (
            [{"key": c.TAINT_UNREACHABLE, "operator": "Exists"}, {"operator": "Exists", "tolerationSeconds": 50}],
            c.TAINT_UNREACHABLE,
            (True, 50.0),
        ),
        ([{"key": "", "operator": "Equal"}], c.TAINT_UNREACHABLE, (False, None)),
        ([{"key": c.TAINT_UNREACHABLE, "effect": "NoSchedule"}], c.TAINT_UNREACHABLE, (False, None)),
    ],
)
def test_tolerated_seconds_reads_tolerations_as_the_eviction_controller_does(
    tolerations: list[dict[str, Any]], key: str, expected: tuple[bool, float | None]
) -> None:
    assert children.tolerated_seconds(tolerations, key) == expected


# --- tolerations of the pods ----------------------------------------------------------------------
def node_loss(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in pod_spec.get("tolerations") or [] if t.get("key") in c.NODE_LOSS_TAINTS}


def test_pods_tolerate_a_lost_node_for_30s_by_default() -> None:
    s = spec.parse({})
    pod_spec = children.replica_pod(OWNER, s, "Server 1")["spec"]
    balancer_spec = children.deployment(OWNER, s)["spec"]["template"]["spec"]
    for podspec in (pod_spec, balancer_spec):
        assert node_loss(podspec) == {
            key: {
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": c.DEFAULT_UNREACHABLE_NODE_SECONDS,
            }
            for key in (c.TAINT_UNREACHABLE, c.TAINT_NOT_READY)
        }
    assert c.DEFAULT_UNREACHABLE_NODE_SECONDS == 30


def test_unreachable_node_seconds_sets_the_toleration_per_component() -> None:
    s = spec.parse({"template": {"unreachableNodeSeconds": 90}, "balancer": {"unreachableNodeSeconds": 10}})
    replica_tolerations = node_loss(children.replica_pod(OWNER, s, "Server 1")["spec"])
    balancer_tolerations = node_loss(children.deployment(OWNER, s)["spec"]["template"]["spec"])
    assert {t["tolerationSeconds"] for t in replica_tolerations.values()} == {90}
    assert {t["tolerationSeconds"] for t in balancer_tolerations.values()} == {10}
    with pytest.raises(spec.SpecError, match="unreachableNodeSeconds"):
        spec.parse({"template": {"unreachableNodeSeconds": -1}})
    with pytest.raises(spec.SpecError, match="unreachableNodeSeconds"):
        spec.parse({"balancer": {"unreachableNodeSeconds": c.MAX_UNREACHABLE_NODE_SECONDS + 1}})


def test_the_users_tolerations_win_key_by_key() -> None:
    mine = {"key": c.TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 600}
    other = {"key": "dedicated", "operator": "Equal", "value": "ringlb", "effect": "NoSchedule"}
    s = spec.parse({"template": {"tolerations": [other, mine]}, "balancer": {"tolerations": TOLERATE_ALL}})
    pod_spec = children.replica_pod(OWNER, s, "Server 1")["spec"]
    assert pod_spec["tolerations"][:2] == [other, mine]  # the user's first, untouched
    assert node_loss(pod_spec)[c.TAINT_UNREACHABLE] == mine
    assert node_loss(pod_spec)[c.TAINT_NOT_READY]["tolerationSeconds"] == 30  # the key they did not name
    assert children.deployment(OWNER, s)["spec"]["template"]["spec"]["tolerations"] == TOLERATE_ALL  # covers both keys
    no_execute_only = spec.parse({"template": {"tolerations": [{**mine, "effect": "NoSchedule"}]}})
    assert len(node_loss(children.replica_pod(OWNER, no_execute_only, "Server 1")["spec"])) == 2


def test_node_loss_tolerations_do_not_restart_running_replica_pods() -> None:
    """The template hash is what it was before the operator added these tolerations, and the
    delay does not enter it: an upgrade, or a new unreachableNodeSeconds, restarts no replica."""
    s = spec.parse({})
    pod = children.replica_pod(OWNER, s, "Server 1")
    before = copy.deepcopy(pod["spec"])
    del before["tolerations"], before["topologySpreadConstraints"]  # both added after hashing
    assert pod["metadata"]["annotations"][c.ANNOTATION_TEMPLATE_HASH] == children.digest([c.BUILDER_VERSION, before])
    longer = spec.parse({"template": {"unreachableNodeSeconds": 300}})
    assert children.replica_template_hash(OWNER, longer, "Server 1") == children.replica_template_hash(
        OWNER, s, "Server 1"
    )
    user = spec.parse({"template": {"tolerations": FOREVER}})
    assert children.replica_template_hash(OWNER, user, "Server 1") != children.replica_template_hash(
        OWNER, s, "Server 1"
    )


# --- whole passes -------------------------------------------------------------------------------
LOST_W2 = {"web-server-2": "w2"}


def converged(kube: FakeKube, res: dict[str, Any], balancers: list[PodView]) -> None:
    for _ in range(3):
        res["status"] = reconcile_once(kube, FakePusher(), res, views(kube, nodes=LOST_W2) + balancers, T0).status


def test_a_pod_on_an_unreachable_node_is_force_deleted_when_due_and_recreated_at_once(kube: FakeKube) -> None:
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    converged(kube, res, balancers)
    nodes = {"w1": NodeView("w1", "True", T0), "w2": UNREACHABLE}
    pods = views(kube, nodes=LOST_W2, lost=frozenset({"w2"})) + balancers

    early = reconcile_once(kube, FakePusher(), res, pods, at(12), nodes=nodes)
    assert kube.deletes == [] and early.due_in == early.retry_in == 18 + DUE_MARGIN
    degraded, progressing = conditions(early.status)["Degraded"], conditions(early.status)["Progressing"]
    assert degraded["status"] == "True" and degraded["reason"] == c.Reason.NODE_UNREACHABLE
    assert (
        degraded["message"]
        == f"replica pod web-server-2 ('Server 2'): node w2 unreachable since {T0}; replaced from {at(30)}"
    )
    assert progressing["reason"] == c.Reason.REPLACING
    assert conditions(early.status)["Ready"]["message"] == "2/3 replicas ready"
    res["status"] = early.status
    patches = len(kube.status_patches)
    again = reconcile_once(kube, FakePusher(), res, pods, at(20), nodes=nodes)
    assert (
        len(kube.status_patches) == patches and again.due_in == 10 + DUE_MARGIN
    )  # the message names times, not a countdown

    due = reconcile_once(kube, FakePusher(), res, pods, at(30), nodes=nodes)
    assert kube.deletes == [("Pod", "web-server-2", "uid-web-server-2", 0)]  # grace 0, this incarnation only
    recreated = kube.objects[("Pod", "ns", "web-server-2")]
    assert (
        recreated["metadata"]["uid"] == "uid-web-server-2-2" and "nodeName" not in recreated["spec"]
    )  # the scheduler places it
    assert [(e.type, e.reason) for e in due.events] == [
        ("Warning", c.Reason.NODE_UNREACHABLE),
        ("Normal", c.Reason.REPLACED),
    ]
    assert "force-deleted pod web-server-2 of 'Server 2': node w2 unreachable" in due.events[0].message
    assert due.due_in is None

    # The replacement runs on w1 and is Ready: everything as expected again.
    res["status"] = due.status
    healthy = views(kube) + balancers
    final = reconcile_once(kube, FakePusher(), res, healthy, at(40), nodes=nodes)
    assert conditions(final.status)["Ready"]["status"] == "True"
    assert conditions(final.status)["Degraded"]["reason"] == c.Reason.AS_EXPECTED


def test_a_pod_on_a_not_ready_node_gets_its_grace_period_then_is_force_deleted(kube: FakeKube) -> None:
    res = resource()
    converged(kube, res, [])
    nodes = {"w2": NOT_READY}
    kube.graceful_at = at(40)  # the API server's deletionTimestamp: now + the pod's 10 s
    out = reconcile_once(
        kube, FakePusher(), res, views(kube, nodes=LOST_W2, lost=frozenset({"w2"})), at(30), nodes=nodes
    )
    assert kube.deletes == [("Pod", "web-server-2", "uid-web-server-2", None)]  # graceful
    assert (
        out.events[0].reason == c.Reason.NODE_UNREACHABLE
        and "force-deleted once its grace period is over" in out.events[0].message
    )
    assert kube.objects[("Pod", "ns", "web-server-2")]["metadata"]["deletionTimestamp"] == at(40)  # Terminating

    terminating = views(kube, nodes=LOST_W2, lost=frozenset({"w2"}))
    waiting = reconcile_once(kube, FakePusher(), res, terminating, at(32), nodes=nodes)
    assert len(kube.deletes) == 1 and waiting.due_in == 8 + DUE_MARGIN
    reconcile_once(kube, FakePusher(), res, terminating, at(40), nodes=nodes)
    assert kube.deletes[-1] == ("Pod", "web-server-2", "uid-web-server-2", 0)
    assert kube.objects[("Pod", "ns", "web-server-2")]["metadata"]["uid"] == "uid-web-server-2-2"


def test_force_delete_spares_a_newer_incarnation(kube: FakeKube) -> None:
    res = resource()
    converged(kube, res, [])
    stale = views(kube, nodes=LOST_W2, lost=frozenset({"w2"}))
    kube.objects[("Pod", "ns", "web-server-2")]["metadata"]["uid"] = "a-newer-incarnation"
    reconcile_once(kube, FakePusher(), res, stale, at(60), nodes={"w2": UNREACHABLE})
    assert kube.deletes == [("Pod", "web-server-2", "uid-web-server-2", 0)]
    assert kube.objects[("Pod", "ns", "web-server-2")]["metadata"]["uid"] == "a-newer-incarnation"  # left alone


def test_a_failed_force_delete_is_reported_and_nothing_recreated(kube: FakeKube) -> None:
    res = resource()
    converged(kube, res, [])
    creates = kube.count("create", "Pod")
    kube.fail[("delete", "Pod")] = 403
    out = reconcile_once(
        kube, FakePusher(), res, views(kube, nodes=LOST_W2, lost=frozenset({"w2"})), at(60), nodes={"w2": UNREACHABLE}
    )
    assert kube.count("create", "Pod") == creates
    degraded = conditions(out.status)["Degraded"]
    assert degraded["reason"] == c.Reason.NODE_UNREACHABLE and "ApiError" not in degraded["message"]
    assert "Pod web-server-2: 403" in degraded["message"] and out.retry_in


def test_kept_pods_are_reported_not_deleted(kube: FakeKube) -> None:
    res = resource({"replicas": 3, "template": {"tolerations": FOREVER}})
    converged(kube, res, [])
    out = reconcile_once(
        kube, FakePusher(), res, views(kube, nodes=LOST_W2, lost=frozenset({"w2"})), at(3600), nodes={"w2": UNREACHABLE}
    )
    assert kube.deletes == [] and out.due_in is None
    assert (
        "kept there: spec.template.tolerations tolerate node.kubernetes.io/unreachable"
        in conditions(out.status)["Degraded"]["message"]
    )


def test_balancer_pods_on_a_lost_node_get_no_push_and_do_not_hold_ready(kube: FakeKube) -> None:
    res = resource()
    alive = balancer_pod("b-1", "10.1.0.1")
    lost = balancer_pod("b-2", "10.1.0.2", ready=False, node="w2")
    converged(kube, res, [alive])
    pusher = FakePusher({"b-2": PushState("b-2", False, 0, "unreachable: ConnectTimeout")})  # if it were pushed
    out = reconcile_once(
        kube, pusher, res, views(kube) + [alive, lost], at(5), nodes={"w1": HEALTHY, "w2": UNREACHABLE}
    )
    assert len(pusher.documents) == 1 and not out.push_failed  # pushed to b-1 only
    assert conditions(out.status)["Ready"]["status"] == "True"
    degraded = conditions(out.status)["Degraded"]
    assert degraded["reason"] == c.Reason.NODE_UNREACHABLE and kube.deletes == []  # the Deployment's to replace
    assert (
        degraded["message"]
        == f"balancer pod b-2: node w2 unreachable since {T0}; the Deployment replaces it once Kubernetes evicts it, "
        f"30s after {T0}"
    )
    assert push.targets([alive, lost], skip=lost_nodes.unserviceable([alive, lost], {"w2": UNREACHABLE})) == [
        push.Target("b-1", "10.1.0.1")
    ]
    # Evicted (Terminating): not alive, not reported, nothing the operator does.
    evicted = pod_view({**_body(lost), "metadata": {**_body(lost)["metadata"], "deletionTimestamp": at(40)}})
    later = reconcile_once(kube, FakePusher(), res, views(kube) + [alive, evicted], at(45), nodes={"w2": UNREACHABLE})
    assert conditions(later.status)["Degraded"]["reason"] == c.Reason.AS_EXPECTED and kube.deletes == []


def _body(view: PodView) -> dict[str, Any]:
    return {
        "metadata": {
            "name": view.name,
            "namespace": view.namespace,
            "uid": view.uid,
            "labels": {c.LABEL_RESOURCE: view.resource, c.LABEL_COMPONENT: view.component},
        },
        "spec": {"nodeName": view.node},
        "status": {"phase": view.phase, "podIP": view.ip, "conditions": [{"type": "Ready", "status": str(view.ready)}]},
    }


def test_without_node_information_nothing_is_treated_as_lost(kube: FakeKube) -> None:
    res = resource()
    converged(kube, res, [])
    out = reconcile_once(kube, FakePusher(), res, views(kube, nodes=LOST_W2, lost=frozenset({"w2"})), at(3600))
    assert kube.deletes == [] and out.due_in is None
    assert conditions(out.status)["Degraded"]["reason"] == c.Reason.AS_EXPECTED


# --- the kopf side: node index, wake-ups, the daemon -----------------------------------------------
def test_node_index_and_the_nodes_of_a_resources_pods() -> None:
    [(name, view)] = handlers.index_node(node_body("Unknown")).items()
    assert name == "w2" and view.down
    index = {"w2": [view], "w3": [HEALTHY]}
    pods = [replica(node="w2"), replica(node=""), replica(node="w9")]
    assert handlers.nodes_of(pods, index) == {"w2": view}
    assert handlers.nodes_of(pods, None) is None


def test_a_node_turning_lost_or_back_wakes_the_resources_with_a_pod_on_it() -> None:
    memo = kopf.Memo()
    memo.wakeups = {("ns", "web"): asyncio.Event(), ("ns", "other"): asyncio.Event()}
    pods = {("ns", "web"): [replica(node="w2")], ("ns", "other"): [replica(node="w1")]}
    assert handlers.node_changed(memo, node_body("True", at(-999)), None, pods) == []  # first sight, healthy
    assert handlers.node_changed(memo, node_body("True", at(-999)), "MODIFIED", pods) == []  # nothing new
    assert handlers.node_changed(memo, node_body("Unknown"), "MODIFIED", pods) == [("ns", "web")]
    assert memo.wakeups[("ns", "web")].is_set() and not memo.wakeups[("ns", "other")].is_set()
    tainted = node_body("Unknown", T0, [{"key": c.TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": T0}])
    assert handlers.node_changed(memo, tainted, "MODIFIED", pods) == []  # same state, same since
    assert handlers.node_changed(memo, node_body("True", at(90)), "MODIFIED", pods) == [("ns", "web")]  # back
    assert handlers.node_changed(kopf.Memo(), node_body("Unknown"), None, pods) == [("ns", "web")]  # lost at start-up
    assert "node_changed" in handlers.WAKEUP_HANDLERS


def test_the_daemon_passes_the_nodes_and_comes_back_when_a_pod_is_due(
    kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod due in ~1 s: the daemon comes back then (not at the 30 s resync) and force-deletes it."""
    monkeypatch.setattr(kopf, "event", lambda *a, **k: None)
    res = resource()
    converged(kube, res, [])
    clock = {"now": at(29)}
    monkeypatch.setattr(handlers, "_now", lambda: clock["now"])
    real = reconcile_once
    calls: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[4])  # now
        out = real(*args, **kwargs)
        clock["now"] = at(31)  # the next pass is after the due time
        return out

    monkeypatch.setattr(handlers, "reconcile_once", counting)
    monkeypatch.setattr(c, "DEBOUNCE_SECONDS", 0.0)
    memo = kopf.Memo()
    memo.kube, memo.wakeups, memo.key = kube, {}, b"k" * 32
    pods = views(kube, nodes=LOST_W2, lost=frozenset({"w2"}))

    async def scenario() -> None:
        stopped = Stopped()
        task = asyncio.create_task(  # dicts of lists stand in for kopf's indexes (key → store)
            handlers.run(
                stopped=stopped,
                body=res,
                namespace="ns",
                name="web",
                memo=memo,
                logger=_Log(),
                pods={("ns", "web"): pods},
                pusher=Pusher(),
                nodes={"w2": [UNREACHABLE]},
            )
        )
        # the first pass says "due in 1.25 s"; the second force-deletes
        await until(lambda: bool(kube.deletes), what="a force-delete")
        stopped.event.set()
        handlers.wake(memo, "ns", "web")
        await asyncio.wait_for(task, DEADLINE)

    asyncio.run(scenario())
    assert kube.deletes == [("Pod", "web-server-2", "uid-web-server-2", 0)] and calls[:2] == [at(29), at(31)]


def test_degraded_says_what_happens_to_each_pod() -> None:
    s = spec.parse({})
    pods = [replica(), replica(deleting_at=at(40))]
    [due] = lost_nodes.stranded_replicas(OWNER, s, pods[:1], {"w2": UNREACHABLE}, at(31))
    [graceful] = lost_nodes.stranded_replicas(OWNER, s, pods[:1], {"w2": NOT_READY}, at(31))
    messages = [m for _, m in lost_nodes.stranded_problems([due, graceful], [], {}, s)]
    assert messages == [
        f"replica pod web-server-2 ('Server 2'): node w2 unreachable since {T0}; due since {at(30)}: force-deleting "
        "it to recreate it on a healthy node",
        f"replica pod web-server-2 ('Server 2'): node w2 not ready since {T0}; due since {at(30)}: deleting it, "
        "force-deleting it once its grace period is over",
    ]
    kept = spec.parse({"balancer": {"tolerations": FOREVER}})
    lost = balancer_pod("b-2", "10.1.0.2", ready=False, node="w2")
    [(reason, message)] = lost_nodes.stranded_problems([], [lost], {"w2": UNREACHABLE}, kept)
    assert reason == c.Reason.NODE_UNREACHABLE
    assert message.endswith("never: spec.balancer.tolerations tolerate node.kubernetes.io/unreachable without a limit")
