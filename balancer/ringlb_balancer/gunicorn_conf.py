"""gunicorn settings for the balancer: shared state set up in the master, health checks there.

The master creates the state directory and the Prometheus multiprocess directory before any
worker starts, so every worker maps the same shared state; the one health checker runs as a
thread of the master and writes the ejection flags that all workers read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

bind = os.environ.get("RINGLB_BIND", "0.0.0.0:5000")
workers = int(os.environ.get("RINGLB_WORKERS", "2"))
worker_class = "ringlb_balancer.worker.ProxyWorker"
keepalive = 5
timeout = 60
graceful_timeout = 10
accesslog = os.environ.get("RINGLB_ACCESS_LOG") or None
control_socket_disable = True  # one per host by default; several balancers (and tests) share hosts

_created: list[str] = []
_checker: Any = None

# Set at import, in the master, before gunicorn imports the worker class: prometheus_client
# picks its multiprocess value store when first imported, and workers inherit the choice.
for _var, _prefix in (("RINGLB_STATE_DIR", "ringlb-state-"), ("PROMETHEUS_MULTIPROC_DIR", "ringlb-metrics-")):
    if not os.environ.get(_var):
        os.environ[_var] = tempfile.mkdtemp(prefix=_prefix)
        _created.append(os.environ[_var])

def when_ready(server: Any) -> None:
    global _checker
    from ringlb_balancer.config import Settings
    from ringlb_balancer.health import HealthChecker
    from ringlb_balancer.routing import RoutingStore
    from ringlb_balancer.shared import SharedState

    settings = Settings.from_env()
    _checker = HealthChecker(settings, RoutingStore(SharedState(settings.state_dir)))
    _checker.start()

def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

def on_exit(server: Any) -> None:
    if _checker is not None:
        _checker.stop()
    for path in _created:
        shutil.rmtree(path, ignore_errors=True)
