"""Local mode end to end: the seed API byte for byte, load spread, scaling, failover."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from ringlb_harness.load import run_load
from ringlb_harness.local import LocalMode
from ringlb_harness.net import wait_until
from ringlb_harness.proc import pids_listening

WAIT = 30.0  # a deadline for an answer that comes: generous, it costs nothing when things are fast
SEED_REP = b'{"message": {"N": 3, "replicas": ["Server 1", "Server 2", "Server 3"]}, "status": "successful"}'


def test_rep_is_the_seed_answer_byte_for_byte(local: LocalMode) -> None:
    reply = requests.get(f"{local.url}/rep", timeout=WAIT)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.content == SEED_REP


def test_home_is_forwarded_to_the_owner_of_the_key(local: LocalMode) -> None:
    answers = {
        requests.get(f"{local.url}/home", headers={"X-Request-ID": "424242"}, timeout=WAIT).content for _ in range(20)
    }
    assert len(answers) == 1, "one key must always reach the same replica"
    (body,) = answers
    assert json.loads(body)["status"] == "successful"
    assert body.startswith(b'{"message": "Hello from Server: Server ')


def test_heartbeat_is_forwarded(local: LocalMode) -> None:
    reply = requests.get(f"{local.url}/heartbeat", timeout=WAIT)
    assert (reply.status_code, reply.content) == (200, b"")


def test_unknown_path_gets_the_seed_error(local: LocalMode) -> None:
    reply = requests.get(f"{local.url}/other", timeout=WAIT)
    assert reply.status_code == 400
    assert reply.content == (
        b'{"message": "<Error> \'/other\' endpoint does not exist in server replicas", "status": "failure"}'
    )


def test_ten_thousand_requests_reach_every_replica_without_errors(local: LocalMode) -> None:
    # closed loop, 16 threads; the time bound only ends a hung run (the count is what is asserted)
    result = run_load(f"{local.url}/home", 10_000, 16, timeout=WAIT, max_seconds=600, progress=False)
    print(f"\n10,000 requests in {result.duration_s:.1f} s")
    assert result.sent == 10_000 and result.failed == 0, result.summary()
    assert set(result.per_replica) == {f"Server {i}" for i in (1, 2, 3)}, result.per_replica
    assert min(result.per_replica.values()) > 2_500, f"maglev should spread evenly: {result.per_replica}"


def test_balancer_on_is_printed_once_rep_reports_the_replicas(tmp_path: Path) -> None:
    """``make dev`` says where the balancer is only when the first membership is in force:
    a user who copies the URL at once gets the seed's three replicas, never ``N: 0``."""
    local = LocalMode(tmp_path)
    try:
        wait_until(lambda: "ringlb: balancer on " in local.printed(), 60, interval=0.01, what="the balancer-on line")
        # Every worker: fresh connections land on either.
        reps = [requests.get(f"{local.url}/rep", timeout=WAIT).content for _ in range(8)]
    finally:
        leftovers = local.stop()
    assert reps == [SEED_REP] * 8, reps
    assert not leftovers, f"processes outlived ringlb dev: {leftovers}"


def test_add_and_rm_follow_the_seed_contract(own_local: LocalMode) -> None:
    local = own_local
    reply = requests.post(f"{local.url}/add", json={"n": 4, "hostnames": ["S5", "S4", "S10", "S11"]}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.content == (
        b'{"message": {"N": 7, "replicas": ["Server 1", "Server 2", "Server 3", "S5", "S4", "S10", "S11"]}, '
        b'"status": "successful"}'
    )
    # New members really serve: a key owned by S10 now gets S10's answer.
    owners = {
        requests.get(f"{local.url}/home", headers={"X-Request-ID": str(k)}, timeout=WAIT).json()["message"]
        for k in range(300)
    }
    assert "Hello from Server: S10" in owners

    reply = requests.delete(f"{local.url}/rm", json={"n": 3, "hostnames": ["S5", "S4"]}, timeout=60)
    assert reply.status_code == 200, reply.text
    remaining = reply.json()["message"]
    assert remaining["N"] == 4
    assert "S5" not in remaining["replicas"] and "S4" not in remaining["replicas"]
    assert local.rep() == remaining

    reply = requests.post(f"{local.url}/add", json={"n": 1}, timeout=60)
    assert reply.status_code == 200
    added = set(reply.json()["message"]["replicas"]) - set(remaining["replicas"])
    assert len(added) == 1
    generated = added.pop()
    assert generated.startswith("Server ")

    reply = requests.delete(f"{local.url}/rm", json={"n": 2, "hostnames": [generated]}, timeout=60)
    assert reply.status_code == 200
    after = reply.json()["message"]
    assert after["N"] == 3 and generated not in after["replicas"] and local.rep() == after


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        (
            "post",
            "/add",
            {"n": 1, "hostnames": ["A", "B"]},
            400,
            "<Error> Length of hostname list is more than newly added instances",
        ),
        (
            "delete",
            "/rm",
            {"n": 1, "hostnames": ["Server 1", "Server 2"]},
            400,
            "<Error> Length of hostname list is more than removable instances",
        ),
        ("post", "/add", {"n": 1, "hostnames": ["Server 1"]}, 400, "<Error> hostname(s) already in use: Server 1"),
        ("delete", "/rm", {"n": 1, "hostnames": ["Nope"]}, 400, "<Error> not a current replica: Nope"),
        ("delete", "/rm", {"n": 4}, 400, "<Error> cannot remove 4 replicas: only 3 exist"),
        ("post", "/add", {"n": 0}, 400, '<Error> "n" must be between 1 and 56'),
        ("post", "/add", {"n": "2"}, 400, '<Error> "n" is required and must be an integer'),
        ("post", "/add", {"hostnames": []}, 400, '<Error> "n" is required and must be an integer'),
        ("post", "/add", [1, 2], 400, '<Error> body must be a JSON object like {"n": 1, "hostnames": []}'),
    ],
)
def test_bad_scaling_requests_are_refused_and_change_nothing(
    local: LocalMode, method, path, body, status, message
) -> None:
    reply = getattr(requests, method)(f"{local.url}{path}", json=body, timeout=WAIT)
    assert reply.status_code == status
    assert reply.json() == {"message": message, "status": "failure"}
    assert local.rep() == {"N": 3, "replicas": ["Server 1", "Server 2", "Server 3"]}


def test_non_json_and_oversized_bodies(local: LocalMode) -> None:
    reply = requests.post(f"{local.url}/add", data=b"n=1", timeout=WAIT)
    assert reply.status_code == 400 and reply.json()["status"] == "failure"
    reply = requests.post(f"{local.url}/add", data=b"x" * 100_000, timeout=WAIT)
    assert reply.status_code == 413 and reply.json()["status"] == "failure"
    reply = requests.post(f"{local.url}/home", data=b"x" * (2 * 1024 * 1024), timeout=WAIT)
    assert reply.status_code == 413
    assert local.rep()["N"] == 3


def test_membership_push_needs_the_supervisors_token(local: LocalMode) -> None:
    doc = {"revision": 10**6, "members": []}
    assert requests.put(f"{local.url}/membership", json=doc, timeout=WAIT).status_code == 401
    wrong = {"Authorization": "Bearer guess"}
    assert requests.put(f"{local.url}/membership", json=doc, headers=wrong, timeout=WAIT).status_code == 401
    assert local.rep()["N"] == 3


def test_killed_replica_costs_no_retriable_get_and_comes_back(local: LocalMode) -> None:
    """SIGKILL a replica (master and worker) under load: GETs are retried on the next member
    at once, the supervisor respawns it under the same name and port, and it serves again.

    A GET is retried until its answer begins. One whose answer the replica had begun when it
    died (gunicorn writes the head and the body apart) is cut: no proxy can replay an answer the
    client already holds part of, and requests reports it as ChunkedEncodingError. That needs the
    kill to land between two writes: rare (seen once, with a cluster starting beside the run)."""
    membership = local.membership()
    victim = membership["members"][1]
    port = int(victim["address"].rsplit(":", 1)[1])
    stop = threading.Event()
    results: Counter[str] = Counter()
    lock = threading.Lock()

    def total() -> int:
        with lock:
            return sum(results.values())

    def load() -> None:
        with requests.Session() as session:
            deadline = time.monotonic() + 300  # a bound; the test stops the load long before
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    reply = session.get(
                        f"{local.url}/home", headers={"X-Request-ID": str(random.randint(100000, 999999))}, timeout=WAIT
                    )
                    outcome = reply.json()["message"] if reply.status_code == 200 else f"HTTP {reply.status_code}"
                except requests.RequestException as exc:
                    outcome = f"error {type(exc).__name__}"
                with lock:
                    results[outcome] += 1

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: total() >= 100, 60, what="the load under way")
        victims = pids_listening(port)
        assert victims, "the replica should be listening"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # leaves the ring, then comes back under the same name and the same address
        wait_until(lambda: victim["name"] not in local.rep()["replicas"], 60, what="victim out of the ring")
        wait_until(lambda: victim in local.membership()["members"], 60, what="victim back in the ring")
        print(f"\n{victim['name']} back in the ring {time.monotonic() - killed_at:.1f} s after the kill")
        with lock:
            before = results[f"Hello from Server: {victim['name']}"]
        wait_until(lambda: results[f"Hello from Server: {victim['name']}"] > before, 60, what="victim serving again")
        wait_until(lambda: total() > 200, 60, what="200 answers under the kill")
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = {k: v for k, v in results.items() if not k.startswith("Hello from Server")}
    cut = failures.pop("error ChunkedEncodingError", 0)
    assert failures == {}, f"failed requests during the kill: {failures}"
    assert cut <= len(threads), f"{cut} answers cut: more than the {len(threads)} requests in flight"
