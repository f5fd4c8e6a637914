"""The shop's screens and pay step ask Stripe only through the process's cap on Stripe calls.

docs/deploy.md ("Web server"): at least GUNICORN_THREADS - 2 x STRIPE_MAX_CONCURRENT_CALLS threads of
a web process are always free for webhooks. That holds only if every call to Stripe a web request
makes takes one of the process's slots, not checkout's create alone: the complete screen reloads
itself while Stripe stalls, and as many views as threads would hold them all. Here the process
has one slot and a complete screen holds it, waiting on a Stripe that does not answer; every other
request that needs Stripe finds no slot and answers at once as when Stripe does not answer.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import stripe

from models.orders import OrderStatus
from tests.integration.test_shop_after_lost_answer import VISA, complete_url
from tests.integration.test_shop_pages import (card, enter_information, fill_cart, hidden_fields, only_order, page,
                                               pay_with, press_pay, stock)
from tests.stripe_proxy import HoldingProxy, wait
from tests.support import use_stripe


class StallingStripe:
    """localstripe behind a proxy that, once `stall()` is called, holds every answer about a PaymentIntent
    (`GET /v1/payment_intents/...`) until the test ends, and counts those questions."""

    def __init__(self, localstripe):
        self.localstripe = localstripe
        self.asked = 0
        self._stalling = threading.Event()

        def hold(request_line: str) -> bool:
            if self._stalling.is_set() and request_line.startswith("GET /v1/payment_intents/"):
                self.asked += 1
                return True
            return False

        self.proxy = HoldingProxy(localstripe.port, hold=hold)

    def stall(self) -> None:
        self._stalling.set()

    def close(self) -> None:
        self.proxy.release()
        self.proxy.close()
        use_stripe(self.localstripe.base)


def test_with_every_stripe_slot_held_the_screens_pay_step_and_card_form_answer_without_asking_stripe(
        make_client, sessions, localstripe):
    stalling = StallingStripe(localstripe)
    try:
        shop = make_client(stripe_api_base=stalling.proxy.base, stripe_max_concurrent_calls=1,
                           stripe_deadline_seconds=20)
        fill_cart(shop)
        enter_information(shop)
        press_pay(shop)
        order = only_order(sessions)
        method = card(VISA)
        # The confirmation's Pay form as the buyer's tab holds it (shown while Stripe still answered).
        pay_form = hidden_fields(page(shop.get("/checkout/confirm?lang=en")), "/checkout/confirm")
        stalling.stall()
        with ThreadPoolExecutor(1) as pool:
            # A buyer's complete screen asks Stripe about the order's intent and waits: it holds the one slot.
            waiting = pool.submit(shop.application.test_client().get, complete_url(order))
            wait(lambda: stalling.asked == 1, timeout=10, what="the first complete screen to ask Stripe")

            # Another view of it (the page reloads itself) finds no slot: Stripe did not answer, it says.
            again = shop.get(complete_url(order))
            assert again.status_code == 200
            assert 'data-status="payment_unknown"' in page(again)
            assert "We could not check your payment just now" in page(again)
            assert stalling.asked == 1, "the second view asked Stripe while the process's only slot was held"

            # The pay step finds no slot: the shop's 503 for a Stripe it cannot reach; nothing charged, nothing
            # sent, so it says Stripe could not be reached (not that a charge is unknown: f6a2c1d).
            paid = pay_with(shop, method, order.id)
            assert paid.status_code == 503, page(paid)
            assert paid.get_json()["error"] == {
                "code": "payment_provider_unavailable",
                "message": "We could not reach the payment service. Please try again in a moment."}

            # Pay pressed again (the order is placed already: the card form's SetupIntent) finds no slot either.
            started = shop.post("/checkout/confirm", data=pay_form, headers={"Accept": "application/json"})
            assert started.status_code == 503, page(started)
            assert started.get_json()["error"]["code"] == "payment_provider_unavailable"

            assert stalling.asked == 1, "a request asked Stripe while the process's only slot was held"
            assert waiting.done() is False, "the first screen stopped waiting on Stripe before the others asked"
            stalling.proxy.release()
            assert waiting.result(30).status_code == 200
    finally:
        stalling.close()

    # Nothing was charged or changed: the order keeps its stock, its intent was never confirmed.
    assert only_order(sessions).status is OrderStatus.PENDING_PAYMENT
    assert stock(sessions) == (40, 2)
    assert stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "requires_payment_method"

