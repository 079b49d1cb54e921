"""Every name the operator, its manifests and its tests share, spelled once."""

from __future__ import annotations

import os
from typing import Final

# The resource's names and defaults are the shared contract's; re-exported so the operator
# spells everything through this module.
from ringlb_ring.resource import DEFAULT_REPLICAS as DEFAULT_REPLICAS
from ringlb_ring.resource import GROUP, PLURAL, VERSION
from ringlb_ring.resource import KIND as KIND

API_VERSION = f"{GROUP}/{VERSION}"
SHORT_NAME = "lbrs"
CRD_NAME = f"{PLURAL}.{GROUP}"

# --- labels and annotations on every child -------------------------------------------------
LABEL_NAME = "app.kubernetes.io/name"  # always "ringlb"
LABEL_INSTANCE = "app.kubernetes.io/instance"  # the resource's name
LABEL_COMPONENT = "app.kubernetes.io/component"  # "replica" or "balancer"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"  # always "ringlb-operator"
LABEL_RESOURCE = f"{GROUP}/resource"  # the owning resource's name; the pod index keys on it
LABEL_IDENTITY = f"{GROUP}/identity"  # DNS form of a replica's ring identity (label-safe)
ANNOTATION_IDENTITY = f"{GROUP}/identity"  # the ring identity itself, e.g. "Server 1"
ANNOTATION_TEMPLATE_HASH = f"{GROUP}/template-hash"  # what a pod was built from
ANNOTATION_TOKEN_HASH = f"{GROUP}/token-hash"  # balancer pods roll when their tokens change
ANNOTATION_APPLIED_HASH = f"{GROUP}/applied-hash"  # what the operator last applied to a child
APP_NAME = "ringlb"
MANAGER = "ringlb-operator"
COMPONENT_REPLICA = "replica"
COMPONENT_BALANCER = "balancer"

# --- condition types and reasons (CamelCase, as kubectl users expect) -----------------------
READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
MESSAGE_LIMIT = 1000  # characters of a condition's or an Event's message: one line a person reads, not a dump


class Reason:
    """Condition reasons and Event reasons; the docs' troubleshooting table lists each."""

    ALL_READY = "AllReplicasReady"
    REPLICAS_NOT_READY = "ReplicasNotReady"
    BALANCER_NOT_READY = "BalancerNotReady"
    NOT_ACKNOWLEDGED = "MembershipNotAcknowledged"
    SCALED_TO_ZERO = "ScaledToZero"
    RECONCILED = "Reconciled"
    SCALING_UP = "ScalingUp"
    SCALING_DOWN = "ScalingDown"
    REPLACING = "ReplacingPods"
    ROLLING = "RollingUpdate"
    PUSHING = "PushingMembership"
    AS_EXPECTED = "AsExpected"
    INVALID_SPEC = "InvalidSpec"
    CHILD_CONFLICT = "ChildConflict"
    IMAGE_PULL_BACKOFF = "ImagePullBackOff"
    ERR_IMAGE_PULL = "ErrImagePull"
    INVALID_IMAGE = "InvalidImageName"
    CRASH_LOOP = "CrashLoopBackOff"
    UNSCHEDULABLE = "Unschedulable"
    NOT_ACKNOWLEDGING = "BalancerNotAcknowledging"
    API_ERROR = "ApiError"
    NODE_UNREACHABLE = "NodeUnreachable"  # also the Warning Event of a pod deleted off a lost node
    # Event-only reasons
    CREATED = "Created"
    REPLACED = "Replaced"
    DELETED = "Deleted"
    PUSHED = "MembershipPushed"
    PUSH_FAILED = "MembershipPushFailed"
    BALANCER_RESET = "BalancerReset"
    REPAIRED = "Repaired"
    # Warm-up (spec.hashing.warmupSeconds): Progressing reasons and Events of a membership change
    # carried out a slice of the key space at a time.
    WARMING_UP = "WarmingUp"  # a joining member's share grows step by step
    DRAINING = "Draining"  # a member leaving by scale-down hands its keys over before its pod goes


# The node lifecycle controller's NoExecute taints of a lost node: "unreachable" when the kubelet
# stopped reporting (Ready Unknown), "not-ready" when it reports Ready False.
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
NODE_LOSS_TAINTS = (TAINT_UNREACHABLE, TAINT_NOT_READY)

# Waiting reasons of a container that mean "this will not fix itself soon": surfaced in Degraded.
STUCK_WAITING_REASONS = (
    Reason.IMAGE_PULL_BACKOFF,
    Reason.ERR_IMAGE_PULL,
    Reason.INVALID_IMAGE,
    "CreateContainerConfigError",
    "CreateContainerError",
    Reason.CRASH_LOOP,
)

# --- defaults (spec.py uses them; the CRD's schema defaults are generated from spec.py) ------
DEFAULT_BALANCER_REPLICAS = 2
MAX_BALANCER_REPLICAS = 10
DEFAULT_SERVICE_TYPE: Final = "ClusterIP"  # Final: the literal type spec.py's field has
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
PULL_POLICIES = ("IfNotPresent", "Always", "Never")
DEFAULT_PULL_POLICY: Final = "IfNotPresent"
KEY_SOURCES = ("header", "cookie", "client-ip")
DEFAULT_KEY_HEADER = "X-Request-ID"
DEFAULT_KEY_COOKIE = "ringlb-key"
PORT = 5000  # the seed's port: balancer and replicas listen on it in every mode
ADMIN_PORT = 5001  # the balancer's admin listener (PUT/GET /membership, /metrics, /status)
ADMIN_PORT_NAME = "admin"
SECRET_TOKEN_KEY = "token"  # the key in both per-resource Secrets
MEMBERSHIP_KEY = "membership.json"  # the key of the membership ConfigMap
SNAPSHOT_DIR = "/etc/ringlb/membership"  # where balancer pods mount that ConfigMap
TLS_DIR = "/etc/ringlb/tls"  # where balancer pods mount spec.balancer.tls.secretName (tls.crt, tls.key)
TLS_CERT_KEY, TLS_KEY_KEY = "tls.crt", "tls.key"
# How long a pod may stay bound to a lost node before it is replaced (spec
# template.unreachableNodeSeconds): its tolerationSeconds for NODE_LOSS_TAINTS, and for replica
# pods the operator's force-delete. Counted from the node's Ready transition, which itself comes
# ~50 s (node-monitor-grace-period) after the kubelet's last heartbeat.
DEFAULT_UNREACHABLE_NODE_SECONDS = 30
MAX_UNREACHABLE_NODE_SECONDS = 3600
DEFAULT_DRAIN_SECONDS = 5  # balancer keeps serving this long after SIGTERM (RINGLB_DRAIN_SECONDS)
BALANCER_GRACEFUL_SECONDS = 20  # then in-flight requests get this long (gunicorn graceful timeout)
PRESTOP_SECONDS = 2  # preStop sleep: endpoints and kube-proxy drop the pod before SIGTERM
OPERATOR_NAMESPACE = os.environ.get("POD_NAMESPACE", "ringlb-system")
OPERATOR_KEY_SECRET = "ringlb-operator-key"  # in OPERATOR_NAMESPACE: the key the tokens derive from
OPERATOR_COMPONENT = "operator"
METRICS_PORT = int(os.environ.get("RINGLB_OPERATOR_METRICS_PORT", "8081"))
SCRAPE_NAMESPACE_LABEL = f"{GROUP}/scrape"  # namespaces labelled "true" may scrape balancer /metrics
PEERING_NAME = "ringlb"
# A killed active operator pod is taken over once its peering record is this old (kopf: 60 s);
# the active pod refreshes it every 20-25 s.
PEERING_LIFETIME = 30
MAX_RESOURCE_NAME = 40  # leaves room for "-balancer" and "-<identity>" within 63 characters
RESOURCE_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"  # DNS-1035: Services need a leading letter

BALANCER_IMAGE = os.environ.get("RINGLB_BALANCER_IMAGE", "ringlb/balancer:0.1.0")
REPLICA_IMAGE = os.environ.get("RINGLB_REPLICA_IMAGE", "ringlb/replica:0.1.0")

# --- timing -----------------------------------------------------------------------------------
RESYNC_SECONDS = 30.0  # a full pass even when no event arrived (level-based safety net)
DEBOUNCE_SECONDS = 0.2  # events arrive in bursts (a pod's status changes several times)
PUSH_BACKOFF_MIN = 1.0
PUSH_BACKOFF_MAX = 30.0
PUSH_TIMEOUT = 2.0  # per HTTP request to one balancer pod
PUSH_ATTEMPTS = 3  # per balancer pod within one pass; later passes retry with backoff
PUSH_DEADLINE = 5.0  # one overall deadline for all balancer pods of a resource in one pass
PUSH_CONCURRENCY = 8  # balancer pods of one resource pushed at once
PUSH_WORKERS = 32  # threads for pushes, all resources together (not kopf's executor)
PASS_WORKERS = 8  # threads for reconcile passes, all resources together (not kopf's executor)
REVISION_JUMP_LIMIT = 2**32  # the balancer refuses pushes that jump further than this
ADOPT_JUMP_LIMIT = 2**31  # a balancer further ahead than this is reset (pod deleted), not followed
# Warm-up: a change is carried out in 2..WARMUP_MAX_STEPS published steps, about
# WARMUP_STEP_SECONDS apart, over spec.hashing.warmupSeconds (0..MAX_WARMUP_SECONDS).
MAX_WARMUP_SECONDS = 3600
WARMUP_STEP_SECONDS = 5
WARMUP_MAX_STEPS = 20
BUILDER_VERSION = "1"  # bump when children.py changes a pod in a way that needs a restart
