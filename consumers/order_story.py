"""The whole story of one order, built once as data: `shop orders show` renders it as text, the
staff console as HTML.

Oldest first: checkout, every Stripe event with each handler attempt, every status change with
its cause, mails, calls to Stripe, alerts, refunds, disputes and staff actions. The customer's
e-mail and address appear in the header only; entries carry ids, amounts and reasons (free text
is passed through `redact`). Never the card, the client secret, a payload or a webhook secret.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from models.events import InboxEvent, OutboxMessage, Topic
from models.history import EventAttempt, OrderStatusChange, StaffAction, StaffAlert
from models.logs import redact
from models.orders import Order, OrderPaymentIntent, get_order
from models.refunds import Dispute, Refund


@dataclass(frozen=True)
class StoryEntry:
    at: datetime
    kind: str               # checkout, event, status, mail, stripe_call, alert, refund, dispute, staff
    summary: str
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class OrderStory:
    order_id: str
    status: str
    currency: str
    subtotal: int
    shipping_fee: int
    total: int
    paid_amount: int
    refunded_amount: int
    charged_back_amount: int  # a lost dispute's
    payment_intent_id: str | None
    customer: dict           # e-mail, name, postal code, prefecture, address: the header's, nowhere else
    lines: tuple[dict, ...]
    reservations: tuple[dict, ...]
    shipment: dict | None
    entries: tuple[StoryEntry, ...] = field(default=())


def _text(value: str | None, limit: int = 300) -> str:
    """Free text fit for the story: first line, addresses masked, bounded. A blank note (stored
    before the CLI refused them) is an empty string, never an error: the story must always show."""
    lines = (value or "").strip().splitlines()
    return redact(lines[0])[:limit] if lines else ""


def alert_delivery(alert: StaffAlert) -> str:
    """Where an alert's POST to STAFF_ALERT_URL stands (consumers.alerts), as the story says it."""
    if alert.delivered:
        return "delivered"
    posts = f"{alert.attempts} POST{'s' if alert.attempts != 1 else ''}"
    if alert.next_attempt_at is not None:
        return (f"not delivered yet: {posts} failed, the next at {alert.next_attempt_at.isoformat()}" if alert.attempts
                else f"not delivered yet: its POST is due at {alert.next_attempt_at.isoformat()}")
    if alert.attempts:
        return f"not delivered after {posts}: given up (a day of retries), or a POST in hand; in the log"
    return "not POSTed (no STAFF_ALERT_URL): in the log"


def order_story(session: Session, order_id: str) -> OrderStory:
    """Read everything recorded about one order; raises NotFound for an unknown id."""
    order = get_order(session, order_id)
    entries = [StoryEntry(order.created_at, "checkout",
                          f"checkout: {sum(line.quantity for line in order.lines)} units reserved until "
                          f"{order.reserved_until.isoformat()}, total {order.total} {order.currency}",
                          (f"payment intent {order.payment_intent_id}",) if order.payment_intent_id else ())]
    entries += _events(session, order)
    entries += [StoryEntry(change.at, "status",
                           f"status {change.from_status or '(new)'} -> {change.to_status}",
                           tuple(filter(None, [f"cause: {_text(change.cause)}",
                                               f"reason: {_text(change.reason)}" if change.reason else ""])))
                for change in session.scalars(select(OrderStatusChange).where(OrderStatusChange.order_id == order.id)
                                              .order_by(OrderStatusChange.id))]
    entries += _outbox(session, order)
    entries += [StoryEntry(alert.created_at, "alert", f"staff alerted: {_text(alert.text)}", (alert_delivery(alert),))
                for alert in session.scalars(select(StaffAlert).where(StaffAlert.order_id == order.id)
                                             .order_by(StaffAlert.id))]
    entries += [StoryEntry(refund.created_at, "refund",
                           f"refund {refund.stripe_refund_id}: {refund.amount} {refund.currency} {refund.status}, "
                           f"by {refund.source.value}",
                           (f"reason: {_text(refund.reason)}",) if refund.reason else ())
                for refund in session.scalars(select(Refund).where(Refund.order_id == order.id).order_by(Refund.id))]
    entries += _disputes(session, order)
    entries += [StoryEntry(action.at, "staff",
                           f"staff {action.actor}: {action.action} {action.target} "
                           f"({action.status_before or '-'} -> {action.status_after or '-'})",
                           tuple(filter(None, [f"note: {_text(action.note)}" if action.note else "",
                                               _text(action.detail)])))
                for action in session.scalars(select(StaffAction).where(StaffAction.order_id == order.id)
                                              .order_by(StaffAction.id))]
    # Stable: rows written in one transaction share a time; their kinds keep checkout first.
    entries.sort(key=lambda entry: entry.at)
    return OrderStory(
        order_id=order.id, status=order.status.value, currency=order.currency, subtotal=order.subtotal,
        shipping_fee=order.shipping_fee, total=order.total, paid_amount=order.paid_amount,
        refunded_amount=order.refunded_amount, charged_back_amount=order.charged_back_amount,
        payment_intent_id=order.payment_intent_id,
        customer={"email": order.email, "name": order.ship_name, "postal_code": order.ship_postal_code,
                  "prefecture": order.ship_prefecture, "address": order.ship_address},
        lines=tuple(line.to_dict() for line in order.lines),
        reservations=tuple({"sku": r.sku, "quantity": r.quantity, "status": r.status.value,
                            "expires_at": r.expires_at, "closed_at": r.closed_at} for r in order.reservations),
        shipment=({"id": order.shipment.id, "status": order.shipment.status.value, "fee": order.shipment.fee}
                  if order.shipment else None),
        entries=tuple(entries),
    )


def _events(session: Session, order: Order) -> list[StoryEntry]:
    match = [InboxEvent.order_id == order.id]
    if order.payment_intent_id:
        match.append(InboxEvent.object_id == order.payment_intent_id)
    events = list(session.scalars(select(InboxEvent).where(or_(*match)).order_by(InboxEvent.id)))
    attempts: dict[int, list[EventAttempt]] = {}
    if events:
        for attempt in session.scalars(select(EventAttempt).where(
                EventAttempt.inbox_event_id.in_([e.id for e in events])).order_by(EventAttempt.id)):
            attempts.setdefault(attempt.inbox_event_id, []).append(attempt)
    entries = []
    for event in events:
        details = [f"attempt {a.started_at.isoformat()} by {a.runner}: {a.outcome.value}"
                   + (f" ({_text(a.reason)})" if a.reason else "") + (f" error: {_text(a.error)}" if a.error else "")
                   for a in attempts.get(event.id, [])]
        if event.outcome:
            details.append(f"outcome: {_text(event.outcome)}")
        if event.last_error:
            details.append(f"last error: {_text(event.last_error)}")
        entries.append(StoryEntry(event.received_at, "event",
                                  f"stripe event {event.type} {event.event_id}: {event.status.value}, "
                                  f"{event.attempts} attempt(s)", tuple(details)))
    return entries


def _outbox(session: Session, order: Order) -> list[StoryEntry]:
    """Mails and calls to Stripe queued for the order: what, whether it went out, its last error."""
    entries = []
    for message in session.scalars(select(OutboxMessage).where(OutboxMessage.order_id == order.id,
                                                               OutboxMessage.topic != Topic.STRIPE_EVENT)
                                   .order_by(OutboxMessage.id)):
        body = message.body
        if message.topic is Topic.MAIL:
            kind, summary = "mail", f"mail {body.get('kind', '?')} queued: {message.status.value}"
        else:
            kind, summary = "stripe_call", f"{message.topic.value} {body.get('payment_intent_id', '')}: " \
                                           f"{message.status.value}"
        details = [f"{message.attempts} failed attempt(s)"] if message.attempts else []
        if message.last_error:
            details.append(f"last error: {_text(message.last_error)}")
        if message.resolution_note:
            details.append(f"resolved: {_text(message.resolution_note)}")
        entries.append(StoryEntry(message.created_at, kind, f"{summary} (outbox {message.id})", tuple(details)))
    return entries


def _disputes(session: Session, order: Order) -> list[StoryEntry]:
    match = [Dispute.order_id == order.id]
    if order.payment_intent_id:
        match.append(Dispute.payment_intent_id == order.payment_intent_id)
    entries = []
    for dispute in session.scalars(select(Dispute).where(or_(*match)).order_by(Dispute.id)):
        entries.append(StoryEntry(dispute.opened_at, "dispute",
                                  f"dispute {dispute.stripe_dispute_id}: {dispute.amount} {dispute.currency}, "
                                  f"{dispute.reason or 'no reason given'}, {dispute.status}"))
        if dispute.closed_at:
            entries.append(StoryEntry(dispute.closed_at, "dispute",
                                      f"dispute {dispute.stripe_dispute_id} closed: {dispute.status}"))
    return entries


def find_orders_by_reference(session: Session, text: str, limit: int = 50) -> tuple[list[Order], int]:
    """The orders a staff member means by one piece of text: an order id, a PaymentIntent id, a
    Stripe event id, or the customer's e-mail (any case). The newest `limit` of them, and how many
    match in all (an e-mail may have more); none if nothing matches."""
    text = text.strip()
    if not text:
        return [], 0
    # An intent the order held before, or one a second tab paid it on: the pi_… staff see in Stripe's
    # dashboard or on a dispute is as likely to be one of those as the one the order holds now.
    match = [Order.id == text, Order.payment_intent_id == text, func.lower(Order.email) == text.lower(),
             Order.id.in_(select(OrderPaymentIntent.order_id).where(OrderPaymentIntent.payment_intent_id == text))]
    event = session.scalars(select(InboxEvent).where(InboxEvent.event_id == text)).one_or_none()
    if event is not None:
        if event.order_id:
            match.append(Order.id == event.order_id)
        if event.object_id:
            match.append(Order.payment_intent_id == event.object_id)
    found = list(session.scalars(select(Order).where(or_(*match))
                                 .order_by(Order.created_at.desc(), Order.id.desc()).limit(limit)))
    return found, session.scalar(select(func.count(Order.id)).where(or_(*match)))
