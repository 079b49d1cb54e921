"""One importable helper package for the test tiers and scripts.

- ``tests.support.net``: free_port, wait_until, raw socket exchanges, a strict response reader (h11)
- ``tests.support.proc``: /proc readers (cpu_seconds, rss_bytes, descendants, pids_listening)
- ``tests.support.balancer``: the balancer process (gunicorn, as the image runs it) + membership pushes
- ``tests.support.local``: ``ringlb dev`` as a subprocess (LocalMode)
- ``tests.backends``: the test backends (not the replica image) those tests put behind it
"""

from tests.support.net import free_port, wait_until
from tests.support.proc import cpu_seconds, descendants, pids_listening, rss_bytes

__all__ = ["cpu_seconds", "descendants", "free_port", "pids_listening", "rss_bytes", "wait_until"]
