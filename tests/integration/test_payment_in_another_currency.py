"""A payment for an order in another currency than the order's (an intent made with its metadata in Stripe's
dashboard, say) is flagged for a person and never counted in the order's money: 2000 cents are not 2000 yen.
Its refunds and a lost dispute on it take nothing from the order either, and staff's refund gives it back in
its own currency. Real payments and refunds at localstripe, events through the webhook and the worker."""
from __future__ import annotations

import pytest
import stripe
from sqlalchemy import select

from consumers.staff_actions import Refused, cancel_order, refund_order, refunds_ruled_out
from models.orders import Order, money_in_other_currencies
from models.refunds import Dispute, Refund
from tests.integration.test_refunds_and_disputes import (  # noqa: F401 - fixtures
    _charge_of,
    charge_refunded,
    dispute_event,
    order_row,
    paid_order,
    stripe_says,
)
from tests.support import confirm_card, event_for
from webhook_app.admin.orders import available_decisions, consequences

NOT_COUNTED = ("not counted in this JPY order's money: another currency (usd); refund it in Stripe's dashboard, "
               "or `shop orders refund` gives it back with the rest of the order's payments")


def _paid_in_dollars(order: dict, stripe_says) -> stripe.PaymentIntent:
    """A second intent with the order's metadata pays it 2000 usd ($20.00), and its succeeded event is handled."""
    stray = stripe.PaymentIntent.create(amount=2000, currency="usd", metadata={"order_id": order["order_id"]})
    assert confirm_card(stray.id, "4242424242424242") == "succeeded"
    stripe_says(event_for("localstripe_payment_intent.succeeded", intent_id=stray.id, order_id=order["order_id"],
                          amount=2000, currency="usd"))
    return stray


def _charge_of_intent(intent_id: str) -> str:
    return _charge_of({"payment_intent_id": intent_id})


def test_a_payment_in_another_currency_is_flagged_and_not_counted_in_the_orders_money(
        client, sessions, paid_order, stripe_says):
    order = paid_order()  # 3100 jpy
    stray = _paid_in_dollars(order, stripe_says)
    # Stripe's own duplicate: still counted once, and still not in yen.
    stripe_says(event_for("localstripe_payment_intent.succeeded", intent_id=stray.id, order_id=order["order_id"],
                          amount=2000, currency="usd"))

    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.money_held) == ("needs_review", 3100, 3100)
    assert (f"paid 2000 usd on payment intent {stray.id}, but the order holds {order['payment_intent_id']}; "
            f"{NOT_COUNTED}") in row.review_reason
    with sessions() as session:
        said = consequences(session, session.get(Order, row.id), "refund")
    assert "3,100 JPY" in said[0] and "5,100" not in said[0], said


def test_refunds_and_a_lost_dispute_of_a_payment_in_another_currency_take_nothing_from_the_orders_money(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    stray = _paid_in_dollars(order, stripe_says)

    part = stripe.Refund.create(payment_intent=stray.id, amount=500)  # in Stripe's dashboard
    stripe_says(charge_refunded(part.charge))
    row = order_row(sessions, order)
    assert (row.refunded_amount, row.money_held) == (0, 3100)
    assert "partially refunded at Stripe: 500 of 2000 usd (another currency than this JPY order's" \
        in row.review_reason

    dispute = dispute_event("closed", {**order, "payment_intent_id": stray.id}, part.charge, "lost")
    dispute["data"]["object"].update(amount=1500, currency="usd")
    stripe_says(dispute)
    row = order_row(sessions, order)
    assert (row.charged_back_amount, row.money_held) == (0, 3100)
    assert "the dispute is in usd, another currency than this JPY order's" in row.review_reason
    with sessions() as session:
        assert session.scalars(select(Dispute.status)).all() == ["lost"]

    # The order's own payment refunded in full at Stripe: it holds nothing of its own money any more.
    own = stripe.Refund.create(payment_intent=order["payment_intent_id"])
    stripe_says(charge_refunded(own.charge))
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("refunded", 3100, 0)
    assert "still holds" not in row.review_reason


def test_staff_refund_gives_a_payment_in_another_currency_back_in_its_own_currency(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    stray = _paid_in_dollars(order, stripe_says)

    decision = refund_order(sessions, order["order_id"], actor="alice", reason="both payments go back")
    assert [(r.amount, r.currency) for r in stripe.Refund.list(payment_intent=stray.id).data] == [(2000, "usd")]
    assert [(r.amount, r.currency) for r in stripe.Refund.list(payment_intent=order["payment_intent_id"]).data] \
        == [(3100, "jpy")]
    assert decision.detail.startswith("stripe refund ") and "(3100 jpy, 2000 usd)" in decision.detail
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("refunded", 3100, 0)
    with sessions() as session:
        assert sorted(tuple(r) for r in session.execute(select(Refund.amount, Refund.currency))) == [
            (2000, "usd"), (3100, "jpy")]

    # Stripe's charge.refunded for each then finds them recorded: nothing is counted twice.
    for intent_id in (stray.id, order["payment_intent_id"]):
        stripe_says(charge_refunded(_charge_of_intent(intent_id)))
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("refunded", 3100, 0)


def test_the_orders_own_intent_paid_in_another_currency_holds_none_of_its_money(client, sessions, checkout,
                                                                                 stripe_says):
    order = checkout([("TEA-01", 2)])
    stripe_says(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                          order_id=order["order_id"], amount=2000, currency="usd"))
    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.money_held) == ("needs_review", 0, 0)
    assert row.review_reason == f"amount mismatch: paid 2000 usd, order total 3100 jpy; {NOT_COUNTED}"


def test_an_open_dispute_on_a_payment_in_another_currency_does_not_rule_out_refunding_the_orders_own(
        client, sessions, paid_order, stripe_says):
    """5000 usd under an open dispute is not 5000 yen held under dispute: the order's own 3100 jpy, undisputed,
    can still be refunded, and the console says that much goes back."""
    order = paid_order()
    stray = stripe.PaymentIntent.create(amount=5000, currency="usd", metadata={"order_id": order["order_id"]})
    assert confirm_card(stray.id, "4242424242424242") == "succeeded"
    stripe_says(event_for("localstripe_payment_intent.succeeded", intent_id=stray.id, order_id=order["order_id"],
                          amount=5000, currency="usd"))
    dispute = dispute_event("created", {**order, "payment_intent_id": stray.id}, _charge_of_intent(stray.id),
                             "needs_response")
    dispute["data"]["object"].update(amount=5000, currency="usd")
    stripe_says(dispute)

    row = order_row(sessions, order)
    assert (row.status.value, row.money_held) == ("needs_review", 3100)
    with sessions() as session:
        current = session.get(Order, row.id)
        assert refunds_ruled_out(session, [current]) == {}
        said = consequences(session, current, "refund")
    assert said[0].startswith("Money: 3,100 JPY goes back"), said


def test_an_order_holding_only_money_in_another_currency_is_not_cancelled_as_if_nothing_was_taken(
        client, sessions, checkout, stripe_says):
    """The order's own intent never paid; a stray intent paid it 2000 usd. Its money (in yen) is none, yet the
    customer's card was charged: the console offers a refund, says what a cancel would do to that money,
    a cancel without refund is refused, and cancel --refund gives the 2000 usd back at Stripe."""
    order = checkout([("TEA-01", 2)])
    stray = _paid_in_dollars(order, stripe_says)
    row = order_row(sessions, order)
    assert (row.status.value, row.money_held) == ("needs_review", 0)
    with sessions() as session:
        current = session.get(Order, row.id)
        elsewhere = money_in_other_currencies(session, [current])
        assert elsewhere == {row.id: {"usd": 2000}}
        assert available_decisions(current, None, None, elsewhere[row.id]) == ["cancel", "refund"]
        assert consequences(session, current, "cancel")[0].startswith(
            "Money: this order holds 20.00 USD in another currency taken from the customer. Cancelling is refused")
        assert consequences(session, current, "refund")[0].startswith(
            "Money: 20.00 USD, paid in another currency than the order's (so not in its money), goes back")

    with pytest.raises(Refused, match=f"order {row.id} holds 2000 usd taken from the customer in another currency"):
        cancel_order(sessions, row.id, actor="alice", note="customer gave up")
    assert stripe.Refund.list(payment_intent=stray.id).data == []

    decision = cancel_order(sessions, row.id, actor="alice", note="customer gave up", refund=True)
    assert [(r.amount, r.currency) for r in stripe.Refund.list(payment_intent=stray.id).data] == [(2000, "usd")]
    assert "(2000 usd)" in decision.detail
    row = order_row(sessions, order)
    assert row.status.value == "refunded"
    with sessions() as session:
        assert money_in_other_currencies(session, [session.get(Order, row.id)]) == {}


def test_the_console_says_what_happens_to_a_stray_payment_in_another_currency(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    _paid_in_dollars(order, stripe_says)
    with sessions() as session:
        current = session.get(Order, order["order_id"])
        refund, accept = consequences(session, current, "refund"), consequences(session, current, "accept")
    assert refund[:2] == [
        "Money: 3,100 JPY goes back to the customer's card at Stripe, in full. Stripe keeps its fee.",
        "Also 20.00 USD, paid in another currency than the order's (so not in its money), goes back to the "
        "customer's card at Stripe. Stripe keeps its fee."], refund
    assert accept[1] == ("Money in another currency than the order's, not in its money: 20.00 USD. Accept leaves "
                         "it at Stripe as it is: refund it in Stripe's dashboard if it should go back."), accept
