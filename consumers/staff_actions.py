"""What staff do about the ten cases a year that need a person: dead letters and flagged orders.

The CLI (and any review screen) calls these; each is one short transaction, and the refund
is the only place the service ever gives money back, always on a person's word.
"""
from __future__ import annotations

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from consumers.handlers import Outcome
from consumers.payments import refund_payment
from consumers.processing import run_event
from models.db import transaction
from models.errors import NotFound
from models.events import InboxEvent, OutboxMessage, OutboxStatus
from models.orders import Order, OrderStatus, ShipmentStatus, get_order, release_reservations

log = structlog.get_logger(__name__)


def replay_event(factory: sessionmaker[Session], event_id: str) -> Outcome:
    """`shop events replay`: run a stored event's handler now, under the same locks a worker takes.

    Whatever delivery of it is still open (a dead letter, a scheduled retry) is closed, so the
    event cannot be applied a second time through that route afterwards.
    """
    with transaction(factory) as session:
        event = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event_id).with_for_update()
                                ).one_or_none()
        if event is None:
            raise NotFound(f"no stored event {event_id}")
        outcome = run_event(session, event)
        for message in session.scalars(select(OutboxMessage).where(
                OutboxMessage.inbox_event_id == event.id,
                OutboxMessage.status.not_in([OutboxStatus.DONE, OutboxStatus.RESOLVED])).with_for_update()):
            message.mark_done()
    log.info("event_replayed", event_id=event_id, status=outcome.status.value, reason=outcome.reason)
    return outcome


def dead_letters(session: Session) -> list[OutboxMessage]:
    return list(session.scalars(
        select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.DEAD).order_by(OutboxMessage.id)))


def get_dead_letter(session: Session, message_id: int) -> OutboxMessage:
    message = session.get(OutboxMessage, message_id, with_for_update=True)
    if message is None:
        raise NotFound(f"no dead letter {message_id}")
    return message


def retry_dead_letter(factory: sessionmaker[Session], message_id: int) -> None:
    """Re-drive: the relay publishes it again now and the worker runs it with fresh attempts."""
    with transaction(factory) as session:
        get_dead_letter(session, message_id).redrive()
    log.info("dead_letter_retried", outbox_id=message_id)


def resolve_dead_letter(factory: sessionmaker[Session], message_id: int, note: str) -> None:
    with transaction(factory) as session:
        get_dead_letter(session, message_id).resolve(note)
    log.info("dead_letter_resolved", outbox_id=message_id, note=note)


def orders_needing_review(session: Session) -> list[Order]:
    return list(session.scalars(
        select(Order).where(Order.status == OrderStatus.NEEDS_REVIEW).order_by(Order.updated_at)))


def refund_order(factory: sessionmaker[Session], order_id: str, reason: str) -> Order:
    """Refund the order's payment in full at Stripe, then mark it refunded and free what it holds."""
    with factory() as session:
        order = get_order(session, order_id)
        order.ensure_refundable()
        payment_intent_id = order.payment_intent_id
    refund = refund_payment(order_id=order_id, payment_intent_id=payment_intent_id, reason=reason)
    with transaction(factory) as session:
        order = get_order(session, order_id, for_update=True)
        if order.status is not OrderStatus.REFUNDED:
            release_reservations(session, order)
            order.mark_refunded(refund.id, reason)
            if order.shipment is not None and order.shipment.status is ShipmentStatus.PENDING:
                order.shipment.status = ShipmentStatus.CANCELLED  # refunded goods must not leave the warehouse
    log.info("order_refunded", order_id=order_id, refund_id=refund.id, reason=reason)
    return order
