"""payment_intent.* handlers: settle the order, record a declined card, cancel on cancellation."""
from __future__ import annotations

import structlog
from sqlalchemy.orm import Session

from consumers.mail import queue_order_mail
from consumers.handlers.outcome import Outcome
from models.carts import Cart
from models.orders import (
    Order,
    OrderStatus,
    consume_reservations,
    create_shipment,
    find_order_for_payment_intent,
    release_reservations,
)

log = structlog.get_logger(__name__)
S = OrderStatus


def _order_for(session: Session, event: dict) -> tuple[dict, Order | None]:
    intent = event["data"]["object"]
    metadata = intent.get("metadata") or {}
    order = find_order_for_payment_intent(session, intent["id"], metadata.get("order_id"))
    if order is not None:
        structlog.contextvars.bind_contextvars(order_id=order.id)
    return intent, order


def _no_order(intent: dict) -> Outcome:
    return Outcome.ignored(f"no order of ours for payment intent {intent['id']}")


def on_payment_succeeded(session: Session, event: dict) -> Outcome:
    intent, order = _order_for(session, event)
    if order is None:
        return _no_order(intent)
    if order.status in (S.PAID, S.REFUNDED):
        return Outcome.processed(f"order already {order.status.value}", order.id)
    if order.status is S.NEEDS_REVIEW:
        return Outcome.processed("order already flagged for review", order.id)
    if order.payment_intent_id is None:
        order.payment_intent_id = intent["id"]

    # Money has been taken from here on. The service never refunds on its own: anything
    # that does not add up is flagged for a person, who can retry, resolve or refund.
    paid = intent.get("amount_received") or intent.get("amount")
    currency = (intent.get("currency") or "").lower()
    order.paid_amount = paid or 0
    if paid != order.total or currency != order.currency.lower():
        reason = f"amount mismatch: paid {paid} {currency}, order total {order.total} {order.currency}"
        return _flag(order, reason)
    if order.status is S.CANCELLED:
        return _flag(order, f"paid after the order was cancelled ({order.cancel_reason})")

    no_longer_held = consume_reservations(session, order)
    if no_longer_held:
        return _flag(order, f"paid but the stock is no longer held: {', '.join(no_longer_held)}")
    fulfil_paid_order(session, order)
    return Outcome.processed("order paid", order.id)


def fulfil_paid_order(session: Session, order: Order) -> None:
    """What a paid order sets going once its units are taken: used by this handler and by staff's accept."""
    order.mark_paid()
    create_shipment(session, order)
    cart = session.get(Cart, order.cart_id)
    cart.delete_logically()
    queue_order_mail(session, order, "confirmation")
    log.info("order_paid", total=order.total, currency=order.currency)


def _flag(order: Order, reason: str) -> Outcome:
    order.flag_for_review(reason)
    log.warning("order_needs_review", reason=reason)
    return Outcome.processed(f"flagged for review: {reason}", order.id, alert=f"Order {order.id} needs review: {reason}")


def on_payment_failed(session: Session, event: dict) -> Outcome:
    intent, order = _order_for(session, event)
    if order is None:
        return _no_order(intent)
    if order.status not in (S.PENDING_PAYMENT, S.PAYMENT_FAILED):
        # Status only moves forward: a late decline never un-pays an order.
        return Outcome.processed(f"stale failure ignored: order already {order.status.value}", order.id)
    error = intent.get("last_payment_error") or {}
    code = error.get("decline_code") or error.get("code")
    order.record_failed_attempt(code, error.get("message"))
    # The reservation stays until it expires: the customer may try another card.
    queue_order_mail(session, order, "payment_failed")
    log.info("payment_failed_recorded", failure_code=code, attempts=order.payment_attempts)
    return Outcome.processed(f"payment attempt failed: {code}", order.id)


def on_payment_canceled(session: Session, event: dict) -> Outcome:
    intent, order = _order_for(session, event)
    if order is None:
        return _no_order(intent)
    if order.status not in (S.PENDING_PAYMENT, S.PAYMENT_FAILED):
        return Outcome.processed(f"cancellation ignored: order already {order.status.value}", order.id)
    released = release_reservations(session, order)
    order.cancel(f"payment intent canceled ({intent.get('cancellation_reason') or 'no reason given'})")
    log.info("order_cancelled", units_released=released)
    return Outcome.processed("order cancelled", order.id)
