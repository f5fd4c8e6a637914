"""The shop's screens for a card charged just as its order's hold ran out (review r4, D1).

The pay step checks the hold before confirming, but 3-D Secure (or a slow answer) can end after it ran
out; Stripe charges the card while its payment_intent.succeeded is still on the way (a retry after a
deploy, a backlog). The expiry sweep, seeing no stored payment, cancels the order and opens its cart
again. The screens then ask Stripe (shop_pages.late_payment): the complete screen and my page say the
payment was received and a person looks at it, never a plain "cancelled"; the reopened cart is offered
no Pay and places no second order, and while Stripe does not answer nothing is placed either. The late
event, when it arrives, flags the order for staff (the worker, unchanged).
"""
from __future__ import annotations

import stripe
from sqlalchemy import select

from consumers.relay import expire_reservations
from models.orders import Order, OrderStatus
from tests.integration.test_shop_after_lost_answer import DECLINED, VISA, complete_url
from tests.integration.test_shop_pages import (card, confirmation_form, enter_information, fill_cart, only_order, page,
                                               pay_with, press_pay)
from tests.integration.test_shop_payment_on_earlier_intent import AskedStripe
from tests.support import event_for, let_the_hold_run_out
from webhook_app.shop_text import TEXT


def _orders(sessions) -> list[Order]:
    with sessions() as session:
        return list(session.scalars(select(Order).order_by(Order.created_at)))


def _charged(sessions) -> list[str]:
    """The orders whose intents Stripe took money on."""
    return [order.id for order in _orders(sessions)
            if stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "succeeded"]


def _heading(html: str) -> str:
    return html.split("<h1>")[1].split("</h1>")[0].replace("<wbr>", "")


def charged_as_the_hold_ran_out(client, sessions) -> tuple[Order, dict]:
    """Cart, details, Pay, a card Stripe charges; its event not yet here when the hold runs out and the
    sweep cancels the order. Returns the order and the confirmation form a tab still holds from before."""
    fill_cart(client)
    assert enter_information(client).status_code == 303
    press_pay(client)
    form = confirmation_form(client)
    assert pay_with(client, card(VISA)).get_json()["status"] == "succeeded"
    order = only_order(sessions)
    let_the_hold_run_out(sessions, order.id)
    assert expire_reservations(sessions) == 1
    assert only_order(sessions).status is OrderStatus.CANCELLED
    return order, form


def test_the_complete_screen_and_my_page_say_the_payment_was_received_and_look_again_until_staff_are_told(
        client, sessions, post_event, deliver):
    order, _ = charged_as_the_hold_ran_out(client, sessions)

    html = page(client.get(complete_url(order)))
    assert 'data-status="paid_as_hold_ran_out"' in html
    assert _heading(html) == "Your payment was received; we are checking your order"
    assert TEXT["paid_as_hold_ran_out_body"]["en"] in html and "Order cancelled" not in html
    assert '<meta http-equiv="refresh" content="10">' in html
    mine = page(client.get(f"/orders/{order.id}?token={order.access_token}&lang=en",
                           headers={"Accept": "text/html"}))
    assert 'id="status">Payment received, being checked<' in mine and TEXT["paid_as_hold_ran_out_body"]["en"] in mine
    # The confirmation of the reopened cart sends the buyer there too: no Pay form, no second order.
    confirm = client.get("/checkout/confirm?lang=en")
    assert confirm.status_code == 303 and confirm.location == complete_url(order).removesuffix("&lang=en")
    assert [o.id for o in _orders(sessions)] == [order.id]

    # Stripe's late event arrives: the worker flags the order for staff; the screens say so from our database.
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order.payment_intent_id,
                         order_id=order.id, amount=order.total))
    deliver()
    flagged = only_order(sessions)
    assert flagged.status is OrderStatus.NEEDS_REVIEW
    assert "paid after the order was cancelled (reservation expired before payment)" in flagged.review_reason
    html = page(client.get(complete_url(order)))
    assert 'data-status="needs_review"' in html and "staff will contact you" in html


def test_the_reopened_cart_offers_no_pay_and_a_tab_left_on_the_confirmation_places_no_second_order(
        client, sessions):
    order, form = charged_as_the_hold_ran_out(client, sessions)

    # A tab still showing the confirmation from before presses Pay: the script is sent to the charged
    # order's complete screen, and nothing is placed.
    placed = client.post("/checkout/confirm?lang=en", data=form, headers={"Accept": "application/json"})
    assert placed.status_code == 200, page(placed)
    assert placed.get_json() == {"status": "payment_received",
                                 "complete_url": complete_url(order).removesuffix("&lang=en")}
    assert [o.id for o in _orders(sessions)] == [order.id]
    assert _charged(sessions) == [order.id]
    # The purchase is over for this session: the next visit starts a new cart.
    assert "Your cart is empty" in page(client.get("/cart?lang=en"))


def test_a_late_payment_already_flagged_keeps_the_reopened_cart_from_being_paid_again(
        client, sessions, post_event, deliver):
    order, form = charged_as_the_hold_ran_out(client, sessions)
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order.payment_intent_id,
                         order_id=order.id, amount=order.total))
    deliver()
    assert only_order(sessions).status is OrderStatus.NEEDS_REVIEW

    confirm = client.get("/checkout/confirm?lang=en")
    assert confirm.status_code == 303 and confirm.location == complete_url(order).removesuffix("&lang=en")
    assert 'id="pay-form"' not in page(confirm)
    assert len(_orders(sessions)) == 1 and _charged(sessions) == [order.id]


def test_stripe_not_answering_about_the_expired_order_offers_no_pay_and_places_nothing(
        client, make_client, sessions, localstripe):
    order, form = charged_as_the_hold_ran_out(client, sessions)
    with AskedStripe(localstripe, unanswered=order.payment_intent_id) as stripe_side:
        # The same buyer (their session cookie) through a shop with a 2-second deadline for Stripe.
        shop = make_client(stripe_api_base=stripe_side.proxy.base, stripe_deadline_seconds=2,
                           secret_key=client.application.secret_key)
        shop.set_cookie("shop_session", client.get_cookie("shop_session").value)

        confirm = page(shop.get("/checkout/confirm?lang=en"))
        assert stripe_side.asked == [order.payment_intent_id]
        assert 'id="payment-unknown"' in confirm and TEXT["payment_unknown_hold_ran_out"]["en"] in confirm
        assert 'id="pay-form"' not in confirm and 'id="check-again"' in confirm
        assert '<meta http-equiv="refresh" content="10">' in confirm

        refused = shop.post("/checkout/confirm?lang=en", data=form, headers={"Accept": "application/json"})
        assert refused.status_code == 503, page(refused)
        assert refused.get_json()["error"] == {"code": "payment_provider_unavailable",
                                               "message": TEXT["payment_unknown_hold_ran_out_pay"]["en"]}
        assert [o.id for o in _orders(sessions)] == [order.id]

        html = page(shop.get(complete_url(order)))
        assert 'data-status="payment_unknown"' in html and "Order cancelled" not in html


def test_an_expired_order_whose_card_was_declined_lets_the_cart_be_paid_once_on_a_new_order(client, sessions):
    fill_cart(client)
    assert enter_information(client).status_code == 303
    press_pay(client)
    assert pay_with(client, card(DECLINED)).status_code == 402
    first = only_order(sessions)
    let_the_hold_run_out(sessions, first.id)
    assert expire_reservations(sessions) == 1

    html = page(client.get(complete_url(first)))
    assert 'data-status="cancelled"' in html and 'http-equiv="refresh"' not in html
    # Stripe says nothing was taken: Pay is offered again, and places one new order.
    assert 'id="pay-form"' in page(client.get("/checkout/confirm?lang=en"))
    placed = press_pay(client).get_json()
    assert pay_with(client, card(VISA), placed["order_id"]).get_json()["status"] == "succeeded"
    cancelled, second = _orders(sessions)
    assert cancelled.id == first.id and second.id == placed["order_id"]
    assert _charged(sessions) == [second.id]
