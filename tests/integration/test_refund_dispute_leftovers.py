"""What the worker makes of a refund in full or a lost dispute when the order's own money is not all there is:
money paid in another currency (a second checkout tab's intent) is still the customer's, and a lost dispute on
an order already refunded paid the customer back twice. Real payments and refunds at localstripe, Stripe's
events signed and posted through the webhook, then run by the worker."""
from __future__ import annotations

import pytest
import stripe

from consumers.staff_actions import Refused, cancel_order, refund_order
from models.orders import Order, money_in_other_currencies
from tests.integration.test_payment_in_another_currency import _paid_in_dollars
from tests.integration.test_refunds_and_disputes import (  # noqa: F401 - fixtures
    _charge_of,
    alerts,
    charge_refunded,
    dispute_event,
    order_row,
    paid_order,
    stock,
    stripe_says,
)


def _held_elsewhere(sessions, order: dict) -> dict[str, int]:
    with sessions() as session:
        return money_in_other_currencies(session, [session.get(Order, order["order_id"])]).get(order["order_id"], {})


def test_a_full_refund_at_stripe_of_the_orders_own_payment_keeps_it_in_review_while_it_holds_another_currency(
        client, sessions, paid_order, stripe_says):
    order = paid_order()                                  # 3100 jpy, 2 units taken
    stray = _paid_in_dollars(order, stripe_says)          # 2000 usd on a second tab's intent: flagged
    told = len(alerts(sessions))

    own = stripe.Refund.create(payment_intent=order["payment_intent_id"])   # in Stripe's dashboard: the yen only
    stripe_says(charge_refunded(own.charge))

    row = order_row(sessions, order)
    said = ("refunded in full at Stripe (3100 jpy), but the order still holds 2000 usd paid in another currency "
            "than its own: `shop orders refund` gives it back")
    assert (row.status.value, row.refunded_amount, row.money_held) == ("needs_review", 3100, 0)
    assert said in row.review_reason
    assert [alert.text for alert in alerts(sessions)[told:]] == [f"Order {row.id} needs review: {said}"]
    assert _held_elsewhere(sessions, order) == {"usd": 2000}
    assert stock(client) == (38, 0)  # not refunded: its units are not put back yet

    # As the alert says: staff's refund gives the dollars back, and only then is the order refunded.
    refund_order(sessions, order["order_id"], actor="alice", reason="both payments go back")
    assert [(r.amount, r.currency) for r in stripe.Refund.list(payment_intent=stray.id).data] == [(2000, "usd")]
    row = order_row(sessions, order)
    assert (row.status.value, row.money_held) == ("refunded", 0)
    assert _held_elsewhere(sessions, order) == {}
    assert stock(client) == (40, 0)


def test_a_dispute_opened_on_a_refunded_order_says_to_answer_it_with_the_refund_as_evidence(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"])
    stripe_says(charge_refunded(refund.charge))
    told = len(alerts(sessions))
    stripe_says(dispute_event("created", order, refund.charge, "needs_response"))

    row = order_row(sessions, order)
    assert (row.status.value, row.money_held) == ("refunded", 0)  # the money is back with the customer: noted
    [text] = [alert.text for alert in alerts(sessions)[told:]]
    assert text == (f"Order {row.id} needs review: dispute dp_FromTheCardIssuer1 opened (fraudulent): 3100 jpy "
                    f"contested; 3100 jpy of the order's payment was refunded already: answer the dispute in "
                    f"Stripe's dashboard with the refund as evidence before it is due, or the customer is paid "
                    f"back twice"), text


def test_a_dispute_lost_on_a_refunded_order_says_the_customer_was_paid_back_twice_and_offers_no_cancel(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"])
    stripe_says(charge_refunded(refund.charge))
    stripe_says(dispute_event("created", order, refund.charge, "needs_response"))
    stripe_says(dispute_event("closed", order, refund.charge, "lost"))

    row = order_row(sessions, order)
    assert (row.status.value, row.money_held) == ("refunded", -3100)
    text = alerts(sessions)[-1].text
    assert text.startswith(f"Order {row.id}: dispute dp_FromTheCardIssuer1 closed: lost (3100 jpy); the order now "
                           f"holds -3100 jpy: the customer was paid back twice, by the refund and by the chargeback, "
                           f"so the shop lost 3100 jpy more than it took; nothing is left to refund"), text
    assert "accept the loss" in text
    assert "cancel" not in text and "nothing to refund or keep" not in text
    with pytest.raises(Refused, match="cannot be cancelled"):  # what the alert no longer suggests
        cancel_order(sessions, row.id, actor="alice", note="as the alert said")


def test_a_dispute_lost_on_a_partly_refunded_order_says_paid_back_twice_and_that_cancel_puts_units_back(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    part = stripe.Refund.create(payment_intent=order["payment_intent_id"], amount=1000)
    stripe_says(charge_refunded(part.charge))                       # flagged: partially refunded
    stripe_says(dispute_event("created", order, part.charge, "needs_response"))
    stripe_says(dispute_event("closed", order, part.charge, "lost"))  # 3100 jpy charged back

    row = order_row(sessions, order)
    assert (row.status.value, row.money_held) == ("needs_review", -1000)
    text = alerts(sessions)[-1].text
    assert ("the order now holds -1000 jpy: the customer was paid back twice, by the refund and by the chargeback, "
            "so the shop lost 1000 jpy more than it took") in text, text
    assert text.endswith("; cancel it to put unshipped units back"), text
    cancel_order(sessions, row.id, actor="alice", note="chargeback lost; goods stay")
    assert order_row(sessions, order).status.value == "cancelled"
    assert stock(client) == (40, 0)


def test_a_dispute_lost_on_an_order_holding_another_currency_says_refund_gives_it_back_not_cancel(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    stray = _paid_in_dollars(order, stripe_says)
    charge = _charge_of(order)
    stripe_says(dispute_event("created", order, charge, "needs_response"))
    stripe_says(dispute_event("closed", order, charge, "lost"))      # the yen charged back; the dollars stay

    row = order_row(sessions, order)
    assert (row.status.value, row.money_held) == ("needs_review", 0)
    text = alerts(sessions)[-1].text
    assert text.endswith("; the order now holds 0 jpy: nothing to refund or keep; but 2000 usd paid in another "
                         "currency than its own is still held: `shop orders refund` gives it back"), text
    with pytest.raises(Refused, match="holds 2000 usd taken from the customer in another currency"):
        cancel_order(sessions, row.id, actor="alice", note="nothing to keep, the alert said once")

    refund_order(sessions, row.id, actor="alice", reason="the dollars go back")
    assert [(r.amount, r.currency) for r in stripe.Refund.list(payment_intent=stray.id).data] == [(2000, "usd")]
    assert order_row(sessions, order).status.value == "refunded"
