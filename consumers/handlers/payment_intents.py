"""payment_intent.* handlers: settle the order, record a declined card, cancel on cancellation."""
from __future__ import annotations

import structlog
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from consumers.handlers.charges import given_back, record_charge_refunds
from consumers.handlers.lookup import flag_or_note, lock_order, lock_order_for_intent, unconfirmed
from consumers.handlers.outcome import Outcome
from consumers.handlers.registry import HandlerContext, handles
from consumers.mail import queue_order_mail
from models.carts import delete_cart_logically
from models.events import PAYMENT_SUCCEEDED, EventStatus, InboxEvent
from models.orders import (
    Order,
    OrderStatus,
    consume_reservations,
    create_shipment,
    hold_payment_intent,
    keep_payment_intent,
    release_reservations,
    settle_chargebacks,
)

log = structlog.get_logger(__name__)


class _Found:
    """The order an intent event is for, or the outcome that ends the handler before it."""

    def __init__(self, order: Order | None = None, outcome: Outcome | None = None, other_intent: bool = False):
        self.order, self.outcome, self.other_intent = order, outcome, other_intent


def _find(session: Session, intent: dict, context: HandlerContext) -> _Found:
    """By the intent id the order holds; else by metadata.order_id, confirmed with Stripe's API
    when the order holds no intent yet. An order holding another intent is reported as such.

    An intent found by metadata.order_id (made outside the service, or one the order's checkout never
    heard back about) is the order's from this first handling on, whatever happens next
    (`keep_payment_intent`): a payment on it stored and not yet applied keeps the order's hold, and a
    dispute on it finds the order even if staff resolve that payment by hand instead of applying it."""
    order = context.locked_orders.get(intent["id"]) or lock_order_for_intent(session, intent["id"])
    if order is not None:
        return _Found(order)
    order_id = (intent.get("metadata") or {}).get("order_id")
    order = lock_order(session, order_id) if isinstance(order_id, str) else None
    if order is None:
        return _Found(outcome=Outcome.ignored(f"no order of ours for payment intent {intent['id']}"))
    keep_payment_intent(session, order, intent["id"])
    if order.payment_intent_id is not None:
        return _Found(order, other_intent=True)
    problem = unconfirmed(intent, order, context)
    if problem:
        log.warning("payment_intent_unconfirmed", reason=problem)
        return _Found(outcome=Outcome.ignored(problem, order.id, alert=f"Order {order.id}: event ignored: {problem}"))
    return _Found(order)


def _count_payment(session: Session, order: Order, intent: dict, event_id: str) -> tuple[int, bool]:
    """Add the money taken on this intent to the order's paid_amount, once per intent; the amount,
    and whether this event is the one that counted it.

    Counted when the first succeeded event for the intent is processed for this order; a
    later event for the same intent (Stripe's duplicate, a replay) finds it counted. A payment in
    another currency than the order's is counted as the intent's payment (its event flags the order)
    but its amount is not added: 2000 cents are not 2000 yen (`Order.counts_currency`).
    """
    paid = intent.get("amount_received") or intent.get("amount") or 0
    own_currency = order.counts_currency(intent.get("currency"))
    # paid_amount only ever grows, and only by payments in the order's currency: at 0 none was counted for
    # this order yet, so the look-up for an earlier event (one query per paid order, and per payment in
    # another currency, which paid_amount does not show) is needed only when it is not.
    counted = (order.paid_amount != 0 or not own_currency) and session.scalar(select(exists().where(
        InboxEvent.type == PAYMENT_SUCCEEDED, InboxEvent.object_id == intent["id"], InboxEvent.order_id == order.id,
        InboxEvent.status == EventStatus.PROCESSED, InboxEvent.event_id != event_id)))
    if not counted and own_currency:
        order.paid_amount += paid
    return paid, not counted


@handles(PAYMENT_SUCCEEDED)
def on_payment_succeeded(session: Session, event: dict, context: HandlerContext) -> Outcome:
    intent = event["data"]["object"]
    found = _find(session, intent, context)
    if found.outcome is not None:
        return found.outcome
    # The order's changes are written in one UPDATE at the end (the savepoint or the commit),
    # not one per query that would otherwise flush them first.
    with session.no_autoflush:
        order = found.order
        # The intent is linked to the order by this event: a stray one (a second checkout tab), or the first
        # the order holds (checkout never heard Stripe's answer). Until now its events found no order of ours.
        links = found.other_intent or order.payment_intent_id is None
        waiting = order.status in _WAITING_FOR_PAYMENT
        paid, counted_now = _count_payment(session, order, intent, event["id"])
        outcome = _apply_payment(session, intent, found, paid, counted_now)
        if counted_now and not waiting:
            # A payment counted for an order no longer waiting for one (staff reopened and retried it, it
            # came on a second tab, or after the order was flagged): a dispute on its intent may be lost
            # already, recorded and not counted while the payment was not (`settle_chargebacks`). An order
            # waiting for its payment has no lost dispute (the first event of every dispute that takes money
            # flags its order, and no order goes back to waiting), so the ordinary payment, here or in the
            # worker's batch (`consumers.processing._is_ordinary`), costs no look-up for it.
            settle_chargebacks(session, order, counting=intent["id"])
        if links and counted_now:
            outcome = _count_refunds_made_before(session, order, intent, paid, outcome, context)
        return outcome


# The statuses of an order that waits for its payment (the worker's batch pays only these).
_WAITING_FOR_PAYMENT = (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED)


def _count_refunds_made_before(session: Session, order: Order, intent: dict, paid: int, outcome: Outcome,
                               context: HandlerContext) -> Outcome:
    """Refunds of an intent linked to the order only now, made at Stripe before this event was handled.

    Stripe does not deliver events in order: the intent's charge.refunded or refund.* handled before this
    event found no order of ours and were ignored. Stripe's own list of the intent's refunds is read (not
    the inbox: a charge's events are stored under the charge's or the refund's id, may not list the refunds,
    and may not have arrived at all), and each refund is recorded by Stripe's id as charge.refunded records
    it, so a later delivery or replay of those events finds it recorded and counts nothing twice. Only
    reading: the service never refunds on its own."""
    record = context.retrieve_payment_intent(intent["id"])
    if not record or not record.get("latest_charge"):
        return outcome  # no charge at Stripe (or no such intent under this account): nothing was refunded
    refunds = [refund for refund in context.list_refunds(intent["id"]) if refund.get("id")]
    if not refunds:
        return outcome
    log.info("refunds_made_before_payment", refunds=len(refunds))
    return outcome.followed_by(record_charge_refunds(
        session, order, refunds, charge_id=refunds[0].get("charge"), amount=paid, refunded=given_back(refunds),
        currency=(intent.get("currency") or order.currency).lower()))


def _not_counted(order: Order, currency: str) -> str:
    """What a review reason adds for a payment in another currency than the order's: it is not in the money
    the order holds (accept keeps only that, and leaves this one at Stripe as it is); and how it goes back.
    Staff's refund (`consumers.staff_actions`) gives back, by Stripe's own numbers and in each intent's
    currency, every intent a payment of the order was counted on, this one too; it refuses an order already
    refunded, which holds nothing of its own currency."""
    how = "refund it in Stripe's dashboard"
    if order.status is not OrderStatus.REFUNDED:
        how += ", or `shop orders refund` gives it back with the rest of the order's payments"
    return f"; not counted in this {order.currency.upper()} order's money: another currency ({currency}); {how}"


def _apply_payment(session: Session, intent: dict, found: _Found, paid: int, counted_now: bool) -> Outcome:
    order = found.order
    currency = (intent.get("currency") or "").lower()
    # Said at the end of a reason when the money is in another currency than the order's (`_count_payment`
    # did not count it): never silent either way, but the order's own amounts are left as they are.
    aside = "" if order.counts_currency(currency) else _not_counted(order, currency)
    if found.other_intent:
        # Money taken on an intent the order does not hold (a second checkout tab, a copied
        # client secret): never silent, a person decides whether to refund it.
        return flag_or_note(order, f"paid {paid} {currency} on payment intent {intent['id']}, "
                                   f"but the order holds {order.payment_intent_id}{aside}")
    if order.status in (OrderStatus.PAID, OrderStatus.REFUNDED, OrderStatus.NEEDS_REVIEW):
        if counted_now:
            # Money this order did not hold before, taken when it no longer waits for any: a second
            # payment after a stray intent's, or the first on an order already in review. Never
            # silent: a person decides whether to keep or refund it.
            return flag_or_note(order, f"paid {paid} {currency} on payment intent {intent['id']} while the "
                                       f"order is {order.status.value}{aside}")
        said = "flagged for review" if order.status is OrderStatus.NEEDS_REVIEW else order.status.value
        return Outcome.processed(f"order already {said}", order.id)
    if order.payment_intent_id is None:
        hold_payment_intent(session, order, intent["id"])

    # Money has been taken from here on. The service never refunds on its own: anything
    # that does not add up is flagged for a person, who can retry, resolve or refund.
    if paid != order.total or currency != order.currency.lower():
        return flag_or_note(order, f"amount mismatch: paid {paid} {currency}, order total {order.total} "
                                   f"{order.currency}{aside}")
    if order.status is OrderStatus.CANCELLED:
        return flag_or_note(order, f"paid after the order was cancelled ({order.cancel_reason})")

    no_longer_held = consume_reservations(session, order)
    if no_longer_held:
        return flag_or_note(order, f"paid but the stock is no longer held: {', '.join(no_longer_held)}")
    fulfil_paid_order(session, order)
    return Outcome.processed("order paid", order.id)


def fulfil_paid_order(session: Session, order: Order, *, close_cart: bool = True) -> None:
    """What a paid order sets going once its units are taken: used by this handler and by staff's accept.
    `close_cart=False` leaves the order's cart alone: staff accept a late payment of an order whose cart the
    expiry sweep gave back to the buyer (`models.orders.cart_left_to_buyer`), who may be filling it again."""
    first_payment = order.paid_at is None
    order.mark_paid()
    # Only a paid order gets a shipment and paid_at is never cleared: on its first payment
    # the order has none, so there is nothing to look up.
    create_shipment(session, order, known_absent=first_payment)
    if close_cart:
        delete_cart_logically(session, order.cart_id)
    queue_order_mail(session, order, "confirmation")
    log.info("order_paid", total=order.total, currency=order.currency,
             **({} if close_cart else {"cart_left_to_buyer": order.cart_id}))


def _own_order(session: Session, intent: dict, context: HandlerContext) -> _Found:
    found = _find(session, intent, context)
    if found.other_intent:
        # No money moved on it: a decline or cancellation of an intent the order does not hold.
        return _Found(outcome=Outcome.ignored(
            f"payment intent {intent['id']} is not the one order {found.order.id} holds", found.order.id))
    return found


@handles("payment_intent.payment_failed")
def on_payment_failed(session: Session, event: dict, context: HandlerContext) -> Outcome:
    intent = event["data"]["object"]
    found = _own_order(session, intent, context)
    if found.outcome is not None:
        return found.outcome
    order = found.order
    if order.status not in (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED):
        # Status only moves forward: a late decline never un-pays an order.
        return Outcome.processed(f"stale failure ignored: order already {order.status.value}", order.id)
    error = intent.get("last_payment_error") or {}
    code = error.get("decline_code") or error.get("code")
    order.record_failed_attempt(code, error.get("message"))
    # The reservation stays until it expires: the customer may try another card.
    queue_order_mail(session, order, "payment_failed")
    log.info("payment_failed_recorded", failure_code=code, attempts=order.payment_attempts)
    return Outcome.processed(f"payment attempt failed: {code}", order.id)


@handles("payment_intent.canceled")
def on_payment_canceled(session: Session, event: dict, context: HandlerContext) -> Outcome:
    intent = event["data"]["object"]
    found = _own_order(session, intent, context)
    if found.outcome is not None:
        return found.outcome
    order = found.order
    if order.status not in (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED):
        return Outcome.processed(f"cancellation ignored: order already {order.status.value}", order.id)
    released = release_reservations(session, order)
    order.cancel(f"payment intent canceled ({intent.get('cancellation_reason') or 'no reason given'})")
    log.info("order_cancelled", units_released=released)
    return Outcome.processed("order cancelled", order.id)
