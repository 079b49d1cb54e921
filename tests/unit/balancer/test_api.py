"""The balancer's own endpoints through Flask's test client, with a fake scaler."""

from __future__ import annotations

import json
import threading
import zlib

import pytest

from ringlb_balancer import api
from ringlb_balancer.app import create_app
from ringlb_balancer.config import Settings
from ringlb_balancer.membership import parse
from ringlb_balancer.routing import RoutingStore
from ringlb_balancer.scaling import Conflict, ScalerError
from ringlb_balancer.shared import SharedState

S3 = ["Server 1", "Server 2", "Server 3"]
MEMBER_TOKEN = "member-secret"
ADMIN_TOKEN = "admin-secret"
MEMBER_AUTH = {"Authorization": f"Bearer {MEMBER_TOKEN}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
UNAUTHORIZED = b'{"message": "<Error> missing or wrong bearer token (Authorization: Bearer <token>)", "status": "failure"}'


def address(name: str) -> str:
    return f"127.0.0.1:{10_000 + zlib.crc32(name.encode()) % 50_000}"


def membership_doc(revision: int, names: list[str], strategy: str = "maglev") -> dict:
    return {
        "revision": revision,
        "members": [{"name": n, "address": address(n)} for n in names],
        "hashing": {"strategy": strategy, "tableSize": 257},
    }


def seed_json(message, status="successful") -> bytes:
    return json.dumps({"message": message, "status": status}).encode()


class FakeScaler:
    """Stands in for the local supervisor / the ReplicaSet resource.

    ``set_desired`` records the call and then, like the supervisor or operator would, pushes the
    new membership to the balancer's state dir from "another process" (its own RoutingStore):
    at once, after ``delay`` seconds on a thread, or never (``converge=False``).
    """

    def __init__(self, state_dir, names, *, converge=True, delay=0.0, conflicts=0, error_on=None):
        self.store = RoutingStore(SharedState(state_dir))
        self.names = list(names)
        self.version = 1
        self.converge = converge
        self.delay = delay
        self.conflicts = conflicts
        self.error_on = error_on
        self.calls: list[tuple[list[str], str]] = []
        self.desired_calls = 0
        self.threads: list[threading.Thread] = []

    def desired(self):
        self.desired_calls += 1
        if self.error_on == "desired":
            raise ScalerError("supervisor unreachable: connection refused")
        return list(self.names), str(self.version)

    def set_desired(self, names, version):
        self.calls.append((list(names), version))
        if self.error_on == "set_desired":
            raise ScalerError("supervisor refused the change: 500 boom")
        if self.conflicts:
            self.conflicts -= 1
            self.version += 1  # someone else changed the list meanwhile
            raise Conflict()
        if version != str(self.version):
            raise Conflict()
        self.names = list(names)
        self.version += 1
        if not self.converge:
            return
        if self.delay:
            t = threading.Timer(self.delay, self.push)
            t.start()
            self.threads.append(t)
        else:
            self.push()

    def push(self):
        revision = self.store.shared.revision + 1
        self.store.publish(parse(membership_doc(revision, self.names)))


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / "state")


def make_app(state_dir, scaler=None, **settings):
    settings.setdefault("membership_token", MEMBER_TOKEN)
    return create_app(Settings(state_dir=state_dir, **settings), scaler=scaler)


def push(client, revision, names, **kw):
    return client.put("/membership", json=membership_doc(revision, names, **kw), headers=MEMBER_AUTH)


@pytest.fixture
def scaled(state_dir):
    """An app holding Server 1..3, with a converging fake scaler."""
    scaler = FakeScaler(state_dir, S3)
    app = make_app(state_dir, scaler)
    client = app.flask.test_client()
    assert push(client, 1, S3).status_code == 200
    yield app, client, scaler
    for t in scaler.threads:
        t.join()


# ---------------------------------------------------------------------------------------------
# /rep and PUT /membership
# ---------------------------------------------------------------------------------------------


def test_rep_exact_bytes_after_membership_push(state_dir):
    client = make_app(state_dir).flask.test_client()
    assert client.get("/rep").data == b'{"message": {"N": 0, "replicas": []}, "status": "successful"}'
    r = push(client, 1, S3)
    assert r.status_code == 200
    assert r.get_json() == {"revision": 1, "members": 3, "changed": True}
    r = client.get("/rep")
    assert r.status_code == 200
    assert r.content_type == "application/json"
    assert r.data == b'{"message": {"N": 3, "replicas": ["Server 1", "Server 2", "Server 3"]}, "status": "successful"}'


def test_membership_push_is_idempotent(state_dir):
    client = make_app(state_dir).flask.test_client()
    assert push(client, 3, S3).get_json()["changed"] is True
    r = push(client, 3, S3)
    assert r.status_code == 200 and r.get_json() == {"revision": 3, "members": 3, "changed": False}


def test_get_membership(state_dir):
    client = make_app(state_dir).flask.test_client()
    push(client, 2, S3, strategy="ring")
    doc = client.get("/membership").get_json()
    assert doc["revision"] == 2
    assert doc["members"] == [{"name": n, "address": address(n)} for n in S3]
    assert doc["hashing"]["strategy"] == "ring"
    assert doc["key"] == {"source": "header", "name": "X-Request-ID"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": MEMBER_TOKEN}, {"Authorization": f"Basic {MEMBER_TOKEN}"}])
def test_membership_requires_token(state_dir, headers):
    client = make_app(state_dir).flask.test_client()
    r = client.put("/membership", json=membership_doc(1, S3), headers=headers)
    assert r.status_code == 401
    assert r.data == UNAUTHORIZED
    assert client.get("/rep").get_json()["message"]["N"] == 0


def test_membership_token_falls_back_to_admin_token(state_dir):
    client = make_app(state_dir, membership_token="", token=ADMIN_TOKEN).flask.test_client()
    assert client.put("/membership", json=membership_doc(1, S3)).status_code == 401
    assert client.put("/membership", json=membership_doc(1, S3), headers=ADMIN_AUTH).status_code == 200


def test_membership_token_is_separate_from_admin_token(state_dir):
    client = make_app(state_dir, token=ADMIN_TOKEN).flask.test_client()
    assert client.put("/membership", json=membership_doc(1, S3), headers=ADMIN_AUTH).status_code == 401
    assert push(client, 1, S3).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body must be a JSON membership document"),
        (b"", "body must be a JSON membership document"),
        (b"{bad", "body must be a JSON membership document"),
        (b"[]", "body must be a JSON object with revision, members, hashing"),
        (b'{"revision": "2", "members": []}', "revision: required, an integer from 1 to 2^63-1"),
        (b'{"revision": 2, "members": {}}', "members: required, a list of {name, address}"),
        (b'{"revision": 2, "members": [], "hashing": {"strategy": "rendezvous"}}',
         "hashing: unknown strategy 'rendezvous'; use one of maglev, ring, seed"),
        (b'{"revision": 2, "members": [{"name": "S1", "address": "localhost:80"}]}',
         "members[0]: address host must be an IP address, got 'localhost'"),
    ],
)
def test_malformed_membership_is_400_and_changes_nothing(state_dir, body, message):
    client = make_app(state_dir).flask.test_client()
    push(client, 1, S3)
    before = client.get("/membership").data
    r = client.put("/membership", data=body, headers={**MEMBER_AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.data == seed_json(message, "failure")
    assert client.get("/membership").data == before


@pytest.mark.parametrize(
    "doc",
    [
        {"revision": 2, "members": [], "key": {"source": "client-ip", "name": 5}},
        {"revision": 2, "members": [{"name": "S1", "address": "127.0.0.1:\u00b2"}]},
    ],
    ids=["client-ip-key-with-int-name", "unicode-digit-port"],
)
def test_no_membership_document_crashes_the_endpoint(state_dir, doc):
    """Bad input gets a 4xx, never a 500, and the ring in force stays."""
    client = make_app(state_dir).flask.test_client()
    push(client, 1, S3)
    r = client.put("/membership", json=doc, headers=MEMBER_AUTH)
    assert r.status_code == 400
    assert client.get("/rep").get_json()["message"]["replicas"] == S3


def test_stale_membership_is_409(state_dir):
    client = make_app(state_dir).flask.test_client()
    push(client, 5, S3)
    r = push(client, 4, ["S9"])
    assert r.status_code == 409
    assert r.data == seed_json("revision 4 is stale: revision 5 is in force", "failure")
    r = push(client, 5, ["S9"])  # same revision, other content
    assert r.status_code == 409
    assert client.get("/rep").get_json()["message"]["replicas"] == S3


def test_too_many_members_for_seed_strategy_is_400(state_dir):
    client = make_app(state_dir).flask.test_client()
    r = push(client, 1, [f"S{i}" for i in range(57)], strategy="seed")
    assert r.status_code == 400
    assert r.get_json()["status"] == "failure"


# ---------------------------------------------------------------------------------------------
# /add and /rm
# ---------------------------------------------------------------------------------------------


def test_add_seed_example(scaled):
    app, client, scaler = scaled
    r = client.post("/add", json={"n": 4, "hostnames": ["S5", "S4", "S10", "S11"]})
    assert r.status_code == 200
    assert r.data == (
        b'{"message": {"N": 7, "replicas": ["Server 1", "Server 2", "Server 3", "S5", "S4", "S10", "S11"]}, '
        b'"status": "successful"}'
    )
    assert scaler.calls == [(S3 + ["S5", "S4", "S10", "S11"], "1")]
    assert client.get("/rep").data == r.data


def test_add_generated_names(scaled):
    _, client, _ = scaled
    r = client.post("/add", json={"n": 2})
    assert r.status_code == 200
    assert r.get_json()["message"] == {"N": 5, "replicas": S3 + ["Server 4", "Server 5"]}


def test_rm_seed_example(scaled):
    _, client, scaler = scaled
    client.post("/add", json={"n": 4, "hostnames": ["S5", "S4", "S10", "S11"]})
    r = client.delete("/rm", json={"n": 3, "hostnames": ["S5", "S4"]})
    assert r.status_code == 200
    message = r.get_json()["message"]
    assert message["N"] == 4
    assert "S5" not in message["replicas"] and "S4" not in message["replicas"]
    assert message["replicas"] == scaler.names
    assert set(message["replicas"]) < {"Server 1", "Server 2", "Server 3", "S10", "S11"}
    assert r.data == seed_json(message)


def test_add_waits_for_a_late_membership(state_dir):
    scaler = FakeScaler(state_dir, S3, delay=0.2)
    client = make_app(state_dir, scaler, scale_timeout=5.0).flask.test_client()
    push(client, 1, S3)
    r = client.post("/add", json={"n": 1, "hostnames": ["S5"]})
    assert r.status_code == 200
    assert r.get_json()["message"]["replicas"] == S3 + ["S5"]
    for t in scaler.threads:
        t.join()


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("post", "/add", {"n": 1, "hostnames": ["S5", "S4"]}, "<Error> Length of hostname list is more than newly added instances"),
        ("delete", "/rm", {"n": 1, "hostnames": ["Server 1", "Server 2"]}, "<Error> Length of hostname list is more than removable instances"),
        ("post", "/add", {"n": 0}, '<Error> "n" must be between 1 and 56'),
        ("post", "/add", {"n": "1"}, '<Error> "n" is required and must be an integer'),
        ("post", "/add", {"hostnames": ["S5"]}, '<Error> "n" is required and must be an integer'),
        ("post", "/add", {"n": 1, "hostnames": ["Server 1"]}, "<Error> hostname(s) already in use: Server 1"),
        ("post", "/add", {"n": 1, "hostnames": ["bad/name"]}, None),
        ("post", "/add", {"n": 2, "hostnames": ["S5", "s5"]}, "<Error> hostnames 'S5' and 's5' map to the same pod name 's5'"),
        ("post", "/add", {"n": 54}, "<Error> adding 54 would make 57 replicas; the cap is 56"),
        ("delete", "/rm", {"n": 1, "hostnames": ["S9"]}, "<Error> not a current replica: S9"),
        ("delete", "/rm", {"n": 4}, "<Error> cannot remove 4 replicas: only 3 exist"),
        ("post", "/add", [1, 2], '<Error> body must be a JSON object like {"n": 1, "hostnames": []}'),
    ],
)
def test_bad_scale_requests_are_400_and_change_nothing(scaled, method, path, body, message):
    _, client, scaler = scaled
    r = getattr(client, method)(path, json=body)
    assert r.status_code == 400
    if message is not None:
        assert r.data == seed_json(message, "failure")
    else:
        assert r.get_json()["message"].startswith("<Error> invalid hostname 'bad/name'")
    assert scaler.calls == []
    assert client.get("/rep").get_json()["message"]["replicas"] == S3


@pytest.mark.parametrize("path,method", [("/add", "post"), ("/rm", "delete")])
@pytest.mark.parametrize("data", [b"not json", b"", b'{"n": 1'])
def test_non_json_scale_body_is_400(scaled, path, method, data):
    _, client, scaler = scaled
    r = getattr(client, method)(path, data=data, content_type="application/json")
    assert r.status_code == 400
    assert r.data == seed_json('<Error> body must be JSON like {"n": 1, "hostnames": ["S5"]}', "failure")
    assert scaler.calls == []


def test_add_requires_token_when_configured(state_dir):
    scaler = FakeScaler(state_dir, S3)
    client = make_app(state_dir, scaler, token=ADMIN_TOKEN).flask.test_client()
    push(client, 1, S3)
    for headers in ({}, {"Authorization": "Bearer nope"}, MEMBER_AUTH):
        r = client.post("/add", json={"n": 1}, headers=headers)
        assert r.status_code == 401 and r.data == UNAUTHORIZED
        r = client.delete("/rm", json={"n": 1}, headers=headers)
        assert r.status_code == 401 and r.data == UNAUTHORIZED
    assert scaler.calls == [] and scaler.desired_calls == 0
    r = client.post("/add", json={"n": 1}, headers=ADMIN_AUTH)
    assert r.status_code == 200 and r.get_json()["message"]["N"] == 4


def test_add_without_token_configured_is_open(scaled):
    _, client, _ = scaled
    assert client.post("/add", json={"n": 1}).status_code == 200


def test_add_times_out_with_504_when_membership_never_arrives(state_dir):
    scaler = FakeScaler(state_dir, S3, converge=False)
    client = make_app(state_dir, scaler, scale_timeout=0.3).flask.test_client()
    push(client, 1, S3)
    r = client.post("/add", json={"n": 1, "hostnames": ["S5"]})
    assert r.status_code == 504
    assert r.data == seed_json(
        "<Error> change accepted but not in force after 0.3s (not yet ready: ['S5']; not yet removed: []); "
        "check the replicas",
        "failure",
    )
    r = client.delete("/rm", json={"n": 1, "hostnames": ["Server 2"]})
    assert r.status_code == 504
    assert b"(not yet ready: ['S5']; not yet removed: ['Server 2'])" in r.data


def test_conflict_is_retried(state_dir):
    scaler = FakeScaler(state_dir, S3, conflicts=2)
    client = make_app(state_dir, scaler).flask.test_client()
    push(client, 1, S3)
    r = client.post("/add", json={"n": 1, "hostnames": ["S5"]})
    assert r.status_code == 200
    assert [v for _, v in scaler.calls] == ["1", "2", "3"]
    assert scaler.desired_calls == 3


def test_conflict_every_time_is_409(state_dir):
    scaler = FakeScaler(state_dir, S3, conflicts=100)
    client = make_app(state_dir, scaler).flask.test_client()
    push(client, 1, S3)
    r = client.post("/add", json={"n": 1})
    assert r.status_code == 409
    assert r.data == seed_json("<Error> the replica list kept changing; try again", "failure")
    assert len(scaler.calls) == api.CONFLICT_RETRIES
    assert client.get("/rep").get_json()["message"]["N"] == 3


@pytest.mark.parametrize(
    ("error_on", "message"),
    [
        ("desired", "<Error> supervisor unreachable: connection refused"),
        ("set_desired", "<Error> supervisor refused the change: 500 boom"),
    ],
)
def test_scaler_error_is_502(state_dir, error_on, message):
    scaler = FakeScaler(state_dir, S3, error_on=error_on)
    client = make_app(state_dir, scaler).flask.test_client()
    push(client, 1, S3)
    r = client.post("/add", json={"n": 1})
    assert r.status_code == 502
    assert r.data == seed_json(message, "failure")


def test_no_scaler_is_501(state_dir):
    client = make_app(state_dir).flask.test_client()
    for r in (client.post("/add", json={"n": 1}), client.delete("/rm", json={"n": 1})):
        assert r.status_code == 501
        assert r.data == seed_json("<Error> this balancer has no scaler: membership is pushed by its owner", "failure")


# ---------------------------------------------------------------------------------------------
# Health, metrics, OpenAPI, generic errors
# ---------------------------------------------------------------------------------------------


def test_readyz_waits_for_a_membership(state_dir):
    client = make_app(state_dir).flask.test_client()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json() == {"status": "waiting for a membership push", "revision": 0}
    push(client, 7, S3)
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ready", "revision": 7}


def test_healthz(state_dir):
    r = make_app(state_dir).flask.test_client().get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}


def test_metrics(state_dir):
    r = make_app(state_dir).flask.test_client().get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain")
    text = r.get_data(as_text=True)
    for name in ("ringlb_requests_total", "ringlb_request_duration_seconds", "ringlb_retries_total",
                 "ringlb_ejections_total", "ringlb_membership_revision"):
        assert f"# HELP {name}" in text


def _openapi_path(rule: str) -> str:
    return rule.replace("<path:", "{").replace("<", "{").replace(">", "}")


def test_openapi_covers_every_route(state_dir):
    app = make_app(state_dir)
    r = app.flask.test_client().get("/openapi.json")
    assert r.status_code == 200 and r.content_type == "application/json"
    spec = json.loads(r.data)
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    routes: dict[str, set[str]] = {}
    for rule in app.flask.url_map.iter_rules():
        if rule.endpoint == "static":  # Flask's own; the worker never hands /static to Flask
            continue
        routes.setdefault(_openapi_path(rule.rule), set()).update(
            m.lower() for m in rule.methods - {"HEAD", "OPTIONS"}
        )
    for path, methods in routes.items():
        assert path in paths, f"{path} missing from openapi.json"
        assert methods <= set(paths[path]), f"{path}: {methods - set(paths[path])} not documented"
    # and the worker hands exactly these paths to Flask
    assert set(routes) == set(api.CONTROL_PATHS)
    assert set(paths) - set(routes) == {"/{path}"}


def test_oversized_body_is_413_in_seed_format(scaled):
    _, client, scaler = scaled
    r = client.post("/add", data=b'{"n": 1, "hostnames": ["' + b"x" * 70_000 + b'"]}', content_type="application/json")
    assert r.status_code == 413
    assert r.data == seed_json("<Error> request body exceeds 65536 bytes", "failure")
    assert scaler.calls == []
    r = client.put("/membership", data=b"x" * 70_000, headers=MEMBER_AUTH, content_type="application/json")
    assert r.status_code == 413
    assert r.data == seed_json("<Error> request body exceeds 65536 bytes", "failure")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("get", "/add", {"POST"}),
        ("put", "/add", {"POST"}),
        ("get", "/rm", {"DELETE"}),
        ("post", "/rm", {"DELETE"}),
        ("post", "/rep", {"GET", "HEAD"}),
        ("delete", "/membership", {"GET", "HEAD", "PUT"}),
        ("post", "/healthz", {"GET", "HEAD"}),
    ],
)
def test_wrong_method_is_405(state_dir, method, path, allowed):
    r = getattr(make_app(state_dir).flask.test_client(), method)(path)
    assert r.status_code == 405
    body = r.get_json()
    assert body["status"] == "failure"
    prefix = "<Error> method not allowed here; use "
    assert body["message"].startswith(prefix)
    assert set(body["message"][len(prefix):].split(", ")) == allowed | {"OPTIONS"}


def test_authorized_compares_whole_header(state_dir):
    client = make_app(state_dir).flask.test_client()
    r = client.put("/membership", json=membership_doc(1, S3), headers={"Authorization": f"Bearer {MEMBER_TOKEN}x"})
    assert r.status_code == 401
    r = client.put("/membership", json=membership_doc(1, S3), headers={"Authorization": f"Bearer {MEMBER_TOKEN[:-1]}"})
    assert r.status_code == 401
