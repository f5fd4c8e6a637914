"""POST /webhooks/stripe: verify, store once (inbox + outbox in one transaction), answer at once.

No business logic runs here; the worker does it. A 2xx tells Stripe the event is safely
stored, so anything that stops us storing it answers 503 and Stripe delivers it again.
"""
from __future__ import annotations

import json
import time

import stripe
import structlog
from flask import Blueprint, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from consumers.handlers import HANDLED_EVENT_TYPES
from models.db import transaction
from models.events import store_event
from models.logs import describe_error
from webhook_app import state
from webhook_app.errors import error_response

bp = Blueprint("webhooks", __name__)
log = structlog.get_logger(__name__)


def _reject(status: int, code: str, message: str):
    log.warning("webhook_rejected", code=code, reason=message)
    return error_response(status, code, message)


def _timestamp_of(header: str) -> int | None:
    """The `t=` of a Stripe-Signature header, read the way Stripe's SDK reads it."""
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                return int(value.split("=")[0])
            except ValueError:
                return None
    return None


def _not_an_event(event) -> str | None:
    if not isinstance(event, dict):
        return "the body is not a JSON object"
    if event.get("object") != "event":
        return 'the body is not a Stripe event (object is not "event")'
    if not isinstance(event.get("id"), str) or not event["id"].startswith("evt_"):
        return "the event has no evt_ id"
    if not isinstance(event.get("type"), str) or not event["type"]:
        return "the event has no type"
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        return "the event has no data.object"
    return None


@bp.post("/webhooks/stripe")
def receive_stripe_event():
    settings = state().settings
    if not settings.webhook_secrets:
        log.error("webhook_secrets_missing", hint="set STRIPE_WEBHOOK_SECRETS to the endpoint's whsec_ secret(s)")
        return error_response(500, "webhook_not_configured",
                              "STRIPE_WEBHOOK_SECRETS is not set on this service; the event was not stored")
    limit = settings.max_webhook_bytes
    if request.content_length is not None and request.content_length > limit:
        return _reject(413, "payload_too_large", f"the body is over the {limit}-byte limit")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        return _reject(413, "payload_too_large", f"the body is over the {limit}-byte limit")

    header = request.headers.get("Stripe-Signature")
    if not header:
        return _reject(400, "missing_signature", "the Stripe-Signature header is missing")
    try:
        payload = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _reject(400, "invalid_payload", "the body is not UTF-8")
    reason = None
    for secret in settings.webhook_secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, settings.webhook_tolerance_seconds)
            break
        except stripe.SignatureVerificationError as exc:
            reason = str(exc)
    else:
        return _reject(400, "invalid_signature", f"signature verification failed: {reason}")
    # The SDK refuses only timestamps too far in the past; one too far ahead is as suspect.
    signed_at = _timestamp_of(header)
    if signed_at is None:
        return _reject(400, "invalid_signature", "signature verification failed: the timestamp is not a number")
    if signed_at > time.time() + settings.webhook_tolerance_seconds:
        return _reject(400, "invalid_signature", f"signature verification failed: timestamp {signed_at} is in "
                       f"the future, outside the {settings.webhook_tolerance_seconds}-second tolerance")

    try:
        event = json.loads(payload)
    except ValueError:
        return _reject(400, "invalid_payload", "the body is not JSON")
    problem = _not_an_event(event)
    if problem:
        return _reject(400, "not_an_event", problem)

    structlog.contextvars.bind_contextvars(event_id=event["id"], event_type=event["type"])
    try:
        with transaction(state().sessions) as session:
            stored = store_event(session, event, payload, handled_types=HANDLED_EVENT_TYPES)
    except SQLAlchemyError as exc:
        log.error("webhook_store_failed", error=describe_error(exc))
        return error_response(503, "storage_unavailable", "the event could not be stored; please retry")
    log.info("webhook_received", duplicate=stored.duplicate, status=stored.status.value)
    return jsonify({"received": True, "duplicate": stored.duplicate}), 200
