"""spec.balancer.tls: the CRD field, the balancer pods' mount and variables, a
balancer that refuses its certificate files quoted in status, and a missing Secret named in
status and an Event from the kubelet's FailedMount Events (the operator never reads Secrets)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ringlb_operator import children, spec
from ringlb_operator import constants as c
from ringlb_operator.kube import K8sObject
from ringlb_operator.observe import FAILED_MOUNT, PodView, pod_view, tls_mount_problem
from ringlb_operator.reconcile import reconcile_once

from .conftest import OWNER, FakeKube, resource, views
from .test_manifests import allowed, by_kind
from .test_reconcile import LATER, NOW, FakePusher, conditions

TLS_SPEC = {"replicas": 1, "balancer": {"tls": {"secretName": "web-tls"}}}


def balancer_container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]


def test_the_field_parses_and_is_refused_when_not_a_secret_name() -> None:
    assert spec.parse(TLS_SPEC).balancer.tls.secret_name == "web-tls"
    assert spec.parse({}).balancer.tls is None
    for bad in ({"secretName": ""}, {"secretName": "Not_A_Name"}, {}):
        with pytest.raises(spec.SpecError, match=r"spec\.balancer\.tls"):
            spec.parse({"balancer": {"tls": bad}})


def test_balancer_pods_mount_the_secret_directory_and_get_the_variables() -> None:
    plain = children.deployment(OWNER, spec.parse({"replicas": 1}))
    assert "RINGLB_TLS_CERT" not in {e["name"] for e in balancer_container(plain)["env"]}
    obj = children.deployment(OWNER, spec.parse(TLS_SPEC))
    container = balancer_container(obj)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RINGLB_TLS_CERT"] == f"{c.TLS_DIR}/tls.crt" and env["RINGLB_TLS_KEY"] == f"{c.TLS_DIR}/tls.key"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": c.TLS_DIR, "readOnly": True}  # no subPath: updates reach it
    volume = next(v for v in obj["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert volume == {"name": "tls", "secret": {"secretName": "web-tls"}}
    # Probes stay on the plain admin port.
    assert container["readinessProbe"]["httpGet"]["port"] == c.ADMIN_PORT_NAME
    assert container["livenessProbe"]["httpGet"]["port"] == c.ADMIN_PORT_NAME


def test_a_balancer_that_refuses_its_tls_files_is_quoted_in_degraded(kube: FakeKube) -> None:
    """A Secret that does not load stops the balancer at start with one line (Settings.check);
    FallbackToLogsOnError keeps it in the pod's status, and Degraded quotes it."""
    container = balancer_container(children.deployment(OWNER, spec.parse(TLS_SPEC)))
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    words = (
        "balancer settings: /etc/ringlb/tls/tls.crt and /etc/ringlb/tls/tls.key do not load as a PEM "
        "certificate chain and its private key: [SSL] PEM lib (_ssl.c:3905)"
    )
    crashing = pod_view(
        {
            "metadata": {
                "name": "web-balancer-a",
                "namespace": OWNER.namespace,
                "uid": "uid-a",
                "labels": {c.LABEL_RESOURCE: OWNER.name, c.LABEL_COMPONENT: c.COMPONENT_BALANCER},
            },
            "spec": {"nodeName": "w1"},
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.9",
                "containerStatuses": [
                    {
                        "restartCount": 3,
                        "state": {
                            "waiting": {
                                "reason": "CrashLoopBackOff",
                                "message": "back-off 40s restarting failed container",
                            }
                        },
                        "lastState": {"terminated": {"exitCode": 1, "message": words + "\n"}},
                    }
                ],
            },
        }
    )
    outcome = reconcile_once(kube, FakePusher(), resource(copy.deepcopy(TLS_SPEC)), views(kube) + [crashing], NOW)
    degraded = conditions(outcome.status)[c.DEGRADED]
    assert degraded["status"] == "True" and degraded["reason"] == c.Reason.CRASH_LOOP
    assert f"balancer pod web-balancer-a: CrashLoopBackOff: {words}" in degraded["message"]


def test_a_crash_loop_without_last_words_keeps_the_kubelet_message() -> None:
    view = pod_view(
        {
            "metadata": {"name": "p"},
            "status": {
                "containerStatuses": [
                    {
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                        "lastState": {"terminated": {"exitCode": 137}},
                    }
                ]
            },
        }
    )
    assert view.waiting_message == "back-off 10s"


MISSING = 'MountVolume.SetUp failed for volume "tls" : secret "web-tls" not found'


class EventsKube(FakeKube):
    """FakeKube with Events, filtered by field selector as the API server does."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[K8sObject] = []
        self.event_lists: list[str] = []

    def list_events(self, namespace: str, field_selector: str) -> list[K8sObject]:
        self._check("list", "Event")
        self.event_lists.append(field_selector)

        def field(event: K8sObject, path: str) -> str:
            value: Any = event
            for part in path.split("."):
                value = (value or {}).get(part)
            return str(value or "")

        wanted = dict(term.split("=", 1) for term in field_selector.split(","))
        return [
            e
            for e in self.events
            if field(e, "metadata.namespace") == namespace and all(field(e, k) == v for k, v in wanted.items())
        ]


def kubelet_event(pod: str, message: str, at: str = NOW, reason: str = FAILED_MOUNT) -> K8sObject:
    return {
        "metadata": {"name": f"{pod}.{len(message)}", "namespace": OWNER.namespace},
        "involvedObject": {"kind": "Pod", "name": pod, "uid": f"uid-{pod}", "namespace": OWNER.namespace},
        "reason": reason,
        "type": "Warning",
        "message": message,
        "lastTimestamp": at,
        "count": 3,
    }


def creating(name: str) -> PodView:
    """A balancer pod whose volumes the kubelet cannot mount: Pending, waiting with no message."""
    return pod_view(
        {
            "metadata": {
                "name": name,
                "namespace": OWNER.namespace,
                "uid": f"uid-{name}",
                "labels": {c.LABEL_RESOURCE: OWNER.name, c.LABEL_COMPONENT: c.COMPONENT_BALANCER},
            },
            "spec": {"nodeName": "w1"},
            "status": {
                "phase": "Pending",
                "containerStatuses": [{"restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}],
            },
        }
    )


@pytest.fixture
def events_kube() -> EventsKube:
    return EventsKube()


def test_a_missing_secret_is_named_in_degraded_and_warned_once(events_kube: EventsKube) -> None:
    kube = events_kube
    kube.events = [
        kubelet_event("web-balancer-b", MISSING),
        kubelet_event("web-balancer-a", MISSING),
        kubelet_event(
            "web-balancer-a", 'MountVolume.SetUp failed for volume "membership" : configmap "web-membership" not found'
        ),
    ]
    pods = [creating("web-balancer-b"), creating("web-balancer-a")]
    created = reconcile_once(kube, FakePusher(), resource(copy.deepcopy(TLS_SPEC)), [], NOW)  # the replica pod
    kube.event_lists.clear()
    outcome = reconcile_once(
        kube, FakePusher(), resource(copy.deepcopy(TLS_SPEC), status=created.status), views(kube) + pods, NOW
    )
    # One list for one waiting pod (the first by name), this incarnation, FailedMount only.
    assert kube.event_lists == [
        "involvedObject.kind=Pod,involvedObject.name=web-balancer-a,involvedObject.uid=uid-web-balancer-a,reason=FailedMount"
    ]
    degraded = conditions(outcome.status)[c.DEGRADED]
    assert degraded["status"] == "True" and degraded["reason"] == FAILED_MOUNT
    assert degraded["message"].startswith(
        "balancer pod web-balancer-a cannot start: Secret ns/web-tls (spec.balancer.tls.secretName) not found; "
        "create it (kubectl -n ns create secret tls web-tls --cert=chain.pem --key=key.pem"
    ), degraded["message"]
    assert degraded["lastTransitionTime"] == NOW and "configmap" not in degraded["message"]
    warnings = [e for e in outcome.events if e.reason == FAILED_MOUNT]
    assert [e.type for e in warnings] == ["Warning"] and warnings[0].message == degraded["message"]
    assert kube.status_patches[-1]["conditions"] == outcome.status["conditions"]

    # The next pass finds the same: nothing new to say, no second Event, no status write.
    writes = len(kube.status_patches)
    again = reconcile_once(
        kube, FakePusher(), resource(copy.deepcopy(TLS_SPEC), status=outcome.status), views(kube) + pods, LATER
    )
    assert [e for e in again.events if e.reason == FAILED_MOUNT] == []
    assert conditions(again.status)[c.DEGRADED] == degraded and len(kube.status_patches) == writes

    # The Secret is created: the pods run, no Event is read, and Degraded clears.
    kube.event_lists.clear()
    fixed = reconcile_once(
        kube, FakePusher(), resource(copy.deepcopy(TLS_SPEC), status=again.status), views(kube), LATER
    )
    assert kube.event_lists == []
    assert conditions(fixed.status)[c.DEGRADED]["status"] == "False"


def test_the_missing_secret_comes_first_beside_other_problems(events_kube: EventsKube) -> None:
    events_kube.events = [kubelet_event("web-balancer-a", MISSING)]
    crashing = pod_view(
        {
            "metadata": {
                "name": "web-balancer-c",
                "namespace": OWNER.namespace,
                "uid": "uid-c",
                "labels": {c.LABEL_RESOURCE: OWNER.name, c.LABEL_COMPONENT: c.COMPONENT_BALANCER},
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}],
            },
        }
    )
    pods = views(events_kube) + [creating("web-balancer-a"), crashing]
    outcome = reconcile_once(events_kube, FakePusher(), resource(copy.deepcopy(TLS_SPEC)), pods, NOW)
    degraded = conditions(outcome.status)[c.DEGRADED]
    assert degraded["reason"] == FAILED_MOUNT
    first, second = degraded["message"].split("; balancer pod ", 1)[0], degraded["message"].rsplit("; ", 1)[1]
    assert "Secret ns/web-tls" in first and second == "balancer pod web-balancer-c: CrashLoopBackOff: back-off"


def test_no_event_is_read_without_tls_or_without_a_waiting_balancer_pod(events_kube: EventsKube) -> None:
    events_kube.events = [kubelet_event("web-balancer-a", MISSING)]
    plain = reconcile_once(
        events_kube, FakePusher(), resource({"replicas": 1}), views(events_kube) + [creating("web-balancer-a")], NOW
    )
    running = reconcile_once(events_kube, FakePusher(), resource(copy.deepcopy(TLS_SPEC)), views(events_kube), NOW)
    assert events_kube.event_lists == []
    for outcome in (plain, running):
        assert conditions(outcome.status)[c.DEGRADED]["reason"] != FAILED_MOUNT


def test_a_waiting_pod_without_a_failed_mount_of_the_secret_is_not_blamed_on_it(events_kube: EventsKube) -> None:
    """Pulling an image, or a mount of another volume that failed once, says nothing of TLS."""
    events_kube.events = [
        kubelet_event(
            "web-balancer-a", 'MountVolume.SetUp failed for volume "membership" : configmap "web-membership" not found'
        ),
        kubelet_event("web-balancer-a", 'secret "web-tls" not found', reason="Pulling"),
        kubelet_event("web-balancer-z", MISSING),
    ]
    outcome = reconcile_once(
        events_kube,
        FakePusher(),
        resource(copy.deepcopy(TLS_SPEC)),
        views(events_kube) + [creating("web-balancer-a")],
        NOW,
    )
    assert len(events_kube.event_lists) == 1
    assert conditions(outcome.status)[c.DEGRADED]["reason"] != FAILED_MOUNT
    assert not [e for e in outcome.events if e.reason == FAILED_MOUNT]


def test_events_that_cannot_be_listed_are_an_api_error(events_kube: EventsKube) -> None:
    events_kube.fail[("list", "Event")] = 403
    outcome = reconcile_once(
        events_kube,
        FakePusher(),
        resource(copy.deepcopy(TLS_SPEC)),
        views(events_kube) + [creating("web-balancer-a")],
        NOW,
    )
    degraded = conditions(outcome.status)[c.DEGRADED]
    assert degraded["reason"] == c.Reason.API_ERROR and "Events of pod web-balancer-a: 403" in degraded["message"]
    assert outcome.retry_in is not None


def test_the_newest_failed_mount_wins_and_other_failures_are_quoted() -> None:
    other = (
        'MountVolume.SetUp failed for volume "tls" : failed to sync secret cache: '
        'timed out waiting for the condition; secret "web-tls" unreadable'
    )
    events = [
        kubelet_event("p", MISSING, at="2025-01-01T00:00:00Z"),
        kubelet_event("p", other, at="2025-01-01T00:01:00Z"),
    ]
    assert tls_mount_problem("p", events, "ns", "web-tls") == (
        f"balancer pod p cannot start: Secret ns/web-tls (spec.balancer.tls.secretName) cannot be mounted: {other}"
    )
    assert "not found; create it" in tls_mount_problem("p", list(reversed(events))[1:], "ns", "web-tls")
    assert tls_mount_problem("p", events, "ns", "other-tls") == ""
    assert tls_mount_problem("p", [], "ns", "web-tls") == ""


def test_the_operator_may_list_events_and_still_never_reads_secrets() -> None:
    [role] = by_kind("ClusterRole")
    assert allowed(role["rules"], "", "events", "list")
    for verb in ("get", "list", "watch"):
        assert not allowed(role["rules"], "", "secrets", verb), verb
