"""The balancer's own endpoints: the seed API (/rep, /add, /rm), membership, health, metrics."""

from __future__ import annotations

import functools
import hmac
import json
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from ringlb_balancer import membership as membership_doc
from ringlb_balancer import metrics, naming
from ringlb_balancer.config import Settings
from ringlb_balancer.routing import RoutingStore, StaleRevision
from ringlb_balancer.scaling import Conflict, Scaler, ScalerError

bp = Blueprint("ringlb", __name__)

CONTROL_PATHS = frozenset(
    {"/rep", "/add", "/rm", "/membership", "/healthz", "/readyz", "/metrics", "/openapi.json"}
)
CONFLICT_RETRIES = 5


def _state() -> tuple[Settings, RoutingStore, Scaler | None]:
    ext = current_app.extensions["ringlb"]
    return ext["settings"], ext["store"], ext["scaler"]


def seed_json(message: Any, status: str) -> bytes:
    """A seed-API body, serialized with json.dumps' default separators as the seed's were:
    its clients compare these bodies byte for byte."""
    return json.dumps({"message": message, "status": status}).encode()


def seed_body(message: Any, status: str, code: int = 200) -> Response:
    return Response(seed_json(message, status), code, content_type="application/json")


def ok(message: Any) -> Response:
    return seed_body(message, "successful")


def failure(message: str, code: int = 400) -> Response:
    return seed_body(message, "failure", code)


def replicas_message(names: list[str]) -> dict[str, Any]:
    return {"N": len(names), "replicas": names}


def authorized(token: str) -> bool:
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def require_token(which: Callable[[Settings], str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not authorized(which(_state()[0])):
                return failure("<Error> missing or wrong bearer token (Authorization: Bearer <token>)", 401)
            return view(*args, **kwargs)

        return wrapped

    return decorate


admin_token = require_token(lambda s: s.token)
membership_token = require_token(lambda s: s.membership_token or s.token)


def json_body() -> object:
    """The request's JSON, or ``None`` when it is absent or not JSON (callers report it)."""
    return request.get_json(silent=True, force=True)


@bp.get("/rep")
def rep() -> Response:
    return ok(replicas_message(_state()[1].current().membership.names))


def _scale(plan: Callable[[list[str], object], list[str]]) -> Any:
    settings, store, scaler = _state()
    if scaler is None:
        return failure("<Error> this balancer has no scaler: membership is pushed by its owner", 501)
    body = json_body()
    if body is None:
        return failure('<Error> body must be JSON like {"n": 1, "hostnames": ["S5"]}')
    try:
        for _ in range(CONFLICT_RETRIES):
            current, version = scaler.desired()
            target = plan(current, body)
            try:
                scaler.set_desired(target, version)
                break
            except Conflict:
                continue
        else:
            return failure("<Error> the replica list kept changing; try again", 409)
    except naming.PlanError as exc:
        return failure(str(exc))
    except ScalerError as exc:
        return failure(f"<Error> {exc}", 502)
    deadline = time.monotonic() + settings.scale_timeout
    wanted = set(target)
    while time.monotonic() < deadline:
        names = store.current().membership.names
        if set(names) == wanted:
            return ok(replicas_message(names))
        time.sleep(0.05)
    names = store.current().membership.names
    missing = sorted(wanted - set(names))
    extra = sorted(set(names) - wanted)
    return failure(
        f"<Error> change accepted but not in force after {settings.scale_timeout:g}s "
        f"(not yet ready: {missing}; not yet removed: {extra}); check the replicas",
        504,
    )


@bp.post("/add")
@admin_token
def add() -> Any:
    return _scale(naming.plan_add)


@bp.delete("/rm")
@admin_token
def rm() -> Any:
    return _scale(naming.plan_remove)


@bp.put("/membership")
@membership_token
def put_membership() -> Any:
    body = json_body()
    if body is None:
        return failure("body must be a JSON membership document")
    try:
        doc = membership_doc.parse(body)
        routing, changed = _state()[1].publish(doc)
    except membership_doc.MembershipError as exc:
        return failure(str(exc))
    except StaleRevision as exc:
        return failure(str(exc), 409)
    return jsonify(
        {"revision": routing.membership.revision, "members": len(routing.membership.members), "changed": changed}
    )


@bp.get("/membership")
def get_membership() -> Response:
    return jsonify(_state()[1].current().membership.to_json())


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Any:
    revision = _state()[1].current().membership.revision
    if revision == 0:
        return jsonify({"status": "waiting for a membership push", "revision": 0}), 503
    return jsonify({"status": "ready", "revision": revision})


@bp.get("/metrics")
def metrics_view() -> Response:
    data, content_type = metrics.render()
    return Response(data, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(OPENAPI, content_type="application/json")


OPENAPI = resources.files("ringlb_balancer").joinpath("openapi.json").read_bytes()


def register(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.errorhandler(413)
    def too_large(_: Exception) -> Any:
        return failure(f"<Error> request body exceeds {app.config['MAX_CONTENT_LENGTH']} bytes", 413)

    @app.errorhandler(405)
    def wrong_method(exc: Any) -> Any:
        allowed = ", ".join(sorted(exc.valid_methods or []))
        return failure(f"<Error> method not allowed here; use {allowed}", 405)
