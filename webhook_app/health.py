"""Liveness, readiness and Prometheus metrics."""
from __future__ import annotations

import structlog
from flask import Blueprint, Response, jsonify

from consumers import broker
from consumers.metrics import CONTENT_TYPE, render as render_metrics
from models.db import ping as ping_database
from models.logs import describe_error
from webhook_app import state

bp = Blueprint("health", __name__)
log = structlog.get_logger(__name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """200 when the database and the broker answer, else 503 naming which one did not.

    The answer is public (a load balancer reads it), so it says only "unavailable": a driver's error
    names hosts, users and paths. The detail goes to the log, redacted.
    """
    checks = {}
    for name, check in (("database", lambda: ping_database(state().engine)),
                        ("broker", lambda: broker.ping(state().settings))):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready, and says which
            log.warning("readiness_check_failed", dependency=name, error=describe_error(exc))
            checks[name] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"ready": ready, "checks": checks}), 200 if ready else 503


@bp.get("/metrics")
def metrics():
    return Response(render_metrics(state().sessions), content_type=CONTENT_TYPE)
