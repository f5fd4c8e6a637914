"""The pay step tells the truth when Stripe's answer to the confirmation is lost.

The card went to Stripe and no answer came back in time (a proxy in front of localstripe holds it):
Stripe may well have charged the card, so the buyer is not told "we could not reach the payment
service" but that we cannot tell yet, and that pressing Pay again will not charge twice (it confirms
the same intent). Pressing Pay again once Stripe answers ends with one charge. When no call was sent
at all (every Stripe call slot of the process is taken), nothing can have been charged and the old
words stay (tests/integration/test_screens_within_stripe_cap.py).
"""
from __future__ import annotations

import pytest
import stripe

from models.orders import OrderStatus
from tests.integration.test_shop_after_lost_answer import VISA, complete_url
from tests.integration.test_shop_pages import (card, enter_information, fill_cart, hidden_fields, only_order, page,
                                               pay_with, press_pay)
from tests.stripe_proxy import HoldingProxy
from tests.support import use_stripe

UNKNOWN = {"en": "We did not get an answer from the payment service, so we cannot tell yet whether your card was "
                 "charged. It is safe to press Pay again: you will not be charged twice.",
           "ja": "決済サービスから応答がなかったため、カードへの請求があったかどうかをまだ確認できていません。"
                 "もう一度「支払う」を押していただいても、二重に請求されることはありません。"}


def confirmations(request_line: str) -> bool:
    """Hold Stripe's answers to `POST /v1/payment_intents/<id>/confirm`, nothing else."""
    method, path = request_line.split(" ")[:2]
    return method == "POST" and path.split("?")[0].endswith("/confirm")


def succeeded_charges(intent_ids: set[str]) -> list[str]:
    """localstripe's succeeded charges on these intents (its charge list cannot filter by intent)."""
    charges = (charge.to_dict() for charge in stripe.Charge.list(limit=100).auto_paging_iter())
    return [charge["id"] for charge in charges
            if charge.get("payment_intent") in intent_ids and charge.get("status") == "succeeded"]


@pytest.mark.parametrize("language", ["en", "ja"])
def test_a_confirmation_whose_answer_is_lost_says_the_charge_is_unknown_and_paying_again_charges_once(
        make_client, sessions, localstripe, language):
    proxy = HoldingProxy(localstripe.port, hold=confirmations)
    try:
        shop = make_client(stripe_api_base=proxy.base, stripe_deadline_seconds=2)
        fill_cart(shop)
        enter_information(shop)
        press_pay(shop)
        order = only_order(sessions)
        shop.get(f"/?lang={language}")   # the language the buyer's screens are in from here
        # The confirmation's Pay form as the buyer's tab holds it: Pay is pressed again on this same screen.
        pay_form = hidden_fields(page(shop.get("/checkout/confirm")), "/checkout/confirm")

        lost = pay_with(shop, card(VISA))
        proxy.wait_for_answers(1)   # Stripe confirmed the intent; the shop never heard
        assert lost.status_code == 503, page(lost)
        error = lost.get_json()["error"]
        assert error == {"code": "payment_provider_unavailable", "message": UNKNOWN[language]}
        assert lost.get_json()["navigate"] is False   # said beside the card field, Pay still there
        assert stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "succeeded"

        # Stripe answers again; the buyer presses Pay again, with the card Stripe.js hands over anew.
        proxy.release()
        # Reloaded, the confirmation asks Stripe and sends the buyer to the order's complete screen.
        reloaded = shop.get("/checkout/confirm")
        assert reloaded.status_code == 303 and "/complete?" in reloaded.location
        placed = shop.post("/checkout/confirm", data=pay_form, headers={"Accept": "application/json"})
        assert placed.status_code in (200, 201), page(placed)
        again = pay_with(shop, card(VISA))
        assert again.status_code == 200, page(again)
        assert again.get_json()["status"] == "succeeded"
        assert again.get_json()["complete_url"].endswith(complete_url(order).removesuffix("&lang=en"))
    finally:
        proxy.release()
        proxy.close()
        use_stripe(localstripe.base)

    # Paid once, on the intent the lost confirmation charged: the second Pay confirmed nothing new.
    paid = only_order(sessions)
    assert paid.payment_intent_id == order.payment_intent_id
    assert paid.status is OrderStatus.PENDING_PAYMENT   # Stripe's event not yet processed
    assert len(succeeded_charges({order.payment_intent_id})) == 1
