"""A dispute's undecided statuses only move forward, whatever order their events are handled in.

An inquiry (`warning_needs_response`, `warning_under_review`) can become a chargeback
(`needs_response`, then `under_review` once evidence is in); a chargeback never goes back to an
inquiry, nor under review back to needing a response. Stripe does not deliver events in order, so
an update sent before another can be handled after it. Inquiries leave a refund possible and
chargebacks rule it out, so a stale inquiry status taken over a chargeback offered a refund of money
the card network may take back as well.
"""
from __future__ import annotations

import pytest
import stripe

from consumers.staff_actions import Refused, refund_order
from models.refunds import disputes_ruling_out_refund
from tests.integration.test_out_of_order_money_events import _charge_of, _dispute
from tests.integration.test_refunds_and_disputes import (  # noqa: F401  (fixtures)
    dispute_event, order_row, paid_order, stripe_says)
from webhook_app.admin.orders import available_decisions


@pytest.mark.parametrize("handled_first, stale", [
    ("needs_response", "warning_under_review"),  # the inquiry was escalated into a chargeback
    ("needs_response", "warning_needs_response"),
    ("under_review", "needs_response"),  # evidence submitted
    ("warning_under_review", "warning_needs_response"),
])
def test_a_stale_undecided_dispute_status_handled_late_does_not_replace_a_later_one(
        client, sessions, paid_order, stripe_says, handled_first, stale):
    order = paid_order()
    charge_id = _charge_of(order)
    opened = dispute_event("created", order, charge_id, "warning_needs_response")
    later = dispute_event("updated", order, charge_id, handled_first)
    earlier = dispute_event("updated", order, charge_id, stale)
    earlier["created"] = later["created"] - 600
    stripe_says(opened)
    stripe_says(later)
    stripe_says(earlier)  # sent before `later`, delivered after it

    assert _dispute(sessions).status == handled_first


def test_a_chargeback_whose_stale_inquiry_update_comes_last_still_rules_a_refund_out(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    charge_id = _charge_of(order)
    stripe_says(dispute_event("created", order, charge_id, "warning_needs_response"))
    stripe_says(dispute_event("updated", order, charge_id, "needs_response"))
    stripe_says(dispute_event("updated", order, charge_id, "warning_under_review"))  # stale

    with pytest.raises(Refused, match="Stripe does not refund a disputed payment"):
        refund_order(sessions, order["order_id"], actor="alice", reason="the customer asked")
    assert stripe.Refund.list(payment_intent=order["payment_intent_id"]).data == []
    row = order_row(sessions, order)
    with sessions() as session:
        assert "refund" not in available_decisions(row, disputes_ruling_out_refund(session, [row.id]).get(row.id))


def test_an_inquiry_escalated_into_a_chargeback_takes_the_chargebacks_status(
        client, sessions, paid_order, stripe_says):
    """Forward moves still count: the ranking refuses only a step back."""
    order = paid_order()
    charge_id = _charge_of(order)
    for status in ("warning_needs_response", "warning_under_review", "needs_response", "under_review"):
        stripe_says(dispute_event("updated" if status != "warning_needs_response" else "created",
                                  order, charge_id, status))
        assert _dispute(sessions).status == status


@pytest.mark.parametrize("kind", ["updated", "closed"])
def test_a_dispute_decided_won_that_stripe_then_says_is_lost_flags_the_order_and_counts_the_chargeback(
        client, sessions, paid_order, stripe_says, kind):
    from consumers.staff_actions import accept_order
    from models.orders import OrderStatus
    from tests.integration.test_refunds_and_disputes import alerts

    order = paid_order()
    charge_id = _charge_of(order)
    stripe_says(dispute_event("created", order, charge_id, "needs_response"))
    stripe_says(dispute_event("closed", order, charge_id, "won"))
    accept_order(sessions, order["order_id"], actor="alice", note="the dispute was won")
    assert order_row(sessions, order).status is OrderStatus.PAID
    before = len(alerts(sessions))

    stripe_says(dispute_event(kind, order, charge_id, "lost"))

    assert _dispute(sessions).status == "lost"
    row = order_row(sessions, order)
    assert row.status is OrderStatus.NEEDS_REVIEW
    assert "was decided won, and Stripe now says lost" in row.review_reason
    assert row.charged_back_amount == order["total"] and row.money_held == 0
    said = [alert.text for alert in alerts(sessions)[before:]]
    assert any("was decided won, and Stripe now says lost" in message for message in said), said
