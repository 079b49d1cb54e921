"""The issue's end-to-end list, against real pods in the current kube-context."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from ringlb_harness.load import replica_of

from .conftest import (
    OPERATOR_NS,
    PortForward,
    apply,
    balancer_pods,
    condition,
    kubectl,
    kubectl_json,
    load,
    pod_ready,
    rep,
    replica_pods,
    resource,
    sample,
    scale_operator,
    token,
    wait_for,
    wait_ready,
)

pytestmark = pytest.mark.e2e
SERVERS = ["Server 1", "Server 2", "Server 3"]


def identities(namespace: str) -> dict[str, str]:
    """pod name -> ring identity, from the live pods."""
    return {p["metadata"]["name"]: p["metadata"]["annotations"]["ringlb.io/identity"] for p in replica_pods(namespace)}


def test_sample_becomes_ready_and_spreads_traffic(web: str, forward: PortForward) -> None:
    obj = resource(web)
    st = obj["status"]
    assert st["replicas"] == 3 and st["readyReplicas"] == 3 and st["ringRevision"] >= 1
    assert [m["name"] for m in st["members"]] == SERVERS and all(m["ready"] for m in st["members"])
    assert st["selector"] == "app.kubernetes.io/component=replica,ringlb.io/resource=web"
    assert condition(obj, "Degraded")["status"] == "False"
    assert sorted(identities(web).items()) == [(f"web-server-{i}", f"Server {i}") for i in (1, 2, 3)]
    table = kubectl("-n", web, "get", "lbrs", "web").stdout.split("\n")
    assert table[0].split() == ["NAME", "DESIRED", "READY", "STRATEGY", "REVISION", "AGE"]
    assert table[1].split()[:5] == ["web", "3", "3", "maglev", str(st["ringRevision"])]
    assert rep(forward.url) == SERVERS
    result = load(forward.url, 3000, threads=16, seconds=180)
    assert result.failed == 0 and result.sent == 3000, result.failure_examples
    assert set(result.per_replica) == set(SERVERS)
    assert min(result.per_replica.values()) > 3000 * 0.15, result.per_replica  # maglev is even


def test_kubectl_scale_up_and_down(web: str, forward: PortForward) -> None:
    kubectl("-n", web, "scale", "lbrs/web", "--replicas=5")
    wait_ready(web, 5)
    wanted = SERVERS + ["Server 4", "Server 5"]
    wait_for(lambda: rep(forward.url) == wanted, what="/rep to list 5", timeout=60)
    result = load(forward.url, 3000, seconds=120)
    assert result.failed == 0 and set(result.per_replica) == set(wanted), result.per_replica

    kubectl("-n", web, "scale", "lbrs/web", "--replicas=2")
    wait_for(lambda: rep(forward.url) == ["Server 1", "Server 2"], what="/rep to list 2", timeout=120)
    wait_ready(web, 2)
    wait_for(lambda: sorted(identities(web)) == ["web-server-1", "web-server-2"], what="retired pods gone", timeout=120)
    result = load(forward.url, 2000, seconds=120)
    assert result.failed == 0 and set(result.per_replica) == {"Server 1", "Server 2"}, result.per_replica


KEYS = [f"stable-key-{i}" for i in range(500)]


def key_maps(namespace: str) -> dict[str, dict[str, str]]:
    """balancer pod -> (key -> the replica that answered it), for KEYS, through each Ready
    balancer pod on its own (a port-forward to the pod, not the Service, pins it)."""
    maps: dict[str, dict[str, str]] = {}
    for pod in (p["metadata"]["name"] for p in balancer_pods(namespace) if pod_ready(p)):
        pf = PortForward(namespace, target=f"pod/{pod}")
        try:
            session = requests.Session()
            answers = {}
            for key in KEYS:
                reply = session.get(pf.url + "/home", headers={"X-Request-ID": key}, timeout=10)
                server = replica_of(reply.content) if reply.ok else None
                assert server, f"{pod}: {key}: {reply.status_code} {reply.text[:200]}"
                answers[key] = server
            maps[pod] = answers
        finally:
            pf.close()
    return maps


def test_deleted_pod_comes_back_with_its_identity_and_keys_under_load(web: str, forward: PortForward) -> None:
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in replica_pods(web)}
    keys_before = key_maps(web)
    assert len(keys_before) == 2, list(keys_before)
    first, second = keys_before.values()
    assert first == second and set(first.values()) == set(SERVERS)  # every balancer pod, one map
    stop = threading.Event()
    outcome: dict[str, object] = {}
    loader = threading.Thread(
        target=lambda: outcome.update(result=load(forward.url, 40_000, threads=8, seconds=150, stop=stop))
    )
    loader.start()
    try:
        time.sleep(3)
        kubectl("-n", web, "delete", "pod", "web-server-2", "--wait=false")

        def replaced() -> bool:
            pods = {p["metadata"]["name"]: p for p in replica_pods(web)}
            pod = pods.get("web-server-2")
            return bool(pod and pod["metadata"]["uid"] != before["web-server-2"] and pod_ready(pod))

        wait_for(replaced, what="web-server-2 replaced and Ready", timeout=120)
        wait_ready(web, 3)
        time.sleep(5)  # let traffic reach the new pod
    finally:
        stop.set()
        loader.join(200)
    result = outcome["result"]
    assert result.failed == 0, result.failure_examples
    pod = next(p for p in replica_pods(web) if p["metadata"]["name"] == "web-server-2")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["SERVER_ID"] == "Server 2" and pod["metadata"]["annotations"]["ringlb.io/identity"] == "Server 2"
    keys_after = key_maps(web)
    assert keys_after == keys_before  # same pods, same map: the new pod took its identity's keys back
    after = load(forward.url, 1500, seconds=60)
    assert after.per_replica["Server 2"] > 0 and after.failed == 0
    events = kubectl(
        "-n", web, "get", "events", "--field-selector", "involvedObject.kind=ReplicaSet", "-o", "json"
    ).stdout
    assert "Replaced" in events


def test_hung_replica_is_restarted_by_its_liveness_probe(web: str) -> None:
    def restarts() -> int:
        pod = kubectl_json("-n", web, "get", "pod", "web-server-1")
        return sum(cs["restartCount"] for cs in pod["status"].get("containerStatuses", []))

    before = restarts()
    # Stop every process of the container but PID 1 (gunicorn's master, which the kernel
    # protects inside its namespace): the workers stop answering /heartbeat.
    kubectl("-n", web, "exec", "web-server-1", "--", "python3", "-c", "import os, signal; os.kill(-1, signal.SIGSTOP)")
    wait_for(lambda: restarts() > before, what="web-server-1 restarted by its liveness probe", timeout=120, interval=2)
    wait_ready(web, 3)


def test_add_and_rm_through_the_balancer(web: str, forward: PortForward) -> None:
    unauthorized = requests.post(forward.url + "/add", json={"n": 1}, timeout=10)
    assert unauthorized.status_code == 401
    auth = {"Authorization": f"Bearer {token(web)}"}
    added = requests.post(forward.url + "/add", json={"n": 2, "hostnames": ["S5"]}, headers=auth, timeout=90)
    assert added.status_code == 200, added.text
    assert added.json()["message"] == {"N": 5, "replicas": SERVERS + ["S5", "Server 4"]}
    spec = resource(web)["spec"]
    assert spec["replicas"] == 5 and spec["hostnames"] == SERVERS + ["S5", "Server 4"]
    wait_ready(web, 5)
    assert identities(web)["web-s5"] == "S5"

    removed = requests.delete(forward.url + "/rm", json={"n": 1, "hostnames": ["S5"]}, headers=auth, timeout=90)
    assert removed.status_code == 200, removed.text
    assert removed.json()["message"]["replicas"] == SERVERS + ["Server 4"]
    assert resource(web)["spec"]["replicas"] == 4
    wait_ready(web, 4)
    wait_for(lambda: "web-s5" not in identities(web), what="pod web-s5 gone", timeout=120)


@pytest.mark.exclusive
def test_operator_restart_mid_change_converges_without_duplicates(web: str) -> None:
    revision = resource(web)["status"]["ringRevision"]
    kubectl("-n", web, "scale", "lbrs/web", "--replicas=6")
    time.sleep(1)
    kubectl("-n", OPERATOR_NS, "delete", "pod", "-l", "app.kubernetes.io/component=operator", "--wait=false")
    obj = wait_ready(web, 6)
    assert obj["status"]["ringRevision"] > revision
    pods = replica_pods(web)
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(f"web-server-{i}" for i in range(1, 7))
    assert sorted(identities(web).values()) == sorted(f"Server {i}" for i in range(1, 7))
    # One of each child, two Secrets: the /add token and the membership-push token.
    for kind, count in (
        ("deployment", 1),
        ("service", 1),
        ("secret", 2),
        ("serviceaccount", 1),
        ("role", 1),
        ("rolebinding", 1),
    ):
        items = kubectl_json("-n", web, "get", kind, "-l", "ringlb.io/resource=web")["items"]
        assert len(items) == count, (kind, [i["metadata"]["name"] for i in items])
    wait_for(
        lambda: (
            kubectl(
                "-n", OPERATOR_NS, "rollout", "status", "deployment/ringlb-operator", "--timeout=5s", check=False
            ).returncode
            == 0
        ),
        what="the operator back",
        timeout=180,
    )


@pytest.mark.parametrize(
    "spec,field",
    [
        ({"replicas": 1000}, "spec.replicas"),
        ({"hashing": {"strategy": "rendezvous"}}, "spec.hashing.strategy"),
        ({"hostnames": ["S5", "S5"]}, "spec.hostnames"),
        ({"hostnames": ["not/valid"]}, "spec.hostnames"),
        ({"balancer": {"serviceType": "ExternalName"}}, "spec.balancer.serviceType"),
        ({"hashing": {"vnodes": 0}}, "spec.hashing.vnodes"),
    ],
)
def test_invalid_resource_is_rejected_naming_the_field(namespace: str, spec: dict, field: str) -> None:
    run = apply(namespace, sample(**spec), check=False)
    assert run.returncode != 0 and field in run.stderr, run.stderr
    assert kubectl("-n", namespace, "get", "lbrs", "web", check=False).returncode != 0


def test_invalid_name_is_rejected(namespace: str) -> None:
    doc = sample()
    doc["metadata"]["name"] = "a" * 45
    run = apply(namespace, doc, check=False)
    assert run.returncode != 0 and "metadata.name" in run.stderr, run.stderr


def test_deleting_the_resource_garbage_collects_everything(web: str) -> None:
    kubectl("-n", web, "delete", "lbrs", "web", "--wait=true", "--timeout=120s", timeout=150)

    def gone() -> bool:
        for kind in ("pods", "deployment", "service", "secret", "serviceaccount", "role", "rolebinding"):
            if kubectl_json("-n", web, "get", kind, "-l", "ringlb.io/resource=web")["items"]:
                return False
        return True

    wait_for(gone, what="every child of web deleted", timeout=180)


# --- no hijack, no drift, a data plane that outlives the operator, takeover ---------
def _timed(what: str, fn, timeout: float) -> None:
    started = time.monotonic()
    wait_for(fn, what=what, timeout=timeout, interval=0.5)
    print(f"{what}: {time.monotonic() - started:.1f}s")


def test_hand_edits_and_a_deleted_service_are_repaired_within_seconds(web: str) -> None:
    kubectl("-n", web, "scale", "deployment/web-balancer", "--replicas=4")
    _timed(
        "Deployment web-balancer back at 2 replicas",
        lambda: kubectl_json("-n", web, "get", "deployment", "web-balancer")["spec"]["replicas"] == 2,
        timeout=20,  # under the 30 s resync: a watch event repaired it (how fast is printed)
    )
    kubectl(
        "-n",
        web,
        "patch",
        "service",
        "web-balancer",
        "--type=merge",
        "-p",
        '{"spec":{"selector":{"app.kubernetes.io/component":"replica"}}}',
    )
    _timed(
        "Service selector restored",
        lambda: (
            kubectl_json("-n", web, "get", "service", "web-balancer")["spec"]["selector"].get(
                "app.kubernetes.io/component"
            )
            == "balancer"
        ),
        timeout=20,
    )
    uid = kubectl_json("-n", web, "get", "service", "web-balancer")["metadata"]["uid"]
    kubectl("-n", web, "delete", "service", "web-balancer")
    _timed(
        "Service web-balancer recreated",
        lambda: (
            kubectl("-n", web, "get", "service", "web-balancer", "-o", "jsonpath={.metadata.uid}", check=False).stdout
            not in ("", uid)
        ),
        timeout=20,  # under the 30 s resync: a watch event, not the resync (how fast is printed)
    )
    wait_ready(web, 3)


def test_membership_cannot_be_hijacked_with_the_add_token(web: str, forward: PortForward) -> None:
    pod = next(p["metadata"]["name"] for p in balancer_pods(web) if pod_ready(p))
    admin = PortForward(web, target=f"pod/{pod}", port=5001)
    try:
        wait_for(lambda: requests.get(admin.url + "/readyz", timeout=5).ok, what="the admin port to answer", timeout=30)
        held = requests.get(admin.url + "/membership", timeout=5).json()
        evil = {
            **held,
            "revision": held["revision"] + 1,
            "members": [{"name": "Server 1", "address": "203.0.113.7:80"}],
        }
        for bearer in (token(web), "", "nonsense"):
            reply = requests.put(
                admin.url + "/membership", json=evil, headers={"Authorization": f"Bearer {bearer}"}, timeout=5
            )
            assert reply.status_code in (401, 403), (bearer[:4], reply.status_code, reply.text[:200])
        assert requests.get(admin.url + "/membership", timeout=5).json()["revision"] == held["revision"]
    finally:
        admin.close()
    # The public port (the Service) does not serve /membership at all: the path is forwarded like
    # any other, and no replica has it (the seed's 400 for a path no replica serves).
    public = requests.put(
        forward.url + "/membership", json=evil, headers={"Authorization": f"Bearer {token(web)}"}, timeout=5
    )
    assert public.status_code == 400, public.status_code
    assert public.json() == {
        "message": "<Error> '/membership' endpoint does not exist in server replicas",
        "status": "failure",
    }
    assert token(web) != token(web, secret="membership-token")
    policy = kubectl_json("-n", web, "get", "networkpolicy", "web-balancer")
    assert [r["ports"][0]["port"] for r in policy["spec"]["ingress"]] == [5000, 5001]


@pytest.mark.exclusive
def test_a_balancer_pod_replaced_while_the_operator_is_down_is_ready_with_the_ring(web: str) -> None:
    revision = resource(web)["status"]["ringRevision"]
    snapshot = kubectl_json("-n", web, "get", "configmap", "web-membership")
    assert json.loads(snapshot["data"]["membership.json"])["revision"] == revision
    scale_operator(0)
    try:
        victim = balancer_pods(web)[0]["metadata"]["name"]
        kubectl("-n", web, "delete", "pod", victim, "--wait=false")

        def replacement() -> str | None:
            pods = [p for p in balancer_pods(web) if p["metadata"]["name"] != victim and pod_ready(p)]
            return pods[0]["metadata"]["name"] if len(pods) == 2 else None

        started = time.monotonic()
        new = wait_for(replacement, what="a replacement balancer pod Ready without the operator", timeout=120)
        print(f"replacement Ready after {time.monotonic() - started:.1f}s")
        admin = PortForward(web, target=f"pod/{new}", port=5001)
        try:
            held = requests.get(admin.url + "/membership", timeout=5).json()
        finally:
            admin.close()
        assert held["revision"] == revision and [m["name"] for m in held["members"]] == SERVERS
        pf = PortForward(web)
        try:
            result = load(pf.url, 500, threads=8, seconds=60)
        finally:
            pf.close()
        assert result.failed == 0 and set(result.per_replica) == set(SERVERS), result.failure_examples
    finally:
        scale_operator(2)
    time.sleep(5)
    assert resource(web)["status"]["ringRevision"] == revision  # the operator found nothing to change


def test_status_page_on_the_admin_port(web: str, forward: PortForward) -> None:
    # As docs/operator.md tells a user: port-forward to a balancer pod's admin port, open /status.
    pod = next(p["metadata"]["name"] for p in balancer_pods(web) if pod_ready(p))
    admin = PortForward(web, target=f"pod/{pod}", port=5001)
    try:
        page = requests.get(admin.url + "/status", timeout=5)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert b"<script" in page.content and b'src="http' not in page.content  # no CDN: all of it ships inline
        data = requests.get(admin.url + "/status/data", timeout=5).json()
        names = [m["name"] for m in data["members"]]
        assert sorted(names) == SERVERS
        assert abs(sum(m["share"] for m in data["members"]) - 1.0) < 1e-9
        key = "e2e-key-42"
        lookup = requests.get(admin.url + "/status/lookup", params={"key": key}, timeout=5).json()
        answered = requests.get(forward.url + "/home", headers={"X-Request-ID": key}, timeout=5).json()
        assert answered["message"] == f"Hello from Server: {lookup['route']}"
    finally:
        admin.close()


def _resource_events(namespace: str, name: str) -> list[dict]:
    """Events on the ringlb ReplicaSet ``name`` (not on apps/v1 ReplicaSets of the same kind name)."""
    items = kubectl_json("-n", namespace, "get", "events")["items"]
    return [
        e
        for e in items
        if e["involvedObject"].get("apiVersion", "").startswith("ringlb.io/") and e["involvedObject"]["name"] == name
    ]


def test_colliding_replicasets_second_is_degraded_first_serves(namespace: str) -> None:
    # Pod names are <resource>-<DNS form of the identity>: "web" + "a-server-1" and
    # "web-a" + "Server 1" both make pod web-a-server-1.
    first = sample(replicas=1, hostnames=["a-server-1"])
    apply(namespace, first)
    wait_ready(namespace, 1)
    pod = kubectl_json("-n", namespace, "get", "pod", "web-a-server-1")
    assert pod["metadata"]["annotations"]["ringlb.io/identity"] == "a-server-1"
    uid, owner = pod["metadata"]["uid"], pod["metadata"]["ownerReferences"][0]["uid"]
    assert owner == resource(namespace)["metadata"]["uid"]

    second = sample(replicas=1, hostnames=["Server 1"])
    second["metadata"]["name"] = "web-a"
    apply(namespace, second)
    expected = "Pod web-a-server-1 exists and is controlled by ReplicaSet web"

    def conflict() -> dict | None:
        degraded = condition(resource(namespace, "web-a"), "Degraded")
        return degraded if degraded.get("status") == "True" and degraded.get("reason") == "ChildConflict" else None

    degraded = wait_for(conflict, what="web-a Degraded/ChildConflict", timeout=60)
    assert expected in degraded["message"], degraded
    time.sleep(5)  # a conflicting resource runs a pass every second: let several run
    obj = resource(namespace, "web-a")
    assert condition(obj, "Degraded")["reason"] == "ChildConflict" and condition(obj, "Ready")["status"] == "False"

    # The first keeps its pod (same incarnation, same owner), stays Ready and serves.
    pod = kubectl_json("-n", namespace, "get", "pod", "web-a-server-1")
    assert (pod["metadata"]["uid"], pod["metadata"]["ownerReferences"][0]["uid"]) == (uid, owner)
    obj = wait_ready(namespace, 1)
    assert condition(obj, "Degraded")["status"] == "False", condition(obj, "Degraded")
    pf = PortForward(namespace)
    try:
        wait_for(lambda: requests.get(pf.url + "/rep", timeout=5).ok, what="the port-forward to answer", timeout=30)
        result = load(pf.url, 300, threads=4, seconds=60)
    finally:
        pf.close()
    assert result.failed == 0 and dict(result.per_replica) == {"a-server-1": 300}, (
        result.failure_examples,
        result.per_replica,
    )
    # No Created/Replaced Event for a pod that neither created or replaced (web-a), no
    # Replaced on web, whose pod never went away.
    first_events = [(e["reason"], e["message"]) for e in _resource_events(namespace, "web")]
    assert [m for r, m in first_events if r == "Replaced"] == [], first_events
    assert [m for r, m in first_events if r == "Created"] == ["created pod web-a-server-1 for 'a-server-1'"], (
        first_events
    )
    second_events = [(e["reason"], e["message"]) for e in _resource_events(namespace, "web-a")]
    assert not [m for r, m in second_events if r in ("Created", "Replaced")], second_events
    print(
        f"web-a: {degraded['reason']}: {degraded['message']}; web: Ready, served 300 of 300; events on web: "
        f"{first_events}"
    )
