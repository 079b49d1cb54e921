"""Load from inside the cluster: a client pod sends bounded GET requests to the balancer.

A port-forward pins one balancer pod; a pod inside the cluster reaches the balancer Service's
ClusterIP (kube-proxy picks a balancer pod per connection, as for any in-cluster client) and,
directly, each balancer pod IP. The client is the replica image (it has Python); the load
script below is passed on its command line, and it prints its totals as one JSON line that
``InClusterLoad.result`` reads back from the pod's log.

The client is a plain HTTP/1.1 keep-alive client (``http.client``), one connection per thread,
closed after an answer that says ``Connection: close`` (what a draining balancer sends), after
any error, and after ``per_connection`` requests (so kube-proxy keeps choosing pods for new
connections while the endpoints change; 0: never, as a pooled client does). It never retries:
every request that does not come back 200 with a replica's ``Hello from Server: ...`` counts as
failed, with its status or exception, and the first 20 failures are reported with their time,
target and whether they were sent on a reused connection.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .conftest import balancer_pods, kubectl, kubectl_json, pod_ready, wait_for

CLIENT_IMAGE = "ringlb/replica:0.1.0"
STARTED = "RINGLB-LOAD-STARTED"
RESULT = "RINGLB-LOAD-RESULT "
STOP_FILE = "/tmp/stop"

# Runs in the client pod (python3 of the replica image, standard library only). argv[1] is the
# JSON config: {"targets": [{"name", "host", "port", "threads", "count", "per_connection"}],
# "seconds", "path", "timeout"}. Bounded by each target's count and by "seconds"; /tmp/stop ends
# it early. A connection is closed after "per_connection" requests (0: only when the server says
# so), so new connections (which kube-proxy balances) keep coming while endpoints change.
LOAD_SCRIPT = r"""
import collections, http.client, json, os, sys, threading, time, uuid

cfg = json.loads(sys.argv[1])
start = time.monotonic()
deadline = start + cfg["seconds"]
stop = threading.Event()
lock = threading.Lock()
stats = {}
samples = []
PREFIX = "Hello from Server: "


def watch_stop():
    while not stop.is_set():
        if os.path.exists("/tmp/stop") or time.monotonic() > deadline:
            stop.set()
        time.sleep(0.1)


def worker(target, count):
    st = stats[target["name"]]
    conn = None
    uses = 0
    for _ in range(count):
        if stop.is_set():
            break
        key = uuid.uuid4().hex
        reused = conn is not None
        began = time.monotonic()
        server = error = None
        try:
            if conn is None:
                conn = http.client.HTTPConnection(target["host"], target["port"], timeout=cfg["timeout"])
                uses = 0
            conn.request("GET", cfg["path"], headers={"X-Request-ID": key})
            reply = conn.getresponse()
            body = reply.read()
            uses += 1
            if reply.will_close or uses == target["per_connection"]:
                conn.close()
                conn = None
            if reply.status == 200:
                message = json.loads(body)["message"]
                if message.startswith(PREFIX):
                    server = message[len(PREFIX):]
                else:
                    error = "unexpected body"
            else:
                error = "status %d" % reply.status
        except Exception as exc:
            error = type(exc).__name__
            if conn is not None:
                conn.close()
            conn = None
        took = time.monotonic() - began
        with lock:
            st["sent"] += 1
            st["max_latency"] = max(st["max_latency"], took)
            if server is not None:
                st["ok"] += 1
                st["servers"][server] += 1
            else:
                st["failed"] += 1
                st["errors"][error] += 1
                if len(samples) < 20:
                    samples.append({"t": round(began - start, 3), "target": target["name"], "error": error,
                                    "reused": reused, "key": key})
    if conn is not None:
        conn.close()


threads = []
for target in cfg["targets"]:
    stats[target["name"]] = {"sent": 0, "ok": 0, "failed": 0, "max_latency": 0.0,
                             "errors": collections.Counter(), "servers": collections.Counter()}
    n, count = target["threads"], target["count"]
    for i in range(n):
        share = count // n + (i < count % n)
        threads.append(threading.Thread(target=worker, args=(target, share), daemon=True))
threading.Thread(target=watch_stop, daemon=True).start()
for t in threads:
    t.start()
print("RINGLB-LOAD-STARTED", flush=True)
for t in threads:
    t.join(max(0.0, deadline - time.monotonic()) + cfg["timeout"] + 5)
stop.set()
elapsed = time.monotonic() - start
with lock:
    targets = {name: dict(st, errors=dict(st["errors"]), servers=dict(st["servers"]),
                          max_latency=round(st["max_latency"], 3)) for name, st in stats.items()}
    report = {"elapsed": round(elapsed, 3), "unfinished_threads": sum(t.is_alive() for t in threads),
              "targets": targets, "samples": list(samples)}
print("RINGLB-LOAD-RESULT " + json.dumps(report), flush=True)
"""


@dataclass
class LoadReport:
    """What the client pod reported: per target and in total."""

    elapsed: float
    targets: dict[str, dict[str, Any]]
    samples: list[dict[str, Any]] = field(default_factory=list)
    unfinished_threads: int = 0

    @property
    def sent(self) -> int:
        return sum(t["sent"] for t in self.targets.values())

    @property
    def ok(self) -> int:
        return sum(t["ok"] for t in self.targets.values())

    @property
    def failed(self) -> int:
        return sum(t["failed"] for t in self.targets.values())

    @property
    def errors(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for t in self.targets.values():
            out.update(t["errors"])
        return out

    @property
    def servers(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for t in self.targets.values():
            out.update(t["servers"])
        return out

    def summary(self) -> str:
        rate = self.sent / self.elapsed if self.elapsed else 0.0
        lines = [
            f"failed {self.failed} of {self.sent} idempotent requests in {self.elapsed:.1f}s ({rate:.0f} req/s)"
            + (f": {dict(self.errors)}" if self.failed else "")
        ]
        for name, t in self.targets.items():
            lines.append(
                f"  {name}: failed {t['failed']} of {t['sent']}, max latency {t['max_latency']:.2f}s, "
                f"servers {dict(sorted(t['servers'].items()))}" + (f", errors {t['errors']}" if t["failed"] else "")
            )
        return "\n".join(lines)


def service_address(namespace: str, name: str = "web") -> tuple[str, int]:
    """The balancer Service's ClusterIP and port."""
    spec = kubectl_json("-n", namespace, "get", "service", f"{name}-balancer")["spec"]
    return spec["clusterIP"], int(spec["ports"][0]["port"])


def balancer_ips(namespace: str, name: str = "web") -> dict[str, str]:
    """pod name -> pod IP of the Ready balancer pods."""
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in balancer_pods(namespace, name) if pod_ready(p)}


class InClusterLoad:
    """One client pod in ``namespace`` sending GET ``path`` with random X-Request-ID keys.

    ``service_threads``/``service_count``: load on the Service's ClusterIP, a new connection
    every ``per_connection`` requests; ``keepalive_threads`` (as many requests again): on the
    ClusterIP too, each keeping its connection until the server closes it (a pooled client:
    this traffic stays on a terminating balancer pod until the pod ends it); ``pods``: pod name
    -> IP of balancer pods to load directly on port 5000 (``pod_threads``/``pod_count`` each).
    Bounded by the counts and by ``seconds``; ``stop()`` ends it early.

    ``start()``, disrupt, ``stop()`` (in a ``finally``), then ``result()``.
    """

    def __init__(
        self,
        namespace: str,
        name: str = "web",
        *,
        seconds: float = 30.0,
        service_threads: int = 4,
        keepalive_threads: int = 6,
        service_count: int = 100_000,
        pods: dict[str, str] | None = None,
        pod_threads: int = 2,
        pod_count: int = 30_000,
        path: str = "/home",
        timeout: float = 10.0,
        per_connection: int = 50,
    ) -> None:
        self.namespace = namespace
        self.pod = f"load-{uuid.uuid4().hex[:6]}"
        self.seconds = seconds
        self.timeout = timeout
        ip, port = service_address(namespace, name)
        targets: list[dict[str, Any]] = [
            {
                "name": "service",
                "host": ip,
                "port": port,
                "threads": service_threads,
                "count": service_count,
                "per_connection": per_connection,
            },
            {
                "name": "service keep-alive",
                "host": ip,
                "port": port,
                "threads": keepalive_threads,
                "count": service_count,
                "per_connection": 0,
            },
        ]
        for pod, pod_ip in sorted((pods or {}).items()):
            targets.append(
                {
                    "name": f"pod {pod}",
                    "host": pod_ip,
                    "port": 5000,
                    "threads": pod_threads,
                    "count": pod_count,
                    "per_connection": per_connection,
                }
            )
        self.config = {
            "targets": [t for t in targets if t["threads"] > 0],
            "seconds": seconds,
            "path": path,
            "timeout": timeout,
        }
        self.started_at = 0.0

    def manifest(self) -> dict[str, Any]:
        security = {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.pod, "labels": {"app.kubernetes.io/name": "ringlb-e2e-load"}},
            "spec": {
                "restartPolicy": "Never",
                "enableServiceLinks": False,
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "load",
                        "image": CLIENT_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python3", "-u", "-c", LOAD_SCRIPT, json.dumps(self.config)],
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                        "securityContext": security,
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        }

    def logs(self) -> str:
        return kubectl("-n", self.namespace, "logs", self.pod, check=False).stdout

    def start(self, timeout: float = 60) -> InClusterLoad:
        """Create the pod; return once its threads are sending."""
        kubectl("-n", self.namespace, "apply", "-f", "-", input=json.dumps(self.manifest()))
        wait_for(lambda: STARTED in self.logs(), what=f"load pod {self.pod} sending", timeout=timeout, interval=0.5)
        self.started_at = time.monotonic()
        return self

    def stop(self) -> None:
        """End the load now (it ends by itself at its bounds)."""
        kubectl(
            "-n",
            self.namespace,
            "exec",
            self.pod,
            "--",
            "python3",
            "-c",
            f"open({STOP_FILE!r}, 'w').close()",
            check=False,
        )

    def result(self) -> LoadReport:
        """Wait for the pod to finish and parse its report; fails with the log if there is none."""
        timeout = max(0.0, self.seconds - (time.monotonic() - self.started_at)) + self.timeout + 60

        def finished() -> str | None:
            phase = kubectl_json("-n", self.namespace, "get", "pod", self.pod)["status"].get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        phase = wait_for(finished, what=f"load pod {self.pod} finished", timeout=timeout)
        log = self.logs()
        line = next((line for line in reversed(log.splitlines()) if line.startswith(RESULT)), None)
        assert phase == "Succeeded" and line, f"load pod {self.pod} ended {phase} without a report:\n{log[-3000:]}"
        raw = json.loads(line[len(RESULT) :])
        report = LoadReport(raw["elapsed"], raw["targets"], raw["samples"], raw["unfinished_threads"])
        assert report.unfinished_threads == 0, f"{report.unfinished_threads} load threads did not finish in time"
        return report
