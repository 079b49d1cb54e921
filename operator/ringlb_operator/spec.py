"""The resource's spec as one typed model (pydantic): defaults, parsing and field names, once.

Everything that spells the spec takes it from here: the operator parses with ``parse``; the CRD's
schema defaults, enums and ranges are checked against these models by a unit test; the balancer's
``KubernetesScaler`` reads its resource through ``parse``; the hashing defaults are
``HashingConfig``'s own, so ``ringlb dev``'s flags and the wire ``hashing`` object agree with the
CRD. Checks that need code (DNS-form collisions, primality, the resource name) live in
``problems``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ringlb_ring.hashing import HashingConfig
from ringlb_ring.naming import MAX_REPLICAS, NAME_PATTERN, PlanError, check_unique, desired_identities

from ringlb_operator import constants as c

_HASHING = HashingConfig()
PullPolicy = Literal["IfNotPresent", "Always", "Never"]
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


class SpecError(ValueError):
    """A spec that does not parse; the message names the field(s)."""


class _Model(BaseModel):
    # camelCase on the wire (the CRD), snake_case in code; unknown fields are the API server's
    # business (it prunes them), so they are ignored here.
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class EnvVar(_Model):
    name: str = Field(min_length=1, pattern=ENV_NAME_PATTERN)
    value: str = ""


class Resources(_Model):
    requests: dict[str, int | str] = Field(default_factory=dict)
    limits: dict[str, int | str] = Field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: dict(v) for k, v in (("requests", self.requests), ("limits", self.limits)) if v}


class Toleration(_Model):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="allow")


class LocalObjectReference(_Model):
    name: str = Field(min_length=1)


class PodTemplate(_Model):
    """What a replica (or balancer) pod is built from, scheduling included."""

    image: str = ""  # "" = the operator's default image for the component
    image_pull_policy: PullPolicy = Field(c.DEFAULT_PULL_POLICY, alias="imagePullPolicy")
    env: tuple[EnvVar, ...] = Field((), max_length=64)
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] = Field(default_factory=dict)
    image_pull_secrets: tuple[LocalObjectReference, ...] = Field((), alias="imagePullSecrets")
    priority_class_name: str = Field("", alias="priorityClassName")
    labels: dict[str, str] = Field(default_factory=dict)  # extra pod labels (ours win on a clash)
    annotations: dict[str, str] = Field(default_factory=dict)  # extra pod annotations

    def env_pairs(self) -> list[dict[str, str]]:
        return [{"name": e.name, "value": e.value} for e in self.env]


class Hashing(_Model):
    """The ``hashing`` object; defaults are ``HashingConfig``'s (the balancer's and ``ringlb dev``'s)."""

    strategy: Literal["maglev", "ring", "seed"] = _HASHING.strategy  # type: ignore[assignment]
    vnodes: int = Field(_HASHING.vnodes, ge=1, le=1000)
    table_size: int = Field(_HASHING.table_size, alias="tableSize", ge=257, le=1_000_003)
    seed_formulas: Literal["original", "reissue"] = Field(_HASHING.seed_formulas, alias="seedFormulas")  # type: ignore[assignment]
    bounded_load: float = Field(_HASHING.bounded_load, alias="boundedLoad", ge=0, le=10)
    key_source: Literal["header", "cookie", "client-ip"] = Field("header", alias="keySource")
    key_header: str = Field(c.DEFAULT_KEY_HEADER, alias="keyHeader", pattern=r"^[A-Za-z0-9-]{1,64}$")
    key_cookie: str = Field(c.DEFAULT_KEY_COOKIE, alias="keyCookie", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

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


class Balancer(PodTemplate):
    """The balancer Deployment and Service (its pod template fields sit beside these)."""

    replicas: int = Field(c.DEFAULT_BALANCER_REPLICAS, ge=1, le=c.MAX_BALANCER_REPLICAS)
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(c.DEFAULT_SERVICE_TYPE, alias="serviceType")  # type: ignore[assignment]
    port: int = Field(c.PORT, ge=1, le=65535)
    service_annotations: dict[str, str] = Field(default_factory=dict, alias="serviceAnnotations")
    drain_seconds: int = Field(c.DEFAULT_DRAIN_SECONDS, alias="drainSeconds", ge=0, le=300)

    @property
    def template(self) -> PodTemplate:
        """The pod-template part, with the balancer image default applied."""
        fields = {k: getattr(self, k) for k in PodTemplate.model_fields}
        fields["image"] = self.image or c.BALANCER_IMAGE
        return PodTemplate(**fields)


class Spec(_Model):
    replicas: int = Field(c.DEFAULT_REPLICAS, ge=0, le=MAX_REPLICAS)
    hostnames: tuple[str, ...] = Field((), max_length=MAX_REPLICAS)
    template: PodTemplate = Field(default_factory=PodTemplate)
    hashing: Hashing = Field(default_factory=Hashing)
    balancer: Balancer = Field(default_factory=Balancer)

    def identities(self) -> list[str]:
        """The ring identities, in ring order (the balancer's /rep order)."""
        return desired_identities(self.replicas, list(self.hostnames))

    @property
    def replica_template(self) -> PodTemplate:
        """The replica pods' template with the default image applied."""
        return self.template if self.template.image else self.template.model_copy(update={"image": c.REPLICA_IMAGE})


def parse(raw: Any) -> Spec:
    """A ``Spec`` from the resource's ``spec`` (any missing field takes the CRD's default).

    Raises ``SpecError`` naming the fields the schema should have refused (a resource stored
    before a rule existed, or a hand-written test dict).
    """
    try:
        return Spec.model_validate(dict(raw or {}))
    except ValidationError as exc:
        found = []
        for err in exc.errors():
            where = ".".join(str(p) for p in ("spec", *err["loc"]))
            found.append(f"{where}: {err['msg']}")
        raise SpecError("; ".join(found)) from None


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
    bad = [h for h in spec.hostnames if not NAME_PATTERN.match(h)]
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
    return found


def defaults() -> Spec:
    """The spec of a resource with an empty ``spec`` (what ``ringlb dev`` starts with, too)."""
    return Spec()
