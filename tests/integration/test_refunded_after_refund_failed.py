"""charge.refunded (current API: the charge without its refunds) handled after its refund failed at Stripe.

The event says the charge is refunded; Stripe's list of the intent's refunds, read when the event is
handled, says the refund failed since (the worker was behind, Stripe redelivered, `shop reconcile`
fetched it). The list still explains the event's total, so the event is handled once and the order
keeps the money, whichever of charge.refunded and refund.failed comes first.
"""
from __future__ import annotations

from contextlib import contextmanager

import stripe
from sqlalchemy import select

from models.events import EventStatus, InboxEvent
from models.refunds import Refund
from tests.integration.test_refunds_and_disputes import (  # noqa: F401 - paid_order and stripe_says are fixtures
    alerts, charge_refunded_as_now, order_row, paid_order, refund_updated, stripe_says)
from tests.stripe_proxy import HoldingProxy, refunds_listed_as_failed


@contextmanager
def stripe_lists_refunds_as_failed(localstripe):
    """From here on Stripe's list of refunds says each failed, as it does once the card's bank sent one back."""
    proxy = HoldingProxy(localstripe.port, hold=lambda line: False, rewrite=refunds_listed_as_failed)
    working, stripe.api_base = stripe.api_base, proxy.base
    try:
        yield
    finally:
        stripe.api_base = working
        proxy.close()


def stored(sessions, event: dict) -> InboxEvent:
    with sessions() as session:
        return session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()


def refund_statuses(sessions) -> list[tuple[str, str]]:
    with sessions() as session:
        return [(row.stripe_refund_id, row.status) for row in session.scalars(select(Refund).order_by(Refund.id))]


def test_charge_refunded_handled_after_its_refund_failed_is_processed_once_and_the_order_keeps_the_money(
        sessions, paid_order, stripe_says, localstripe):
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"])  # in Stripe's dashboard
    late = charge_refunded_as_now(refund.charge)  # Stripe's snapshot when the refund was made
    failed = refund_updated(refund.id, kind="refund.failed", status="failed", failure_reason="lost_or_stolen_card")
    with stripe_lists_refunds_as_failed(localstripe):
        stripe_says(late)
        handled = stored(sessions, late)
        assert (handled.status, handled.attempts, handled.last_error) == (EventStatus.PROCESSED, 1, None)
        assert "none giving money back" in handled.outcome
        assert refund_statuses(sessions) == [(refund.id, "failed")]
        stripe_says(failed)
    assert stored(sessions, failed).status is EventStatus.PROCESSED
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("paid", 0, order["total"])
    assert refund_statuses(sessions) == [(refund.id, "failed")]
    assert alerts(sessions) == []  # nothing was ever counted as given back, so nothing to take back


def test_charge_refunded_handled_after_its_refund_failed_event_is_processed_and_counts_nothing(
        sessions, paid_order, stripe_says, localstripe):
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"])
    late = charge_refunded_as_now(refund.charge)
    with stripe_lists_refunds_as_failed(localstripe):
        stripe_says(refund_updated(refund.id, kind="refund.failed", status="failed",
                                   failure_reason="lost_or_stolen_card"))
        stripe_says(late)
    handled = stored(sessions, late)
    assert (handled.status, handled.attempts, handled.last_error) == (EventStatus.PROCESSED, 1, None)
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("paid", 0, order["total"])
    assert refund_statuses(sessions) == [(refund.id, "failed")]
