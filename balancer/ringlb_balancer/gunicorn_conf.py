"""gunicorn settings for the balancer: shared state set up in the master, health checks there.

The master creates the state directory before any worker starts, so every worker maps the same
shared state; the one health checker runs as a thread of the master and writes the ejection
flags that all workers read. Listeners come from the balancer's own settings (``RINGLB_BIND``,
``RINGLB_ADMIN_BIND``), so gunicorn and the workers agree on which one is the admin port.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from typing import Any

from ringlb_balancer.config import Settings

_settings = Settings.from_env()
bind = [b for b in (_settings.bind, _settings.admin_bind) if b]
workers = int(os.environ.get("RINGLB_WORKERS", "2"))
worker_class = "ringlb_balancer.worker.ProxyWorker"
timeout = 60
# SIGTERM: drain_seconds of serving while endpoints update, then up to 20 s for in-flight requests.
graceful_timeout = int(_settings.drain_seconds) + 20
accesslog = os.environ.get("RINGLB_ACCESS_LOG") or None
control_socket_disable = True  # one per host by default; several balancers (and tests) share hosts

_created: list[str] = []
_checker: Any = None

# Set at import, in the master, so that every worker inherits them.
if not os.environ.get("RINGLB_STATE_DIR"):
    os.environ["RINGLB_STATE_DIR"] = tempfile.mkdtemp(prefix="ringlb-state-")
    _created.append(os.environ["RINGLB_STATE_DIR"])
# One identity per balancer, put into Via by every worker: a request coming back is a loop.
os.environ.setdefault("RINGLB_INSTANCE", secrets.token_hex(4))


def when_ready(server: Any) -> None:
    global _checker
    from ringlb_balancer.health import HealthChecker
    from ringlb_balancer.routing import RoutingStore
    from ringlb_balancer.shared import SharedState

    settings = Settings.from_env()
    store = RoutingStore(SharedState(settings.state_dir), settings.snapshot)
    # A state dir reused from a balancer that drained and exited: its flag and its worker ages
    # are not this master's.
    store.shared.draining = False
    store.shared.replaced_age = 0
    if store.follow_snapshot():
        server.log.info("membership snapshot revision %d in force", store.shared.revision)
    _checker = HealthChecker(settings, store)
    _checker.start()


def on_reload(server: Any) -> None:
    """SIGHUP: workers older than the next one spawned are about to be replaced (see
    ``SharedState.replaced_age``)."""
    from ringlb_balancer.shared import SharedState

    SharedState(Settings.from_env().state_dir).replaced_age = server.worker_age


def on_exit(server: Any) -> None:
    if _checker is not None:
        _checker.stop()
    for path in _created:
        shutil.rmtree(path, ignore_errors=True)
