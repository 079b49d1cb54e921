"""A Kubernetes Event a pass wants posted, as plain data.

The pure modules decide what to say; only the daemon in ``handlers`` posts (``kopf.event``), and
it drops a message it posted a moment ago, so a pass may return the same Event every time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str
