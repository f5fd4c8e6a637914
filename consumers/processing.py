"""Run one outbox message through its handler in one transaction; record retries and dead letters.

The worker acknowledges a broker message only after this has committed. A crash before the
commit leaves the message to be delivered again; after it, the next delivery finds the
outbox row done and changes nothing.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from consumers.alerts import alert_staff
from consumers.handlers import HANDLERS, Outcome
from consumers.mail import is_still_true, send_mail
from consumers.payments import cancel_order_payment_intents
from models.base import utcnow
from models.db import transaction
from models.events import EventStatus, InboxEvent, OutboxMessage, Topic
from models.logs import describe_error
from models.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Result:
    outcome: str          # "done", "skipped", "retry", "dead", "missing"
    detail: str = ""


def run_event(session: Session, event: InboxEvent) -> Outcome:
    """Apply a stored event's handler and write its outcome on the inbox row (idempotent).

    Used by the worker and by `shop events replay`, which re-drives an event that is retrying,
    dead or was ignored; a processed event is reported and left alone.
    """
    structlog.contextvars.bind_contextvars(event_id=event.event_id, event_type=event.type)
    data = event.data
    intent_id = (data.get("data", {}).get("object") or {}).get("id")
    if intent_id:
        structlog.contextvars.bind_contextvars(payment_intent=intent_id)
    if event.status is EventStatus.PROCESSED:
        # Already applied: running it again would, for instance, count a declined card twice.
        log.info("event_already_processed", outcome=event.outcome)
        return Outcome(event.status, f"already processed: {event.outcome}", event.order_id)
    handler = HANDLERS.get(event.type)
    outcome = Outcome.ignored(f"event type {event.type} is not handled") if handler is None else handler(session, data)
    event.attempts += 1
    event.status = outcome.status
    event.outcome = outcome.reason
    event.order_id = outcome.order_id or event.order_id
    event.last_error = None
    event.processed_at = utcnow()
    log.info("event_processed", status=outcome.status.value, reason=outcome.reason)
    return outcome


def process_message(factory: sessionmaker[Session], settings: Settings, outbox_id: int) -> Result:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(outbox_id=outbox_id)
    try:
        with transaction(factory) as session:
            message = _lock(session, outbox_id)
            if message is None:
                return Result("missing", f"no outbox message {outbox_id}")
            if not message.is_to_handle():
                log.info("message_skipped", status=message.status.value)
                return Result("skipped", message.status.value)
            topic, body, alert, outside = message.topic, message.body, None, False
            if topic is Topic.STRIPE_EVENT:
                alert = _handle_event(session, message)
                message.mark_done()
            elif topic is Topic.MAIL and not is_still_true(session, body):
                log.info("mail_dropped", kind=body.get("kind"), order_id=body.get("order_id"),
                         reason="the order moved on since it was queued")
                message.mark_done()
            else:
                outside = True
        if outside:
            # Calls to SMTP and Stripe happen outside any transaction, so a slow server never
            # holds a database lock; a crash before marking it done repeats the call (at least
            # once: Stripe's cancel is idempotent, a mail may be sent twice).
            _call_outside(settings, topic, body)
            with transaction(factory) as session:
                _lock(session, outbox_id).mark_done()
    except Exception as exc:  # noqa: BLE001 - every failure is recorded and retried, never dropped
        return _record_failure(factory, settings, outbox_id, exc)
    if alert:
        alert_staff(settings, alert, event_id=structlog.contextvars.get_contextvars().get("event_id"))
    return Result("done")


def _call_outside(settings: Settings, topic: Topic, body: dict) -> None:
    if topic is Topic.MAIL:
        send_mail(settings, body)
    elif topic is Topic.PAYMENT_CANCEL:
        result = cancel_order_payment_intents(order_id=body["order_id"], created_since=body.get("created_since"),
                                              payment_intent_id=body.get("payment_intent_id"))
        log.info("payment_intent_cancelled", order_id=body["order_id"], result=result)


def _lock(session: Session, outbox_id: int) -> OutboxMessage | None:
    return session.scalars(select(OutboxMessage).where(OutboxMessage.id == outbox_id).with_for_update()).one_or_none()


def _handle_event(session: Session, message: OutboxMessage) -> str | None:
    event = session.scalars(
        select(InboxEvent).where(InboxEvent.id == message.inbox_event_id).with_for_update()
    ).one()
    if event.status in (EventStatus.PROCESSED, EventStatus.IGNORED):
        structlog.contextvars.bind_contextvars(event_id=event.event_id, event_type=event.type)
        log.info("event_already_processed", status=event.status.value)
        return None
    return run_event(session, event).alert


def _record_failure(factory, settings: Settings, outbox_id: int, exc: Exception) -> Result:
    error = describe_error(exc)
    trace = traceback.format_exc(limit=20)
    with transaction(factory) as session:
        message = _lock(session, outbox_id)
        again = message.schedule_retry(f"{error}\n{trace}", max_attempts=settings.max_attempts,
                                       base_seconds=settings.retry_base_seconds)
        event = message.inbox_event
        if event is not None:
            event.attempts = message.attempts
            event.last_error = error
            event.status = EventStatus.RETRYING if again else EventStatus.DEAD
        attempts, next_at = message.attempts, message.available_at
    if again:
        log.warning("handler_failed_will_retry", error=error, attempts=attempts, next_attempt_at=next_at.isoformat())
        return Result("retry", error)
    log.error("message_dead_lettered", error=error, attempts=attempts)
    alert_staff(settings, f"Message {outbox_id} was dead-lettered after {attempts} attempts: {error}",
                outbox_id=outbox_id)
    return Result("dead", error)
