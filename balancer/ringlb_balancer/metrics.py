"""Prometheus exposition of the counters every balancer process writes (see ``counters``).

A collector reads them at scrape time, so the request path never touches prometheus_client.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ringlb_balancer import counters, tls
from ringlb_balancer.routing import RoutingStore


class BalancerCollector:
    def __init__(self, store: RoutingStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        shared = self.store.shared
        membership = self.store.current().membership
        totals = counters.totals(shared.dir, membership.names)
        requests = CounterMetricFamily(
            "ringlb_requests",
            "Requests forwarded, by the member that answered and its status class",
            labels=["member", "code"],
        )
        retries = CounterMetricFamily("ringlb_retries", "Requests sent again to the next member", labels=["member"])
        ejections = CounterMetricFamily(
            "ringlb_ejections", "Members ejected, by who noticed", labels=["member", "reason"]
        )
        for name, row in sorted(totals["members"].items()):
            for code, value in row["answers"].items():
                requests.add_metric([name, code], value)
            retries.add_metric([name], row["retries"])
            for reason, value in row["ejections"].items():
                ejections.add_metric([name, reason], value)
        yield requests
        yield retries
        yield ejections
        failures = CounterMetricFamily(
            "ringlb_failed_requests", "Requests answered by the balancer with 5xx", labels=["reason"]
        )
        for reason, value in totals["failures"].items():
            failures.add_metric([reason], value)
        yield failures
        buckets = []
        running = 0
        for bound, value in zip((*map(str, counters.BUCKETS), "+Inf"), totals["latency"]):
            running += value
            buckets.append((bound, running))
        yield HistogramMetricFamily(
            "ringlb_request_duration_seconds",
            "Time from receiving a request to the replica's first answer byte",
            buckets=buckets,
            sum_value=totals["latency_sum"],
        )
        yield GaugeMetricFamily("ringlb_membership_revision", "Membership revision in force", value=membership.revision)
        up = GaugeMetricFamily(
            "ringlb_member_up", "1 while a member is in rotation, 0 while ejected", labels=["member"]
        )
        inflight = GaugeMetricFamily("ringlb_member_inflight", "Requests in flight per member", labels=["member"])
        loads = shared.total_inflight(len(membership.members))
        for index, member in enumerate(membership.members):
            up.add_metric([member.name], 0 if shared.ejected(index) else 1)
            inflight.add_metric([member.name], loads[index])
        yield up
        yield inflight
        reloads = tls.totals(shared.dir)
        if reloads is not None:
            tls_reloads = CounterMetricFamily(
                "ringlb_tls_reloads",
                "Changed certificate files loaded, or kept out because they did not load "
                "(the previous certificate stays in force), summed over worker processes",
                labels=["result"],
            )
            for result, value in reloads.items():
                tls_reloads.add_metric([result], value)
            yield tls_reloads


def render(store: RoutingStore) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(store))
    return generate_latest(registry), CONTENT_TYPE_LATEST
