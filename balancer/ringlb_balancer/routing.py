"""The routing table in force and how a new one is published to every worker process.

A push builds the table once (Maglev's 65537 entries take ~60 ms in Python) and stores it; every
other process loads the built table instead of rebuilding it, the first time it sees the shared
revision move.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field

from ringlb_balancer import hashing
from ringlb_balancer.membership import EMPTY, Membership, MembershipError
from ringlb_balancer.shared import HEALTHY, SharedState


class StaleRevision(Exception):
    """A push whose revision is older than the one in force, or equal with other content."""


@dataclass
class Routing:
    """One membership, with everything a request needs precomputed."""

    membership: Membership
    strategy: hashing.Strategy
    key_header: str = field(init=False)  # lower-cased, as requests index their headers

    def __post_init__(self) -> None:
        self.key_header = self.membership.key.name.lower()

    @classmethod
    def build(cls, membership: Membership) -> "Routing":
        return cls(membership, hashing.build(membership.names, membership.hashing))


class RoutingStore:
    """This process's current routing, kept equal to the shared revision."""

    def __init__(self, shared: SharedState) -> None:
        self.shared = shared
        self.path = shared.dir / "routing.pickle"
        self.routing = Routing.build(EMPTY)
        self.revision = 0

    def current(self) -> Routing:
        """The routing to use for this request: one shared-memory read when nothing changed."""
        if self.shared.revision != self.revision:
            self._load()
        return self.routing

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
                raise StaleRevision(
                    f"revision {membership.revision} is stale: revision {in_force} is in force"
                )
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
            flags = bytes(
                old_flags[old_index[m]] if m in old_index else HEALTHY for m in membership.members
            )
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(routing, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
            self.shared.write_health_flags(flags)
            self.shared.revision = membership.revision
            self.routing = routing
            self.revision = membership.revision
            return routing, True
