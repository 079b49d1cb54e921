"""The ring the operator publishes: its members, its content and the revision that versions it.

Pure: ``reconcile.py`` saves the revision in status first, then writes the document to the
snapshot ConfigMap and pushes it. The document's format is ``ringlb_ring.membership``'s, shared
with the balancer, so the two never disagree on what a revision holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ringlb_operator import children
from ringlb_operator import constants as c
from ringlb_operator.children import Owner
from ringlb_operator.observe import PodView
from ringlb_operator.spec import Spec
from ringlb_ring import membership as document_format
from ringlb_ring.hashing import Transition
from ringlb_ring.membership import format_address


def unseen_members(status: Mapping[str, Any] | None, pods: Sequence[PodView]) -> set[str]:
    """Pods the last status listed as members that the pod index does not hold at all.

    The index is a cache filled by a watch, and a watch that has just (re)started (a standby
    promoted, an operator shutting down) can hold nothing yet: before such an absence takes
    identities out of the published ring, it is confirmed against the API.
    """
    listed = {m.get("pod", "") for m in (status or {}).get("members") or []}
    return listed - {p.name for p in pods} - {""}


def members(owner: Owner, spec: Spec, pods: Sequence[PodView], retiring: Sequence[str]) -> list[dict[str, str]]:
    """The ring: Ready, live pods of the wanted identities, in identity order."""
    by_name = {p.name: p for p in pods}
    ring = []
    for identity in spec.identities():
        pod = by_name.get(children.pod_name(owner.name, identity))
        if pod and pod.alive and pod.ready and pod.ip and pod.owner_uid == owner.uid and pod.name not in retiring:
            ring.append({"name": identity, "address": format_address(pod.ip, c.PORT)})
    return ring


@dataclass(frozen=True)
class RingRevision:
    """The revision that versions one ring content, that content's hash, and whether this pass
    moved to it (``bumped``: status must be saved, and the new document published, first)."""

    revision: int
    hash: str
    bumped: bool

    def document(
        self, members: list[dict[str, str]], spec: Spec, transition: Transition | None = None
    ) -> dict[str, Any]:
        return {"revision": self.revision, **ring_content(members, spec, transition)}


def ring_content(members: list[dict[str, str]], spec: Spec, transition: Transition | None = None) -> dict[str, Any]:
    """The membership document minus its revision (what the revision versions); ``transition``:
    a warm-up step (``warmup.py``), so each step is content of its own with a revision of its own."""
    return document_format.content(members, replace(spec.hashing.config(), transition=transition), spec.hashing.key())


def ring_revision(
    status: Mapping[str, Any] | None,
    members: list[dict[str, str]],
    spec: Spec,
    floor: int = 0,
    transition: Transition | None = None,
) -> RingRevision:
    """The revision of this content: unchanged if the status already versions it, else the next.

    The status is written before any push, so the revision survives operator restarts and never
    goes back. ``floor`` is the lowest revision acceptable (one above what a balancer that refused
    us with 409 holds), so the next push wins.
    """
    status = status or {}
    content_hash = children.digest(ring_content(members, spec, transition))
    current = int(status.get("ringRevision") or 0)
    if current >= 1 and status.get("ringHash") == content_hash and current >= floor:
        return RingRevision(current, content_hash, bumped=False)
    return RingRevision(max(current + 1, floor), content_hash, bumped=True)
