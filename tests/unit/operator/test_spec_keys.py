"""The spec's key sources and strategies as they reach the membership document (spec.py, membership.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ringlb_operator import membership, spec
from ringlb_ring.keys import KeyConfig
from ringlb_ring.membership import parse

MEMBERS = [{"name": "Server 1", "address": "10.0.0.1:5000"}]


def key_doc(hashing: dict[str, Any]) -> dict[str, Any]:
    return membership.ring_content(MEMBERS, spec.parse({"hashing": hashing}))["key"]


def test_default_spec_writes_the_document_it_always_wrote():
    assert key_doc({}) == {"source": "header", "name": "X-Request-ID"}
    assert key_doc({"keySource": "client-ip"}) == {"source": "client-ip", "name": ""}
    assert key_doc({"keySource": "cookie"}) == {"source": "cookie", "name": "ringlb-key"}


@pytest.mark.parametrize(
    ("hashing", "expected"),
    [
        ({"keySource": "query", "keyQuery": "user"}, KeyConfig("query", "user")),
        ({"keySource": "path-segment", "keyPathSegment": 1}, KeyConfig("path-segment", "", 1)),
        (
            {"keyHeader": "X-Session", "keyFallback": [{"source": "cookie", "name": "sid"}, {"source": "client-ip"}]},
            KeyConfig("header", "X-Session", fallback=(KeyConfig("cookie", "sid"), KeyConfig("client-ip", ""))),
        ),
        (
            {"keySource": "client-ip", "keyFallback": [{"source": "path-segment", "index": 2, "name": "ignored"}]},
            KeyConfig("client-ip", "", fallback=(KeyConfig("path-segment", "", 2),)),
        ),
    ],
)
def test_key_sources_reach_the_document(hashing, expected):
    s = spec.parse({"hashing": hashing})
    assert spec.problems("web", s) == []
    doc = {"revision": 1, **membership.ring_content(MEMBERS, s)}
    assert parse(doc).key == expected  # what the balancer will read


@pytest.mark.parametrize(
    ("hashing", "problem"),
    [
        ({"keySource": "query"}, "spec.hashing.keyQuery: required with keySource query"),
        (
            {"keyFallback": [{"source": "client-ip"}, {"source": "cookie"}]},
            "spec.hashing.keyFallback[1].name: required with source cookie",
        ),
    ],
)
def test_a_named_source_without_its_name_is_a_problem(hashing, problem):
    assert spec.problems("web", spec.parse({"hashing": hashing})) == [problem]


@pytest.mark.parametrize("strategy", ["round-robin", "random"])
def test_baseline_strategies_are_accepted(strategy):
    s = spec.parse({"hashing": {"strategy": strategy}})
    assert spec.problems("web", s) == []
    assert parse({"revision": 1, **membership.ring_content(MEMBERS, s)}).hashing.strategy == strategy


def test_too_many_fallbacks_do_not_parse():
    with pytest.raises(spec.SpecError, match=r"spec\.hashing\.keyFallback"):
        spec.parse({"hashing": {"keyFallback": [{"source": "client-ip"}] * 5}})
