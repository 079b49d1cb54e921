"""The resource's spec as a typed value, with the CRD's defaults applied once more.

The API server applies the schema defaults, but a resource stored before a default existed (or a
test's hand-written dict) may lack them; parsing here keeps the rest of the operator free of
``.get(..., default)`` chains. Checks the schema cannot express live in ``problems``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ringlb_balancer.hashing import HashingConfig
from ringlb_balancer.naming import MAX_REPLICAS, NAME_PATTERN, PlanError, check_unique, desired_identities

from ringlb_operator import constants as c


@dataclass(frozen=True)
class PodTemplate:
    """What a replica (or balancer) container is built from."""

    image: str
    image_pull_policy: str = c.DEFAULT_PULL_POLICY
    env: tuple[tuple[str, str], ...] = ()
    resources: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hashing:
    strategy: str = "maglev"
    vnodes: int = 160
    table_size: int = 65537
    seed_formulas: str = "original"
    bounded_load: float = 0.0
    key_source: str = "header"
    key_header: str = c.DEFAULT_KEY_HEADER
    key_cookie: str = c.DEFAULT_KEY_COOKIE

    def config(self) -> HashingConfig:
        return HashingConfig(
            strategy=self.strategy,
            table_size=self.table_size,
            vnodes=self.vnodes,
            seed_formulas=self.seed_formulas,
            bounded_load=float(self.bounded_load),
        )

    def key(self) -> dict[str, str]:
        """The membership document's ``key`` object."""
        if self.key_source == "cookie":
            return {"source": "cookie", "name": self.key_cookie}
        if self.key_source == "client-ip":
            return {"source": "client-ip", "name": ""}
        return {"source": "header", "name": self.key_header}


@dataclass(frozen=True)
class Balancer:
    replicas: int = c.DEFAULT_BALANCER_REPLICAS
    service_type: str = c.DEFAULT_SERVICE_TYPE
    port: int = c.PORT
    template: PodTemplate = field(default_factory=lambda: PodTemplate(image=c.BALANCER_IMAGE))


@dataclass(frozen=True)
class Spec:
    replicas: int = c.DEFAULT_REPLICAS
    hostnames: tuple[str, ...] = ()
    template: PodTemplate = field(default_factory=lambda: PodTemplate(image=c.REPLICA_IMAGE))
    hashing: Hashing = field(default_factory=Hashing)
    balancer: Balancer = field(default_factory=Balancer)

    def identities(self) -> list[str]:
        """The ring identities, in ring order (the balancer's /rep order)."""
        return desired_identities(self.replicas, list(self.hostnames))


def _template(raw: Mapping[str, Any] | None, default_image: str) -> PodTemplate:
    raw = raw or {}
    env = tuple((str(e.get("name", "")), str(e.get("value", ""))) for e in raw.get("env") or [])
    return PodTemplate(
        image=raw.get("image") or default_image,
        image_pull_policy=raw.get("imagePullPolicy") or c.DEFAULT_PULL_POLICY,
        env=env,
        resources=dict(raw.get("resources") or {}),
    )


def parse(raw: Mapping[str, Any] | None) -> Spec:
    """A ``Spec`` from the resource's ``spec`` (any missing field takes the CRD's default)."""
    raw = raw or {}
    h = raw.get("hashing") or {}
    b = raw.get("balancer") or {}
    defaults = Hashing()
    return Spec(
        replicas=int(raw.get("replicas", c.DEFAULT_REPLICAS)),
        hostnames=tuple(raw.get("hostnames") or ()),
        template=_template(raw.get("template"), c.REPLICA_IMAGE),
        hashing=Hashing(
            strategy=h.get("strategy", defaults.strategy),
            vnodes=int(h.get("vnodes", defaults.vnodes)),
            table_size=int(h.get("tableSize", defaults.table_size)),
            seed_formulas=h.get("seedFormulas", defaults.seed_formulas),
            bounded_load=float(h.get("boundedLoad", defaults.bounded_load)),
            key_source=h.get("keySource", defaults.key_source),
            key_header=h.get("keyHeader", defaults.key_header),
            key_cookie=h.get("keyCookie", defaults.key_cookie),
        ),
        balancer=Balancer(
            replicas=int(b.get("replicas", c.DEFAULT_BALANCER_REPLICAS)),
            service_type=b.get("serviceType", c.DEFAULT_SERVICE_TYPE),
            port=int(b.get("port", c.PORT)),
            template=_template(b, c.BALANCER_IMAGE),
        ),
    )


def problems(name: str, spec: Spec) -> list[str]:
    """What is wrong with a resource that the CRD schema could not reject, field by field.

    An empty list means the spec can be reconciled. The schema already checks types, ranges,
    patterns and exact duplicates; this adds what needs code: hostnames whose DNS forms collide
    (``S5`` and ``s5`` become the same pod name), a Maglev table size that is not prime, and a
    resource name too long or not DNS-1035 (it prefixes child names and the Service).
    """
    found: list[str] = []
    if len(name) > c.MAX_RESOURCE_NAME or not re.match(c.RESOURCE_NAME_PATTERN, name):
        found.append(
            f"metadata.name: {name!r} must be a DNS-1035 label of at most {c.MAX_RESOURCE_NAME} "
            "characters (lower-case letters, digits, '-', starting with a letter)"
        )
    if not 0 <= spec.replicas <= MAX_REPLICAS:
        found.append(f"spec.replicas: must be between 0 and {MAX_REPLICAS}, got {spec.replicas}")
    if len(spec.hostnames) > MAX_REPLICAS:
        found.append(f"spec.hostnames: at most {MAX_REPLICAS} names")
    bad = [h for h in spec.hostnames if not isinstance(h, str) or not NAME_PATTERN.match(h)]
    if bad:
        found.append(f"spec.hostnames: invalid name(s) {bad!r}")
    else:
        try:
            check_unique(list(spec.hostnames))
        except PlanError as exc:
            found.append("spec.hostnames: " + str(exc).removeprefix("<Error> "))
        if not found:
            try:
                check_unique(spec.identities())
            except PlanError as exc:  # e.g. hostname "server-2" against generated "Server 2"
                found.append("spec.hostnames: " + str(exc).removeprefix("<Error> "))
    try:
        spec.hashing.config().validate()
    except ValueError as exc:
        found.append(f"spec.hashing: {exc}")
    if spec.hashing.key_source not in c.KEY_SOURCES:
        found.append(f"spec.hashing.keySource: one of {', '.join(c.KEY_SOURCES)}")
    if not 1 <= spec.balancer.replicas <= c.MAX_BALANCER_REPLICAS:
        found.append(f"spec.balancer.replicas: must be between 1 and {c.MAX_BALANCER_REPLICAS}")
    if spec.balancer.service_type not in c.SERVICE_TYPES:
        found.append(f"spec.balancer.serviceType: one of {', '.join(c.SERVICE_TYPES)}")
    return found
