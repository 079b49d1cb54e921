"""The balancer's own endpoints: the seed API (/rep, /add, /rm), membership, probes, metrics,
the status page.

They run as coroutines in the worker's event loop, beside the proxy, not on a thread pool: a
probe or a push must answer in milliseconds whatever /add is waiting for, and /add waits by
awaiting the membership change, not by holding a thread. Blocking calls (the scaler's HTTP or
Kubernetes client, building a Maglev table) go to a small executor with bounded time.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from ringlb_balancer import counters, framing, metrics, planning, status
from ringlb_balancer.config import Settings
from ringlb_balancer.routing import RoutingStore, StaleRevision
from ringlb_balancer.scaling import Conflict, Scaler, ScalerError
from ringlb_balancer.status import history
from ringlb_ring import membership as membership_doc
from ringlb_ring.naming import PlanError

if TYPE_CHECKING:
    from ringlb_balancer.exchange import Exchange

PUBLIC_PATHS = frozenset({"/rep", "/add", "/rm", "/healthz", "/readyz", "/openapi.json"})
ADMIN_PATHS = frozenset({"/membership", "/metrics", "/status", "/status/data", "/status/lookup"}) | PUBLIC_PATHS
CONFLICT_RETRIES = 5
DESIRED_RECHECK = 0.5  # seconds between reads of the desired list while a scale call waits
MAX_REVISION_JUMP = 2**32
OPENAPI = resources.files("ringlb_balancer").joinpath("openapi.json").read_bytes()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""
    client_ip: str = ""


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()


def seed(message: Any, status: str, code: int = 200) -> Reply:
    return Reply(code, framing.seed_json(message, status))


def ok(message: Any) -> Reply:
    return seed(message, "successful")


def failure(message: str, code: int = 400) -> Reply:
    return seed(message, "failure", code)


def as_json(doc: Any, code: int = 200) -> Reply:
    return Reply(code, json.dumps(doc).encode())


def replicas_message(names: list[str]) -> dict[str, Any]:
    return {"N": len(names), "replicas": names}


def authorized(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _ip_or_localhost(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def foreign(request: Request, loopback: bool) -> Reply | None:
    """Refuse what a web page the user visits could send: a cross-origin change (a browser
    sends ``Origin`` with every such POST/PUT/DELETE; curl sends none) and, on a loopback
    listener, any Host that is a name other than localhost — a DNS-rebinding page reaches
    127.0.0.1 under its own name, which then becomes the request's same origin."""
    host = request.headers.get("host", "")
    if loopback and host and not _ip_or_localhost(host):  # no Host: HTTP/1.0, never a browser
        return failure(
            f"<Error> Host {host!r} is not this balancer's: on a loopback listener the control "
            "endpoints answer only requests for localhost or an IP address",
            421,
        )
    origin = request.headers.get("origin")
    if (
        origin is not None
        and request.method not in ("GET", "HEAD", "OPTIONS")
        and origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower())
    ):
        return failure(
            f"<Error> cross-origin request refused: a page on {origin} cannot change this "
            "balancer (send it without an Origin header, as curl does)",
            403,
        )
    return None


def json_body(request: Request) -> object:
    """The body as JSON, or ``None`` when it is absent, not JSON, or nested beyond reason."""
    try:
        return json.loads(request.body)
    except (ValueError, RecursionError):
        return None


Handler = Callable[["Control", Request], Awaitable[Reply]]
ROUTES: dict[str, dict[str, Handler]] = {}


def route(path: str, method: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES.setdefault(path, {})[method] = handler
        return handler

    return register


class Control:
    """The endpoints of one worker, over the shared routing store."""

    def __init__(
        self,
        settings: Settings,
        store: RoutingStore,
        scaler: Scaler | None,
        own_addresses: frozenset[tuple[str, int]] = frozenset(),
    ) -> None:
        self.settings = settings
        self.store = store
        self.scaler = scaler
        self.own_addresses = own_addresses  # (host, port) this balancer listens on
        public = settings.bind.rsplit(":", 1)[0].strip("[]")
        self.loopback = public == "localhost" or (_ip_or_localhost(public) and ipaddress.ip_address(public).is_loopback)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ringlb-control")
        self.history_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ringlb-history")
        self.scale_lock = asyncio.Lock()  # scale calls of one worker take turns: fewer conflicts
        self.publish_lock = asyncio.Lock()
        self.status_hooks: dict[str, Callable[[Request], Reply]] = {}

    @property
    def draining(self) -> bool:
        return self.store.shared.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.store.shared.draining = value

    async def handle(self, exchange: Exchange) -> None:
        """Answer one control exchange; never raises into the event loop."""
        request = self.request_of(exchange)
        try:
            reply = await self.dispatch(request, exchange.client.admin)
        except Exception as exc:  # one bad request must not take the worker down
            exchange.engine.log.exception("control endpoint %s failed", request.path)
            reply = failure(f"<Error> balancer error: {exc}", 500)
        if exchange.client.closed:
            return
        # stored: ClientConnection.finished closes exactly when the head said so
        exchange.keep_alive = keep_alive = exchange.keep_alive and exchange.engine.serving
        data = framing.response(
            reply.status,
            reply.body,
            keep_alive,
            reply.content_type,
            reply.headers,
            exchange.http10,
            head_only=request.method == "HEAD",
        )
        exchange.reply(data)

    @staticmethod
    def request_of(exchange: Exchange) -> Request:
        path, _, query = exchange.target.decode("latin-1").partition("?")
        headers: dict[str, str] = {}
        for name, value in exchange.headers or ():
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        return Request(
            exchange.method.decode("latin-1"),
            unquote(path),
            parse_qs(query),
            headers,
            b"".join(exchange.control_body or ()),
            exchange.client.client_ip.decode(),
        )

    async def dispatch(self, request: Request, admin: bool) -> Reply:
        paths = ADMIN_PATHS if admin or not self.settings.admin_bind else PUBLIC_PATHS
        methods = ROUTES.get(request.path) if request.path in paths else None
        if methods is None:
            return failure(f"<Error> '{request.path}' is not an endpoint of this listener", 404)
        if not admin:
            refused = foreign(request, self.loopback)
            if refused is not None:
                return refused
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allowed = ", ".join(sorted(set(methods) | ({"HEAD"} if "GET" in methods else set())))
            reply = failure(f"<Error> method not allowed here; use {allowed}", 405)
            reply.headers = ((b"Allow", allowed.encode()),)
            return reply
        return await handler(self, request)

    async def blocking(self, call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, call, *args)

    # -- the seed API ---------------------------------------------------------------------
    @route("/rep", "GET")
    async def rep(self, request: Request) -> Reply:
        return ok(replicas_message(self.store.current().membership.names))

    @route("/add", "POST")
    async def add(self, request: Request) -> Reply:
        return await self.scale(request, planning.plan_add)

    @route("/rm", "DELETE")
    async def rm(self, request: Request) -> Reply:
        return await self.scale(request, planning.plan_remove)

    async def scale(self, request: Request, plan: Callable[[list[str], object], list[str]]) -> Reply:
        if self.settings.token and not authorized(request, self.settings.token):
            return failure("<Error> missing or wrong bearer token (Authorization: Bearer <token>)", 401)
        scaler = self.scaler
        if scaler is None:
            return failure("<Error> this balancer has no scaler: membership is pushed by its owner", 501)
        body = json_body(request)
        if body is None:
            return failure('<Error> body must be JSON like {"n": 1, "hostnames": ["S5"]}')
        async with self.scale_lock:
            try:
                for _ in range(CONFLICT_RETRIES):
                    current, version = await self.blocking(scaler.desired)
                    target = plan(current, body)
                    try:
                        await self.blocking(scaler.set_desired, target, version)
                        break
                    except Conflict:
                        continue
                else:
                    return failure("<Error> the replica list kept changing; try again", 409)
            except PlanError as exc:
                return failure(str(exc))
            except ScalerError as exc:
                return failure(f"<Error> {exc}", 502)
        # In force when this call's own change is: its additions in the ring, its removals out.
        # A later change by another caller may undo part of it (remove what this call added,
        # re-add a name it removed): that part is then settled too, not waited for.
        added = set(target) - set(current)
        removed = set(current) - set(target)
        deadline = time.monotonic() + self.settings.scale_timeout
        desired, checked = set(target), time.monotonic()
        while True:
            names = set(self.store.current().membership.names)
            if all(n in names or n not in desired for n in added) and all(
                n not in names or n in desired for n in removed
            ):
                return ok(replicas_message(self.store.current().membership.names))
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
            if time.monotonic() - checked > DESIRED_RECHECK:
                checked = time.monotonic()
                try:
                    desired = set((await self.blocking(scaler.desired))[0])
                except ScalerError:
                    pass  # keep waiting on what we knew
        return failure(
            f"<Error> change accepted but not in force after {self.settings.scale_timeout:g}s "
            f"(not yet ready: {sorted((added & desired) - names)}; not yet removed: "
            f"{sorted((removed & names) - desired)}); check the replicas",
            504,
        )

    # -- membership -----------------------------------------------------------------------
    @route("/membership", "PUT")
    async def put_membership(self, request: Request) -> Reply:
        token = self.settings.membership_token
        if not token:
            return failure("<Error> membership pushes are disabled: no RINGLB_MEMBERSHIP_TOKEN is configured", 403)
        if not authorized(request, token):
            return failure("<Error> missing or wrong bearer token (Authorization: Bearer <token>)", 401)
        body = json_body(request)
        if body is None:
            return failure("body must be a JSON membership document")
        try:
            doc = membership_doc.parse(body)
            self.check_addresses(doc)
            in_force = self.store.current().membership.revision
            # A fresh balancer (revision 0) takes any revision: its operator's count may be
            # past 2^32 already. After that, absurd jumps are refused.
            if in_force and doc.revision > in_force + MAX_REVISION_JUMP:
                raise membership_doc.MembershipError(
                    f"revision {doc.revision} jumps more than 2^32 past revision {in_force} in force"
                )
            async with self.publish_lock:  # this worker's pushes one at a time: ``previous`` is ours
                routing, changed = await self.blocking(self.store.publish, doc)
                previous = self.store.previous
        except membership_doc.MembershipError as exc:
            return failure(str(exc))
        except StaleRevision as exc:
            return failure(str(exc), 409)
        if changed:  # one thread, so the log keeps the order of the pushes
            asyncio.get_running_loop().run_in_executor(self.history_writer, self.store.record_change, previous, routing)
        return as_json(
            {"revision": routing.membership.revision, "members": len(routing.membership.members), "changed": changed}
        )

    def check_addresses(self, doc: membership_doc.Membership) -> None:
        """The balancer must never forward to itself: that is a loop, not a replica."""
        for member in doc.members:
            try:
                ip = ipaddress.ip_address(member.host)
            except ValueError:
                continue  # a DNS name: checked when connecting
            for host, port in self.own_addresses:
                if member.port == port and (
                    member.host == host or ip.is_loopback or (host in ("0.0.0.0", "::") and _is_local(ip))
                ):
                    raise membership_doc.MembershipError(
                        f"member {member.name}: {member.address} is this balancer's own listener"
                    )

    @route("/membership", "GET")
    async def get_membership(self, request: Request) -> Reply:
        return as_json(self.store.current().membership.to_json())

    # -- probes, metrics, docs ------------------------------------------------------------
    @route("/healthz", "GET")
    async def healthz(self, request: Request) -> Reply:
        return as_json({"status": "ok"})

    @route("/readyz", "GET")
    async def readyz(self, request: Request) -> Reply:
        membership = self.store.current().membership
        revision = membership.revision
        if self.draining:
            return as_json({"status": "draining", "revision": revision}, 503)
        if revision == 0:
            return as_json({"status": "waiting for a membership push", "revision": 0}, 503)
        if not membership.members:
            return as_json({"status": "no members in the ring", "revision": revision}, 503)
        snapshot = self.store.snapshot_revision()
        if snapshot > revision:
            return as_json({"status": f"loading snapshot revision {snapshot}", "revision": revision}, 503)
        return as_json({"status": "ready", "revision": revision})

    @route("/metrics", "GET")
    async def metrics_view(self, request: Request) -> Reply:
        data, content_type = metrics.render(self.store)
        return Reply(200, data, content_type.encode())

    # -- the status page ------------------------------------------------------------------
    @route("/status", "GET")
    async def status_page(self, request: Request) -> Reply:
        return Reply(200, status.page(), b"text/html; charset=utf-8")

    def _health(self) -> tuple[Any, dict[str, str], list[int]]:
        routing = self.store.current()
        shared = self.store.shared
        members = routing.membership.members
        ejected = {m.name: shared.ejection_reason(i) or "" for i, m in enumerate(members) if shared.ejected(i)}
        return routing, ejected, shared.total_inflight(len(members))

    @route("/status/data", "GET")
    async def status_data(self, request: Request) -> Reply:
        routing, ejected, inflight = self._health()
        state_dir = self.store.shared.dir
        return as_json(
            status.data(
                routing.membership,
                routing.strategy,
                ejected=ejected,
                inflight=inflight,
                samples=history.samples(state_dir),
                changes=history.changes(state_dir),
                hot=counters.totals(state_dir, routing.membership.names)["hot"],
                now=time.time(),
            )
        )

    @route("/status/lookup", "GET")
    async def status_lookup(self, request: Request) -> Reply:
        key = request.query.get("key", [""])[0]
        routing, ejected, inflight = self._health()
        try:
            return as_json(
                status.lookup(
                    routing.strategy,
                    key,
                    ejected=ejected,
                    inflight=inflight,
                    bounded_load=routing.membership.hashing.bounded_load,
                )
            )
        except ValueError as exc:
            return as_json({"error": str(exc)}, 400)

    @route("/openapi.json", "GET")
    async def openapi(self, request: Request) -> Reply:
        return Reply(200, OPENAPI)


def _is_local(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is one of this host's addresses (bind to it: only local ones succeed)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(ip), 0))
        except OSError:
            return False
    return True
