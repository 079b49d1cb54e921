"""Sample values from a Prometheus text exposition (a /metrics answer), read with
prometheus_client's own parser rather than by matching lines."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> list[Sample]:
    """Every sample of every family in ``text`` (counters as ``<name>_total``, with their
    ``_created`` samples)."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``: every series of
    the metric without ``labels``, one series (or a subset, summed) with them; 0 when none."""
    return sum(
        s.value for s in samples(text) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
