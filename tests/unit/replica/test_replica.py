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
