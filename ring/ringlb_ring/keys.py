"""Where a request's hashing key comes from: the ``key`` of the membership document, and the
per-request extraction the balancer's client protocol calls.

A source is a header, a cookie, a query parameter, a path segment or the client's address; a
key config is one source plus an ordered fallback list (``X-Session``, else cookie ``sid``, else
the client IP). ``KeyPlan`` is the config compiled once per membership, so the per-request work
is a few byte searches: no decoding, no allocation beyond the key itself. Keys are the raw bytes
as the client sent them (``%41`` and ``A`` are different keys): percent-decoding would cost time
on every request and could turn a path into bytes (CR, LF) that must never reach a header the
balancer forwards.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KEY_SOURCES = ("header", "cookie", "query", "path-segment", "client-ip")
NAMED_SOURCES = ("header", "cookie", "query")  # the sources whose ``name`` says which one
MAX_FALLBACK = 4
MAX_SEGMENT = 63
MAX_NAME = 128
# Header field names are RFC 9110 tokens; cookie and query names are kept to the same visible,
# separator-free characters, which every client spells the same way.
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class KeyConfigError(ValueError):
    """A key config that cannot be used; the message names the field (``key.…``)."""


@dataclass(frozen=True)
class KeyConfig:
    """Where the hashing key of a request comes from.

    ``name``: the header, cookie or query parameter (header names match case-insensitively,
    cookie and query names exactly); ``index``: the path segment, 0 for the first
    (``/users/42/cart``: 0 is ``users``, 1 is ``42``); ``fallback``: sources tried in order when
    this one gives nothing (absent or empty), each without a fallback of its own.
    """

    source: str = "header"
    name: str = "X-Request-ID"
    index: int = 0
    fallback: tuple[KeyConfig, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The document's ``key``: ``source`` and ``name`` always (as before sources grew),
        ``index`` for a path segment, ``fallback`` when there is one."""
        out: dict[str, Any] = {"source": self.source, "name": self.name}
        if self.source == "path-segment":
            out["index"] = self.index
        if self.fallback:
            out["fallback"] = [f.to_json() for f in self.fallback]
        return out


def parse(raw: object, where: str = "key", nested: bool = False) -> KeyConfig:
    """A ``KeyConfig`` from its document form; raises ``KeyConfigError`` naming the first bad field."""
    allowed = {"source", "name", "index"} | (set() if nested else {"fallback"})
    if not isinstance(raw, dict) or set(raw) - allowed:
        raise KeyConfigError(
            f"{where}: must be an object with source and name or index{'' if nested else ' (and optionally fallback)'}"
        )
    source = raw.get("source", "header")
    if not isinstance(source, str) or source not in KEY_SOURCES:
        raise KeyConfigError(f"{where}.source: one of {', '.join(KEY_SOURCES)}")
    name = raw.get("name", KeyConfig.name if source == "header" else "")
    if not isinstance(name, str):
        raise KeyConfigError(f"{where}.name: a string")
    if source in NAMED_SOURCES:
        if not name.strip():
            raise KeyConfigError(f"{where}.name: the {source} name is required")
        if len(name) > MAX_NAME or not _NAME.fullmatch(name):
            raise KeyConfigError(f"{where}.name: at most {MAX_NAME} letters, digits and !#$%&'*+.^_`|~-")
    elif source == "path-segment" and name:
        raise KeyConfigError(f"{where}.name: a path segment has no name; use index")
    index = raw.get("index", 0)
    if "index" in raw and source != "path-segment":
        raise KeyConfigError(f"{where}.index: only for source path-segment")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_SEGMENT:
        raise KeyConfigError(f"{where}.index: an integer from 0 (the first segment) to {MAX_SEGMENT}")
    fallback: list[KeyConfig] = []
    if not nested and "fallback" in raw:
        entries = raw["fallback"]
        if not isinstance(entries, list) or len(entries) > MAX_FALLBACK:
            raise KeyConfigError(f"{where}.fallback: a list of at most {MAX_FALLBACK} sources")
        fallback = [parse(entry, f"{where}.fallback[{i}]", nested=True) for i, entry in enumerate(entries)]
    return KeyConfig(source, name, index, tuple(fallback))


def from_text(text: str) -> KeyConfig:
    """One source from its command-line form: ``header:X-Session``, ``cookie:sid``,
    ``query:user``, ``path-segment:1`` or ``client-ip``."""
    source, _, arg = text.partition(":")
    raw: dict[str, Any] = {"source": source}
    if source == "path-segment":
        if not arg.isdigit():
            raise KeyConfigError(f"{text!r}: path-segment:INDEX, e.g. path-segment:1")
        raw["index"] = int(arg)
    elif arg or source in NAMED_SOURCES:
        raw["name"] = arg
    return parse(raw, repr(text), nested=True)


# -- per request ------------------------------------------------------------------------------
_HEADER, _COOKIE, _QUERY, _SEGMENT, _CLIENT_IP = range(5)
_KINDS = dict(zip(KEY_SOURCES, (_HEADER, _COOKIE, _QUERY, _SEGMENT, _CLIENT_IP)))


class KeyPlan:
    """A ``KeyConfig`` compiled for the request path (build it once per membership).

    ``headers``: the lower-cased header names the caller must capture from a request head
    (``b"cookie"`` when a cookie is a source) and hand to ``extract``.
    """

    __slots__ = ("headers", "steps")

    def __init__(self, config: KeyConfig) -> None:
        self.steps: tuple[tuple[int, bytes, int], ...] = tuple(
            (_KINDS[s.source], _step_name(s), s.index) for s in (config, *config.fallback)
        )
        self.headers = frozenset(
            name if kind == _HEADER else b"cookie" for kind, name, _ in self.steps if kind in (_HEADER, _COOKIE)
        )

    def extract(self, target: bytes, headers: Mapping[bytes, bytes], client_ip: bytes) -> bytes | None:
        """The request's key: the first source, in order, that gives a non-empty value; None
        when none does (the balancer then picks a random key, as the seed did).

        ``target``: the request target (``/path?query``); ``headers``: lower-cased name →
        value for (at least) the names in ``self.headers`` (a repeated ``Cookie`` joined with
        ``"; "``); ``client_ip``: the peer's address.
        """
        for kind, name, index in self.steps:
            if kind == _HEADER:
                value = headers.get(name)
            elif kind == _CLIENT_IP:
                value = client_ip
            elif kind == _QUERY:
                value = _query(target, name)
            elif kind == _COOKIE:
                cookie = headers.get(b"cookie")
                value = _cookie(cookie, name) if cookie else None
            else:
                value = _segment(target, index)
            if value:
                return value
        return None


def _step_name(source: KeyConfig) -> bytes:
    """What the request path searches for: a header's name lower-cased (as compared), a query
    parameter's as ``name=``."""
    name = source.name.encode("latin-1")
    if source.source == "header":
        return name.lower()
    return name + b"=" if source.source == "query" else name


def _query(target: bytes, needle: bytes) -> bytes | None:
    """The value of the first ``name=value`` of the query (``needle`` is ``name=``; pairs are
    ``&``-separated; a ``#…`` tail, which clients do not send, is not part of it)."""
    start = target.find(b"?")
    if start < 0:
        return None
    at = target.find(needle, start)
    while at >= 0 and target[at - 1] not in b"?&":
        at = target.find(needle, at + 1)
    if at < 0:
        return None
    at += len(needle)
    end = len(target)
    for stop in (b"&", b"#"):
        found = target.find(stop, at, end)
        if found >= 0:
            end = found
    return target[at:end]


def _cookie(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie ``name`` (RFC 6265 ``a=1; b=2``), DQUOTEs around it removed."""
    for pair in header.split(b";"):
        key, sep, value = pair.partition(b"=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == 0x22:
                value = value[1:-1]
            return value
    return None


def _segment(target: bytes, index: int) -> bytes | None:
    """Path segment ``index`` (0: the first after the leading ``/``); empty segments count."""
    end = len(target)
    for stop in (b"?", b"#"):
        found = target.find(stop, 0, end)
        if found >= 0:
            end = found
    parts = target[1:end].split(b"/", index + 1)
    return parts[index] if index < len(parts) else None
