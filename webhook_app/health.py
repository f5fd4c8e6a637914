"""Liveness, readiness and Prometheus metrics."""
from __future__ import annotations

import structlog
from flask import Blueprint, Response, jsonify
from sqlalchemy import func, select

from consumers import broker
from models.db import ping as ping_database
from models.events import InboxEvent, OutboxMessage
from models.logs import describe_error
from models.orders import Order
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
    lines = []
    with state().sessions() as session:
        gauges = (
            ("shop_inbox_events", "Stripe events in the inbox, by type and status",
             select(InboxEvent.type, InboxEvent.status, func.count()).group_by(InboxEvent.type, InboxEvent.status),
             ("type", "status")),
            ("shop_outbox_messages", "Outbox messages, by topic and status",
             select(OutboxMessage.topic, OutboxMessage.status, func.count())
             .group_by(OutboxMessage.topic, OutboxMessage.status), ("topic", "status")),
            ("shop_orders", "Orders, by status",
             select(Order.status, func.count()).group_by(Order.status), ("status",)),
        )
        for name, help_text, query, labels in gauges:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            for *values, count in session.execute(query).all():
                label = ",".join(f'{k}="{getattr(v, "value", v)}"' for k, v in zip(labels, values))
                lines.append(f"{name}{{{label}}} {count}")
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
