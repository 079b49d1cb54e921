"""A per-key cache model: what a replica loses when its keys move, made measurable.

Consistent hashing is worth what the per-key state it keeps warm is worth. This replica has
none of its own, so it models some: an LRU of the last ``size`` request keys. A key not in it
is a miss that costs ``miss_cost_ms`` of work, then the key is cached. The work is a sleep,
not a busy loop: it models fetching the key's state from elsewhere, and on a 2-core machine
burning CPU would distort every other measurement taken beside it (the balancer's own CPU
above all). Off unless ``RINGLB_REPLICA_CACHE_SIZE`` is set.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

KEY_HEADER = "X-Ringlb-Key"  # the key the balancer hashed, whatever its source
MAX_SIZE = 1_000_000
MAX_MISS_COST_MS = 60_000.0


@dataclass(frozen=True)
class CacheSettings:
    size: int = 0  # keys kept; 0: no cache, no X-Cache header
    miss_cost_ms: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CacheSettings:
        """From ``RINGLB_REPLICA_CACHE_SIZE`` and ``RINGLB_REPLICA_MISS_COST_MS``; a bad value
        stops the replica at start with a message naming the variable."""
        size = _number(env, "RINGLB_REPLICA_CACHE_SIZE", int, "0")
        cost = _number(env, "RINGLB_REPLICA_MISS_COST_MS", float, "0")
        settings = cls(int(size), float(cost))
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 <= self.size <= MAX_SIZE:
            raise ValueError(f"RINGLB_REPLICA_CACHE_SIZE must be 0 (off) to {MAX_SIZE} keys, got {self.size}")
        if not 0 <= self.miss_cost_ms <= MAX_MISS_COST_MS:
            raise ValueError(
                f"RINGLB_REPLICA_MISS_COST_MS must be 0 to {MAX_MISS_COST_MS:g} milliseconds, got {self.miss_cost_ms:g}"
            )


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float], default: str) -> int | float:
    text = env.get(name, "").strip() or default
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None


class KeyCache:
    """An LRU of key digests, safe to share between a gunicorn worker's threads.

    Digests (16 bytes) rather than keys, so memory is bounded by ``size`` whatever the keys'
    length. ``hits``, ``misses`` and ``evictions`` count since start.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a cache holds at least one key")
        self.size = size
        self._keys: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def lookup(self, key: bytes) -> bool:
        """True on a hit (the key becomes the most recent). On a miss nothing is cached yet:
        the caller does the miss's work, then ``insert``s, so two concurrent misses of one key
        both pay, as two concurrent fetches would."""
        digest = hashlib.blake2b(key, digest_size=16).digest()
        with self._lock:
            if digest in self._keys:
                self._keys.move_to_end(digest)
                self.hits += 1
                return True
            self.misses += 1
            return False

    def insert(self, key: bytes) -> None:
        digest = hashlib.blake2b(key, digest_size=16).digest()
        with self._lock:
            self._keys[digest] = None
            self._keys.move_to_end(digest)
            if len(self._keys) > self.size:
                self._keys.popitem(last=False)
                self.evictions += 1

    def __len__(self) -> int:
        return len(self._keys)
