"""Key sources (ringlb_ring.keys): the document form, and the per-request extraction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringlb_ring import keys
from ringlb_ring.keys import KeyConfig, KeyPlan
from ringlb_ring.membership import content, parse

IP = b"10.1.2.3"


def extract(
    config: KeyConfig, target: bytes = b"/", headers: dict[bytes, bytes] | None = None, ip: bytes = IP
) -> bytes | None:
    return KeyPlan(config).extract(target, headers or {}, ip)


@pytest.mark.parametrize(
    ("config", "target", "headers", "key"),
    [
        (KeyConfig(), b"/", {b"x-request-id": b"424242"}, b"424242"),
        (KeyConfig("header", "X-Session"), b"/", {b"x-session": b"s1"}, b"s1"),
        (KeyConfig("header", "X-Session"), b"/", {}, None),
        (KeyConfig("header", "X-Session"), b"/", {b"x-session": b""}, None),
        (KeyConfig("cookie", "sid"), b"/", {b"cookie": b"a=1; sid=abc; b=2"}, b"abc"),
        (KeyConfig("cookie", "sid"), b"/", {b"cookie": b'sid="quoted"'}, b"quoted"),
        (KeyConfig("cookie", "sid"), b"/", {b"cookie": b"xsid=1;sid2=2"}, None),
        (KeyConfig("cookie", "sid"), b"/", {b"cookie": b"sid="}, None),
        (KeyConfig("client-ip", ""), b"/", {}, IP),
        (KeyConfig("query", "user"), b"/cart?user=bob&x=1", {}, b"bob"),
        (KeyConfig("query", "user"), b"/cart?x=1&user=bob", {}, b"bob"),
        (KeyConfig("query", "user"), b"/cart?xuser=1&user=bob", {}, b"bob"),
        (KeyConfig("query", "user"), b"/cart?xuser=1", {}, None),
        (KeyConfig("query", "user"), b"/user=1/cart", {}, None),
        (KeyConfig("query", "user"), b"/cart?user=", {}, None),
        (KeyConfig("query", "user"), b"/cart?user", {}, None),
        (KeyConfig("query", "user"), b"/cart?user=a%20b#frag", {}, b"a%20b"),  # raw bytes, not decoded
        (KeyConfig("path-segment", "", 0), b"/users/42/cart", {}, b"users"),
        (KeyConfig("path-segment", "", 1), b"/users/42/cart?x=1", {}, b"42"),
        (KeyConfig("path-segment", "", 2), b"/users/42/cart?x=1", {}, b"cart"),
        (KeyConfig("path-segment", "", 3), b"/users/42/cart", {}, None),
        (KeyConfig("path-segment", "", 1), b"/users//cart", {}, None),  # an empty segment gives nothing
        (KeyConfig("path-segment", "", 1), b"/users/a?b/c", {}, b"a"),  # the query is not the path
        (KeyConfig("path-segment", "", 0), b"/", {}, None),
    ],
)
def test_single_sources(config, target, headers, key):
    assert extract(config, target, headers) == key


def test_fallback_order():
    config = KeyConfig("header", "X-Session", fallback=(KeyConfig("cookie", "sid"), KeyConfig("client-ip", "")))
    assert KeyPlan(config).headers == {b"x-session", b"cookie"}
    assert extract(config, headers={b"x-session": b"s", b"cookie": b"sid=c"}) == b"s"
    assert extract(config, headers={b"cookie": b"sid=c"}) == b"c"
    assert extract(config, headers={b"cookie": b"other=c"}) == IP
    assert extract(KeyConfig("query", "u", fallback=(KeyConfig("path-segment", "", 1),)), b"/a/b") == b"b"
    assert extract(KeyConfig("query", "u", fallback=(KeyConfig("header", "X-Id"),)), b"/") is None


def test_plan_headers_are_lower_cased():
    assert KeyPlan(KeyConfig("header", "X-Request-ID")).headers == {b"x-request-id"}
    assert KeyPlan(KeyConfig("query", "q")).headers == frozenset()


@given(target=st.binary(max_size=80).map(lambda b: b"/" + b), name=st.sampled_from([b"u", b"user"]))
def test_query_and_segment_never_raise_and_return_a_slice_of_the_target(target, name):
    for config in (KeyConfig("query", name.decode()), KeyConfig("path-segment", "", 2)):
        key = extract(config, target)
        assert key is None or (key and key in target)


@pytest.mark.parametrize(
    "config",
    [
        KeyConfig(),
        KeyConfig("cookie", "sid"),
        KeyConfig("client-ip", ""),
        KeyConfig("query", "user"),
        KeyConfig("path-segment", "", 3),
        KeyConfig(
            "header",
            "X-Session",
            fallback=(KeyConfig("cookie", "sid"), KeyConfig("path-segment", "", 0), KeyConfig("client-ip", "")),
        ),
    ],
)
def test_document_round_trip(config):
    doc = {"revision": 1, **content([], parse({"revision": 1, "members": []}).hashing, config)}
    assert parse(doc).key == config


def test_existing_documents_keep_their_form():
    """An unchanged spec writes the same document (the operator's content hash does not move)."""
    assert KeyConfig().to_json() == {"source": "header", "name": "X-Request-ID"}
    assert KeyConfig("client-ip", "").to_json() == {"source": "client-ip", "name": ""}
    assert keys.parse({"source": "client-ip"}) == KeyConfig("client-ip", "")
    assert keys.parse({}) == KeyConfig()


@pytest.mark.parametrize(
    ("text", "config"),
    [
        ("header:X-Session", KeyConfig("header", "X-Session")),
        ("cookie:sid", KeyConfig("cookie", "sid")),
        ("query:user", KeyConfig("query", "user")),
        ("path-segment:2", KeyConfig("path-segment", "", 2)),
        ("client-ip", KeyConfig("client-ip", "")),
    ],
)
def test_from_text(text, config):
    assert keys.from_text(text) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cookie", "'cookie'.name: the cookie name is required"),
        ("path-segment:x", "'path-segment:x': path-segment:INDEX, e.g. path-segment:1"),
        ("body:x", "'body:x'.source: one of header, cookie, query, path-segment, client-ip"),
    ],
)
def test_from_text_errors(text, message):
    with pytest.raises(keys.KeyConfigError) as exc:
        keys.from_text(text)
    assert str(exc.value) == message
