"""The resource's spec as one typed model (pydantic): defaults, parsing and field names, once.

Everything that spells the spec takes it from here: the operator parses with ``parse``; the CRD's
spec schema is generated from these models (``crd.py``, ``make crd``), so the field descriptions
and the schema-only constraints (``json_schema_extra``) live here too; the balancer's
``KubernetesScaler`` reads its resource through ``parse``; the hashing defaults are
``HashingConfig``'s own, so ``ringlb dev``'s flags and the wire ``hashing`` object agree with the
CRD. Checks that need code (DNS-form collisions, primality, the resource name) live in
``problems``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ringlb_operator import constants as c
from ringlb_ring import keys
from ringlb_ring.hashing import DEFAULT_STRATEGY, HashingConfig
from ringlb_ring.hashing.seed import DEFAULT_FORMULAS
from ringlb_ring.hashing.warmup import WARMUP_STRATEGIES
from ringlb_ring.keys import KeyConfig
from ringlb_ring.naming import MAX_REPLICAS, NAME_PATTERN, PlanError, check_unique, desired_identities

_HASHING = HashingConfig()
PullPolicy = Literal["IfNotPresent", "Always", "Never"]
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


class SpecError(ValueError):
    """A spec that does not parse; the message names the field(s)."""


class _Model(BaseModel):
    # camelCase on the wire (the CRD), snake_case in code; unknown fields are the API server's
    # business (it prunes them), so they are ignored here.
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


def _image(description: str) -> Any:
    """The ``image`` field: "" (absent) means the operator's default image for the component, but
    the API server refuses an explicit empty string, which would only hide a templating mistake."""
    return Field(default="", description=description, json_schema_extra={"minLength": 1})


def _unreachable_node_seconds(description: str) -> Any:
    """The ``unreachableNodeSeconds`` field; the replica and balancer spell it alike but describe it apart."""
    return Field(
        default=c.DEFAULT_UNREACHABLE_NODE_SECONDS,
        alias="unreachableNodeSeconds",
        ge=0,
        le=c.MAX_UNREACHABLE_NODE_SECONDS,
        description=description,
    )


def _env(description: str) -> Any:
    """The ``env`` field; the replica and balancer spell it alike but describe it apart."""
    return Field(default=(), max_length=64, description=description)


class EnvVar(_Model):
    name: str = Field(min_length=1, pattern=ENV_NAME_PATTERN)
    value: str = ""


class Resources(_Model):
    # int | str becomes x-kubernetes-int-or-string in the CRD (quantities: 1, "500m", "64Mi").
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

    image: str = _image("Replica image; default the operator's RINGLB_REPLICA_IMAGE (ringlb/replica:0.1.0).")
    image_pull_policy: PullPolicy = Field(default=c.DEFAULT_PULL_POLICY, alias="imagePullPolicy")
    env: tuple[EnvVar, ...] = _env("Extra environment variables (SERVER_ID is always set by the operator).")
    resources: Resources = Field(
        default_factory=Resources,
        description="Container resources (requests, limits; a CPU limit only if set here); a small default when empty.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, alias="nodeSelector", description="Node labels the pods must match."
    )
    # Kubernetes' own objects, kept whole: x-kubernetes-preserve-unknown-fields in the CRD.
    tolerations: tuple[dict[str, Any], ...] = Field(
        default=(), description="Pod tolerations (core/v1 Toleration objects)."
    )
    affinity: dict[str, Any] = Field(default_factory=dict, description="Pod affinity (core/v1 Affinity).")
    image_pull_secrets: tuple[LocalObjectReference, ...] = Field(
        default=(), alias="imagePullSecrets", description="Secrets for pulling the image."
    )
    priority_class_name: str = Field(default="", alias="priorityClassName", description="PriorityClass of the pods.")
    labels: dict[str, str] = Field(
        default_factory=dict, description="Extra pod labels (the operator's own labels win on a clash)."
    )
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    unreachable_node_seconds: int = _unreachable_node_seconds(
        "Seconds a replica pod may stay on a node that is unreachable or NotReady before it is replaced "
        "on a healthy node: the pods' tolerationSeconds for node.kubernetes.io/unreachable and not-ready "
        "(unless tolerations names those keys), and the delay after which the operator force-deletes "
        "such a pod so its identity can be recreated. Counted from the node's Ready transition."
    )

    def env_pairs(self) -> list[dict[str, str]]:
        return [{"name": e.name, "value": e.value} for e in self.env]


KeySourceName = Literal["header", "cookie", "query", "path-segment", "client-ip"]
KEY_NAME_PATTERN = r"^[A-Za-z0-9_.~-]{1,64}$"


class KeySource(_Model):
    """A key source: its name (header, cookie, query) or index (path-segment)."""

    # A named source without its name is reported by ``problems`` (the schema cannot tie them).

    source: KeySourceName
    name: str = Field(default="", pattern=KEY_NAME_PATTERN, description="Header, cookie or query parameter name.")
    index: int = Field(
        default=0, ge=0, le=keys.MAX_SEGMENT, description="Path segment (source path-segment), 0 for the first."
    )

    def config(self) -> KeyConfig:
        named = self.source in keys.NAMED_SOURCES
        return KeyConfig(self.source, self.name if named else "", self.index if self.source == "path-segment" else 0)


class Hashing(_Model):
    """The ``hashing`` object; defaults are ``HashingConfig``'s (the balancer's and ``ringlb dev``'s)."""

    strategy: Literal["maglev", "ring", "seed", "round-robin", "random"] = Field(
        default=DEFAULT_STRATEGY,
        description=(
            "maglev (even, O(1)), ring (virtual nodes), seed (the assignment's formulas), or the non-affine "
            "baselines round-robin and random (the key chooses nothing; for comparison)."
        ),
    )
    vnodes: int = Field(
        default=_HASHING.vnodes, ge=1, le=1000, description="Virtual nodes per replica (strategy ring)."
    )
    table_size: int = Field(
        default=_HASHING.table_size,
        alias="tableSize",
        ge=257,
        le=1_000_003,
        description="Maglev lookup table size; must be prime.",
    )
    seed_formulas: Literal["original", "reissue"] = Field(
        default=DEFAULT_FORMULAS,
        alias="seedFormulas",
        description="Which formulas the seed strategy uses.",
    )
    # The gap (0, 1) is refused by the API server here; ``problems`` reports it for older objects.
    bounded_load: float = Field(
        default=_HASHING.bounded_load,
        alias="boundedLoad",
        ge=0,
        le=10,
        description="Bounded-load factor c (1.0 to 10.0); 0 turns it off.",
        json_schema_extra={"anyOf": [{"maximum": 0}, {"minimum": 1}]},
    )
    key_source: KeySourceName = Field(
        default="header", alias="keySource", description="Where the request key comes from."
    )
    key_header: str = Field(
        default=c.DEFAULT_KEY_HEADER,
        alias="keyHeader",
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="Header carrying the key (keySource header); a random key when absent.",
    )
    key_cookie: str = Field(
        default=c.DEFAULT_KEY_COOKIE,
        alias="keyCookie",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Cookie carrying the key (keySource cookie).",
    )
    key_query: str = Field(
        default="",
        alias="keyQuery",
        pattern=KEY_NAME_PATTERN,
        description="Query parameter carrying the key (keySource query, which requires it), "
        "e.g. user in /cart?user=42.",
    )
    key_path_segment: int = Field(
        default=0,
        alias="keyPathSegment",
        ge=0,
        le=keys.MAX_SEGMENT,
        description="Path segment carrying the key (keySource path-segment): 0 is users in /users/42/cart, 1 is 42.",
    )
    key_fallback: tuple[KeySource, ...] = Field(
        default=(),
        alias="keyFallback",
        max_length=keys.MAX_FALLBACK,
        description=(
            "Sources tried in order when keySource gives no key (absent or empty), e.g. "
            "[{source: cookie, name: sid}, {source: client-ip}]; a random key when none gives one."
        ),
    )
    warmup_seconds: int = Field(
        default=0,
        alias="warmupSeconds",
        ge=0,
        le=c.MAX_WARMUP_SECONDS,
        description=(
            "Seconds over which a membership change moves its keys (strategies maglev and ring): a "
            "joining replica's share grows in steps, and a replica removed by scale-down hands its keys "
            "over the same way before its pod is deleted (Draining). A failed replica still leaves at "
            "once. 0: every change at once."
        ),
    )

    def config(self) -> HashingConfig:
        return HashingConfig(
            strategy=self.strategy,
            table_size=self.table_size,
            vnodes=self.vnodes,
            seed_formulas=self.seed_formulas,
            bounded_load=float(self.bounded_load),
        )

    def key(self) -> KeyConfig:
        """The membership document's ``key``."""
        name = {"header": self.key_header, "cookie": self.key_cookie, "query": self.key_query}.get(self.key_source, "")
        return KeyConfig(
            self.key_source,
            name,
            self.key_path_segment if self.key_source == "path-segment" else 0,
            tuple(source.config() for source in self.key_fallback),
        )


class Tls(_Model):
    """TLS on the balancer's public port."""

    secret_name: str = Field(
        alias="secretName",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description=(
            "A kubernetes.io/tls Secret in the resource's namespace (tls.crt: the chain, tls.key: its key), "
            "as cert-manager writes them. Mounted read-only; an update reaches new connections within "
            "seconds, without restarting the pods."
        ),
    )


class Balancer(PodTemplate):
    """The balancer Deployment and Service (its pod template fields sit beside these)."""

    # Redeclared only to describe them for the balancer; type, default and limits are PodTemplate's.
    image: str = _image("Balancer image; default the operator's RINGLB_BALANCER_IMAGE (ringlb/balancer:0.1.0).")
    env: tuple[EnvVar, ...] = _env("Extra balancer settings, e.g. RINGLB_SCALE_TIMEOUT.")
    unreachable_node_seconds: int = _unreachable_node_seconds(
        "The balancer pods' tolerationSeconds for node.kubernetes.io/unreachable and not-ready (unless "
        "tolerations names those keys): after this long on a lost node a pod is evicted and the "
        "Deployment starts its replacement."
    )
    replicas: int = Field(default=c.DEFAULT_BALANCER_REPLICAS, ge=1, le=c.MAX_BALANCER_REPLICAS)
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default=c.DEFAULT_SERVICE_TYPE, alias="serviceType"
    )
    port: int = Field(default=c.PORT, ge=1, le=65535, description=f"Service port (the pods always listen on {c.PORT}).")
    service_annotations: dict[str, str] = Field(
        default_factory=dict,
        alias="serviceAnnotations",
        description="Annotations of the balancer Service (e.g. for a cloud load balancer).",
    )
    drain_seconds: int = Field(
        default=c.DEFAULT_DRAIN_SECONDS,
        alias="drainSeconds",
        ge=0,
        le=300,
        description="After SIGTERM a balancer pod is unready but keeps serving this long (RINGLB_DRAIN_SECONDS).",
    )
    tls: Tls | None = Field(
        default=None,
        description="Serve the public port over TLS only (1.2 and 1.3, ALPN http/1.1); "
        "the admin port stays plain HTTP.",
    )

    @property
    def template(self) -> PodTemplate:
        """The pod-template part, with the balancer image default applied."""
        fields = {k: getattr(self, k) for k in PodTemplate.model_fields}
        fields["image"] = self.image or c.BALANCER_IMAGE
        return PodTemplate(**fields)


class Spec(_Model):
    """What to run."""

    replicas: int = Field(
        default=c.DEFAULT_REPLICAS,
        ge=0,
        le=MAX_REPLICAS,
        description="Number of replica pods (ring members). kubectl scale sets it.",
    )
    # Each name is checked by ``problems`` (so a bad stored name is reported, not a parse error);
    # the API server checks it against the same pattern before storing.
    hostnames: tuple[str, ...] = Field(
        default=(),
        max_length=MAX_REPLICAS,
        description=(
            'Ring identities, in order (seed style, e.g. "S5"). The first `replicas` are used; generated '
            'names "Server <k>" fill the rest. Pod names are <resource>-<identity in DNS form>; two names '
            "with the same DNS form are refused in status (InvalidSpec)."
        ),
        json_schema_extra={
            "items": {"type": "string", "minLength": 1, "maxLength": 40, "pattern": NAME_PATTERN.pattern},
            "x-kubernetes-list-type": "set",
        },
    )
    template: PodTemplate = Field(default_factory=PodTemplate, description="The replica pods' container.")
    hashing: Hashing = Field(default_factory=Hashing, description="How the balancer maps request keys to replicas.")
    balancer: Balancer = Field(default_factory=Balancer, description="The balancer Deployment and Service.")

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
    if spec.hashing.warmup_seconds and spec.hashing.strategy not in WARMUP_STRATEGIES:
        found.append(
            f"spec.hashing.warmupSeconds: a warm-up needs strategy {' or '.join(WARMUP_STRATEGIES)} "
            f"(each key has one final owner to move to), not {spec.hashing.strategy!r}; set it to 0 or change the "
            "strategy"
        )
    if spec.hashing.key_source == "query" and not spec.hashing.key_query:
        found.append("spec.hashing.keyQuery: required with keySource query")
    for i, source in enumerate(spec.hashing.key_fallback):
        if source.source in keys.NAMED_SOURCES and not source.name:
            found.append(f"spec.hashing.keyFallback[{i}].name: required with source {source.source}")
    return found


def defaults() -> Spec:
    """The spec of a resource with an empty ``spec`` (what ``ringlb dev`` starts with, too)."""
    return Spec()
