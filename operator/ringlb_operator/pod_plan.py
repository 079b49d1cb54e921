"""Which replica pods to create, delete or retire: one pod per identity, named after it.

Pure: ``reconcile.py`` observes the pods, calls ``plan_pods`` and applies the plan. The same pods
give the same plan however often it runs, which is what keeps the operator level-based.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ringlb_operator import children
from ringlb_operator import constants as c
from ringlb_operator.children import Owner
from ringlb_operator.events import Event
from ringlb_operator.observe import PodView
from ringlb_operator.spec import Spec

Reason = c.Reason


@dataclass
class PodPlan:
    """What to do with replica pods in this pass."""

    create: list[dict[str, Any]] = field(default_factory=list)
    created_events: dict[str, Event] = field(default_factory=dict)  # posted only if the create succeeds
    delete_now: list[str] = field(default_factory=list)  # not serving: safe to delete at once
    retire: list[str] = field(default_factory=list)  # serving: delete once the ring drops them
    retired_events: dict[str, Event] = field(default_factory=dict)  # posted when the retired pod is deleted
    conflicts: list[str] = field(default_factory=list)  # a same-named pod we do not own
    events: list[Event] = field(default_factory=list)
    progress: str = ""  # a Progressing reason, "" when nothing moves


def previous_members(status: Mapping[str, Any] | None) -> set[str]:
    """Identities the last status already listed: a missing pod of one of them is a
    replacement (its pod may have shown as gone already while it was terminating)."""
    return {m.get("name", "") for m in (status or {}).get("members") or []}


def plan_pods(owner: Owner, spec: Spec, pods: Sequence[PodView], known: set[str]) -> PodPlan:
    """One pod per identity, named after it; everything else of ours goes.

    A missing pod is created (a replacement when ``known`` lists its identity); a failed one is
    deleted and comes back on the next pass; a pod built from an older template is replaced one
    at a time, only while every other pod is Ready; pods of identities no longer wanted are
    retired: first dropped from the ring, then deleted.
    """
    plan = PodPlan()
    by_name = {p.name: p for p in pods}
    identities = spec.identities()
    wanted = {children.pod_name(owner.name, i): i for i in identities}
    outdated: list[str] = []
    for name, identity in wanted.items():
        pod = by_name.get(name)
        if pod is None:
            plan.create.append(children.replica_pod(owner, spec, identity))
            if identity in known:
                plan.created_events[name] = Event(
                    "Normal", Reason.REPLACED, f"pod {name} of {identity!r} was gone; recreated with the same identity"
                )
                plan.progress = plan.progress or Reason.REPLACING
            else:
                plan.created_events[name] = Event("Normal", Reason.CREATED, f"created pod {name} for {identity!r}")
                plan.progress = plan.progress or Reason.SCALING_UP
            continue
        if pod.owner_uid != owner.uid:
            plan.conflicts.append(f"Pod {name} exists and is not controlled by this resource")
            continue
        if pod.terminating:
            plan.progress = plan.progress or Reason.REPLACING
            continue
        if not pod.alive:
            plan.delete_now.append(name)
            plan.events.append(
                Event("Normal", Reason.REPLACED, f"pod {name} of {identity!r} ended ({pod.phase}); replacing it")
            )
            plan.progress = plan.progress or Reason.REPLACING
            continue
        if pod.template_hash != children.replica_template_hash(owner, spec, identity):
            outdated.append(name)
    for pod in pods:
        if pod.name in wanted or pod.owner_uid != owner.uid or pod.component != c.COMPONENT_REPLICA:
            continue
        if not pod.terminating:
            plan.retire.append(pod.name)
            plan.retired_events[pod.name] = Event(
                "Normal", Reason.DELETED, f"deleting pod {pod.name}: {pod.identity or pod.name!r} is no longer wanted"
            )
        plan.progress = plan.progress or Reason.SCALING_DOWN
    if outdated:
        plan.progress = plan.progress or Reason.ROLLING
        others_ready = all(
            by_name[n].ready and not by_name[n].terminating for n in wanted if n in by_name and n not in outdated
        )
        if not plan.create and not plan.delete_now and others_ready:
            victim = outdated[0]
            plan.retire.append(victim)
            plan.events.append(Event("Normal", Reason.ROLLING, f"replacing pod {victim}: its template changed"))
    return plan
