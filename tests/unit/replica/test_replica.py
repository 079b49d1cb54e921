"""The replica's seed API through Flask's test client."""

from __future__ import annotations

import pytest

from ringlb_replica.app import create_app


@pytest.fixture
def client():
    return create_app({"SERVER_ID": "S7"}).test_client()


def test_home_exact_bytes(client):
    r = client.get("/home")
    assert r.status_code == 200
    assert r.content_type == "application/json"
    assert r.data == b'{"message": "Hello from Server: S7", "status": "successful"}'


def test_home_with_query_string_is_the_same(client):
    assert client.get("/home?x=1").data == b'{"message": "Hello from Server: S7", "status": "successful"}'


def test_heartbeat_is_200_and_empty(client):
    r = client.get("/heartbeat")
    assert r.status_code == 200
    assert r.data == b""


@pytest.mark.parametrize("path", ["/", "/other", "/home/", "/homes", "/Home", "/heartbeat/x", "/rep", "/static/x"])
def test_other_paths_are_404(client, path):
    assert client.get(path).status_code == 404


def test_identity_from_environment(monkeypatch):
    monkeypatch.setenv("SERVER_ID", "Server 2")
    r = create_app().test_client().get("/home")
    assert r.data == b'{"message": "Hello from Server: Server 2", "status": "successful"}'


def test_config_overrides_environment(monkeypatch):
    monkeypatch.setenv("SERVER_ID", "from-env")
    r = create_app({"SERVER_ID": "from-config"}).test_client().get("/home")
    assert r.data == b'{"message": "Hello from Server: from-config", "status": "successful"}'


def test_identity_defaults_to_unknown(monkeypatch):
    monkeypatch.delenv("SERVER_ID", raising=False)
    assert create_app().test_client().get("/home").get_json() == {
        "message": "Hello from Server: unknown",
        "status": "successful",
    }


def test_non_ascii_identity_is_json_escaped_like_the_seed():
    # json.dumps' defaults (ensure_ascii), as the seed serialized it
    r = create_app({"SERVER_ID": "Sé"}).test_client().get("/home")
    assert r.data == b'{"message": "Hello from Server: S\\u00e9", "status": "successful"}'


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_home_and_heartbeat_are_get_only(client, method):
    assert getattr(client, method)("/home").status_code == 405
    assert getattr(client, method)("/heartbeat").status_code == 405


def test_head_heartbeat(client):
    r = client.head("/heartbeat")
    assert r.status_code == 200 and r.data == b""


# -- the per-key cache model ------------------------------------------------------------------
def cached(**config):
    return create_app({"SERVER_ID": "S7", "CACHE_SIZE": 2, "MISS_COST_MS": 0, **config}).test_client()


def metric(client, name):
    for line in client.get("/metrics").data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_cache_miss_then_hit_body_unchanged():
    client = cached()
    first = client.get("/home", headers={"X-Ringlb-Key": "user-1"})
    second = client.get("/home", headers={"X-Ringlb-Key": "user-1"})
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert first.data == second.data == b'{"message": "Hello from Server: S7", "status": "successful"}'
    assert metric(client, "ringlb_replica_cache_hits_total") == 1
    assert metric(client, "ringlb_replica_cache_misses_total") == 1


def test_cache_evicts_the_least_recently_used_key():
    client = cached()
    for key in ["a", "b", "a", "c"]:  # c evicts b (a was used after b)
        client.get("/home", headers={"X-Ringlb-Key": key})
    assert client.get("/home", headers={"X-Ringlb-Key": "a"}).headers["X-Cache"] == "hit"
    assert client.get("/home", headers={"X-Ringlb-Key": "b"}).headers["X-Cache"] == "miss"
    assert metric(client, "ringlb_replica_cache_evictions_total") == 2  # c evicted b, b evicted c
    assert metric(client, "ringlb_replica_cache_keys") == 2


def test_keys_are_compared_byte_for_byte():
    client = cached(CACHE_SIZE=10)
    client.get("/home", headers={"X-Ringlb-Key": "Key"})
    assert client.get("/home", headers={"X-Ringlb-Key": "key"}).headers["X-Cache"] == "miss"
    assert client.get("/home", headers={"X-Ringlb-Key": "Key"}).headers["X-Cache"] == "hit"


def test_a_miss_costs_its_work(monkeypatch):
    slept = []
    monkeypatch.setattr("ringlb_replica.app.time.sleep", slept.append)
    client = cached(MISS_COST_MS=25)
    client.get("/home", headers={"X-Ringlb-Key": "k"})
    client.get("/home", headers={"X-Ringlb-Key": "k"})
    assert slept == [0.025]  # the miss only
    assert metric(client, "ringlb_replica_cache_miss_cost_seconds") == 0.025


def test_no_key_or_no_cache_no_header(client):
    assert "X-Cache" not in cached().get("/home").headers
    assert "X-Cache" not in client.get("/home", headers={"X-Ringlb-Key": "k"}).headers
    assert metric(client, "ringlb_replica_cache_size") == 0
    assert metric(client, "ringlb_replica_cache_misses_total") == 0


def test_cache_settings_from_environment(monkeypatch):
    monkeypatch.setenv("RINGLB_REPLICA_CACHE_SIZE", "1")
    monkeypatch.setenv("RINGLB_REPLICA_MISS_COST_MS", "0")
    client = create_app().test_client()
    assert client.get("/home", headers={"X-Ringlb-Key": "k"}).headers["X-Cache"] == "miss"
    assert metric(client, "ringlb_replica_cache_size") == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RINGLB_REPLICA_CACHE_SIZE": "lots"}, "RINGLB_REPLICA_CACHE_SIZE must be an integer, got 'lots'"),
        ({"RINGLB_REPLICA_CACHE_SIZE": "-1"}, "RINGLB_REPLICA_CACHE_SIZE must be 0 (off) to 1000000 keys, got -1"),
        ({"RINGLB_REPLICA_CACHE_SIZE": "1000001"}, "RINGLB_REPLICA_CACHE_SIZE must be 0 (off) to 1000000 keys"),
        ({"RINGLB_REPLICA_MISS_COST_MS": "soon"}, "RINGLB_REPLICA_MISS_COST_MS must be a number, got 'soon'"),
        ({"RINGLB_REPLICA_MISS_COST_MS": "-5"}, "RINGLB_REPLICA_MISS_COST_MS must be 0 to 60000 milliseconds, got -5"),
    ],
)
def test_bad_cache_settings_stop_the_replica_with_a_clear_message(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as exc:
        create_app()
    assert str(exc.value).startswith(message)
