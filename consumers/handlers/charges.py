"""charge.refunded: a refund made at Stripe (its dashboard, or ours already recorded) shows on the order;
charge.refund.updated and refund.updated/failed: a refund that failed after all is no longer counted.
`record_charge_refunds` is also how a stray intent's refunds made before its payment was linked are counted;
one whose event comes while that payment is stored but not yet applied is retried after it."""
from __future__ import annotations

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from consumers.handlers.disputes import lock_order_paid_on_once_applied
from consumers.handlers.lookup import flag_or_note
from consumers.handlers.outcome import Outcome
from consumers.handlers.registry import HandlerContext, handles
from models.money import per_currency
from models.orders import (
    Order,
    OrderStatus,
    can_transition,
    money_in_other_currencies,
    record_refund,
    return_unshipped_units,
)
from models.refunds import Refund, RefundSource

log = structlog.get_logger(__name__)


class RefundsNotListed(Exception):
    """Stripe's list of an intent's refunds does not add up to the charge's refunded total: asked
    again on the retry (and, if it never does, the event is a dead letter staff see)."""


def _refunds_of(charge: dict, intent_id: str, refunded: int, context: HandlerContext) -> list[dict]:
    """The charge's refunds: as the event lists them, or Stripe's API's list when the event does not
    list them all. From API version 2022-11-15 on, Stripe sends a charge without its refunds; an
    older version lists at most ten of them (`has_more`)."""
    listed = charge.get("refunds")
    if isinstance(listed, dict) and isinstance(listed.get("data"), list) and not listed.get("has_more"):
        refunds = [refund for refund in listed["data"] if isinstance(refund, dict)]
        if given_back(refunds) >= refunded:
            return refunds
    refunds = context.list_refunds(intent_id)
    # Stripe's list is as of now, the event's total as of when it was sent: a refund that failed or was
    # canceled since still explains the total, though it gives nothing back now. Only a list short of
    # the total even with those is one Stripe has not caught up with yet.
    listed_total = sum(int(refund.get("amount") or 0) for refund in refunds)
    if listed_total < refunded:
        raise RefundsNotListed(f"charge {charge.get('id')} is refunded {refunded}, but Stripe lists refunds of "
                               f"{listed_total} for payment intent {intent_id} (failed and canceled ones "
                               f"included)")
    return refunds


def _lock_order_refunded(session: Session, intent_id: object, what: str) -> Order | None:
    """The order whose money a refund on the intent gave back (`lock_order_paid_on`), or None: not ours.
    `what` names the refund (or its charge) in the error.

    A stray intent (a second checkout tab's) is linked to its order only by its payment's succeeded event.
    While that event is stored and not yet applied (waiting, being applied by another worker right now,
    retrying, or dead-lettered), the refund finds no order, and the payment's worker may have read Stripe's
    list of the intent's refunds before this one was made (`_count_refunds_made_before`): ignored, the refund
    would be counted nowhere. So, as a dispute's, it raises PaymentNotYetApplied and is retried after the
    payment; behind a dead-lettered payment it ends a dead letter too (alerted), for staff to retry after it.
    An intent with no payment stored, or whose payment was ignored or resolved by hand, is not ours."""
    if not isinstance(intent_id, str):
        return None
    return lock_order_paid_on_once_applied(session, intent_id, what)


def given_back(refunds: list[dict]) -> int:
    """What the refunds give back (a failed or canceled one gives nothing)."""
    return sum(int(refund.get("amount") or 0) for refund in refunds
               if refund.get("status") not in ("failed", "canceled"))


@handles("charge.refunded")
def on_charge_refunded(session: Session, event: dict, context: HandlerContext) -> Outcome:
    charge = event["data"]["object"]
    intent_id = charge.get("payment_intent")
    order = _lock_order_refunded(session, intent_id, f"charge {charge.get('id')}")
    if order is None:
        return Outcome.ignored(f"no order of ours for charge {charge.get('id')} (payment intent {intent_id})")
    amount, refunded = int(charge.get("amount") or 0), int(charge.get("amount_refunded") or 0)
    refunds = _refunds_of(charge, intent_id, refunded, context)
    # What the refunds give back now: less than the event's total when one failed or was canceled
    # since, and the order is then neither refunded in full nor flagged as if it were.
    refunded = min(refunded, given_back(refunds))
    return record_charge_refunds(session, order, refunds,
                                 charge_id=charge.get("id"), amount=amount, refunded=refunded,
                                 currency=charge.get("currency") or order.currency)


def record_charge_refunds(session: Session, order: Order, refunds: list[dict], *, charge_id: str | None,
                          amount: int, refunded: int, currency: str) -> Outcome:
    """Record a charge's refunds on the order, each once, and say what that makes of the order: refunded
    (a refund in full of all it holds), or flagged for a person. `refunded` is the charge's refunded total.

    charge.refunded calls it, and so does a succeeded event that links a stray intent to the order: the
    intent's refunds, handled before it, found no order of ours.

    A charge in another currency than the order's was never counted in what the order holds
    (`Order.counts_currency`): its refunds are recorded and take nothing from the order's amounts."""
    # Each refund once, keyed by Stripe's id: one staff made here is already recorded.
    recorded = []
    for refund in refunds:
        if not refund.get("id"):
            continue
        row = record_refund(session, order, stripe_refund_id=refund["id"], amount=int(refund.get("amount") or 0),
                            currency=(refund.get("currency") or currency),
                            status=refund.get("status") or "succeeded", source=RefundSource.STRIPE,
                            reason=refund.get("reason"))
        if row is not None:
            recorded.append(row)
    for row in recorded:
        log.info("refund_recorded", refund_id=row.stripe_refund_id, amount=row.amount, source="stripe")

    in_full = refunded >= amount > 0
    if in_full and order.money_held <= 0:
        if order.status is OrderStatus.REFUNDED:
            return Outcome.processed(f"order already refunded; {len(recorded)} refund(s) recorded", order.id)
        elsewhere = money_in_other_currencies(session, [order]).get(order.id)
        if elsewhere:
            # Its own money all given back, but a payment in another currency (never in its amounts) is still
            # the shop's: marked refunded, the order would leave review and staff's refund would refuse it.
            return flag_or_note(order, f"refunded in full at Stripe ({refunded} {currency}), but the order still "
                                       f"holds {per_currency(elsewhere)} paid in another currency than its own: "
                                       f"`shop orders refund` gives it back")
        if can_transition(order.status, OrderStatus.REFUNDED):
            refund_id = recorded[-1].stripe_refund_id if recorded else charge_id
            order.mark_refunded(refund_id, "refunded in full at Stripe")
            # Refunded goods must not leave the warehouse; their units go back on the shelf.
            returned = return_unshipped_units(session, order)
            log.info("order_refunded", refund_id=refund_id, units_returned=returned, source="stripe")
            return Outcome.processed(f"order refunded at Stripe ({refunded} {currency})", order.id)
        return flag_or_note(order, f"refunded in full at Stripe ({refunded} {currency}) while the order is "
                                   f"{order.status.value}")
    if not recorded:
        return Outcome.processed("refunds already recorded", order.id)
    if refunded <= 0:  # only refunds that failed or were canceled: nothing was given back
        return Outcome.processed(f"{len(recorded)} refund(s) recorded, none giving money back", order.id)
    # A charge in another currency: its payment was flagged when it came, and was never in the order's money.
    aside = "" if order.counts_currency(currency) else (
        f" (another currency than this {order.currency.upper()} order's: never counted in its money)")
    if in_full:  # one of two payments the order holds (a stray intent's, or its own after one)
        return flag_or_note(order, f"charge {charge_id} refunded in full at Stripe ({refunded} {currency}){aside}; "
                                   f"the order still holds {order.money_held} {order.currency}")
    return flag_or_note(order, f"partially refunded at Stripe: {refunded} of {amount} {currency}{aside}")


# Stripe's refund statuses. A pending refund counts as money given back until it fails.
_REFUND_STATUSES = frozenset({"pending", "requires_action", "succeeded", "failed", "canceled"})
_GIVES_NOTHING = frozenset({"failed", "canceled"})


@handles("charge.refund.updated")
@handles("refund.updated")
@handles("refund.failed")
def on_refund_updated(session: Session, event: dict, context: HandlerContext) -> Outcome:
    """A refund's new status. One that failed (a closed card account, say) gave the customer nothing:
    it no longer counts against the money the order holds, and staff are told, since the service
    marked the order refunded or partly refunded on its word."""
    refund = event["data"]["object"]
    intent_id = refund.get("payment_intent")
    order = _lock_order_refunded(session, intent_id, f"refund {refund.get('id')}")
    if order is None:
        return Outcome.ignored(f"no order of ours for refund {refund.get('id')} (payment intent {intent_id})")
    status = refund.get("status")
    if status not in _REFUND_STATUSES or not isinstance(refund.get("id"), str):
        return Outcome.ignored(f"refund {refund.get('id')} has no refund status the service knows ({status!r})",
                               order.id)
    row = session.scalars(select(Refund).where(Refund.stripe_refund_id == refund["id"]).with_for_update()
                          ).one_or_none()
    if row is None:
        if status not in _GIVES_NOTHING:
            # Counted when its charge.refunded comes, which also decides whether the order is flagged.
            return Outcome.processed(f"refund {refund['id']} is {status}; its charge's refunds are recorded "
                                     f"from charge.refunded", order.id)
        record_refund(session, order, stripe_refund_id=refund["id"], amount=int(refund.get("amount") or 0),
                      currency=refund.get("currency") or order.currency, status=status,
                      source=RefundSource.STRIPE, reason=refund.get("reason"))
        return Outcome.processed(f"refund {refund['id']} {status} at Stripe; it was never counted", order.id)
    counted = row.status not in _GIVES_NOTHING
    if not counted and status not in _GIVES_NOTHING:
        # Failed and canceled are final at Stripe: a pending or succeeded now was sent before the
        # failure and delivered after it. Taken, it would count the refund as given back again
        # without adding its amount back, and the failure's next event would subtract it twice.
        log.info("refund_status_stale", refund_id=row.stripe_refund_id, refund_status=row.status,
                 stale_status=status)
        return Outcome.processed(f"refund {row.stripe_refund_id} stays {row.status}: {status} is older news",
                                 order.id)
    row.status = status
    if not (counted and status in _GIVES_NOTHING):
        return Outcome.processed(f"refund {row.stripe_refund_id} is {status}", order.id)
    if order.counts_currency(row.currency):  # one in another currency never counted in the order's money
        order.refunded_amount -= row.amount
    log.warning("refund_failed", refund_id=row.stripe_refund_id, amount=row.amount,
                failure_reason=refund.get("failure_reason"))
    return flag_or_note(order, f"refund {row.stripe_refund_id} of {row.amount} {row.currency} {status} at Stripe "
                               f"({refund.get('failure_reason') or 'no reason given'}): the customer did not get it "
                               f"back")
