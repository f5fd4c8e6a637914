"""The complete screen tells the truth when the pay step's answer is lost on the way.

A declined card, then another card that Stripe charges, and the answer of that pay step never
arrives: a proxy in front of Stripe swallows Stripe's answer (the shop never hears it), or the
shop's answer never reaches the browser (its session cookie never updated). Until Stripe's
event is processed our order still reads payment_failed; the screens ask Stripe, the source of
truth, rather than repeat the old card's decline. Also the other states the screen can be in
before the worker records the payment: processing, 3-D Secure not finished, a newer decline,
nothing paid, and Stripe not answering at all. The step bar says "Complete" only once the money is
received or on its way; while the buyer may still have to pay, it says they are at the confirmation.
"""
from __future__ import annotations

import re

import pytest
import stripe

from consumers.checkout import replace_payment_intent
from models.orders import OrderStatus
from tests.integration.test_shop_pages import (card, enter_information, fill_cart, only_order, page, pay_with,
                                               place_order_without_js, press_pay)
from tests.stripe_proxy import HoldingProxy
from tests.support import event_for, stripe_unreachable, use_stripe

DECLINED = "4000000000000341"
VISA = "4242424242424242"
THREE_D_SECURE = "4000002500003155"
# The first card's words as our database recorded them from Stripe's event (localstripe's own, for every
# decline, are "Your card was declined."): a screen showing these shows what our database last heard.
FIRST_DECLINE = "Your card has insufficient funds."


def complete_url(order) -> str:
    return f"/orders/{order.id}/complete?token={order.access_token}&lang=en"


def current_step(html: str) -> str:
    """The step bar's current step, the same for the eye (class) and for screen readers (aria-current);
    each step before it is said to be done in words too, not only by its colour."""
    steps = re.findall(r'<li class="([^"]*)"( aria-current="step")?>([^<]*)'
                       r'(?:<span class="visually-hidden">([^<]*)</span>)?</li>', html)
    shown = [label for css, _, label, _ in steps if css == "current"]
    announced = [label for _, aria, label, _ in steps if aria]
    assert len(steps) == 4 and len(shown) == 1 and shown == announced, steps
    assert [css == "done" for css, *_ in steps] == [bool(said) for *_, said in steps], steps
    assert {said for *_, said in steps} <= {"", " (done)", "（完了済み）"}, steps
    return shown[0]


def heading_text(html: str) -> str:
    """The page's h1 as read: its words without the <wbr> between Japanese phrases."""
    return re.search(r"<h1>(.*?)</h1>", html, re.S).group(1).replace("<wbr>", "")


def first_card_declined(client, sessions, post_event, deliver):
    """Cart, details, Pay, a declined card; Stripe's event processed: the order reads payment_failed."""
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    order = only_order(sessions)
    assert pay_with(client, card(DECLINED)).status_code == 402
    event = event_for("localstripe_payment_intent.payment_failed", intent_id=order.payment_intent_id,
                      order_id=order.id)
    event["data"]["object"]["last_payment_error"]["message"] = FIRST_DECLINE
    post_event(event)
    deliver()
    order = only_order(sessions)
    assert (order.status, order.failure_message) == (OrderStatus.PAYMENT_FAILED, FIRST_DECLINE)
    assert "not charged" in page(client.get("/checkout/confirm?lang=en"))
    press_pay(client)   # Pay again, on the same screen
    return order


def confirms_after_the_first_intent(first_intent: str):
    """Hold the answers to confirmations of any intent but the declined one (the replacement's)."""
    return lambda request_line: "/confirm" in request_line and first_intent not in request_line


def second_card_charged_answer_lost(client, make_client, sessions, localstripe, lost: str, first_intent: str):
    """Another card, charged by Stripe; the pay step's answer never arrives where it was going."""
    if lost == "stripe_to_shop":
        proxy = HoldingProxy(localstripe.port, hold=confirms_after_the_first_intent(first_intent))
        try:
            # The same buyer (their session cookie) through a shop whose Stripe is behind the proxy.
            shop = make_client(stripe_api_base=proxy.base, stripe_deadline_seconds=2,
                               secret_key=client.application.secret_key)
            shop.set_cookie("shop_session", client.get_cookie("shop_session").value)
            answer = pay_with(shop, card(VISA))
            proxy.wait_for_answers(1)   # Stripe did the work; the shop never heard
            assert answer.status_code == 503, page(answer)
            client.set_cookie("shop_session", shop.get_cookie("shop_session").value)
        finally:
            proxy.release()
            proxy.close()
            use_stripe(localstripe.base)
    else:   # shop_to_browser: the shop answered, the browser never got it (nor the cookie it set)
        before = client.get_cookie("shop_session").value
        answer = pay_with(client, card(VISA))
        assert answer.get_json()["status"] == "succeeded", page(answer)
        client.set_cookie("shop_session", before)
    order = only_order(sessions)
    assert order.payment_intent_id != first_intent
    assert stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "succeeded"
    assert order.status is OrderStatus.PAYMENT_FAILED   # Stripe's event not yet processed
    return order


@pytest.mark.parametrize("lost", ["stripe_to_shop", "shop_to_browser"])
def test_a_card_charged_after_a_decline_whose_answer_was_lost_is_not_shown_as_the_old_decline(
        client, make_client, sessions, localstripe, post_event, deliver, lost):
    first = first_card_declined(client, sessions, post_event, deliver)
    order = second_card_charged_answer_lost(client, make_client, sessions, localstripe, lost,
                                            first.payment_intent_id)

    complete = client.get(complete_url(order))
    assert complete.status_code == 200, complete.location
    html = page(complete)
    assert 'data-status="payment_received"' in html and "Payment received" in html
    assert FIRST_DECLINE not in html and "not charged" not in html
    assert '<meta http-equiv="refresh" content="2">' in html
    assert current_step(html) == "Complete"
    # Back on the confirmation (a reload, the back button): no old decline, no second Pay.
    confirm = client.get("/checkout/confirm?lang=en")
    assert confirm.status_code == 303 and confirm.location.endswith(complete_url(order).removesuffix("&lang=en"))
    # Another device, with the order's link and no session: the same truth.
    elsewhere = make_client()
    assert 'data-status="payment_received"' in page(elsewhere.get(complete_url(order)))

    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order.payment_intent_id,
                         order_id=order.id, amount=order.total))
    deliver()
    html = page(client.get(complete_url(order)))
    assert 'data-status="paid"' in html and "Order confirmed" in html and "http-equiv" not in html
    assert current_step(html) == "Complete"


def test_the_latest_decline_is_the_one_shown_not_the_first_cards(client, make_client, sessions, localstripe,
                                                                 post_event, deliver):
    first = first_card_declined(client, sessions, post_event, deliver)
    # A second card declined too; its answer lost, its event not yet processed.
    before = client.get_cookie("shop_session").value
    assert pay_with(client, card(DECLINED)).status_code == 402
    client.set_cookie("shop_session", before)
    order = only_order(sessions)
    assert (order.failure_message, order.payment_intent_id != first.payment_intent_id) == (FIRST_DECLINE, True)

    # The buyer's own browser goes back to the card field, which says the latest decline.
    complete = client.get(complete_url(order))
    assert complete.status_code == 303 and complete.location.endswith("/checkout/confirm")
    confirm = page(client.get("/checkout/confirm?lang=en"))
    assert "Your card was declined." in confirm and FIRST_DECLINE not in confirm
    assert 'id="pay"' in confirm
    # Another device shows it on the complete screen.
    html = page(make_client().get(complete_url(order)))
    assert 'data-status="payment_failed"' in html
    assert "Your card was declined." in html and FIRST_DECLINE not in html
    assert current_step(html) == "Confirmation"   # declined: still to pay, not complete


def test_a_decline_only_our_database_knows_still_stands(client, make_client, sessions, settings, localstripe,
                                                        post_event, deliver):
    """The pay step gave the order a new intent (Stripe would not confirm the declined one again) and
    no card reached it yet: the new intent holds no decline, the recorded one is still the latest."""
    first = first_card_declined(client, sessions, post_event, deliver)
    replace_payment_intent(sessions, settings, first.id, first.payment_intent_id, "requires_payment_method")
    order = only_order(sessions)
    assert order.payment_intent_id != first.payment_intent_id
    assert stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "requires_payment_method"
    html = page(make_client().get(complete_url(order)))
    assert 'data-status="payment_failed"' in html and FIRST_DECLINE in html
    assert FIRST_DECLINE in page(client.get("/checkout/confirm?lang=en"))


def test_stripe_unreachable_is_said_plainly_not_as_the_old_decline(client, make_client, sessions, localstripe,
                                                                   post_event, deliver):
    first = first_card_declined(client, sessions, post_event, deliver)
    order = second_card_charged_answer_lost(client, make_client, sessions, localstripe, "shop_to_browser",
                                            first.payment_intent_id)
    with stripe_unreachable():
        complete = client.get(complete_url(order))
        assert complete.status_code == 200, complete.location
        html = page(complete)
        assert 'data-status="payment_unknown"' in html
        assert "We could not check your payment just now" in html and "do not pay again" in html
        assert FIRST_DECLINE not in html and "not charged" not in html
        assert 'http-equiv="refresh"' in html
        assert current_step(html) == "Confirmation"   # perhaps paid, perhaps not: not "Complete"
        ja = page(client.get(complete_url(order).replace("lang=en", "lang=ja")))
        assert heading_text(ja) == "お支払いの状況を確認できませんでした"
        assert current_step(ja) == "ご確認"
        # The confirmation does not repeat the old decline either.
        confirm = client.get("/checkout/confirm?lang=en")
        assert confirm.status_code == 200
        assert "could not check the outcome of your last payment" in page(confirm)
        assert FIRST_DECLINE not in page(confirm)
    # Stripe answers again: the truth.
    html = page(client.get(complete_url(order)))
    assert 'data-status="payment_received"' in html and current_step(html) == "Complete"


def test_the_confirmation_offers_no_pay_while_stripe_does_not_answer_only_check_again(
        client, sessions, localstripe, post_event, deliver):
    """The last card may have been charged: no card field, no Pay, no Stripe.js; the screen checks again
    (by itself, or with the link) and offers Pay once Stripe says the card was declined."""
    order = first_card_declined(client, sessions, post_event, deliver)
    with stripe_unreachable():
        confirm = client.get("/checkout/confirm?lang=en")
        assert confirm.status_code == 200
        html = page(confirm)
    assert 'id="pay"' not in html and 'id="pay-form"' not in html and 'id="card-element"' not in html
    assert 'id="payment-unknown"' in html and "Please do not pay again yet" in html
    assert "<script" not in html   # neither Stripe.js nor shop.js
    assert re.search(r'<a class="button primary" id="check-again" href="/checkout/confirm">Check again</a>', html)
    assert '<meta http-equiv="refresh" content="10">' in html
    assert "held for you until" in html and current_step(html) == "Confirmation"
    assert only_order(sessions).status is OrderStatus.PAYMENT_FAILED

    # Stripe answers again and the buyer checks again: the decline, the card field and Pay.
    html = page(client.get("/checkout/confirm"))
    assert 'id="declined"' in html and 'id="pay"' in html and 'id="check-again"' not in html
    assert "http-equiv" not in html


def test_nothing_paid_yet_is_said_as_such_not_as_payment_received(client, sessions, localstripe):
    place_order_without_js(client)
    order = only_order(sessions)
    html = page(client.get(complete_url(order)))
    assert 'data-status="not_paid"' in html and "Not paid yet" in html
    assert "Payment received" not in html
    assert 'id="to-payment"' in html
    assert current_step(html) == "Confirmation"


def test_three_d_secure_not_finished_says_nothing_was_charged(client, sessions, localstripe):
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    answer = pay_with(client, card(THREE_D_SECURE))
    assert answer.get_json()["status"] == "requires_action"
    # The buyer closed the 3-D Secure dialog, or lost the page, and opened the complete screen.
    html = page(client.get(complete_url(only_order(sessions))))
    assert 'data-status="awaiting_authentication"' in html and "Nothing has been charged yet" in html
    assert "Payment received" not in html
    assert current_step(html) == "Confirmation"


def processing_at_stripe(request_line: str, data: bytes) -> bytes:
    """A rewrite for HoldingProxy: Stripe says a retrieved intent is still processing (an asynchronous
    payment; localstripe's cards settle at once). Same length: no space after the colon."""
    method, path = request_line.split(" ")[:2]
    if method != "GET" or not path.startswith("/v1/payment_intents/"):
        return data
    return data.replace(b'"status": "succeeded"', b'"status":"processing"')


def test_a_payment_stripe_is_still_processing_is_shown_as_processing(client, sessions, localstripe):
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    assert pay_with(client, card(VISA)).get_json()["status"] == "succeeded"
    order = only_order(sessions)
    proxy = HoldingProxy(localstripe.port, hold=lambda request_line: False, rewrite=processing_at_stripe)
    try:
        use_stripe(proxy.base)
        html = page(client.get(complete_url(order)))
    finally:
        proxy.close()
        use_stripe(localstripe.base)
    assert 'data-status="payment_processing"' in html and "still processing your payment" in html
    assert '<meta http-equiv="refresh" content="2">' in html
    assert current_step(html) == "Complete"


def test_a_paid_order_is_confirmed_from_our_database_without_asking_stripe(client, sessions, localstripe,
                                                                           post_event, deliver):
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    assert pay_with(client, card(VISA)).get_json()["status"] == "succeeded"
    order = only_order(sessions)
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order.payment_intent_id,
                         order_id=order.id, amount=order.total))
    with stripe_unreachable():
        # Stored, not yet processed: our inbox already holds the payment.
        assert 'data-status="payment_received"' in page(client.get(complete_url(order)))
    deliver()
    with stripe_unreachable():
        html = page(client.get(complete_url(order)))
    assert 'data-status="paid"' in html and "Order confirmed" in html
