"""`shop relay`: publish due outbox rows to the broker, re-publish lost ones, expire reservations."""
from __future__ import annotations

import time

import structlog
from kombu import Connection
from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from consumers.broker import QUEUES, ConfirmedPublisher, keep_alive
from consumers.process import LongRunningProcess
from models.base import utcnow
from models.catalog import Reservation, ReservationStatus
from models.db import transaction
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus, Topic, enqueue
from models.history import caused_by
from models.orders import Order, OrderStatus, release_reservations
from models.settings import Settings

log = structlog.get_logger(__name__)
BATCH = 200


def publish_due(factory: sessionmaker[Session], publisher: ConfirmedPublisher, settings: Settings) -> int:
    """Publish every outbox row that is due, mark it published, in one transaction.

    Rows are claimed with SKIP LOCKED on PostgreSQL, so several relays share the work; on
    SQLite the transaction's write lock does the same. The rows are marked published only
    once the broker has confirmed every message of the batch. If publishing or the confirm
    fails the transaction rolls back and the rows are published again later: a consumer may
    see a message twice, which the handlers are built for, but never zero times.
    """
    now = utcnow()
    with transaction(factory) as session:
        rows = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.status.in_([OutboxStatus.PENDING, OutboxStatus.PUBLISHED]),
                   OutboxMessage.available_at <= now)
            .order_by(OutboxMessage.id)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            # Published and not finished in time: a copy of what a worker may have taken and died
            # on; the worker that takes the copy counts it as started (MAX_DELIVERIES).
            copy = row.status is OutboxStatus.PUBLISHED
            if copy:
                log.warning("message_redelivered", outbox_id=row.id, deliveries=row.deliveries)
            row.mark_published(settings.redelivery_seconds)
            publisher.publish({"outbox_id": row.id, "copy": True} if copy else {"outbox_id": row.id},
                              QUEUES[row.topic])
        publisher.confirm()  # before the commit: a message the broker may not have stays due
    if rows:
        log.info("outbox_published", count=len(rows))
    return len(rows)


# Only an unpaid order's hold runs out. A flagged order's units wait for a staff decision
# (accept consumes them, cancel releases them), however long that takes.
EXPIRABLE = (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED)
# A succeeded event in one of these states is money taken that a worker has yet to apply.
UNAPPLIED = (EventStatus.RECEIVED, EventStatus.RETRYING, EventStatus.DEAD)


def _payment_waiting_for(intent_id):
    return exists().where(InboxEvent.type == "payment_intent.succeeded", InboxEvent.object_id == intent_id,
                          InboxEvent.status.in_(UNAPPLIED))


def payment_waiting(session: Session, order: Order) -> bool:
    """Whether the inbox holds a succeeded event for the order's intent not yet applied."""
    if order.payment_intent_id is None:
        return False
    return bool(session.scalar(select(_payment_waiting_for(order.payment_intent_id))))


def expire_reservations(factory: sessionmaker[Session]) -> int:
    """Release stock whose hold ran out and cancel the unpaid orders that held it.

    One short transaction per order, the order claimed with SKIP LOCKED: a checkout or a
    handler holding it is left alone until the next sweep, two relays never wait on each
    other, and stock rows are locked in the order's own (sku) order as checkout does.
    An order whose payment is already stored (its succeeded event waits in the inbox behind a
    backlog or a broker outage) keeps its hold: the customer paid in time.
    """
    now = utcnow()
    with factory() as session:
        order_ids = session.scalars(
            select(Reservation.order_id)
            .join(Order, Order.id == Reservation.order_id)
            .where(Reservation.status == ReservationStatus.ACTIVE, Reservation.expires_at <= now,
                   Order.status.in_(EXPIRABLE), ~_payment_waiting_for(Order.payment_intent_id))
            .distinct()
            .limit(BATCH)
        ).all()
    expired = 0
    for order_id in order_ids:
        with transaction(factory) as session, caused_by("reservation expiry"):
            order = session.scalars(
                select(Order).where(Order.id == order_id).with_for_update(skip_locked=True)).one_or_none()
            # Decided under the order's lock, which the worker applying a payment also takes.
            if order is None or order.status not in EXPIRABLE:
                continue
            if payment_waiting(session, order):
                log.info("reservation_kept_payment_waiting", order_id=order.id)
                continue
            released = release_reservations(session, order)
            if not released:
                continue
            expired += 1
            order.cancel("reservation expired before payment")
            if order.payment_intent_id:
                # So the customer cannot pay for stock that is no longer held.
                enqueue(session, Topic.PAYMENT_CANCEL,
                        {"order_id": order.id, "payment_intent_id": order.payment_intent_id})
            log.info("reservation_expired", order_id=order.id, units_released=released,
                     order_status=order.status.value)
    return expired


class Relay(LongRunningProcess):
    name = "relay"

    def serve(self, conn: Connection) -> None:
        publisher = ConfirmedPublisher(conn)
        last_expiry = 0.0
        while not self.stopping:
            published = publish_due(self.factory, publisher, self.settings)
            if time.monotonic() - last_expiry > 5:
                expire_reservations(self.factory)
                last_expiry = time.monotonic()
            keep_alive(conn, self.settings.relay_interval_seconds if published < BATCH else 0)


def run_relay(settings: Settings) -> None:
    Relay(settings).run()
