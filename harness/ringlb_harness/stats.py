"""Figures from samples, computed one way for every script and test."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100): a value that was measured, never an
    interpolation between two; None when there are no values."""
    data = sorted(values)
    if not data:
        return None
    return data[max(1, math.ceil(p / 100 * len(data))) - 1]
