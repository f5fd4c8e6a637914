"""The complete and confirmation screens when the buyer paid on one of the order's earlier PaymentIntents.

The pay step gives an order a new intent when Stripe will not confirm its old one again, and only queues
the old one's cancellation: until that reaches Stripe, another tab still holding the old intent can be
paid on it. Until Stripe's event for that payment is stored, our database knows nothing of it; the
screens ask Stripe about the order's earlier intents too (a few, newest first, within one deadline)
when its current one holds no payment, and never say "not paid yet" or a decline while money was taken.

Stripe lets a declined intent be confirmed again; localstripe does not, so here the earlier intent is
one no card reached yet, replaced through the same use case the pay step calls (replace_payment_intent).
No webhook reaches the shop in these tests unless a test posts it: the earlier intent's payment is
never stored.
"""
from __future__ import annotations

import pytest
import stripe

from consumers.checkout import replace_payment_intent
from models.orders import OrderStatus
from tests.integration.test_shop_after_lost_answer import (DECLINED, VISA, complete_url, current_step)
from tests.integration.test_shop_pages import card, enter_information, fill_cart, only_order, page, pay_with, press_pay
from tests.stripe_proxy import HoldingProxy
from tests.support import confirm_card, event_for, use_stripe


def order_with_replaced_intent(client, sessions, settings, replacements: int = 1):
    """Cart, details, Pay: an order and its intent; then the pay step's use case gives it a new intent
    `replacements` times. Returns the order and its earlier intents, oldest first."""
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    earlier = []
    for _ in range(replacements):
        order = only_order(sessions)
        earlier.append(order.payment_intent_id)
        replace_payment_intent(sessions, settings, order.id, order.payment_intent_id, "requires_payment_method")
    order = only_order(sessions)
    assert order.payment_intent_id not in earlier
    return order, earlier


def another_tab_pays(intent_id: str) -> None:
    """A second tab that still holds the earlier intent pays it, through Stripe, as Stripe.js would."""
    assert confirm_card(intent_id, VISA) == "succeeded"
    assert stripe.PaymentIntent.retrieve(intent_id).status == "succeeded"


class AskedStripe:
    """localstripe behind a proxy that notes which intents the shop asks about (and holds the answers
    about `unanswered`, so the shop's deadline runs out on them)."""

    def __init__(self, localstripe, unanswered: str | None = None):
        self.asked: list[str] = []
        self.localstripe = localstripe

        def note(request_line: str) -> bool:
            method, path = request_line.split(" ")[:2]
            if method == "GET" and path.startswith("/v1/payment_intents/"):
                intent_id = path.removeprefix("/v1/payment_intents/").split("?")[0]
                self.asked.append(intent_id)
                return intent_id == unanswered
            return False

        self.proxy = HoldingProxy(localstripe.port, hold=note)

    def __enter__(self):
        use_stripe(self.proxy.base)
        return self

    def __exit__(self, *exc):
        self.proxy.release()
        self.proxy.close()
        use_stripe(self.localstripe.base)


@pytest.mark.parametrize("current", ["nothing_tried", "declined"])
def test_a_payment_taken_on_an_earlier_intent_is_shown_as_received_not_as_not_paid_or_the_decline(
        client, make_client, sessions, settings, localstripe, current):
    order, (earlier,) = order_with_replaced_intent(client, sessions, settings)
    if current == "declined":
        # This tab's card, on the order's current intent, is declined (its event not yet processed).
        assert pay_with(client, card(DECLINED)).status_code == 402
        assert stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "requires_payment_method"
    another_tab_pays(earlier)
    assert only_order(sessions).status in (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED)

    # The buyer's own browser: the money is received, the step bar says Complete.
    complete = client.get(complete_url(order))
    assert complete.status_code == 200, complete.location
    html = page(complete)
    assert 'data-status="payment_received"' in html and "Payment received" in html
    assert "Not paid yet" not in html and "declined" not in html
    assert '<meta http-equiv="refresh" content="2">' in html
    assert current_step(html) == "Complete"
    # The confirmation offers no Pay: it sends the buyer to the complete screen.
    confirm = client.get("/checkout/confirm?lang=en")
    assert confirm.status_code == 303 and confirm.location.endswith(complete_url(order).removesuffix("&lang=en"))
    # Another device with the order's link: the same.
    assert 'data-status="payment_received"' in page(make_client().get(complete_url(order)))


def test_an_earlier_intent_stripe_does_not_answer_about_is_said_as_unknown_not_as_not_paid(
        client, make_client, sessions, settings, localstripe):
    order, (earlier,) = order_with_replaced_intent(client, sessions, settings)
    another_tab_pays(earlier)
    with AskedStripe(localstripe, unanswered=earlier) as stripe_side:
        # The same buyer (their session cookie) through a shop with a 2-second deadline for Stripe.
        shop = make_client(stripe_api_base=stripe_side.proxy.base, stripe_deadline_seconds=2,
                           secret_key=client.application.secret_key)
        shop.set_cookie("shop_session", client.get_cookie("shop_session").value)
        html = page(shop.get(complete_url(order)))
        assert stripe_side.asked[:2] == [order.payment_intent_id, earlier]
        assert 'data-status="payment_unknown"' in html and "Not paid yet" not in html
        assert current_step(html) == "Confirmation"
        # The confirmation: no card field, no Pay, "Check again".
        confirm = page(shop.get("/checkout/confirm?lang=en"))
        assert 'id="payment-unknown"' in confirm and 'id="pay"' not in confirm and 'id="check-again"' in confirm


def test_an_earlier_intent_stripe_cancelled_is_not_asked_about_again(client, sessions, settings, localstripe,
                                                                    post_event, deliver):
    order, (earlier,) = order_with_replaced_intent(client, sessions, settings)
    with AskedStripe(localstripe) as stripe_side:
        html = page(client.get(complete_url(order)))
    assert 'data-status="not_paid"' in html
    assert stripe_side.asked == [order.payment_intent_id, earlier]

    # The relay sends the cancellation the replacement queued; Stripe's event for it is stored.
    deliver()
    assert stripe.PaymentIntent.retrieve(earlier).status == "canceled"
    post_event(event_for("payment_intent.canceled", intent_id=earlier, order_id=order.id))
    deliver()
    assert only_order(sessions).status is OrderStatus.PENDING_PAYMENT   # the event of an intent it no longer holds
    with AskedStripe(localstripe) as stripe_side:
        html = page(client.get(complete_url(order)))
    assert 'data-status="not_paid"' in html
    assert stripe_side.asked == [order.payment_intent_id]   # one round trip, as for an order with one intent


def test_a_few_earlier_intents_are_asked_about_most_recently_replaced_first(client, sessions, settings, localstripe):
    order, earlier = order_with_replaced_intent(client, sessions, settings, replacements=5)
    with AskedStripe(localstripe) as stripe_side:
        html = page(client.get(complete_url(order)))
    assert 'data-status="not_paid"' in html
    assert stripe_side.asked == [order.payment_intent_id, earlier[4], earlier[3], earlier[2]]
    # The most recently replaced is paid: found at the first ask after the current one.
    another_tab_pays(earlier[4])
    with AskedStripe(localstripe) as stripe_side:
        html = page(client.get(complete_url(order)))
    assert 'data-status="payment_received"' in html
    assert stripe_side.asked == [order.payment_intent_id, earlier[4]]
