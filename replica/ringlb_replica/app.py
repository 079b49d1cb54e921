"""The replica's HTTP API, exactly as the seed system served it."""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask, Response


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the replica app; identity comes from ``SERVER_ID`` unless ``config`` overrides it.

    Any path other than ``/home`` and ``/heartbeat`` gets Flask's 404, which the balancer turns
    into the seed's ``'<path>' endpoint does not exist`` error.
    """
    app = Flask(__name__)
    app.config["SERVER_ID"] = os.environ.get("SERVER_ID", "unknown")
    if config:
        app.config.update(config)
    # Precomputed, and serialized as the seed did (json.dumps' default separators), since
    # clients of the seed compare these bodies byte for byte.
    greeting = json.dumps(
        {"message": f"Hello from Server: {app.config['SERVER_ID']}", "status": "successful"}
    )

    @app.get("/home")
    def home() -> Response:
        return Response(greeting, content_type="application/json")

    @app.get("/heartbeat")
    def heartbeat() -> tuple[str, int]:
        return "", 200

    return app
