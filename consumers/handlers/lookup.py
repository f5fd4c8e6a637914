"""Finding the order an event is about, and flagging it for a person when money does not add up."""
from __future__ import annotations

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, lazyload

from consumers.handlers.outcome import Outcome
from consumers.handlers.registry import HandlerContext
from models.events import PAYMENT_SUCCEEDED, EventStatus, InboxEvent
from models.orders import Order, OrderStatus, can_transition

log = structlog.get_logger(__name__)


def ids_named(event: dict) -> tuple[str | None, str | None]:
    """The PaymentIntent id and metadata.order_id an event names, whatever its object
    (an intent, a charge or a dispute)."""
    obj = (event.get("data") or {}).get("object") or {}
    if obj.get("object") == "payment_intent" or str(obj.get("id", "")).startswith("pi_"):
        intent_id = obj.get("id")
    else:
        intent_id = obj.get("payment_intent")
        if isinstance(intent_id, dict):
            intent_id = intent_id.get("id")
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    order_id = metadata.get("order_id")
    return (intent_id if isinstance(intent_id, str) else None,
            order_id if isinstance(order_id, str) else None)


def order_named(session: Session, event: dict) -> Order | None:
    """One of our orders that an event names (by intent id, else metadata.order_id), not locked.

    Only for saying which order an ignored event concerns: it never decides what is applied.
    """
    intent_id, order_id = ids_named(event)
    order = None
    if intent_id:
        order = session.scalars(select(Order).where(Order.payment_intent_id == intent_id)).one_or_none()
    if order is None and order_id:
        order = session.get(Order, order_id)
    return order


# A handler touches few of an order's collections (a decline none but its lines for the mail):
# each is loaded when first used, not all three with every lock.
_ON_USE = (lazyload(Order.lines), lazyload(Order.shipment), lazyload(Order.reservations))


def lock_order_for_intent(session: Session, intent_id: str) -> Order | None:
    order = session.scalars(select(Order).where(Order.payment_intent_id == intent_id).options(*_ON_USE)
                            .with_for_update()).one_or_none()
    if order is not None:
        structlog.contextvars.bind_contextvars(order_id=order.id)
    return order


def lock_order_paid_on(session: Session, intent_id: str) -> Order | None:
    """The order holding the intent; else the order a payment on it was counted for (a stray intent
    that paid the order, flagged for it): its refunds and disputes are that order's money too."""
    order = lock_order_for_intent(session, intent_id)
    if order is None:
        order_id = session.scalars(select(InboxEvent.order_id).where(
            InboxEvent.type == PAYMENT_SUCCEEDED, InboxEvent.object_id == intent_id,
            InboxEvent.status == EventStatus.PROCESSED, InboxEvent.order_id.is_not(None)).limit(1)).first()
        order = lock_order(session, order_id) if order_id else None
    return order


def lock_order(session: Session, order_id: str) -> Order | None:
    order = session.scalars(select(Order).where(Order.id == order_id).options(*_ON_USE)
                            .with_for_update()).one_or_none()
    if order is not None:
        structlog.contextvars.bind_contextvars(order_id=order.id)
    return order


def unconfirmed(intent: dict, order: Order, context: HandlerContext) -> str | None:
    """Why an intent found by metadata.order_id alone is not to be trusted, or None if Stripe's
    own record of it agrees with the event (id, amount, currency, mode, metadata.order_id).

    The event is signed, but a signing secret can be shared (`stripe listen`) and metadata is
    set by whoever created the intent; Stripe's API with our key is the account's truth.
    """
    record = context.retrieve_payment_intent(intent["id"])
    if record is None:
        return f"payment intent {intent['id']} is unknown to Stripe under this account"
    checks = {
        "id": (record.get("id"), intent["id"]),
        "amount": (record.get("amount"), intent.get("amount")),
        "currency": ((record.get("currency") or "").lower(), (intent.get("currency") or "").lower()),
        "livemode": (bool(record.get("livemode")), context.livemode),
        "metadata.order_id": ((record.get("metadata") or {}).get("order_id"), order.id),
    }
    differ = [name for name, (at_stripe, claimed) in checks.items() if at_stripe != claimed]
    if differ:
        return f"payment intent {intent['id']} at Stripe does not match the event ({', '.join(differ)})"
    return None


def flag_or_note(order: Order, reason: str) -> Outcome:
    """Flag the order for review when its status allows; either way the event says why and staff
    are alerted. Never silent: this is where money taken or contested reaches a person."""
    if can_transition(order.status, OrderStatus.NEEDS_REVIEW):
        order.flag_for_review(reason)
        log.warning("order_needs_review", reason=reason)
        said = f"flagged for review: {reason}"
    else:
        log.warning("order_not_flagged", reason=reason, order_status=order.status.value)
        said = f"noted, order already {order.status.value}: {reason}"
        if order.status is OrderStatus.NEEDS_REVIEW and reason not in (order.review_reason or ""):
            # Staff read the reason in the review list: each problem found since, not only the first.
            order.review_reason = f"{order.review_reason}; then: {reason}" if order.review_reason else reason
    return Outcome.processed(said, order.id, alert=f"Order {order.id} needs review: {reason}")
