"""My page, opened with the order's token while Stripe's webhook is still on its way, says what Stripe says
became of the payment, as the complete screen does: a buyer whose card was charged does not read
"Awaiting payment". Without the token it shows the database's status and asks Stripe nothing (anyone
with the order id could make the shop call Stripe)."""
from __future__ import annotations

from tests.integration.test_shop_after_lost_answer import THREE_D_SECURE, VISA
from tests.integration.test_shop_pages import (card, enter_information, fill_cart, only_order, page, pay_with,
                                               place_order_without_js, press_pay)
from tests.support import event_for, stripe_unreachable


def my_page(client, order, *, token: bool = True, language: str = "en") -> str:
    query = f"?token={order.access_token}&lang={language}" if token else f"?lang={language}"
    response = client.get(f"/orders/{order.id}{query}", headers={"Accept": "text/html"})
    assert response.status_code == 200, page(response)
    return page(response)


def paid_at_stripe(client, sessions):
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    assert pay_with(client, card(VISA)).get_json()["status"] == "succeeded"
    return only_order(sessions)   # pending_payment: Stripe's event not yet here


def test_a_card_charged_before_its_webhook_reads_payment_received_then_paid(client, sessions, post_event, deliver):
    order = paid_at_stripe(client, sessions)
    mine = my_page(client, order)
    assert 'id="status">Payment received; confirming your order<' in mine
    assert 'id="status">Awaiting payment<' not in mine   # (the history below still lists it as it was)
    assert 'id="status">お支払い受付済み（ご注文を確定中）<' in my_page(client, order, language="ja")

    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order.payment_intent_id,
                         order_id=order.id, amount=order.total))
    deliver()
    with stripe_unreachable():   # paid in our database: Stripe is not asked
        assert 'id="status">Paid<' in my_page(client, order)


def test_without_the_token_my_page_shows_the_databases_status_and_asks_stripe_nothing(client, sessions):
    order = paid_at_stripe(client, sessions)
    with stripe_unreachable():
        mine = my_page(client, order, token=False)
    assert 'id="status">Awaiting payment<' in mine and "Payment received" not in mine


def test_stripe_not_answering_is_said_on_my_page_not_awaiting_payment(client, sessions):
    order = paid_at_stripe(client, sessions)
    with stripe_unreachable():
        mine = my_page(client, order)
    assert 'id="status">Could not be checked just now<' in mine and 'id="status-note"' in mine
    assert 'id="status">Awaiting payment<' not in mine


def test_nothing_paid_yet_still_reads_awaiting_payment(client, sessions):
    place_order_without_js(client)
    assert 'id="status">Awaiting payment<' in my_page(client, only_order(sessions))


def test_three_d_secure_not_finished_reads_waiting_for_it(client, sessions):
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    assert pay_with(client, card(THREE_D_SECURE)).get_json()["status"] == "requires_action"
    mine = my_page(client, only_order(sessions))
    assert 'id="status">Waiting for the card&#39;s 3-D Secure check<' in mine   # the apostrophe as Jinja escapes it
