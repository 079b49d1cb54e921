"""The pure pod-plan, ring-revision and condition functions and whole reconcile passes against an in-memory cluster."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from ringlb_operator import children, membership, pod_plan, spec, status
from ringlb_operator import constants as c
from ringlb_operator.kube import KubeError
from ringlb_operator.observe import PodView, pod_view
from ringlb_operator.reconcile import derive_token, reconcile_once
from ringlb_operator.status import PushState

from .conftest import OWNER, FakeKube, balancer_pod, resource, running, views

NOW = "2025-01-01T00:00:00Z"
LATER = "2025-01-01T00:05:00Z"


class FakePusher:
    """Acknowledges everything unless told otherwise; keeps the documents it was given."""

    def __init__(self, refuse: dict[str, PushState] | None = None) -> None:
        self.documents: list[dict[str, Any]] = []
        self.tokens: list[str] = []
        self.refuse = refuse or {}

    def push_all(self, targets: list, document: dict[str, Any], token: str) -> list[PushState]:
        assert token
        self.tokens.append(token)
        self.documents.append(copy.deepcopy(document))
        return [self.refuse.get(t.pod, PushState(t.pod, True, document["revision"])) for t in targets]


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cond["type"]: cond for cond in status["conditions"]}


def converge(
    kube: FakeKube, res: dict[str, Any], pusher: FakePusher, balancers: list[PodView], passes: int = 4
) -> dict[str, Any]:
    """Run passes as the daemon would, with every replica pod Running and Ready."""
    outcome = None
    for _ in range(passes):
        outcome = reconcile_once(kube, pusher, res, views(kube) + balancers, NOW)
        res["status"] = outcome.status
    assert outcome is not None
    return outcome.status


def test_first_pass_creates_everything_once(kube: FakeKube) -> None:
    out = reconcile_once(kube, FakePusher(), resource(), [], NOW)
    assert kube.pods() == ["web-server-1", "web-server-2", "web-server-3"]
    for kind in ("ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "NetworkPolicy", "ConfigMap"):
        assert kube.count("create", kind) == 1, kind
    assert kube.count("create", "PodDisruptionBudget") == 2
    assert kube.count("apply", "Secret") == 2  # the /add token and the push token, apart
    assert [e.reason for e in out.events] == [c.Reason.CREATED] * 3
    st = out.status
    assert st["readyReplicas"] == 0 and st["ringRevision"] == 1
    assert conditions(st)["Ready"]["status"] == "False"
    assert conditions(st)["Progressing"]["reason"] == c.Reason.SCALING_UP


def test_converges_and_then_writes_nothing(kube: FakeKube) -> None:
    res = resource()
    pusher = FakePusher()
    balancers = [balancer_pod("b-1", "10.1.0.1"), balancer_pod("b-2", "10.1.0.2")]
    st = converge(kube, res, pusher, balancers)
    assert st["readyReplicas"] == 3 and st["replicas"] == 3
    assert st["balancer"] == {"replicas": 2, "readyReplicas": 2, "acknowledged": 2}
    assert [m["name"] for m in pusher.documents[-1]["members"]] == ["Server 1", "Server 2", "Server 3"]
    assert pusher.documents[-1]["members"][0]["address"].endswith(":5000")
    assert conditions(st)["Ready"] == {**conditions(st)["Ready"], "status": "True", "reason": c.Reason.ALL_READY}
    assert conditions(st)["Degraded"]["status"] == "False"
    assert conditions(st)["Progressing"]["status"] == "False"
    assert st["members"] == [{"name": f"Server {i}", "pod": f"web-server-{i}", "ready": True} for i in (1, 2, 3)]
    assert st["selector"] == "app.kubernetes.io/component=replica,ringlb.io/resource=web"
    writes, patches = len(kube.writes), len(kube.status_patches)
    out = reconcile_once(kube, pusher, res, views(kube) + balancers, LATER)
    assert len(kube.writes) == writes and len(kube.status_patches) == patches  # idempotent
    assert out.status["ringRevision"] == st["ringRevision"] and not out.events


def test_revision_is_saved_before_the_push_and_survives_restart(kube: FakeKube) -> None:
    res = resource()
    pusher = FakePusher()
    st = converge(kube, res, pusher, [balancer_pod("b-1", "10.1.0.1")])
    revision = st["ringRevision"]
    # A new operator process sees the same status: same revision, and a new balancer pod
    # (revision 0) still gets the document.
    fresh = FakePusher()
    reconcile_once(kube, fresh, copy.deepcopy(res), views(kube) + [balancer_pod("b-2", "10.1.0.2", ready=False)], LATER)
    assert fresh.documents and fresh.documents[0]["revision"] == revision


def test_scale_up_and_down_bumps_revision_and_retires_after_ack(kube: FakeKube) -> None:
    res = resource()
    pusher = FakePusher()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    st = converge(kube, res, pusher, balancers)
    r1 = st["ringRevision"]
    res["spec"] = {"replicas": 5}
    st = converge(kube, res, pusher, balancers)
    assert kube.pods() == [f"web-server-{i}" for i in range(1, 6)]
    assert st["ringRevision"] > r1 and st["readyReplicas"] == 5
    r2 = st["ringRevision"]
    res["spec"] = {"replicas": 2}
    out = reconcile_once(kube, pusher, res, views(kube) + balancers, NOW)
    # The ring without 3..5 was pushed and acknowledged in this pass, then the pods deleted.
    assert [m["name"] for m in pusher.documents[-1]["members"]] == ["Server 1", "Server 2"]
    assert kube.pods() == ["web-server-1", "web-server-2"]
    assert out.status["ringRevision"] == r2 + 1
    assert {e.reason for e in out.events} >= {c.Reason.DELETED}


def test_retiring_waits_for_serving_balancers(kube: FakeKube) -> None:
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    converge(kube, res, FakePusher(), balancers)
    res["spec"] = {"replicas": 1}
    refusing = FakePusher({"b-1": PushState("b-1", False, 0, "unreachable: ConnectTimeout")})
    out = reconcile_once(kube, refusing, res, views(kube) + balancers, NOW)
    assert len(kube.pods()) == 3  # not deleted while the balancer may still route to them
    assert out.push_failed and out.retry_in
    assert conditions(out.status)["Degraded"]["reason"] == c.Reason.NOT_ACKNOWLEDGING
    assert any(e.reason == c.Reason.PUSH_FAILED and e.type == "Warning" for e in out.events)


def test_deleted_pod_is_recreated_with_same_identity(kube: FakeKube) -> None:
    res = resource()
    converge(kube, res, FakePusher(), [balancer_pod("b-1", "10.1.0.1")])
    kube.delete("Pod", "ns", "web-server-2")
    out = reconcile_once(kube, FakePusher(), res, views(kube) + [balancer_pod("b-1", "10.1.0.1")], NOW)
    assert "web-server-2" in kube.pods()
    recreated = kube.objects[("Pod", "ns", "web-server-2")]
    assert recreated["metadata"]["annotations"][c.ANNOTATION_IDENTITY] == "Server 2"
    assert [e.reason for e in out.events if e.reason != c.Reason.PUSHED] == [c.Reason.REPLACED]


def test_an_index_that_lost_the_pods_is_confirmed_against_the_api(kube: FakeKube) -> None:
    """A standby promoted while it shuts down can run a pass before its pod watch listed
    anything: the ring must not lose its members to an empty cache (a CI run published an empty
    ring that way, and every balancer pod went unready)."""
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    pusher = FakePusher()
    st = converge(kube, res, pusher, balancers)
    document = copy.deepcopy(pusher.documents[-1])
    patches = len(kube.status_patches)
    out = reconcile_once(kube, pusher, res, balancers, LATER)  # the index holds no replica pod
    assert kube.lists == ["app.kubernetes.io/component=replica,ringlb.io/resource=web"]
    assert out.status["ringRevision"] == st["ringRevision"] and out.status["readyReplicas"] == 3
    assert len(kube.status_patches) == patches and pusher.documents[-1] == document
    assert kube.count("create", "Pod") == 3 and not out.events  # nothing recreated, nothing reported


def test_a_pod_really_gone_leaves_the_ring_after_one_look(kube: FakeKube) -> None:
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    pusher = FakePusher()
    converge(kube, res, pusher, balancers)
    kube.delete("Pod", "ns", "web-server-3")  # gone from the API, not only from the index
    out = reconcile_once(kube, pusher, res, views(kube) + balancers, LATER)
    assert len(kube.lists) == 1
    assert [m["name"] for m in pusher.documents[-1]["members"]] == ["Server 1", "Server 2"]
    assert "web-server-3" in kube.pods()  # recreated in the same pass
    res["status"] = out.status
    reconcile_once(kube, pusher, res, views(kube) + balancers, LATER)
    assert len(kube.lists) == 1  # the index holds every listed pod again: no second look
    assert [m["name"] for m in pusher.documents[-1]["members"]] == ["Server 1", "Server 2", "Server 3"]


def test_an_unconfirmed_loss_publishes_nothing(kube: FakeKube) -> None:
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    pusher = FakePusher()
    converge(kube, res, pusher, balancers)
    pushed, patches = len(pusher.documents), len(kube.status_patches)
    kube.fail[("list", "Pod")] = 503
    with pytest.raises(KubeError):  # the daemon backs off and tries again
        reconcile_once(kube, pusher, res, balancers, LATER)
    assert len(pusher.documents) == pushed and len(kube.status_patches) == patches


def test_pod_already_shown_gone_while_terminating_is_still_a_replacement(kube: FakeKube) -> None:
    """kubectl delete: the pod terminates first (the status shows it without a pod), then it is
    gone; its recreation is still a replacement of a known identity, not a scale-up."""
    res = resource()
    converge(kube, res, FakePusher(), [balancer_pod("b-1", "10.1.0.1")])
    res["status"]["members"] = [
        {"name": m["name"], "pod": "" if m["name"] == "Server 2" else m["pod"], "ready": m["name"] != "Server 2"}
        for m in res["status"]["members"]
    ]
    kube.delete("Pod", "ns", "web-server-2")
    out = reconcile_once(kube, FakePusher(), res, views(kube) + [balancer_pod("b-1", "10.1.0.1")], NOW)
    assert [e.reason for e in out.events if e.reason != c.Reason.PUSHED] == [c.Reason.REPLACED]


def test_terminating_pod_is_left_alone_and_failed_pod_deleted(kube: FakeKube) -> None:
    s = spec.parse({"replicas": 2})
    pods = [children.replica_pod(OWNER, s, i) for i in s.identities()]
    gone = running(pods[0], "10.0.0.1")
    gone["metadata"]["deletionTimestamp"] = NOW
    failed = running(pods[1], "10.0.0.2", ready=False)
    failed["status"]["phase"] = "Failed"
    plan = pod_plan.plan_pods(OWNER, s, [pod_view(gone), pod_view(failed)], set())
    assert plan.create == [] and plan.delete_now == ["web-server-2"]
    assert plan.progress == c.Reason.REPLACING


def test_template_change_rolls_one_pod_at_a_time(kube: FakeKube) -> None:
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    converge(kube, res, FakePusher(), balancers)
    res["spec"] = {"replicas": 3, "template": {"image": "ringlb/replica:0.2.0"}}
    out = reconcile_once(kube, FakePusher(), res, views(kube) + balancers, NOW)
    assert kube.count("delete", "Pod") == 1 and len(kube.pods()) == 2
    assert conditions(out.status)["Progressing"]["reason"] == c.Reason.ROLLING
    # Next pass: the replaced pod is recreated from the new template, not yet Ready, so no
    # further pod is touched.
    reconcile_once(kube, FakePusher(), res, views(kube) + balancers, NOW)
    assert len(kube.pods()) == 3
    not_ready = [
        v
        if v.name != "web-server-1"
        else pod_view(running(kube.objects[("Pod", "ns", v.name)], "10.0.0.9", ready=False))
        for v in views(kube)
    ]
    reconcile_once(kube, FakePusher(), res, not_ready + balancers, NOW)
    assert kube.count("delete", "Pod") == 1


def test_bad_image_and_unschedulable_are_reported(kube: FakeKube) -> None:
    res = resource({"replicas": 2})
    reconcile_once(kube, FakePusher(), res, [], NOW)
    body = kube.objects[("Pod", "ns", "web-server-1")]
    stuck = running(
        body,
        "10.0.0.1",
        ready=False,
        containerStatuses=[
            {
                "name": "replica",
                "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}},
            }
        ],
    )
    pending = copy.deepcopy(kube.objects[("Pod", "ns", "web-server-2")])
    pending["status"] = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes are available"}
        ],
    }
    out = reconcile_once(kube, FakePusher(), res, [pod_view(stuck), pod_view(pending)], NOW)
    degraded = conditions(out.status)["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "ImagePullBackOff"
    assert "web-server-1" in degraded["message"] and "0/2 nodes are available" in degraded["message"]


def test_invalid_spec_changes_nothing_and_says_why(kube: FakeKube) -> None:
    out = reconcile_once(kube, FakePusher(), resource({"replicas": 2, "hostnames": ["S5", "s5"]}), [], NOW)
    assert kube.writes == []
    degraded = conditions(out.status)["Degraded"]
    assert degraded["reason"] == c.Reason.INVALID_SPEC and "spec.hostnames" in degraded["message"]
    assert out.events and out.events[0].type == "Warning"


def test_foreign_children_are_not_adopted(kube: FakeKube) -> None:
    foreign = children.replica_pod(OWNER, spec.parse({}), "Server 1")
    foreign["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    kube.create(foreign)
    svc = children.service(OWNER, spec.parse({}))
    svc["metadata"]["ownerReferences"] = []
    kube.create(svc)
    out = reconcile_once(kube, FakePusher(), resource(), views(kube), NOW)
    degraded = conditions(out.status)["Degraded"]
    assert degraded["reason"] == c.Reason.CHILD_CONFLICT
    assert "Service web-balancer" in degraded["message"] and "Pod web-server-1" in degraded["message"]
    assert kube.count("apply", "Service") == 0


def test_spec_change_patches_the_deployment(kube: FakeKube) -> None:
    res = resource()
    reconcile_once(kube, FakePusher(), res, [], NOW)
    res["spec"] = {"replicas": 3, "balancer": {"replicas": 4}}
    reconcile_once(kube, FakePusher(), res, [], NOW)
    assert kube.objects[("Deployment", "ns", "web-balancer")]["spec"]["replicas"] == 4
    assert kube.count("apply", "Deployment") == 1 and kube.count("create", "Deployment") == 1


def test_tokens_are_derived_separate_and_stable(kube: FakeKube) -> None:
    res = resource()
    pusher = FakePusher()
    converge(kube, res, pusher, [balancer_pod("b-1", "10.1.0.1")])
    add = kube.objects[("Secret", "ns", "web-balancer-token")]["data"]["token"]
    push_ = kube.objects[("Secret", "ns", "web-membership-token")]["data"]["token"]
    assert add != push_ and kube.count("apply", "Secret") == 2  # written once, then no-ops
    assert pusher.tokens[-1] == base64.b64decode(push_).decode()
    env = {
        e["name"]: e
        for e in kube.objects[("Deployment", "ns", "web-balancer")]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["RINGLB_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "web-balancer-token"
    assert env["RINGLB_MEMBERSHIP_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "web-membership-token"
    other = reconcile_once(FakeKube(), FakePusher(), resource(), [], NOW, key=b"other-key")
    assert other.status  # another key gives other tokens (tokens rotate with the key)
    assert derive_token(b"k", OWNER, "add") != derive_token(b"k", children.Owner("web", "ns", "uid-2"), "add")


def test_api_errors_are_reported_not_raised(kube: FakeKube) -> None:
    kube.fail[("create", "Pod")] = 403
    out = reconcile_once(kube, FakePusher(), resource(), [], NOW)
    degraded = conditions(out.status)["Degraded"]
    assert degraded["reason"] == c.Reason.API_ERROR and "403" in degraded["message"]
    assert out.retry_in


def test_409_from_a_balancer_raises_the_floor(kube: FakeKube) -> None:
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    st = converge(kube, res, FakePusher(), balancers)
    res["spec"] = {"replicas": 2}
    held = st["ringRevision"] + 7
    out = reconcile_once(
        kube, FakePusher({"b-1": PushState("b-1", False, held, "409 stale")}), res, views(kube) + balancers, NOW
    )
    assert out.floor == held + 1 and out.retry_in == 0.0
    pusher = FakePusher()
    reconcile_once(kube, pusher, res, views(kube) + balancers, NOW, floor=out.floor)
    assert pusher.documents[-1]["revision"] == held + 1


def test_ring_revision_rules() -> None:
    s = spec.parse({})
    members = [{"name": "Server 1", "address": "10.0.0.1:5000"}]
    first = membership.ring_revision({}, members, s)
    assert first.revision == 1 and first.bumped
    same = membership.ring_revision({"ringRevision": 1, "ringHash": first.hash}, members, s)
    assert same.revision == 1 and not same.bumped
    other = membership.ring_revision({"ringRevision": 1, "ringHash": first.hash}, [], s)
    assert other.revision == 2 and other.bumped
    hashing = membership.ring_revision(
        {"ringRevision": 1, "ringHash": first.hash}, members, spec.parse({"hashing": {"strategy": "ring"}})
    )
    assert hashing.bumped
    assert membership.ring_revision({"ringRevision": 1, "ringHash": first.hash}, members, s, floor=9).revision == 9


def test_condition_transition_time_moves_only_on_flip() -> None:
    old = [status.condition([], "Ready", False, "X", "m", NOW, 1)]
    assert status.condition(old, "Ready", False, "Y", "n", LATER, 2)["lastTransitionTime"] == NOW
    assert status.condition(old, "Ready", True, "Y", "n", LATER, 2)["lastTransitionTime"] == LATER


def test_scaled_to_zero_is_ready(kube: FakeKube) -> None:
    res = resource({"replicas": 0})
    st = converge(kube, res, FakePusher(), [balancer_pod("b-1", "10.1.0.1")])
    assert kube.pods() == [] and conditions(st)["Ready"]["reason"] == c.Reason.SCALED_TO_ZERO


# --- server-side apply, drift repair, conflicts ------------------------------------------------
def test_hand_edits_are_repaired_and_deleted_children_recreated(kube: FakeKube) -> None:
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    converge(kube, res, FakePusher(), balancers)
    deploy = kube.objects[("Deployment", "ns", "web-balancer")]
    deploy["spec"]["replicas"] = 4  # kubectl scale
    deploy["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    kube.objects[("Service", "ns", "web-balancer")]["spec"]["selector"] = {"app": "other"}
    del kube.objects[("NetworkPolicy", "ns", "web-balancer")]
    reconcile_once(kube, FakePusher(), res, views(kube) + balancers, NOW)
    deploy = kube.objects[("Deployment", "ns", "web-balancer")]
    assert (
        deploy["spec"]["replicas"] == 2
        and deploy["spec"]["template"]["spec"]["containers"][0]["image"] == c.BALANCER_IMAGE
    )
    assert kube.objects[("Service", "ns", "web-balancer")]["spec"]["selector"] == children.balancer_selector("web")
    assert ("NetworkPolicy", "ns", "web-balancer") in kube.objects


def test_a_converged_pass_reads_children_from_the_index_and_writes_nothing(kube: FakeKube) -> None:
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    converge(kube, res, FakePusher(), balancers)
    owned = {(k, n): o for (k, _, n), o in kube.objects.items() if k not in ("Pod", "Secret")}
    reads: list[str] = []
    real_get = kube.get
    kube.get = lambda kind, ns, name: reads.append(kind) or real_get(kind, ns, name)
    writes = len(kube.writes)
    reconcile_once(kube, FakePusher(), res, views(kube) + balancers, NOW, owned=owned)
    assert reads == [] and len(kube.writes) == writes


def test_create_409_of_a_foreign_pod_is_a_conflict_without_false_events(kube: FakeKube) -> None:
    """Resource "web" wants pod web-a-server-1 (hostname "a-server-1"); resource "web-a" owns it."""
    res = resource({"replicas": 1, "hostnames": ["a-server-1"]})
    theirs = children.replica_pod(children.Owner("web-a", "ns", "uid-web-a"), spec.parse({"replicas": 1}), "Server 1")
    kube.create(theirs)
    for _ in range(2):
        out = reconcile_once(kube, FakePusher(), res, [], NOW)  # our index never lists their pod
        res["status"] = out.status
        assert not [e for e in out.events if e.reason in (c.Reason.CREATED, c.Reason.REPLACED)]
    degraded = conditions(out.status)["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == c.Reason.CHILD_CONFLICT
    assert "Pod web-a-server-1" in degraded["message"] and "ReplicaSet web-a" in degraded["message"]
    assert kube.objects[("Pod", "ns", "web-a-server-1")]["metadata"]["ownerReferences"][0]["uid"] == "uid-web-a"


def test_foreign_secret_is_a_conflict_and_left_alone(kube: FakeKube) -> None:
    kube.objects[("Secret", "ns", "web-membership-token")] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "web-membership-token", "namespace": "ns", "uid": "x"},
        "data": {"token": "bWluZQ=="},
    }
    pusher = FakePusher()
    out = reconcile_once(kube, pusher, resource(), [balancer_pod("b-1", "10.1.0.1")], NOW)
    assert conditions(out.status)["Degraded"]["reason"] == c.Reason.CHILD_CONFLICT
    assert "Secret web-membership-token" in conditions(out.status)["Degraded"]["message"]
    assert kube.objects[("Secret", "ns", "web-membership-token")]["data"] == {"token": "bWluZQ=="}
    assert pusher.documents == []  # no push without our token


def test_hand_edited_secret_of_ours_is_taken_back(kube: FakeKube) -> None:
    res = resource()
    reconcile_once(kube, FakePusher(), res, [], NOW)
    secret = kube.objects[("Secret", "ns", "web-membership-token")]
    good = secret["data"]["token"]
    secret["data"]["token"] = "aGFuZA=="
    reconcile_once(kube, FakePusher(), res, [], NOW)
    assert kube.objects[("Secret", "ns", "web-membership-token")]["data"]["token"] == good


def test_deletes_carry_the_uid_seen(kube: FakeKube) -> None:
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    converge(kube, res, FakePusher(), balancers)
    stale = views(kube)
    kube.objects[("Pod", "ns", "web-server-3")]["metadata"]["uid"] = "a-newer-incarnation"
    res["spec"] = {"replicas": 2}
    reconcile_once(kube, FakePusher(), res, stale + balancers, NOW)
    assert "web-server-3" in kube.pods()  # the pod we saw is not the pod that exists now


def test_snapshot_configmap_is_written_before_the_push(kube: FakeKube) -> None:
    order: list[str] = []
    real_create, real_apply = kube.create, kube.apply
    kube.create = lambda obj: order.append(obj["kind"]) or real_create(obj)
    kube.apply = lambda obj, **kw: order.append(obj["kind"]) or real_apply(obj, **kw)

    class Recording(FakePusher):
        def push_all(self, targets: list, document: dict[str, Any], token: str) -> list[PushState]:
            order.append("push")
            return super().push_all(targets, document, token)

    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1")]
    pusher = Recording()
    st = converge(kube, res, pusher, balancers)
    assert order.index("ConfigMap") < order.index("push")
    cm = kube.objects[("ConfigMap", "ns", "web-membership")]
    snapshot = json.loads(cm["data"][c.MEMBERSHIP_KEY])
    assert snapshot == pusher.documents[-1] and snapshot["revision"] == st["ringRevision"]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid


def test_configmap_failure_holds_the_push(kube: FakeKube) -> None:
    kube.fail[("create", "ConfigMap")] = 403
    pusher = FakePusher()
    out = reconcile_once(kube, pusher, resource(), [balancer_pod("b-1", "10.1.0.1")], NOW)
    assert pusher.documents == [] and conditions(out.status)["Degraded"]["reason"] == c.Reason.API_ERROR


def test_balancer_far_ahead_is_reset_not_followed(kube: FakeKube) -> None:
    """A foreign push left a balancer at 2^63-1: following it would overflow the status."""
    res = resource()
    balancers = [balancer_pod("b-1", "10.1.0.1"), balancer_pod("b-2", "10.1.0.2")]
    st = converge(kube, res, FakePusher(), balancers)
    kube.objects[("Pod", "ns", "b-1")] = {
        "kind": "Pod",
        "metadata": {"name": "b-1", "namespace": "ns", "uid": "uid-b-1"},
    }
    res["spec"] = {"replicas": 2}
    poisoned = FakePusher({"b-1": PushState("b-1", False, 2**63 - 1, "409 holds revision 9223372036854775807")})
    out = reconcile_once(kube, poisoned, res, views(kube) + balancers, NOW)
    assert ("Pod", "ns", "b-1") not in kube.objects  # deleted: its replacement loads the snapshot
    assert out.floor == 0 and out.status["ringRevision"] == st["ringRevision"] + 1
    assert any(e.reason == c.Reason.BALANCER_RESET for e in out.events)
