"""The routing table in force and how a new one is published to every worker process.

A push builds the table once (Maglev's 65537 entries take ~60 ms in Python) and stores it; every
other process loads the built table instead of rebuilding it, the first time it sees the shared
revision move.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

from ringlb_balancer import status
from ringlb_balancer.shared import HEALTHY, SharedState
from ringlb_balancer.status import history
from ringlb_ring import hashing
from ringlb_ring.keys import KeyPlan
from ringlb_ring.membership import EMPTY, Membership, MembershipError, parse


class StaleRevision(Exception):
    """A push whose revision is older than the one in force, or equal with other content."""


@dataclass
class Routing:
    """One membership, with everything a request needs precomputed."""

    membership: Membership
    strategy: hashing.Strategy
    key_plan: KeyPlan = field(init=False)
    # The common case, one header: the client protocol reads it as it scans the head, without a
    # call into the plan (b"" when the key has another source or a fallback).
    key_header: bytes = field(init=False)

    def __post_init__(self) -> None:
        key = self.membership.key
        self.key_plan = KeyPlan(key)
        single = key.source == "header" and not key.fallback
        self.key_header = key.name.lower().encode() if single else b""

    @classmethod
    def build(cls, membership: Membership) -> Routing:
        return cls(membership, hashing.build(membership.names, membership.hashing))


class RoutingStore:
    """This process's current routing, kept equal to the shared revision."""

    def __init__(self, shared: SharedState, snapshot: str = "") -> None:
        self.shared = shared
        self.snapshot = Path(snapshot) if snapshot else None
        self._snapshot_seen: tuple[int, int] = (-1, 0)  # (mtime_ns, revision)
        self.path = shared.dir / "routing.pickle"
        self.routing = Routing.build(EMPTY)
        self.previous = self.routing  # what the last publish replaced
        self.revision = 0

    def current(self) -> Routing:
        """The routing to use for this request: one shared-memory read when nothing changed."""
        if self.shared.revision != self.revision:
            self._load()
        return self.routing

    def read_snapshot(self) -> Membership | None:
        """The membership in the snapshot file (the operator's last published ring), if any.

        A bad or half-written file is ignored: the ring in force stays, and the next read
        retries. Kubernetes replaces ConfigMap files atomically, so that is rare.
        """
        if self.snapshot is None:
            return None
        try:
            return parse(json.loads(self.snapshot.read_bytes()))
        except (OSError, ValueError, RecursionError):
            return None

    def snapshot_revision(self) -> int:
        """The snapshot's revision, re-read only when the file changed."""
        if self.snapshot is None:
            return 0
        try:
            mtime = self.snapshot.stat().st_mtime_ns
        except OSError:
            return 0
        if mtime != self._snapshot_seen[0]:
            doc = self.read_snapshot()
            self._snapshot_seen = (mtime, doc.revision if doc else 0)
        return self._snapshot_seen[1]

    def follow_snapshot(self) -> bool:
        """Publish the snapshot when it is newer than the ring in force: a balancer started, or
        left without pushes, serves the last published ring without its operator."""
        if self.snapshot_revision() <= self.shared.revision:
            return False
        doc = self.read_snapshot()
        if doc is None or doc.revision <= self.shared.revision:
            return False
        try:
            routing, changed = self.publish(doc)
        except (StaleRevision, MembershipError):
            return False
        if changed:
            self.record_change(self.previous, routing)
        return changed

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            routing = pickle.load(f)
        self.routing = routing
        self.revision = routing.membership.revision

    def publish(self, membership: Membership) -> tuple[Routing, bool]:
        """Make ``membership`` the one in force in every process; returns (routing, changed).

        An equal revision with equal content is accepted again (a retried push whose answer was
        lost), so pushes are idempotent.
        """
        with self.shared.locked():
            in_force = self.shared.revision
            if in_force:
                self._load()
            if membership.revision < in_force or (
                membership.revision == in_force and membership != self.routing.membership
            ):
                raise StaleRevision(f"revision {membership.revision} is stale: revision {in_force} is in force")
            if membership.revision == in_force:
                return self.routing, False
            try:
                routing = Routing.build(membership)
            except ValueError as exc:  # e.g. more members than the strategy can place
                raise MembershipError(f"hashing: {exc}") from None
            old_flags = self.shared.health_flags(len(self.routing.membership.members))
            old_index = {m: i for i, m in enumerate(self.routing.membership.members)}
            # A member that stays keeps its health: an ejected replica is not trusted again just
            # because the ring around it changed.
            flags = bytes(old_flags[old_index[m]] if m in old_index else HEALTHY for m in membership.members)
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(routing, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
            self.shared.write_health_flags(flags)
            previous = self.routing
            self.shared.revision = membership.revision
            self.routing = routing
            self.revision = membership.revision
            self.previous = previous
            return routing, True

    def record_change(self, before: Routing, after: Routing) -> None:
        """Add a push to the status page's change log. Comparing two tables takes as long as a
        push itself, so callers do it after answering, in the background."""
        history.record_change(
            self.shared.dir, status.change(before.strategy, after.strategy, after.membership.revision, time.time())
        )
