"""Staff refunds of an order paid on two intents (its own and a second checkout tab's), one of them disputed
or refused by Stripe: the other's money still goes back, and what went back is recorded and said.

A dispute on one intent used to rule out the refund (and cancel --refund) of the whole order, so the
undisputed payment could only be kept and shipped; and a refund Stripe made on one intent and refused on
the next was audited and shown as nothing done, while the customer had the first one's money back.
"""
from __future__ import annotations

import pytest
import stripe
from sqlalchemy import select

from consumers.staff_actions import RefundPartlyDone, Refused, cancel_order, refund_order, refunds_ruled_out
from models.history import StaffAction
from models.refunds import RefundSource
from tests.integration.test_admin_pages import flashes, logged_in, page, post
from tests.integration.test_out_of_order_money_events import _paid_on_a_second_tab, _stray_succeeded
from tests.integration.test_refunds_and_disputes import (  # noqa: F401 (fixtures)
    dispute_event, order_row, paid_order, refunds, stripe_says)
from tests.stripe_proxy import RefusingStripe
from webhook_app.admin.orders import available_decisions


def _charge(intent_id: str) -> str:
    charge = stripe.PaymentIntent.retrieve(intent_id).to_dict()["latest_charge"]
    return charge["id"] if isinstance(charge, dict) else charge


def _paid_twice(order: dict, stripe_says) -> str:
    """The customer paid the order on its own intent and again on a second tab's: it holds both."""
    stray = _paid_on_a_second_tab(order)
    stripe_says(_stray_succeeded(order, stray))
    return stray


def _given_back(intent_id: str) -> list[int]:
    return [r.amount for r in stripe.Refund.list(payment_intent=intent_id).data]


def _audit(sessions) -> list[tuple[str, str]]:
    with sessions() as session:
        return [(a.action, a.detail) for a in session.scalars(select(StaffAction).order_by(StaffAction.id))
                if a.action != "add login"]


def _offered(sessions, order: dict) -> list[str]:
    row = order_row(sessions, order)
    with sessions() as session:
        return available_decisions(row, refunds_ruled_out(session, [row]).get(row.id))


@pytest.mark.parametrize("how", ["refund", "cancel --refund"])
def test_a_lost_dispute_on_one_intent_leaves_it_out_and_the_other_intents_money_goes_back(
        client, sessions, paid_order, stripe_says, how):
    order = paid_order()
    stray = _paid_twice(order, stripe_says)
    on_stray = {**order, "payment_intent_id": stray}
    stripe_says(dispute_event("created", on_stray, _charge(stray), "needs_response"))
    stripe_says(dispute_event("closed", on_stray, _charge(stray), "lost"))
    row = order_row(sessions, order)
    assert (row.status.value, row.charged_back_amount, row.money_held) == ("needs_review", order["total"],
                                                                           order["total"])
    assert "refund" in _offered(sessions, order)
    shown = page(logged_in(client, sessions), f"/admin/orders/{order['order_id']}/refund")
    assert "cannot be refunded as it is now" not in shown
    assert f"Payment intent {stray} is left out: its dispute dp_FromTheCardIssuer1 was lost" in shown

    if how == "refund":
        decision = refund_order(sessions, order["order_id"], actor="alice", reason="out of stock")
    else:
        decision = cancel_order(sessions, order["order_id"], actor="alice", note="out of stock", refund=True)

    assert _given_back(order["payment_intent_id"]) == [order["total"]]
    assert _given_back(stray) == []  # the card network gave it back: a refund would pay it twice
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("refunded", order["total"], 0)
    assert [source for _, _, source in refunds(sessions)] == [RefundSource.STAFF]
    assert f"payment intent {stray} left out: its dispute dp_FromTheCardIssuer1 was lost" in decision.detail
    assert "2 units back on the shelf" in decision.detail


def test_an_open_dispute_on_one_intent_leaves_it_out_and_the_order_stays_in_review_holding_it(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    stray = _paid_twice(order, stripe_says)
    on_stray = {**order, "payment_intent_id": stray}
    stripe_says(dispute_event("created", on_stray, _charge(stray), "needs_response"))
    assert "refund" in _offered(sessions, order)
    shown = page(logged_in(client, sessions), f"/admin/orders/{order['order_id']}/refund")
    assert "from the payments not disputed" in shown and "stays in review" in shown

    decision = refund_order(sessions, order["order_id"], actor="alice", reason="out of stock")

    assert _given_back(order["payment_intent_id"]) == [order["total"]]
    assert _given_back(stray) == []  # Stripe would refuse it (charge_disputed): not asked
    row = order_row(sessions, order)
    # Not refunded while it holds the disputed payment, and its units stay held for whatever staff decide next.
    assert (row.status.value, row.refunded_amount, row.money_held) == ("needs_review", order["total"],
                                                                       order["total"])
    assert f"payment intent {stray} left out: disputed (dispute dp_FromTheCardIssuer1 is needs_response)" \
        in row.review_reason
    assert decision.detail.startswith(f"refund {refunds(sessions)[0][0]} made")
    assert "its units stay held" in decision.detail

    # What is left is the disputed payment only: no longer offered, and refused naming its intent.
    assert "refund" not in _offered(sessions, order)
    for attempt in (lambda: refund_order(sessions, order["order_id"], actor="alice", reason="again"),
                    lambda: cancel_order(sessions, order["order_id"], actor="alice", note="again", refund=True),
                    lambda: cancel_order(sessions, order["order_id"], actor="alice", note="again")):
        with pytest.raises(Refused, match="Stripe does not refund a disputed payment") as refused:
            attempt()
        assert f"payment intent {stray}" in refused.value.message
    assert _given_back(stray) == [] and _given_back(order["payment_intent_id"]) == [order["total"]]


def test_a_refund_stripe_makes_on_one_intent_and_refuses_on_the_next_is_recorded_and_said_as_partly_done(
        client, localstripe, sessions, paid_order, stripe_says):
    order = paid_order()
    stray = _paid_twice(order, stripe_says)
    console = logged_in(client, sessions)

    with RefusingStripe(localstripe.port, refused_intent=stray) as refusing:
        answer = post(console, f"/admin/orders/{order['order_id']}/refund", note="customer asked")
        assert refusing.refused == 1
    [made] = stripe.Refund.list(payment_intent=order["payment_intent_id"]).data
    assert (made.amount, _given_back(stray)) == (order["total"], [])

    row = order_row(sessions, order)
    assert refunds(sessions) == [(made.id, order["total"], RefundSource.STAFF)]  # alice's, not the dashboard's
    assert (row.status.value, row.refunded_amount, row.money_held) == ("needs_review", order["total"],
                                                                       order["total"])
    [(action, detail)] = _audit(sessions)
    assert action == "refund" and detail.startswith(f"partly done: refund {made.id} made"), detail
    assert f"payment intent {stray} refused at Stripe: " in detail and "has been charged back" in detail
    told = flashes(page(console, answer.headers["Location"]))
    assert any("refund partly done" in line and made.id in line for line in told), told

    # Stripe takes the rest now: a refund again gives back the stray's payment only, and the order is refunded.
    decision = refund_order(sessions, order["order_id"], actor="alice", reason="the rest")
    assert (_given_back(order["payment_intent_id"]), _given_back(stray)) == ([order["total"]], [order["total"]])
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("refunded", 2 * order["total"], 0)
    assert decision.detail.startswith("stripe refund ")


def test_a_refund_stripe_refuses_on_every_intent_is_failed_and_nothing_is_recorded(
        client, localstripe, sessions, paid_order, stripe_says):
    """Refused on the only intent holding money: as before, nothing was done, and that is what is said."""
    order = paid_order()
    with RefusingStripe(localstripe.port, refused_intent=order["payment_intent_id"]):
        with pytest.raises(Exception) as failed:
            refund_order(sessions, order["order_id"], actor="alice", reason="customer asked")
    assert not isinstance(failed.value, RefundPartlyDone) and "has been charged back" in str(failed.value)
    assert refunds(sessions) == [] and order_row(sessions, order).status.value == "paid"
    [(action, detail)] = _audit(sessions)
    assert action == "refund" and detail.startswith("failed at Stripe: "), detail
