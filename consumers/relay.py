"""`shop relay`: publish due outbox rows to the broker, re-publish lost ones, expire reservations, POST
staff alerts again whose POST failed."""
from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import NamedTuple

import structlog
from kombu import Connection
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from consumers.alerts import ALERT_SWEEP_SECONDS, redeliver_alerts
from consumers.broker import QUEUES, ConfirmedPublisher, keep_alive
from consumers.process import Chore, LongRunningProcess
from models.base import utcnow
from models.carts import reopen_cart
from models.catalog import Reservation, ReservationStatus
from models.db import transaction
from models.events import OutboxMessage, OutboxStatus, Topic, enqueue
from models.history import caused_by
from models.logs import describe_error
from models.orders import HOLD_RAN_OUT, Order, OrderStatus, payment_waiting, payment_waiting_for, release_reservations
from models.settings import Settings

log = structlog.get_logger(__name__)
BATCH = 200


def publish_due(factory: sessionmaker[Session], publisher: ConfirmedPublisher, settings: Settings) -> int:
    """Publish every outbox row that is due: claim the rows and commit, then publish them.

    Rows are claimed with SKIP LOCKED on PostgreSQL, so several relays share the work; on
    SQLite the transaction's write lock does the same. A claim marks each row published (and when
    it is due again), so no other relay takes it, and it commits before the first message is
    written to the broker: on SQLite the relay holds the one writer's turn, which the webhook and
    the workers wait for, only for the claim, not while it writes messages. If publishing or the
    broker's confirm fails, the claim is undone (`_unclaim`) and the rows are published at the
    next poll. A relay that dies between its claim and its confirm leaves rows marked published
    that may not be on the broker: they are published again once their redelivery wait is over,
    as any message a broker lost. A consumer may see a message twice, which the handlers are
    built for, but never zero times.
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
        claims = []
        for row in rows:
            claims.append(_Claim(row.id, row.topic, row.status, row.deliveries, row.published_at, row.available_at))
            row.mark_published(settings.redelivery_seconds)
    try:
        for claim in claims:
            # Published and not finished in time: a copy of what a worker may have taken and died
            # on; the worker that takes the copy counts it as started (MAX_DELIVERIES).
            copy = claim.status is OutboxStatus.PUBLISHED
            if copy:
                log.warning("message_redelivered", outbox_id=claim.id, deliveries=claim.deliveries)
            publisher.publish({"outbox_id": claim.id, "copy": True} if copy else {"outbox_id": claim.id},
                              QUEUES[claim.topic])
        publisher.confirm()
    except Exception:
        _unclaim(factory, claims)
        raise
    if rows:
        log.info("outbox_published", count=len(rows))
    return len(rows)


class _Claim(NamedTuple):
    """An outbox row as it was before the relay claimed it."""

    id: int
    topic: Topic
    status: OutboxStatus
    deliveries: int
    published_at: datetime | None
    available_at: datetime


def _unclaim(factory: sessionmaker[Session], claims: list[_Claim]) -> None:
    """Put rows whose publication failed back as they were, due again, where nothing else has
    changed them since the claim (a worker may have finished one that did reach the broker). If
    even that fails, they are published again after their redelivery wait."""
    if not claims:
        return
    before = {claim.id: claim for claim in claims}
    try:
        with transaction(factory) as session:
            for row in session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(before))
                                       .order_by(OutboxMessage.id).with_for_update()):
                claim = before[row.id]
                if row.status is OutboxStatus.PUBLISHED and row.deliveries == claim.deliveries + 1:
                    row.status, row.deliveries = claim.status, claim.deliveries
                    row.published_at, row.available_at = claim.published_at, claim.available_at
    except Exception as exc:  # noqa: BLE001 - the redelivery wait still brings them back
        log.error("outbox_unclaim_failed", count=len(claims), error=describe_error(exc))
        return
    log.warning("outbox_unclaimed", count=len(claims))


# Only an unpaid order's hold runs out. A flagged order's units wait for a staff decision
# (accept consumes them, cancel releases them), however long that takes.
EXPIRABLE = (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED)
EXPIRY_SWEEP_SECONDS = 5


def expire_reservations(factory: sessionmaker[Session]) -> int:
    """Release stock whose hold ran out, cancel the unpaid orders that held it and open their carts again.

    One short transaction per order, the order claimed with SKIP LOCKED: a checkout or a
    handler holding it is left alone until the next sweep, two relays never wait on each
    other, and stock rows are locked in the order's own (sku) order as checkout does.
    An order whose payment is already stored (its succeeded event waits in the inbox behind a
    backlog or a broker outage) keeps its hold: the customer paid in time. That is a payment on
    any intent the order has held, not only the one it holds now: the pay step may have replaced
    the intent the buyer then completed in another tab.
    """
    now = utcnow()
    with factory() as session:
        order_ids = session.scalars(
            select(Reservation.order_id)
            .join(Order, Order.id == Reservation.order_id)
            .where(Reservation.status == ReservationStatus.ACTIVE, Reservation.expires_at <= now,
                   Order.status.in_(EXPIRABLE), ~payment_waiting_for(Order.id))
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
            waiting = payment_waiting(session, order)
            if waiting is not None:
                log.info("reservation_kept_payment_waiting", order_id=order.id, event_id=waiting.event_id,
                         payment_intent=waiting.payment_intent_id)
                continue
            released = release_reservations(session, order)
            if not released:
                continue
            expired += 1
            order.cancel(HOLD_RAN_OUT)
            # As abandon() does: the buyer may check the cart out again (re-priced, its stock reserved
            # anew). A late payment for this order is still flagged for staff: its units stay released.
            reopen_cart(session, order.cart_id)
            if order.payment_intent_id:
                # So the customer cannot pay for stock that is no longer held.
                enqueue(session, Topic.PAYMENT_CANCEL,
                        {"order_id": order.id, "payment_intent_id": order.payment_intent_id})
            log.info("reservation_expired", order_id=order.id, units_released=released,
                     order_status=order.status.value)
    return expired


class Relay(LongRunningProcess):
    name = "relay"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        # Expiry and staff alerts need only the database (and STAFF_ALERT_URL): holds run out on
        # time, and alerts whose POST failed are POSTed again, while the broker is down or refuses
        # publishes (the publishing loop below then waits and reconnects).
        self.chores = (Chore("reservation_expiry", EXPIRY_SWEEP_SECONDS, expire_reservations),
                       Chore("staff_alert_redelivery", ALERT_SWEEP_SECONDS,
                             partial(redeliver_alerts, settings=settings)))
        if not settings.staff_alert_url:
            log.warning("staff_alert_url_missing", reason="this relay has no STAFF_ALERT_URL: staff alerts whose POST "
                                                          "failed, or was never made, wait for a relay that has it")

    def serve(self, conn: Connection) -> None:
        publisher = ConfirmedPublisher(conn)
        while not self.stopping:
            published = publish_due(self.factory, publisher, self.settings)
            keep_alive(conn, self.settings.relay_interval_seconds if published < BATCH else 0)


def run_relay(settings: Settings) -> None:
    Relay(settings).run()
