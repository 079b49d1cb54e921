"""Hot keys in bounded memory: the space-saving sketch (Metwally, Agrawal, El Abbadi, ICDT 2005).

A hot key is what overloads one replica under consistent hashing, and what a warm cache is
worth most for; counting every key would grow without bound. Space-saving keeps ``capacity``
counters: a new key, when all are taken, replaces the key with the smallest count and inherits
that count as its possible overestimate. After N observations every reported count is at least
the key's true count and at most ``error`` more, ``error <= N / capacity``, and every key seen
more than N / capacity times is reported.

Pure (no clock, no I/O). The minimum is found with a lazy heap: counts only grow, so a heap
entry below its key's count is stale and is pushed back with the current count when it surfaces.
"""

from __future__ import annotations

import heapq

MAX_CAPACITY = 100_000


class SpaceSaving:
    """The top keys of a stream by count, in ``capacity`` counters."""

    def __init__(self, capacity: int) -> None:
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be between 1 and {MAX_CAPACITY}, got {capacity}")
        self.capacity = capacity
        self.total = 0  # N: observations so far
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []  # one entry per kept key: (a count it had, key)

    def observe(self, key: str) -> None:
        self.total += 1
        counts = self._counts
        count = counts.get(key)
        if count is not None:
            counts[key] = count + 1
            return
        if len(counts) < self.capacity:
            counts[key] = 1
            self._errors[key] = 0
            heapq.heappush(self._heap, (1, key))
            return
        heap = self._heap
        while True:
            seen, victim = heap[0]
            current = counts[victim]
            if current == seen:
                break
            heapq.heapreplace(heap, (current, victim))
        del counts[victim], self._errors[victim]
        counts[key] = current + 1
        self._errors[key] = current
        heapq.heapreplace(heap, (current + 1, key))

    def top(self, n: int) -> list[tuple[str, int, int]]:
        """The ``n`` keys with the highest counts as (key, count, error), highest first: the
        key's true count is between ``count - error`` and ``count``."""
        ranked = sorted(self._counts.items(), key=lambda item: (-item[1], item[0]))[: max(n, 0)]
        return [(key, count, self._errors[key]) for key, count in ranked]

    def __len__(self) -> int:
        return len(self._counts)
