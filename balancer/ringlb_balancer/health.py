"""The balancer's background duties, once per interval in gunicorn's master: heartbeats to
every member, following the membership snapshot, and sampling the counters for /status.

One checker runs per balancer (started from the config's ``when_ready`` hook) and writes the
flags every worker reads, so heartbeats are not multiplied by the number of workers. Passive
ejection (a worker failing to reach a member) sets the same flag at once; only consecutive good
heartbeats clear it.
"""

from __future__ import annotations

import http.client
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from ringlb_balancer.config import Settings
from ringlb_balancer.counters import Counters
from ringlb_balancer.routing import RoutingStore
from ringlb_balancer.status import history
from ringlb_ring.membership import Member

log = logging.getLogger(__name__)

MISSED_HEARTBEATS_TO_EJECT = 2  # a missed heartbeat may be a GC pause; two in a row are not


def heartbeat(member: Member, timeout: float) -> bool:
    conn = http.client.HTTPConnection(member.host, member.port, timeout=timeout)
    try:
        conn.request("GET", "/heartbeat")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class HealthChecker(threading.Thread):
    def __init__(self, settings: Settings, store: RoutingStore) -> None:
        super().__init__(name="ringlb-health", daemon=True)
        self.settings = settings
        self.store = store
        self.stopping = threading.Event()
        self.streaks: dict[Member, int] = {}  # >0 consecutive good, <0 consecutive bad
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ringlb-heartbeat")
        self.counters = Counters(store.shared.dir)

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.wait(self.settings.health_interval):
            try:
                if self.store.follow_snapshot():
                    log.info("membership snapshot revision %d in force", self.store.shared.revision)
                self.check_once()
                self.counters.flush()
                history.record_sample(self.store.shared.dir, self.store.current().membership.names)
            except Exception:  # the checker must outlive any one bad round
                log.exception("health check round failed")

    def check_once(self) -> None:
        members = self.store.current().membership.members
        results = list(self.pool.map(lambda m: heartbeat(m, self.settings.health_timeout), members))
        shared = self.store.shared
        with shared.locked():
            if self.store.current().membership.members != members:
                return  # the membership changed under us; next round checks the new one
            for index, (member, ok) in enumerate(zip(members, results)):
                streak = self.streaks.get(member, 0)
                streak = max(streak, 0) + 1 if ok else min(streak, 0) - 1
                self.streaks[member] = streak
                ejected = shared.ejected(index)
                if ejected and streak >= self.settings.healthy_after:
                    shared.set_health(index, None)
                    log.info("member %s back in rotation", member.name)
                elif not ejected and streak <= -MISSED_HEARTBEATS_TO_EJECT:
                    shared.set_health(index, "heartbeat")
                    self.counters.ejected(self.counters.row(member.name), "heartbeat")
                    log.warning("member %s ejected: no heartbeat", member.name)
        self.streaks = {m: self.streaks[m] for m in members}
