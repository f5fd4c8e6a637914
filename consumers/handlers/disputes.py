"""charge.dispute.*: a chargeback opened or decided; the order is flagged and staff are told. A dispute on
a stray intent whose payment is stored but not yet applied is retried after that payment; one on an intent an
order holds or records whose payment was never applied (waiting, resolved by hand by staff, ignored, or never
received at all) is that order's, says so, and takes nothing from what the order holds until it is applied."""
from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from consumers.handlers.lookup import flag_or_note, lock_order, lock_order_paid_on
from consumers.handlers.outcome import Outcome
from consumers.handlers.registry import HandlerContext, handles
from models.base import utcnow
from models.money import per_currency
from models.orders import (
    Order,
    OrderStatus,
    can_transition,
    intents_counted_for,
    money_in_other_currencies,
    order_recording,
    payment_set_aside_on,
    payment_unapplied_on,
    settle_chargebacks,
)
from models.refunds import Dispute

log = structlog.get_logger(__name__)

# Stripe's statuses for a dispute it has decided (charge_refunded: older API versions). A decided
# dispute does not go back to needs_response or under_review: an update saying so was sent before
# the decision and delivered after it (Stripe does not deliver events in order).
_DECIDED = frozenset({"won", "lost", "warning_closed", "prevented", "charge_refunded"})
# Decided with the money staying with the shop: staff hear of it, but there is nothing to review.
_MONEY_KEPT = frozenset({"won", "warning_closed", "prevented"})
# An undecided dispute only moves forward: an inquiry (warning_*) may become a chargeback, and a
# chargeback waiting for evidence goes under review; none of them goes back. A status ranked below
# the row's is stale, even if its event is handled later. Inquiries do not rule a refund out and
# chargebacks do (models.refunds.REFUND_RULED_OUT): a stale inquiry status after the chargeback
# would have offered staff a refund of money the card network may take back as well.
_UNDECIDED_ORDER = ("warning_needs_response", "warning_under_review", "needs_response", "under_review")
_UNDECIDED_RANK = {status: rank for rank, status in enumerate(_UNDECIDED_ORDER)}


class PaymentNotYetApplied(Exception):
    """A dispute on an intent no order holds, whose payment the inbox holds but a worker has yet to apply
    (a second checkout tab's intent: only its payment links it to the order). Raised, not ignored, so the
    worker retries the dispute with back-off until the payment is applied and the dispute finds its order;
    behind a dead-lettered payment it ends a dead letter too, for staff to retry after the payment."""


@dataclass(frozen=True)
class _Found:
    """The order a dispute is about (None: not ours) and its row; `unapplied` when no payment on the dispute's
    intent was applied to the order (found through order_payment_intents, or holding that intent): what became
    of that payment, for staff. The same rule as `models.orders.intents_counted_for`."""

    order: Order | None
    row: Dispute | None
    unapplied: str | None = None
    other_currency: str | None = None  # the dispute is in another currency than the order's: what to say of it

    def counted(self) -> bool:
        """Whether the disputed money is in what the order holds (`Order.money_held`): not when its payment
        was never applied to the order, so a lost dispute takes nothing from it either (until that payment
        is applied: `models.orders.settle_chargebacks`); nor when it is in another currency than the order's
        (`Order.counts_currency`), never counted at all."""
        return self.unapplied is None and self.other_currency is None

    def aside(self) -> str:
        """What staff must know besides: the money disputed was never counted for the order, and why."""
        why = [said for said in (self.unapplied, self.other_currency) if said]
        if not why:
            return ""
        return f"; {'; '.join(why)}, so the money the order holds is left as it is"


def _no_order(dispute: dict) -> Outcome:
    return Outcome.ignored(f"no order of ours for dispute {dispute['id']}")


def _find(session: Session, dispute: dict) -> _Found:
    """The order holding the dispute's intent (its money counted only if a payment on it was applied), or the
    one a payment on it was counted for. Else, while a
    payment on the intent waits to be applied, PaymentNotYetApplied; else the order that records the intent
    (order_payment_intents): the one whose payment on it was closed unapplied (resolved by hand by staff, or
    ignored), or, when no payment on it was ever stored (its succeeded event lost, or still on its way), the
    one that records it at all. The dispute is still about that order's customer, and a person must hear of
    it; the money is left as it is until its payment is applied."""
    intent_id = dispute.get("payment_intent")
    intent_id = intent_id if isinstance(intent_id, str) else None
    order = lock_order_paid_on_once_applied(session, intent_id, f"dispute {dispute['id']}") if intent_id else None
    unapplied = None
    if order is not None and order.payment_intent_id == intent_id \
            and intent_id not in intents_counted_for(session, order):
        # The intent the order holds, whose payment was never applied to it: the order is the dispute's, but
        # not the money (`models.orders.settle_chargebacks` counts it once that payment is applied).
        unapplied = _held_unapplied(session, intent_id)
    elif order is None and intent_id:
        set_aside = payment_set_aside_on(session, intent_id)
        if set_aside is not None:
            order_id, unapplied = set_aside.order_id, set_aside.said()
        else:
            order_id = order_recording(session, intent_id)
            unapplied = _never_received(intent_id)
        order = lock_order(session, order_id) if order_id is not None else None
    row = session.scalars(select(Dispute).where(Dispute.stripe_dispute_id == dispute["id"]).with_for_update()
                          ).one_or_none()
    if order is None:
        return _Found(None, row)
    return _Found(order, row, unapplied, _other_currency(order, dispute))


def lock_order_paid_on_once_applied(session: Session, intent_id: str, what: str) -> Order | None:
    """`lock_order_paid_on`, or PaymentNotYetApplied while a payment on the intent is stored and not yet applied
    (a stray intent's: only that payment links it to its order). `what` names the money event in the error.
    None: no order holds the intent and no payment on it is waiting or was applied for one.

    PostgreSQL reads each statement as of its own start: a payment another worker applies between the two
    look-ups is no longer waiting, and its order is found by looking again; without that look, a dispute or
    refund handled in that moment took the payment for one never received, or for none of ours."""
    order = lock_order_paid_on(session, intent_id)
    if order is not None:
        return order
    waiting = payment_unapplied_on(session, intent_id)
    if waiting is not None:
        raise PaymentNotYetApplied(
            f"{what} is on payment intent {intent_id} whose payment (event {waiting.event_id}, status "
            f"{waiting.status.value}) is stored but not yet applied: retried after it")
    return lock_order_paid_on(session, intent_id)


def _other_currency(order: Order, dispute: dict) -> str | None:
    """What staff are told of a dispute in another currency than the order's: its payment was never counted
    in the order's money (`Order.counts_currency`), so a lost one takes nothing from it (`settle_chargebacks`)."""
    currency = dispute.get("currency")
    if not isinstance(currency, str) or order.counts_currency(currency):
        return None
    return (f"the dispute is in {currency.lower()}, another currency than this {order.currency.upper()} "
            f"order's: that payment was never counted in the order's money")


def _never_received(intent_id: str) -> str:
    return (f"no payment on payment intent {intent_id}, which the order records, has reached the service (its "
            f"payment_intent.succeeded was never received: shop reconcile fetches it)")


def _held_unapplied(session: Session, intent_id: str) -> str:
    """What became of the payment on the intent the order holds, which was never applied to it. Unlike a
    stray intent's (`PaymentNotYetApplied`), a payment waiting does not hold the dispute back: the order is
    known, so staff hear of the dispute at once, and the worker counts the chargeback when it applies it."""
    waiting = payment_unapplied_on(session, intent_id)
    if waiting is not None:
        return (f"the payment on payment intent {intent_id} (event {waiting.event_id}, status "
                f"{waiting.status.value}) is stored but not yet applied to this order")
    set_aside = payment_set_aside_on(session, intent_id)
    return set_aside.said() if set_aside is not None else _never_received(intent_id)


def _new_row(session: Session, order: Order, dispute: dict) -> Dispute:
    row = Dispute(stripe_dispute_id=dispute["id"], order_id=order.id, charge_id=dispute.get("charge"),
                  payment_intent_id=dispute.get("payment_intent"), amount=int(dispute.get("amount") or 0),
                  currency=dispute.get("currency") or order.currency, reason=dispute.get("reason"),
                  status=dispute.get("status") or "needs_response")
    session.add(row)
    return row


def _first_seen(session: Session, found: _Found, row: Dispute) -> Outcome:
    """The first of a dispute's events to be handled, whichever it is: created, or an update or the
    closing that overtook it (or whose created was lost). Only this one flags the order and alerts
    staff for the dispute's opening; a created handled later finds the row and stays quiet."""
    order = found.order
    log.warning("dispute_opened", dispute_id=row.stripe_dispute_id, amount=row.amount, reason=row.reason,
                dispute_status=row.status, payment_applied=found.counted())
    opened = f"dispute {row.stripe_dispute_id} opened ({row.reason or 'no reason given'})"
    if row.status in _MONEY_KEPT:
        # Decided for the shop before the service heard it was opened: the money stays where it is, so
        # the order is left as it is, but staff are told the card holder contested it.
        return Outcome.processed(f"{opened} and already {row.status}: order left {order.status.value}", order.id,
                                 alert=f"Order {order.id}: {opened} and already closed: {row.status}, "
                                       f"{row.amount} {row.currency} kept; the order needs no review{found.aside()}")
    if row.status in _DECIDED:
        _count_chargeback(session, found)
        return flag_or_note(order, f"{opened} and already closed: {row.status}, {row.amount} {row.currency} "
                                   f"taken back{_held_after(session, found, row, flagging=True)}{found.aside()}")
    return flag_or_note(order, f"{opened}: {row.amount} {row.currency} contested{_refunded_already(order)}"
                               f"{found.aside()}")


def _refunded_already(order: Order) -> str:
    """An open dispute on money already given back: answered with the refund as evidence before it is due,
    it is won; left unanswered, it is lost and the customer is paid back twice."""
    if order.refunded_amount <= 0:
        return ""
    return (f"; {order.refunded_amount} {order.currency} of the order's payment was refunded already: answer the "
            f"dispute in Stripe's dashboard with the refund as evidence before it is due, or the customer is "
            f"paid back twice")


def _count_chargeback(session: Session, found: _Found) -> None:
    """A lost dispute's amount is gone from the shop, as a refund is: the order holds that much less,
    so a refund is not offered for it and, once it holds nothing, staff can cancel it. Not for money the
    order never counted (`_Found.counted`): one rule for both, `settle_chargebacks`, which a staff replay
    or decision runs again once that payment is applied."""
    settle_chargebacks(session, found.order)


def _held_after(session: Session, found: _Found, row: Dispute, *, flagging: bool) -> str:
    """What a lost dispute leaves the order holding, and what staff can do about it, by the sign of what it
    holds and its status (`flagging`: the alert flags the order too, so a paid order will be in review).
    Money paid in another currency (never in `Order.money_held`) is said too: it is still the customer's."""
    order = found.order
    if row.status != "lost" or not found.counted():
        return ""
    held = order.money_held
    elsewhere = money_in_other_currencies(session, [order]).get(order.id)
    other = per_currency(elsewhere or {})
    said = f"; the order now holds {held} {order.currency}"
    if held > 0:
        return said + (f" (and {other} paid in another currency than its own)" if other else "")
    if held < 0:
        # Refunded, then charged back too: no refund or cancel of ours gives that money back, and a lost
        # dispute is decided (answering it with the refund as evidence was for while it was open).
        said += (f": the customer was paid back twice, by the refund and by the chargeback, so the shop lost "
                 f"{-held} {order.currency} more than it took; nothing is left to refund, and the dispute is "
                 f"decided: accept the loss, or ask the customer to return what was paid back twice (Stripe's "
                 f"dashboard shows the refund and the dispute)")
    else:
        said += ": nothing to refund or keep"
    if other:  # cancel is refused while it holds it; refund gives it back and ends the order refunded
        return said + (f"; but {other} paid in another currency than its own is still held: `shop orders refund` "
                       f"gives it back")
    status = order.status
    if flagging and can_transition(status, OrderStatus.NEEDS_REVIEW):
        status = OrderStatus.NEEDS_REVIEW
    if can_transition(status, OrderStatus.CANCELLED):
        said += ("; cancel" if held < 0 else ", cancel") + " it to put unshipped units back"
    return said


def _take_status(session: Session, found: _Found, row: Dispute, dispute: dict) -> str | None:
    """Won and lost (and Stripe's other decided statuses) are final, and undecided ones only move
    forward (`_UNDECIDED_ORDER`): a later event naming an earlier status is stale and changes nothing.
    Events of one dispute share no sequence number and the row keeps no event time, so the statuses
    themselves decide. One decided status replaced by another (won, then lost) is not a stale event:
    Stripe says so, so it is taken, and the decided status it replaced is returned for the caller to
    flag the order (a person must hear of money taken back after it was said to be kept)."""
    status = dispute.get("status")
    if not status or status == row.status:
        return None
    if (row.status in _DECIDED and status not in _DECIDED) or (
            status in _UNDECIDED_RANK and _UNDECIDED_RANK[status] < _UNDECIDED_RANK.get(row.status, -1)):
        log.info("dispute_status_stale", dispute_id=row.stripe_dispute_id, dispute_status=row.status,
                 stale_status=status)
        return None
    replaced = row.status if row.status in _DECIDED else None
    row.status = status
    _count_chargeback(session, found)
    if replaced is not None:
        log.warning("dispute_decision_changed", dispute_id=row.stripe_dispute_id, was=replaced, now=status)
    return replaced


def _decision_changed(session: Session, found: _Found, row: Dispute, replaced: str) -> Outcome:
    return flag_or_note(found.order, f"dispute {row.stripe_dispute_id} was decided {replaced}, and Stripe now says "
                                     f"{row.status} ({row.amount} {row.currency})"
                                     f"{_held_after(session, found, row, flagging=True)}"
                                     f"{found.aside()}")


@handles("charge.dispute.created")
def on_dispute_created(session: Session, event: dict, context: HandlerContext) -> Outcome:
    dispute = event["data"]["object"]
    found = _find(session, dispute)
    if found.order is None:
        return _no_order(dispute)
    if found.row is not None:  # this event, again, or a later one of the dispute handled before it: told already
        return Outcome.processed(f"dispute {dispute['id']} already recorded ({found.row.status})", found.order.id)
    return _first_seen(session, found, _new_row(session, found.order, dispute))


@handles("charge.dispute.updated")
def on_dispute_updated(session: Session, event: dict, context: HandlerContext) -> Outcome:
    dispute = event["data"]["object"]
    found = _find(session, dispute)
    order, row = found.order, found.row
    if order is None:
        return _no_order(dispute)
    if row is None:  # the update overtook the opening
        return _first_seen(session, found, _new_row(session, order, dispute))
    replaced = _take_status(session, found, row, dispute)
    if replaced is not None:
        return _decision_changed(session, found, row, replaced)
    return Outcome.processed(f"dispute {row.stripe_dispute_id} is {row.status}", order.id)


@handles("charge.dispute.closed")
def on_dispute_closed(session: Session, event: dict, context: HandlerContext) -> Outcome:
    dispute = event["data"]["object"]
    found = _find(session, dispute)
    order, row = found.order, found.row
    if order is None:
        return _no_order(dispute)
    if row is None:  # the closing overtook the opening: one alert says both
        row = _new_row(session, order, dispute)
        row.closed_at = utcnow()
        log.warning("dispute_closed", dispute_id=row.stripe_dispute_id, dispute_status=row.status)
        return _first_seen(session, found, row)
    replaced = _take_status(session, found, row, dispute)
    if row.closed_at is None:
        row.closed_at = utcnow()
    log.warning("dispute_closed", dispute_id=row.stripe_dispute_id, dispute_status=row.status)
    if replaced is not None:
        return _decision_changed(session, found, row, replaced)
    return Outcome.processed(f"dispute {row.stripe_dispute_id} closed: {row.status}", order.id,
                             alert=f"Order {order.id}: dispute {row.stripe_dispute_id} closed: {row.status} "
                                   f"({row.amount} {row.currency}){_held_after(session, found, row, flagging=False)}"
                                   f"{found.aside()}")
