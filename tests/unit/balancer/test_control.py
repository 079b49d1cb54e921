"""The balancer's own endpoints (ringlb_balancer.control): ``Control.dispatch`` under asyncio,
with a fake scaler. The byte-level framing of their answers is the engine's (test_engine.py)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import zlib
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from ringlb_balancer import control as control_module
from ringlb_balancer.config import Settings
from ringlb_balancer.control import ADMIN_PATHS, PUBLIC_PATHS, ROUTES, Control, Reply, Request
from ringlb_balancer.routing import RoutingStore
from ringlb_balancer.scaling import Conflict, ScalerError
from ringlb_balancer.shared import SharedState
from ringlb_ring.membership import parse

T = TypeVar("T")

S3 = ["Server 1", "Server 2", "Server 3"]
MEMBER_TOKEN = "member-secret"
ADMIN_TOKEN = "admin-secret"
MEMBER_AUTH = {"authorization": f"Bearer {MEMBER_TOKEN}"}
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
UNAUTHORIZED = (
    b'{"message": "<Error> missing or wrong bearer token (Authorization: Bearer <token>)", "status": "failure"}'
)


def address(name: str) -> str:
    return f"127.0.0.1:{10_000 + zlib.crc32(name.encode()) % 50_000}"


def membership_doc(revision: int, names: list[str], strategy: str = "maglev") -> dict:
    return {
        "revision": revision,
        "members": [{"name": n, "address": address(n)} for n in names],
        "hashing": {"strategy": strategy, "tableSize": 257},
    }


def seed_json(message: Any, status: str = "successful") -> bytes:
    return json.dumps({"message": message, "status": status}).encode()


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)


class FakeScaler:
    """Stands in for the local supervisor / the ReplicaSet resource.

    ``set_desired`` records the call and then, like the supervisor or operator would, publishes
    the new membership to the balancer's state dir from "another process" (its own
    RoutingStore): at once, after ``delay`` seconds on a timer thread, or never.
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
        self.timers: list[threading.Timer] = []
        self.lock = threading.Lock()

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
            self.later(self.delay, list(names))
        else:
            self.push(list(names))

    def later(self, delay: float, names: list[str]) -> None:
        t = threading.Timer(delay, self.push, (names,))
        t.start()
        self.timers.append(t)

    def push(self, names: list[str]) -> None:
        with self.lock:
            revision = self.store.shared.revision + 1
            self.store.publish(parse(membership_doc(revision, names)))

    def join(self) -> None:
        for t in self.timers:
            t.cancel()
            t.join()


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / "state")


def make(state_dir: str, scaler=None, own=frozenset(), **settings) -> Control:
    settings.setdefault("membership_token", MEMBER_TOKEN)
    s = Settings(state_dir=state_dir, **settings)
    return Control(s, RoutingStore(SharedState(state_dir), s.snapshot), scaler, own)


async def call(
    control: Control,
    method: str,
    path: str,
    body: Any = None,
    headers=None,
    *,
    raw: bytes | None = None,
    admin: bool = False,
) -> Reply:
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    return await control.dispatch(Request(method, path, {}, dict(headers or {}), data, "127.0.0.1"), admin)


async def push(control: Control, revision: int, names: list[str], **kw) -> Reply:
    return await call(control, "PUT", "/membership", membership_doc(revision, names, **kw), MEMBER_AUTH)


def doc_of(reply: Reply) -> Any:
    return json.loads(reply.body)


@pytest.fixture
def scaled(state_dir):
    """A control over Server 1..3, with a converging fake scaler."""
    scaler = FakeScaler(state_dir, S3)
    control = make(state_dir, scaler)
    assert run(push(control, 1, S3)).status == 200
    yield control, scaler
    scaler.join()
    control.executor.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------
# /rep and PUT /membership
# ---------------------------------------------------------------------------------------------


def test_rep_exact_bytes_after_membership_push(state_dir):
    async def body():
        c = make(state_dir)
        r = await call(c, "GET", "/rep")
        assert (r.status, r.body) == (200, b'{"message": {"N": 0, "replicas": []}, "status": "successful"}')
        r = await push(c, 1, S3)
        assert r.status == 200 and doc_of(r) == {"revision": 1, "members": 3, "changed": True}
        r = await call(c, "GET", "/rep")
        assert r.status == 200 and r.content_type == b"application/json"
        assert (
            r.body == b'{"message": {"N": 3, "replicas": ["Server 1", "Server 2", "Server 3"]}, "status": "successful"}'
        )
        assert (await call(c, "HEAD", "/rep")).status == 200

    run(body())


def test_membership_push_is_idempotent(state_dir):
    async def body():
        c = make(state_dir)
        assert doc_of(await push(c, 3, S3))["changed"] is True
        r = await push(c, 3, S3)
        assert r.status == 200 and doc_of(r) == {"revision": 3, "members": 3, "changed": False}

    run(body())


def test_get_membership(state_dir):
    async def body():
        c = make(state_dir)
        await push(c, 2, S3, strategy="ring")
        r = await call(c, "GET", "/membership")
        doc = doc_of(r)
        assert doc["revision"] == 2
        assert doc["members"] == [{"name": n, "address": address(n)} for n in S3]
        assert doc["hashing"]["strategy"] == "ring"
        assert doc["key"] == {"source": "header", "name": "X-Request-ID"}

    run(body())


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": MEMBER_TOKEN},
        {"authorization": f"Basic {MEMBER_TOKEN}"},
        {"authorization": f"Bearer {MEMBER_TOKEN}x"},
        {"authorization": f"Bearer {MEMBER_TOKEN[:-1]}"},
    ],
)
def test_membership_requires_token(state_dir, headers):
    async def body():
        c = make(state_dir)
        r = await call(c, "PUT", "/membership", membership_doc(1, S3), headers)
        assert (r.status, r.body) == (401, UNAUTHORIZED)
        assert doc_of(await call(c, "GET", "/rep"))["message"]["N"] == 0

    run(body())


def test_membership_without_a_token_configured_is_403(state_dir):
    async def body():
        c = make(state_dir, membership_token="", token=ADMIN_TOKEN)
        for headers in ({}, ADMIN_AUTH, MEMBER_AUTH, {"authorization": "Bearer "}):
            r = await call(c, "PUT", "/membership", membership_doc(1, S3), headers)
            assert r.status == 403
            assert r.body == seed_json(
                "<Error> membership pushes are disabled: no RINGLB_MEMBERSHIP_TOKEN is configured", "failure"
            )
        assert doc_of(await call(c, "GET", "/rep"))["message"]["N"] == 0

    run(body())


def test_add_token_never_opens_membership(state_dir):
    async def body():
        c = make(state_dir, token=ADMIN_TOKEN)
        r = await call(c, "PUT", "/membership", membership_doc(1, S3), ADMIN_AUTH)
        assert (r.status, r.body) == (401, UNAUTHORIZED)
        assert (await push(c, 1, S3)).status == 200

    run(body())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "body must be a JSON membership document"),
        (b"", "body must be a JSON membership document"),
        (b"{bad", "body must be a JSON membership document"),
        (b"[" * 30_000 + b"]" * 30_000, "body must be a JSON membership document"),
        (b'{"a":' * 30_000 + b"1" + b"}" * 30_000, "body must be a JSON membership document"),
        (b"[]", "body must be a JSON object with revision, members, hashing"),
        (b'{"revision": "2", "members": []}', "revision: required, an integer from 1 to 2^63-1"),
        (b'{"revision": 2, "members": {}}', "members: required, a list of {name, address}"),
        (
            b'{"revision": 2, "members": [{"name": "S1", "address": "localhost:80"}]}',
            "members[0]: address host must be an IP address, got 'localhost'",
        ),
    ],
    ids=[
        "text",
        "empty",
        "truncated",
        "nested-30000-lists",
        "nested-30000-objects",
        "list",
        "revision-string",
        "members-object",
        "dns-name",
    ],
)
def test_malformed_membership_is_400_and_changes_nothing(state_dir, raw, message):
    async def body():
        c = make(state_dir)
        await push(c, 1, S3)
        before = (await call(c, "GET", "/membership")).body
        r = await call(c, "PUT", "/membership", raw=raw, headers=MEMBER_AUTH)
        assert (r.status, r.body) == (400, seed_json(message, "failure"))
        assert (await call(c, "GET", "/membership")).body == before

    run(body())


def test_unknown_strategy_is_400(state_dir):
    async def body():
        c = make(state_dir)
        r = await call(
            c, "PUT", "/membership", {"revision": 2, "members": [], "hashing": {"strategy": "rendezvous"}}, MEMBER_AUTH
        )
        assert r.status == 400
        message = doc_of(r)["message"]
        assert message.startswith("hashing: ") and "rendezvous" in message

    run(body())


@pytest.mark.parametrize(
    "doc",
    [
        {"revision": 2, "members": [], "key": {"source": "client-ip", "name": 5}},
        {"revision": 2, "members": [{"name": "S1", "address": "127.0.0.1:\u00b2"}]},
        {"revision": 2, "members": [], "key": {"source": "header", "name": "X", "extra": 1}},
        {"revision": 2, "members": [], "hashing": {"tableSize": True}},
    ],
    ids=["client-ip-key-with-int-name", "unicode-digit-port", "key-extra-field", "bool-table-size"],
)
def test_no_membership_document_crashes_the_endpoint(state_dir, doc):
    """Bad input gets a 4xx, never a 500, and the ring in force stays."""

    async def body():
        c = make(state_dir)
        await push(c, 1, S3)
        r = await call(c, "PUT", "/membership", doc, MEMBER_AUTH)
        assert r.status == 400
        assert doc_of(await call(c, "GET", "/rep"))["message"]["replicas"] == S3

    run(body())


def test_stale_membership_is_409(state_dir):
    async def body():
        c = make(state_dir)
        await push(c, 5, S3)
        r = await push(c, 4, ["S9"])
        assert (r.status, r.body) == (409, seed_json("revision 4 is stale: revision 5 is in force", "failure"))
        r = await push(c, 5, ["S9"])  # same revision, other content
        assert r.status == 409
        assert doc_of(await call(c, "GET", "/rep"))["message"]["replicas"] == S3

    run(body())


def test_revision_jump_over_2_to_the_32_is_400(state_dir):
    async def body():
        c = make(state_dir)
        await push(c, 7, S3)
        r = await push(c, 7 + 2**32 + 1, ["S9"])
        assert r.status == 400
        assert r.body == seed_json(f"revision {7 + 2**32 + 1} jumps more than 2^32 past revision 7 in force", "failure")
        assert doc_of(await call(c, "GET", "/rep"))["message"]["replicas"] == S3
        assert (await push(c, 7 + 2**32, ["S9"])).status == 200  # exactly 2^32 is allowed

    run(body())


def test_too_many_members_for_seed_strategy_is_400(state_dir):
    async def body():
        c = make(state_dir)
        r = await push(c, 1, [f"S{i}" for i in range(57)], strategy="seed")
        assert r.status == 400 and doc_of(r)["status"] == "failure"

    run(body())


@pytest.mark.parametrize(
    ("own", "member", "refused"),
    [
        ({("127.0.0.1", 5000)}, "127.0.0.1:5000", True),
        ({("0.0.0.0", 5000)}, "127.0.0.1:5000", True),  # a loopback address reaches a wildcard listener
        ({("0.0.0.0", 5000)}, "127.0.0.2:5000", True),
        ({("::", 5000)}, "[::1]:5000", True),
        ({("0.0.0.0", 5000), ("0.0.0.0", 5001)}, "127.0.0.1:5001", True),  # the admin listener too
        ({("0.0.0.0", 5000)}, "127.0.0.1:5001", False),  # another port: a replica on this host
        ({("0.0.0.0", 5000)}, "192.0.2.10:5000", False),  # TEST-NET: not an address of this host
        ({("10.1.2.3", 5000)}, "192.0.2.10:5000", False),
    ],
)
def test_member_at_the_balancers_own_listener_is_400(state_dir, own, member, refused):
    async def body():
        c = make(state_dir, own=frozenset(own))
        doc = {"revision": 1, "members": [{"name": "S1", "address": member}], "hashing": {"strategy": "ring"}}
        r = await call(c, "PUT", "/membership", doc, MEMBER_AUTH)
        if refused:
            assert r.status == 400
            assert r.body == seed_json(f"member S1: {member} is this balancer's own listener", "failure")
            assert doc_of(await call(c, "GET", "/rep"))["message"]["N"] == 0
        else:
            assert r.status == 200, r.body

    run(body())


# ---------------------------------------------------------------------------------------------
# /add and /rm
# ---------------------------------------------------------------------------------------------


def test_add_seed_example(scaled):
    c, scaler = scaled
    r = run(call(c, "POST", "/add", {"n": 4, "hostnames": ["S5", "S4", "S10", "S11"]}))
    assert r.status == 200
    assert r.body == (
        b'{"message": {"N": 7, "replicas": ["Server 1", "Server 2", "Server 3", "S5", "S4", "S10", "S11"]}, '
        b'"status": "successful"}'
    )
    assert scaler.calls == [(S3 + ["S5", "S4", "S10", "S11"], "1")]
    assert run(call(c, "GET", "/rep")).body == r.body


def test_add_generated_names(scaled):
    c, _ = scaled
    r = run(call(c, "POST", "/add", {"n": 2}))
    assert r.status == 200
    assert doc_of(r)["message"] == {"N": 5, "replicas": S3 + ["Server 4", "Server 5"]}


def test_rm_seed_example(scaled):
    c, scaler = scaled
    run(call(c, "POST", "/add", {"n": 4, "hostnames": ["S5", "S4", "S10", "S11"]}))
    r = run(call(c, "DELETE", "/rm", {"n": 3, "hostnames": ["S5", "S4"]}))
    assert r.status == 200
    message = doc_of(r)["message"]
    assert message["N"] == 4
    assert "S5" not in message["replicas"] and "S4" not in message["replicas"]
    assert message["replicas"] == scaler.names
    assert set(message["replicas"]) < {"Server 1", "Server 2", "Server 3", "S10", "S11"}
    assert r.body == seed_json(message)


def test_add_waits_for_a_late_membership(state_dir):
    scaler = FakeScaler(state_dir, S3, delay=0.2)
    c = make(state_dir, scaler, scale_timeout=30.0)
    run(push(c, 1, S3))
    r = run(call(c, "POST", "/add", {"n": 1, "hostnames": ["S5"]}))
    assert r.status == 200
    assert doc_of(r)["message"]["replicas"] == S3 + ["S5"]
    scaler.join()


def test_add_answers_when_its_own_change_is_in_force_while_another_is_pending(state_dir):
    """Its additions are in force: it answers, even though the desired list has moved on (S6
    added by someone else, not running yet)."""
    scaler = FakeScaler(state_dir, S3, converge=False)
    c = make(state_dir, scaler, scale_timeout=30.0)
    run(push(c, 1, S3))
    real_set = scaler.set_desired

    def set_desired(names, version):
        real_set(names, version)
        scaler.names = names + ["S6"]  # another change, accepted right after ours
        scaler.version += 1
        scaler.later(0.1, names)  # ours comes into force; S6 never does while we wait

    scaler.set_desired = set_desired
    r = run(call(c, "POST", "/add", {"n": 1, "hostnames": ["S5"]}))
    assert r.status == 200, r.body
    assert doc_of(r)["message"] == {"N": 4, "replicas": S3 + ["S5"]}  # a 200, not the timeout's 504
    scaler.join()


def test_add_undone_by_a_later_rm_answers_without_waiting_out_the_timeout(state_dir):
    """Ours added S5; a later /rm took S5 away again before it was ever in the ring. Nothing of
    ours is left to wait for: answer with the ring as it is, not 504 after the timeout."""
    scaler = FakeScaler(state_dir, S3, converge=False)
    c = make(state_dir, scaler, scale_timeout=30.0)
    run(push(c, 1, S3))
    real_set = scaler.set_desired

    def set_desired(names, version):
        real_set(names, version)
        scaler.names = [n for n in names if n != "S5"]  # the later /rm, accepted right after ours
        scaler.version += 1

    scaler.set_desired = set_desired
    r = run(call(c, "POST", "/add", {"n": 1, "hostnames": ["S5"]}))
    assert r.status == 200, r.body
    assert doc_of(r)["message"] == {"N": 3, "replicas": S3}  # a 200, not the timeout's 504


def test_rm_answers_when_its_removal_is_in_force_while_an_addition_is_pending(state_dir):
    scaler = FakeScaler(state_dir, S3, converge=False)
    c = make(state_dir, scaler, scale_timeout=30.0)
    run(push(c, 1, S3))
    real_set = scaler.set_desired

    def set_desired(names, version):
        real_set(names, version)
        scaler.later(0.05, [n for n in names if n != "S7"])  # S7 not running yet

    scaler.set_desired = set_desired
    # someone else's addition is pending in the desired list, not in force
    scaler.names = S3 + ["S7"]
    r = run(call(c, "DELETE", "/rm", {"n": 1, "hostnames": ["Server 2"]}))
    assert r.status == 200, r.body
    assert doc_of(r)["message"]["replicas"] == ["Server 1", "Server 3"]
    assert scaler.calls == [(["Server 1", "Server 3", "S7"], "1")]
    scaler.join()


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        (
            "POST",
            "/add",
            {"n": 1, "hostnames": ["S5", "S4"]},
            "<Error> Length of hostname list is more than newly added instances",
        ),
        (
            "DELETE",
            "/rm",
            {"n": 1, "hostnames": ["Server 1", "Server 2"]},
            "<Error> Length of hostname list is more than removable instances",
        ),
        ("POST", "/add", {"n": 0}, '<Error> "n" must be between 1 and 56'),
        ("POST", "/add", {"n": "1"}, '<Error> "n" is required and must be an integer'),
        ("POST", "/add", {"n": True}, '<Error> "n" is required and must be an integer'),
        ("POST", "/add", {"hostnames": ["S5"]}, '<Error> "n" is required and must be an integer'),
        ("POST", "/add", {"n": 1, "hostnames": ["Server 1"]}, "<Error> hostname(s) already in use: Server 1"),
        ("POST", "/add", {"n": 1, "hostnames": ["bad/name"]}, None),
        (
            "POST",
            "/add",
            {"n": 2, "hostnames": ["S5", "s5"]},
            "<Error> hostnames 'S5' and 's5' map to the same pod name 's5'",
        ),
        ("POST", "/add", {"n": 54}, "<Error> adding 54 would make 57 replicas; the cap is 56"),
        ("DELETE", "/rm", {"n": 1, "hostnames": ["S9"]}, "<Error> not a current replica: S9"),
        ("DELETE", "/rm", {"n": 4}, "<Error> cannot remove 4 replicas: only 3 exist"),
        ("POST", "/add", [1, 2], '<Error> body must be a JSON object like {"n": 1, "hostnames": []}'),
        ("POST", "/add", {"n": 1, "extra": 1}, "<Error> unknown field(s): extra"),
    ],
)
def test_bad_scale_requests_are_400_and_change_nothing(scaled, method, path, body, message):
    c, scaler = scaled
    r = run(call(c, method, path, body))
    assert r.status == 400
    if message is not None:
        assert r.body == seed_json(message, "failure")
    else:
        assert doc_of(r)["message"].startswith("<Error> invalid hostname 'bad/name'")
    assert scaler.calls == []
    assert doc_of(run(call(c, "GET", "/rep")))["message"]["replicas"] == S3


@pytest.mark.parametrize(("path", "method"), [("/add", "POST"), ("/rm", "DELETE")])
@pytest.mark.parametrize(
    "raw",
    [b"not json", b"", b'{"n": 1', b"[" * 30_000 + b"]" * 30_000],
    ids=["text", "empty", "truncated", "nested-30000"],
)
def test_non_json_scale_body_is_400(scaled, path, method, raw):
    c, scaler = scaled
    r = run(call(c, method, path, raw=raw))
    assert r.status == 400
    assert r.body == seed_json('<Error> body must be JSON like {"n": 1, "hostnames": ["S5"]}', "failure")
    assert scaler.calls == []


def test_add_requires_token_when_configured(state_dir):
    async def body():
        scaler = FakeScaler(state_dir, S3)
        c = make(state_dir, scaler, token=ADMIN_TOKEN)
        await push(c, 1, S3)
        for headers in ({}, {"authorization": "Bearer nope"}, MEMBER_AUTH):
            r = await call(c, "POST", "/add", {"n": 1}, headers)
            assert (r.status, r.body) == (401, UNAUTHORIZED)
            r = await call(c, "DELETE", "/rm", {"n": 1}, headers)
            assert (r.status, r.body) == (401, UNAUTHORIZED)
        assert scaler.calls == [] and scaler.desired_calls == 0
        r = await call(c, "POST", "/add", {"n": 1}, ADMIN_AUTH)
        assert r.status == 200 and doc_of(r)["message"]["N"] == 4

    run(body())


def test_add_without_token_configured_is_open(scaled):
    c, _ = scaled
    assert run(call(c, "POST", "/add", {"n": 1})).status == 200


def test_add_times_out_with_504_when_membership_never_arrives(state_dir):
    async def body():
        scaler = FakeScaler(state_dir, S3, converge=False)
        c = make(state_dir, scaler, scale_timeout=0.3)
        await push(c, 1, S3)
        r = await call(c, "POST", "/add", {"n": 1, "hostnames": ["S5"]})
        assert r.status == 504
        assert r.body == seed_json(
            "<Error> change accepted but not in force after 0.3s (not yet ready: ['S5']; not yet removed: []); "
            "check the replicas",
            "failure",
        )
        r = await call(c, "DELETE", "/rm", {"n": 1, "hostnames": ["Server 2"]})
        assert r.status == 504
        # this call waits for its own change only: Server 2 gone (S5 is the earlier call's)
        assert b"(not yet ready: []; not yet removed: ['Server 2'])" in r.body

    run(body())


def test_conflict_is_retried(state_dir):
    scaler = FakeScaler(state_dir, S3, conflicts=2)
    c = make(state_dir, scaler)
    run(push(c, 1, S3))
    r = run(call(c, "POST", "/add", {"n": 1, "hostnames": ["S5"]}))
    assert r.status == 200
    assert [v for _, v in scaler.calls] == ["1", "2", "3"]
    assert scaler.desired_calls == 3


def test_conflict_every_time_is_409(state_dir):
    scaler = FakeScaler(state_dir, S3, conflicts=100)
    c = make(state_dir, scaler)
    run(push(c, 1, S3))
    r = run(call(c, "POST", "/add", {"n": 1}))
    assert (r.status, r.body) == (409, seed_json("<Error> the replica list kept changing; try again", "failure"))
    assert len(scaler.calls) == control_module.CONFLICT_RETRIES
    assert doc_of(run(call(c, "GET", "/rep")))["message"]["N"] == 3


@pytest.mark.parametrize(
    ("error_on", "message"),
    [
        ("desired", "<Error> supervisor unreachable: connection refused"),
        ("set_desired", "<Error> supervisor refused the change: 500 boom"),
    ],
)
def test_scaler_error_is_502(state_dir, error_on, message):
    scaler = FakeScaler(state_dir, S3, error_on=error_on)
    c = make(state_dir, scaler)
    run(push(c, 1, S3))
    r = run(call(c, "POST", "/add", {"n": 1}))
    assert (r.status, r.body) == (502, seed_json(message, "failure"))


def test_no_scaler_is_501(state_dir):
    c = make(state_dir)
    for method, path in (("POST", "/add"), ("DELETE", "/rm")):
        r = run(call(c, method, path, {"n": 1}))
        assert r.status == 501
        assert r.body == seed_json("<Error> this balancer has no scaler: membership is pushed by its owner", "failure")


def test_concurrent_adds_do_not_delay_healthz(state_dir):
    """/add waits by awaiting, not by holding the loop: 50 of them waiting, a probe still
    answers at once."""
    scaler = FakeScaler(state_dir, S3, converge=False)
    c = make(state_dir, scaler, scale_timeout=30.0)
    run(push(c, 1, S3))

    async def body():
        adds = [asyncio.create_task(call(c, "POST", "/add", {"n": 1})) for _ in range(50)]
        deadline = time.monotonic() + 60
        while not scaler.calls:  # one /add waits for its change, the rest for the lock
            assert time.monotonic() < deadline, "no /add reached the scaler"
            await asyncio.sleep(0.01)
        assert not any(t.done() for t in adds)
        for _ in range(5):
            # Answered while every /add still waits (they never finish): probes do not queue
            # behind them, whatever the machine's speed.
            r = await call(c, "GET", "/healthz")
            assert (r.status, doc_of(r)) == (200, {"status": "ok"})
            assert (await call(c, "GET", "/readyz")).status == 200
        assert not any(t.done() for t in adds)
        for t in adds:
            t.cancel()
        await asyncio.gather(*adds, return_exceptions=True)

    run(body())
    c.executor.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------
# Health, metrics, OpenAPI, listeners, generic errors
# ---------------------------------------------------------------------------------------------


def test_readyz_waits_for_a_membership(state_dir):
    async def body():
        c = make(state_dir)
        r = await call(c, "GET", "/readyz")
        assert (r.status, doc_of(r)) == (503, {"status": "waiting for a membership push", "revision": 0})
        await push(c, 7, S3)
        r = await call(c, "GET", "/readyz")
        assert (r.status, doc_of(r)) == (200, {"status": "ready", "revision": 7})

    run(body())


def test_readyz_is_503_while_draining(state_dir):
    async def body():
        c = make(state_dir)
        await push(c, 7, S3)
        c.draining = True
        r = await call(c, "GET", "/readyz")
        assert (r.status, doc_of(r)) == (503, {"status": "draining", "revision": 7})
        assert (await call(c, "GET", "/healthz")).status == 200  # alive, just not taking new traffic

    run(body())


def test_one_worker_draining_makes_every_worker_say_so(state_dir):
    """Workers share the flag: a sibling whose own SIGTERM is still queued answers 503 too."""

    async def body():
        first, sibling = make(state_dir), make(state_dir)
        await push(first, 7, S3)
        first.draining = True
        assert sibling.draining
        assert (await call(sibling, "GET", "/readyz")).status == 503

    run(body())


def write_snapshot(path, doc, mtime_ns: int) -> None:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_readyz_is_503_while_the_snapshot_is_ahead(state_dir, tmp_path):
    snapshot = tmp_path / "membership.json"
    write_snapshot(snapshot, membership_doc(9, S3), 1_000_000_000)

    async def body():
        c = make(state_dir, snapshot=str(snapshot))
        await push(c, 7, S3)
        r = await call(c, "GET", "/readyz")
        assert (r.status, doc_of(r)) == (503, {"status": "loading snapshot revision 9", "revision": 7})
        assert c.store.follow_snapshot() is True
        r = await call(c, "GET", "/readyz")
        assert (r.status, doc_of(r)) == (200, {"status": "ready", "revision": 9})

    run(body())


def test_readyz_ignores_a_snapshot_behind_or_broken(state_dir, tmp_path):
    snapshot = tmp_path / "membership.json"

    async def body():
        c = make(state_dir, snapshot=str(snapshot))
        await push(c, 7, S3)
        assert (await call(c, "GET", "/readyz")).status == 200  # no file at all
        write_snapshot(snapshot, membership_doc(6, S3), 1_000_000_000)
        assert (await call(c, "GET", "/readyz")).status == 200
        write_snapshot(snapshot, '{"revision": 99, "memb', 2_000_000_000)
        assert (await call(c, "GET", "/readyz")).status == 200

    run(body())


def test_follow_snapshot_publishes_newer_and_ignores_older_or_bad(state_dir, tmp_path):
    snapshot = tmp_path / "membership.json"
    store = RoutingStore(SharedState(state_dir), str(snapshot))
    other = RoutingStore(SharedState(state_dir))  # another worker process
    assert store.follow_snapshot() is False  # no file yet
    write_snapshot(snapshot, membership_doc(3, S3), 1_000_000_000)
    assert store.follow_snapshot() is True
    assert other.current().membership.revision == 3 and other.current().membership.names == S3
    assert store.follow_snapshot() is False  # already in force
    other.publish(parse(membership_doc(5, ["S9"])))  # a push wins over the file
    write_snapshot(snapshot, membership_doc(4, S3 + ["S4"]), 2_000_000_000)
    assert store.follow_snapshot() is False
    assert store.current().membership.revision == 5
    for mtime, text in enumerate(
        [
            '{"revision": 8, "members": [',
            "[]",
            json.dumps({"revision": 8, "members": 3}),
            json.dumps(membership_doc(8, [f"S{i}" for i in range(57)], "seed")),
        ]
    ):
        write_snapshot(snapshot, text, 3_000_000_000 + mtime)
        assert store.follow_snapshot() is False, text
        assert store.current().membership.revision == 5
    write_snapshot(snapshot, membership_doc(8, ["S8"]), 4_000_000_000)
    assert store.follow_snapshot() is True
    assert other.current().membership.names == ["S8"] and other.shared.revision == 8


def test_healthz(state_dir):
    r = run(call(make(state_dir), "GET", "/healthz"))
    assert (r.status, doc_of(r)) == (200, {"status": "ok"})


def test_metrics(state_dir):
    c = make(state_dir)
    run(push(c, 4, S3))
    r = run(call(c, "GET", "/metrics"))
    assert r.status == 200
    assert r.content_type.startswith(b"text/plain")
    text = r.body.decode()
    for name in (
        "ringlb_requests_total",
        "ringlb_request_duration_seconds",
        "ringlb_retries_total",
        "ringlb_ejections_total",
        "ringlb_membership_revision",
        "ringlb_member_up",
    ):
        assert f"# HELP {name}" in text
    assert "ringlb_membership_revision 4.0" in text
    assert 'ringlb_member_up{member="Server 2"} 1.0' in text


def test_openapi_covers_every_route(state_dir):
    r = run(call(make(state_dir), "GET", "/openapi.json"))
    assert r.status == 200 and r.content_type == b"application/json"
    spec = json.loads(r.body)
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path, methods in ROUTES.items():
        assert path in paths, f"{path} missing from openapi.json"
        documented = {m.upper() for m in paths[path]}
        assert set(methods) <= documented, f"{path}: {set(methods) - documented} not documented"
    assert set(ROUTES) <= ADMIN_PATHS
    assert set(ROUTES) >= PUBLIC_PATHS


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/add", "POST"),
        ("PUT", "/add", "POST"),
        ("GET", "/rm", "DELETE"),
        ("POST", "/rm", "DELETE"),
        ("POST", "/rep", "GET, HEAD"),
        ("DELETE", "/membership", "GET, HEAD, PUT"),
        ("POST", "/healthz", "GET, HEAD"),
        ("OPTIONS", "/readyz", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(state_dir, method, path, allowed):
    r = run(call(make(state_dir), method, path))
    assert r.status == 405
    assert r.headers == ((b"Allow", allowed.encode()),)
    assert r.body == seed_json(f"<Error> method not allowed here; use {allowed}", "failure")


def test_unknown_path_is_404(state_dir):
    r = run(call(make(state_dir), "GET", "/nope", admin=True))
    assert r.status == 404
    assert r.body == seed_json("<Error> '/nope' is not an endpoint of this listener", "failure")


@pytest.mark.parametrize("path", ["/membership", "/metrics"])
def test_admin_endpoints_only_on_the_admin_listener(state_dir, path):
    async def body():
        c = make(state_dir, admin_bind="127.0.0.1:5001")
        r = await call(c, "GET", path, admin=False)
        assert (r.status, r.body) == (
            404,
            seed_json(f"<Error> '{path}' is not an endpoint of this listener", "failure"),
        )
        assert (await call(c, "GET", path, admin=True)).status == 200
        for public in ("/rep", "/healthz", "/readyz", "/openapi.json"):  # on both listeners
            assert (await call(c, "GET", public, admin=False)).status != 404
            assert (await call(c, "GET", public, admin=True)).status != 404

    run(body())


def test_membership_push_only_on_the_admin_listener(state_dir):
    async def body():
        c = make(state_dir, admin_bind="127.0.0.1:5001")
        r = await call(c, "PUT", "/membership", membership_doc(1, S3), MEMBER_AUTH, admin=False)
        assert r.status == 404
        assert (await call(c, "PUT", "/membership", membership_doc(1, S3), MEMBER_AUTH, admin=True)).status == 200

    run(body())


def test_without_admin_bind_everything_is_on_the_public_listener(state_dir):
    async def body():
        c = make(state_dir)
        assert (await call(c, "GET", "/metrics", admin=False)).status == 200
        assert (await push(c, 1, S3)).status == 200

    run(body())


@pytest.mark.parametrize(
    "member", ["0.0.0.0:5000", "[::]:5000", "169.254.1.1:80", "[fe80::1]:80", "224.0.0.1:80", "255.255.255.255:80"]
)
def test_member_at_an_address_no_replica_listens_on_is_400(state_dir, member):
    async def body():
        c = make(state_dir)
        doc = {"revision": 1, "members": [{"name": "S1", "address": member}], "hashing": {"strategy": "ring"}}
        r = await call(c, "PUT", "/membership", doc, MEMBER_AUTH)
        assert r.status == 400 and doc_of(r)["message"].startswith("members[0]: address host "), r.body
        assert doc_of(await call(c, "GET", "/rep"))["message"]["N"] == 0

    run(body())


# ---------------------------------------------------------------------------------------------
# Requests a web page could send: cross-origin changes, DNS rebinding
# ---------------------------------------------------------------------------------------------


def test_a_cross_origin_change_is_refused_and_curl_still_works(scaled):
    control, _ = scaled
    host = {"host": "127.0.0.1:5000"}

    async def body():
        page = await call(control, "POST", "/add", {"n": 1}, {**host, "origin": "https://evil.example"})
        assert page.status == 403 and "cross-origin" in doc_of(page)["message"]
        same = await call(control, "POST", "/add", {"n": 1}, {**host, "origin": "http://127.0.0.1:5000"})
        assert same.status == 200
        curl = await call(control, "DELETE", "/rm", {"n": 1}, host)
        assert curl.status == 200
        # reading is not a change: a cross-origin page cannot read the answer anyway (no CORS)
        assert (await call(control, "GET", "/rep", None, {**host, "origin": "https://evil.example"})).status == 200

    run(body())


@pytest.mark.parametrize(
    "bind,host,status",
    [
        ("127.0.0.1:5000", "attacker.example:5000", 421),  # a DNS-rebinding page reaches loopback by its own name
        ("127.0.0.1:5000", "localhost:5000", 200),
        ("127.0.0.1:5000", "127.0.0.1:5000", 200),
        ("[::1]:5000", "[::1]:5000", 200),
        ("0.0.0.0:5000", "lb.example.com", 200),  # a public listener is reached by its names
    ],
)
def test_a_loopback_listener_answers_only_for_localhost_or_an_address(state_dir, bind, host, status):
    async def body():
        control = make(state_dir, bind=bind)
        await push(control, 1, S3)
        assert (await call(control, "GET", "/rep", None, {"host": host})).status == status

    run(body())
