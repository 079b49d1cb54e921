"""The membership document (``PUT /membership``, the snapshot file) and its one address format.

Shared by the balancer that parses it and the operator and supervisor that write it, so what is
written is what is read. Parsing is strict and total: any document that passes ``parse`` can be
routed with, so a bad push is refused whole with 400 and the ring in force is never half-updated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ringlb_ring import keys
from ringlb_ring.hashing import HashingConfig, Transition
from ringlb_ring.keys import KEY_SOURCES, KeyConfig
from ringlb_ring.naming import MAX_REPLICAS, PlanError, check_name, check_unique

__all__ = [
    "EMPTY",
    "KEY_SOURCES",
    "KeyConfig",
    "Member",
    "Membership",
    "MembershipError",
    "content",
    "format_address",
    "parse",
    "parse_address",
]

MAX_REVISION = 2**63 - 1


class MembershipError(ValueError):
    """A membership document that cannot be applied; the message names the field."""


def format_address(host: str, port: int) -> str:
    """``IP:port`` as every component writes it: IPv6 hosts in brackets and canonical form
    (``[fd00::1]:5000``), so that two spellings of one address compare equal as strings."""
    ip = ipaddress.ip_address(host)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def parse_address(text: object) -> tuple[str, int]:
    """The canonical host and the port of ``text``; the inverse of ``format_address``.

    Accepts ``10.0.0.1:80``, ``[fd00::1]:80`` and, for older writers, unbracketed ``fd00::1:80``
    (the last colon separates the port). ``format_address(*parse_address(a)) == a`` for every
    ``a`` that ``format_address`` returns.
    """
    if not isinstance(text, str) or ":" not in text:
        raise MembershipError("address must be a string 'IP:port'")
    host, _, port_text = text.rpartition(":")
    bracketed = len(host) >= 2 and host[0] == "[" and host[-1] == "]"
    if bracketed:
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise MembershipError(f"address host must be an IP address, got {host!r}") from None
    if bracketed and ip.version != 6:
        raise MembershipError(f"address host: only IPv6 hosts take brackets, got {'[' + host + ']'!r}")
    refused = _refused(ip)
    if refused:
        raise MembershipError(f"address host {host} is {refused}: no replica listens there")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise MembershipError(f"address port must be 1-65535, got {port_text!r}")
    return str(ip), int(port_text)


def _refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Why a replica can never have this address (empty: it can). A pushed ring is routed to
    as given, so these would make the balancer a tool for reaching the cloud metadata service
    (link-local), itself, or everyone at once."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"  # a subnet's broadcast address depends on its mask, unknown here
    return ""


@dataclass(frozen=True)
class Member:
    """One replica in the ring: its identity and where it listens (``host`` is an IP literal)."""

    name: str
    host: str
    port: int

    @cached_property
    def address(self) -> str:
        """``format_address(host, port)``; cached, since the proxy path reads it per request."""
        return format_address(self.host, self.port)


@dataclass(frozen=True)
class Membership:
    revision: int
    members: tuple[Member, ...] = ()
    hashing: HashingConfig = field(default_factory=HashingConfig)
    key: KeyConfig = field(default_factory=KeyConfig)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def to_json(self) -> dict[str, Any]:
        members = [{"name": m.name, "address": m.address} for m in self.members]
        return {"revision": self.revision, **content(members, self.hashing, self.key)}


def content(members: Sequence[Mapping[str, str]], hashing: HashingConfig, key: KeyConfig) -> dict[str, Any]:
    """The document of ``PUT /membership`` minus its revision: the one serializer that the
    supervisor and the operator use too, so what they push is what ``parse`` reads. A field
    added later (``transition``, a key's ``index`` or ``fallback``) is written only when set, so
    the document of an unchanged spec stays byte for byte what it was."""
    doc: dict[str, Any] = {
        "strategy": hashing.strategy,
        "tableSize": hashing.table_size,
        "vnodes": hashing.vnodes,
        "seedFormulas": hashing.seed_formulas,
        "boundedLoad": float(hashing.bounded_load),
    }
    if hashing.transition is not None:
        t = hashing.transition
        doc["transition"] = {"from": list(t.source), "to": list(t.target), "fraction": t.fraction}
    return {"members": [dict(m) for m in members], "hashing": doc, "key": key.to_json()}


EMPTY = Membership(revision=0)

_HASHING_FIELDS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "strategy": ("strategy", str),
    "tableSize": ("table_size", int),
    "vnodes": ("vnodes", int),
    "seedFormulas": ("seed_formulas", str),
    "boundedLoad": ("bounded_load", (int, float)),
}


def parse(doc: object) -> Membership:
    """Validate a pushed document; raise ``MembershipError`` naming the first bad field."""
    if not isinstance(doc, dict):
        raise MembershipError("body must be a JSON object with revision, members, hashing")
    unknown = set(doc) - {"revision", "members", "hashing", "key"}
    if unknown:
        raise MembershipError(f"unknown field(s): {', '.join(sorted(unknown))}")
    revision = doc.get("revision")
    if not isinstance(revision, int) or isinstance(revision, bool) or not 1 <= revision <= MAX_REVISION:
        raise MembershipError("revision: required, an integer from 1 to 2^63-1")
    raw_members = doc.get("members")
    if not isinstance(raw_members, list):
        raise MembershipError("members: required, a list of {name, address}")
    if len(raw_members) > MAX_REPLICAS:
        raise MembershipError(f"members: at most {MAX_REPLICAS}")
    members = []
    for i, raw in enumerate(raw_members):
        where = f"members[{i}]"
        if not isinstance(raw, dict) or set(raw) != {"name", "address"}:
            raise MembershipError(f"{where}: must be an object with exactly name and address")
        try:
            name = check_name(raw["name"])
        except PlanError as exc:
            raise MembershipError(f"{where}.name: {exc}") from None
        try:
            members.append(Member(name, *parse_address(raw["address"])))
        except MembershipError as exc:
            raise MembershipError(f"{where}: {exc}") from None
    try:
        check_unique([m.name for m in members])
    except PlanError as exc:
        raise MembershipError(f"members: {exc}") from None
    if len({m.address for m in members}) != len(members):
        raise MembershipError("members: two members share an address")
    config = _hashing(doc.get("hashing", {}))
    if config.transition is not None:
        try:
            config.transition.check_members([m.name for m in members])
        except ValueError as exc:
            raise MembershipError(f"hashing.{exc}") from None
    try:
        key = keys.parse(doc.get("key", {}))
    except keys.KeyConfigError as exc:
        raise MembershipError(str(exc)) from None
    return Membership(revision, tuple(members), config, key)


def _hashing(raw: object) -> HashingConfig:
    if not isinstance(raw, dict):
        raise MembershipError("hashing: must be an object")
    kwargs: dict[str, Any] = {}
    for json_name, value in raw.items():
        if json_name == "transition":
            kwargs["transition"] = _transition(value)
            continue
        if json_name not in _HASHING_FIELDS:
            raise MembershipError(f"hashing.{json_name}: unknown field")
        attr, kind = _HASHING_FIELDS[json_name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise MembershipError(f"hashing.{json_name}: wrong type")
        kwargs[attr] = value
    config = HashingConfig(**kwargs)
    try:
        config.validate()
    except ValueError as exc:
        raise MembershipError(f"hashing: {exc}") from None
    return config


def _transition(raw: object) -> Transition:
    """``{"from": [names], "to": [names], "fraction": f}``: a warm-up step (hashing.warmup)."""
    if not isinstance(raw, dict) or set(raw) != {"from", "to", "fraction"}:
        raise MembershipError("hashing.transition: must be an object with exactly from, to and fraction")
    lists = []
    for field_name in ("from", "to"):
        names = raw[field_name]
        if not isinstance(names, list) or len(names) > MAX_REPLICAS:
            raise MembershipError(f"hashing.transition.{field_name}: a list of at most {MAX_REPLICAS} member names")
        try:
            lists.append(tuple(check_name(n) for n in names))
        except PlanError as exc:
            raise MembershipError(f"hashing.transition.{field_name}: {exc}") from None
    fraction = raw["fraction"]
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        raise MembershipError("hashing.transition.fraction: a number strictly between 0 and 1")
    return Transition(lists[0], lists[1], float(fraction))
