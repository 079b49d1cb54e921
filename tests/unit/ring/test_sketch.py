"""The space-saving sketch (ringlb_ring.sketch): its error bound, checked against exact counts."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringlb_ring.sketch import SpaceSaving

# Skewed streams: a few hot keys among many cold ones, in any order.
streams = st.lists(
    st.one_of(st.sampled_from(["hot-1", "hot-2", "hot-3"]), st.integers(0, 300).map(lambda i: f"cold-{i}")),
    max_size=600,
)


@settings(max_examples=200, deadline=None)
@given(stream=streams, capacity=st.integers(1, 40))
def test_counts_overestimate_by_at_most_their_error_and_error_at_most_n_over_k(stream, capacity):
    sketch = SpaceSaving(capacity)
    for key in stream:
        sketch.observe(key)
    exact = Counter(stream)
    n = len(stream)
    reported = sketch.top(capacity)
    assert sketch.total == n and len(sketch) == len(reported) == min(capacity, len(exact))
    assert sum(count for _, count, _ in reported) == n  # every observation sits in one counter
    for key, count, error in reported:
        assert count - error <= exact[key] <= count, (key, count, error, exact[key])
        assert error <= n // capacity
    kept = {key for key, _, _ in reported}
    for key, true in exact.items():
        if true > n / capacity:
            assert key in kept, f"{key} seen {true} > N/K = {n / capacity} times but not reported"
    counts = [count for _, count, _ in reported]
    assert counts == sorted(counts, reverse=True)


def test_a_hot_key_among_a_long_tail_is_found_in_little_memory():
    sketch = SpaceSaving(10)
    for i in range(10_000):
        sketch.observe("celebrity" if i % 4 == 0 else f"fan-{i}")
    (key, count, error), *_ = sketch.top(1)
    assert key == "celebrity" and count - error <= 2500 <= count
    assert len(sketch) == 10


def test_top_n():
    sketch = SpaceSaving(5)
    for key in "aaabbc":
        sketch.observe(key)
    assert sketch.top(2) == [("a", 3, 0), ("b", 2, 0)]
    assert sketch.top(0) == []


@pytest.mark.parametrize("capacity", [0, -1, 100_001])
def test_capacity_is_bounded(capacity):
    with pytest.raises(ValueError, match="capacity must be between 1 and 100000"):
        SpaceSaving(capacity)
