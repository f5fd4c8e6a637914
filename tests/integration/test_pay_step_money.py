"""The shop's pay step and money: an order is never paid after its hold ran out, and a second
intent of an order is never confirmed while the first can still be paid in another tab."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import stripe

from consumers.relay import expire_reservations
from models.orders import Order
from tests.integration.test_shop_pages import (card, enter_information, fill_cart, hidden_fields, page, pay_with,
                                               press_pay)
from tests.support import event_for, let_the_hold_run_out

VISA, THREE_D_SECURE = "4242424242424242", "4000002500003155"


def _orders(sessions) -> list[Order]:
    with sessions() as session:
        return session.query(Order).order_by(Order.created_at).all()


def test_an_order_whose_hold_ran_out_is_not_paid(client, sessions, post_event, deliver):
    """The card was charged, then the expiry sweep cancelled the order and released its stock: money
    taken for goods that could be sold to someone else, left for a person to sort out."""
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    [order] = _orders(sessions)
    let_the_hold_run_out(sessions, order.id)

    answer = pay_with(client, card(VISA))
    assert answer.status_code == 409, page(answer)
    assert answer.get_json()["error"]["code"] == "order_closed"
    assert stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "requires_payment_method"
    expire_reservations(sessions)
    deliver()
    assert client.get(f"/orders/{order.id}").get_json()["status"] == "cancelled"


def _complete_3d_secure(localstripe, client_secret: str) -> None:
    """What the buyer's click on "Complete authentication" in Stripe's dialog does."""
    intent_id = client_secret.split("_secret_")[0]
    request = urllib.request.Request(
        f"{localstripe.base}/v1/payment_intents/{intent_id}/_authenticate?success=true", method="POST",
        data=json.dumps({"key": "pk_test_local", "client_secret": client_secret}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=5).read()
    except urllib.error.HTTPError:
        pass  # refused: the intent can no longer be paid


def test_a_3d_secure_dialog_left_open_in_one_tab_and_pay_in_another_charge_once(client, sessions, localstripe):
    """The intent waiting for 3-D Secure was replaced and only its cancellation queued: completing
    its dialog in the first tab after paying in the second charged the buyer twice."""
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    waiting = pay_with(client, card(THREE_D_SECURE)).get_json()
    assert waiting["status"] == "requires_action"
    first = waiting["client_secret"].split("_secret_")[0]

    press_pay(client)  # the second tab
    assert pay_with(client, card(VISA)).get_json()["status"] == "succeeded"
    [order] = _orders(sessions)
    assert order.payment_intent_id != first
    _complete_3d_secure(localstripe, waiting["client_secret"])

    statuses = {intent: stripe.PaymentIntent.retrieve(intent).status for intent in (first, order.payment_intent_id)}
    assert statuses == {first: "canceled", order.payment_intent_id: "succeeded"}


def test_a_3d_secure_payment_completed_before_another_card_is_sent_is_not_paid_again(client, sessions, localstripe,
                                                                                   post_event, deliver):
    """The first tab's dialog completed just before the second tab sent another card: the second
    card is not charged, and the buyer is sent to the order's complete screen."""
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    waiting = pay_with(client, card(THREE_D_SECURE)).get_json()
    first = waiting["client_secret"].split("_secret_")[0]
    # The second tab shows the confirmation while the first tab's dialog is still open.
    second_tab = hidden_fields(page(client.get("/checkout/confirm")), "/checkout/confirm")
    _complete_3d_secure(localstripe, waiting["client_secret"])
    assert stripe.PaymentIntent.retrieve(first).status == "succeeded"

    placed = client.post("/checkout/confirm", data=second_tab, headers={"Accept": "application/json"})
    assert placed.status_code in (200, 201), page(placed)
    again = pay_with(client, card(VISA))
    assert again.status_code == 200 and again.get_json()["status"] == "succeeded", page(again)
    assert "/complete" in again.get_json()["complete_url"]
    [order] = _orders(sessions)
    charged = [intent for intent in {first, order.payment_intent_id}
               if stripe.PaymentIntent.retrieve(intent).status == "succeeded"]
    assert charged == [first]
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=first, order_id=order.id,
                         amount=order.total))
    deliver()
    assert client.get(f"/orders/{order.id}").get_json()["status"] == "paid"
