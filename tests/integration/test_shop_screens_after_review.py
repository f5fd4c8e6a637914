"""The shop's screens, as a review found them wanting: the language link keeps the order's token,
a prefecture without a shipping rate is a field error (never a 500), the pay step pays only the
order its page placed, and the confirmation never offers Pay for an order already being paid or
whose hold ran out."""
from __future__ import annotations

import copy
import hashlib
import html
import re
from pathlib import Path

import pytest
import stripe

from models.catalog_file import apply_catalog
from models.db import transaction
from models.orders import Order, OrderStatus
from tests.integration.test_shop_pages import (BUYER, card, enter_information, fill_cart, hidden_fields, page,
                                               pay_with, post_form, press_pay)
from tests.support import CATALOG, event_for, let_the_hold_run_out
from webhook_app import __file__ as webhook_app_file

VISA, DECLINED = "4242424242424242", "4000000000000341"
HTML = {"Accept": "text/html"}


def orders(sessions) -> list[Order]:
    with sessions() as session:
        return session.query(Order).order_by(Order.created_at).all()


def language_link(html_text: str) -> str:
    """The href of the screen's language link, as the browser follows it."""
    return html.unescape(re.search(r'<a class="lang" href="([^"]*)"', html_text).group(1))


def field_block(html_text: str, field: str) -> str:
    """The form's block for one field: its label, input and the message beside it."""
    for block in re.findall(r'<div class="field[^"]*">(.*?)</div>', html_text, re.S):
        if f'id="{field}"' in block:
            return block
    raise AssertionError(f"no field {field}")


# --- D1: the language link keeps the query -------------------------------------------------------------------


def placed_order(client, sessions) -> Order:
    fill_cart(client)
    assert enter_information(client).status_code == 303
    assert post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm").status_code == 303
    [order] = orders(sessions)
    return order


def test_language_link_on_the_complete_screen_keeps_the_order_token(client, sessions):
    order = placed_order(client, sessions)
    url = f"/orders/{order.id}/complete"
    english = page(client.get(f"{url}?token={order.access_token}&lang=en"))
    link = language_link(english)
    assert link.count("lang=") == 1 and "lang=ja" in link and f"token={order.access_token}" in link
    japanese = client.get(url + link)
    assert japanese.status_code == 200, page(japanese)
    assert 'lang="ja"' in page(japanese) and "ご注文番号" in page(japanese)


def test_language_link_on_my_page_keeps_the_delivery_details_and_history(client, sessions):
    order = placed_order(client, sessions)
    url = f"/orders/{order.id}"
    english = page(client.get(f"{url}?lang=en&token={order.access_token}", headers=HTML))
    assert 'id="delivery"' in english and "History" in english
    japanese = client.get(url + language_link(english), headers=HTML)
    assert japanese.status_code == 200
    assert 'id="delivery"' in page(japanese) and "履歴" in page(japanese) and BUYER["address"] in page(japanese)


def test_language_switch_after_a_refused_information_form_keeps_what_was_typed(client):
    fill_cart(client)
    typed = {**BUYER, "name": "Taro Sato", "postal_code": "06-01"}
    refused = enter_information(client, **typed)
    assert refused.status_code == 422
    english = page(refused)
    # Switching language re-sends the form (to the same screen, in the other language); it does not go on.
    button = re.search(r'<button[^>]*class="lang"[^>]*>', english).group(0)
    action = html.unescape(re.search(r'formaction="([^"]+)"', button).group(1))
    switch = re.search(r'name="([^"]+)" value="([^"]+)"', button).groups()
    assert 'form="buyer-form"' in button and "lang=ja" in action
    form = hidden_fields(english, "/checkout/info")
    switched = client.post(action, data={**form, **typed, switch[0]: switch[1]})
    assert switched.status_code == 422, page(switched)
    japanese = page(switched)
    assert 'lang="ja"' in japanese
    assert 'value="Taro Sato"' in japanese and 'value="06-01"' in japanese
    assert "郵便番号は123-4567の形式で入力してください。" in field_block(japanese, "postal_code")
    # Nothing was kept as the buyer's details: the confirmation still needs them.
    assert client.get("/checkout/confirm").location.endswith("/checkout/info")


def test_language_switch_of_a_valid_information_form_shows_it_again_without_going_on(client):
    fill_cart(client)
    refused = enter_information(client, postal_code="06-01")
    form = hidden_fields(page(refused), "/checkout/info")
    switched = client.post("/checkout/info?lang=ja", data={**form, **BUYER, "switch_language": "1"})
    assert switched.status_code == 200 and 'value="060-0001"' in page(switched)
    assert 'class="field-error"' not in page(switched)
    assert client.get("/checkout/confirm").location.endswith("/checkout/info")


# --- D2: a prefecture without a shipping rate ----------------------------------------------------------------


def catalog_without_default(sessions) -> None:
    """The catalog allows shipping rates without a "default": Hokkaido and Okinawa only."""
    catalog = copy.deepcopy(CATALOG)
    catalog["shipping"]["rates"] = [rate for rate in catalog["shipping"]["rates"] if rate["prefectures"] != "default"]
    with transaction(sessions) as session:
        apply_catalog(session, catalog)


@pytest.mark.parametrize("language, message", [
    ("en", "We cannot deliver to Tokyo. Please choose another prefecture."),
    ("ja", "東京都へはお届けできません。別の都道府県を選択してください。"),
], ids=["en", "ja"])
def test_a_prefecture_without_a_shipping_rate_is_refused_beside_its_field(client, sessions, language, message):
    catalog_without_default(sessions)
    fill_cart(client)
    response = post_form(client, "/checkout/info", {**BUYER, "prefecture": "Tokyo"},
                         from_page=f"/checkout/info?lang={language}")
    assert response.status_code == 422, page(response)
    block = field_block(page(response), "prefecture")
    assert message in block and 'aria-invalid="true"' in block
    assert page(response).count('class="field-error"') == 1
    # Not kept: the confirmation (GET and Pay) sends the buyer back to the form, never a 500.
    assert client.get("/checkout/confirm").location.endswith("/checkout/info")
    assert orders(sessions) == []


def test_a_prefecture_without_a_rate_ships_free_over_the_threshold_as_post_checkout_does(client, sessions):
    catalog_without_default(sessions)
    fill_cart(client, quantity=7)   # ¥8,400: over free_over, no fee to look up
    assert enter_information(client, prefecture="Tokyo").status_code == 303
    confirm = client.get("/checkout/confirm?lang=en")
    assert confirm.status_code == 200 and "¥8,400" in page(confirm)


def test_a_prefecture_that_lost_its_rate_after_it_was_entered_sends_the_buyer_back_to_the_field(client, sessions):
    fill_cart(client)
    assert enter_information(client, prefecture="Tokyo").status_code == 303
    shown = hidden_fields(page(client.get("/checkout/confirm")), "/checkout/confirm")
    catalog_without_default(sessions)   # the catalog is loaded again meanwhile

    confirm = client.get("/checkout/confirm?lang=en")
    assert confirm.status_code == 303 and confirm.location.endswith("/checkout/info"), page(confirm)
    info = client.get("/checkout/info?lang=en")
    assert "We cannot deliver to Tokyo" in field_block(page(info), "prefecture")
    paid = client.post("/checkout/confirm", data=shown, headers={"Accept": "application/json"})
    assert paid.status_code == 422, page(paid)
    assert paid.get_json()["error"]["code"] == "invalid_input"
    assert paid.get_json()["redirect"].endswith("/checkout/info")
    without_js = client.post("/checkout/confirm", data=shown)
    assert without_js.status_code == 303 and without_js.location.endswith("/checkout/info")
    assert orders(sessions) == []


# --- D4: the pay step pays the order its page placed ---------------------------------------------------------


def test_pay_step_refuses_an_order_other_than_the_one_its_page_placed(client, sessions, localstripe):
    fill_cart(client)                        # tab A: ¥3,100
    enter_information(client)
    first = press_pay(client).get_json()["order_id"]
    fill_cart(client, "CUP-01", 1)           # tab B: a new cart, ¥4,200, placed but not paid
    second = press_pay(client).get_json()["order_id"]
    assert first != second

    answer = pay_with(client, card(VISA), order_id=first)   # tab A's Stripe.js finishes
    assert answer.status_code == 409, page(answer)
    body = answer.get_json()
    assert body["error"]["code"] == "details_changed"
    assert body["navigate"] is True and body["redirect"].endswith("/checkout/confirm")
    by_id = {order.id: order for order in orders(sessions)}
    assert (by_id[first].total, by_id[second].total) == (3100, 4200)
    for order in by_id.values():
        assert stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "requires_payment_method"
    # Back on the confirmation, tab B's order is the one shown, and paying it (its id) works.
    assert "¥4,200" in page(client.get("/checkout/confirm?lang=en"))
    assert pay_with(client, card(VISA), order_id=second).get_json()["status"] == "succeeded"


@pytest.mark.parametrize("body_order_id", [None, 12345, "ord_not_this_one"], ids=["missing", "not-a-string", "other"])
def test_pay_step_without_the_placed_order_id_charges_nothing(client, sessions, localstripe, body_order_id):
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    [order] = orders(sessions)
    body = {"payment_method": card(VISA)}
    if body_order_id is not None:
        body["order_id"] = body_order_id
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page(client.get("/checkout/confirm"))).group(1)
    answer = client.post("/checkout/pay", json=body, headers={"Accept": "application/json", "X-CSRFToken": csrf})
    assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "details_changed", page(answer)
    assert stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "requires_payment_method"


def test_the_confirmation_loads_the_script_by_its_content_so_no_cached_older_copy_runs(client):
    fill_cart(client)
    enter_information(client)
    src = html.unescape(re.search(r'<script src="(/static/shop\.js[^"]*)"', page(client.get("/checkout/confirm")))
                        .group(1))
    script = (Path(webhook_app_file).parent / "static" / "shop.js").read_bytes()
    assert src == f"/static/shop.js?v={hashlib.sha256(script).hexdigest()[:12]}"
    assert client.get(src).data == script


def test_the_place_step_answers_with_the_order_id_the_pay_step_sends(client, sessions):
    fill_cart(client)
    enter_information(client)
    placed = press_pay(client).get_json()
    [order] = orders(sessions)
    assert placed["order_id"] == order.id
    assert placed["complete_url"] == f"/orders/{order.id}/complete?token={order.access_token}"


# --- D6: a card sent after a decline -------------------------------------------------------------------------


def test_confirmation_after_a_second_card_was_sent_goes_to_the_complete_screen_not_to_pay_again(
        client, sessions, localstripe, post_event, deliver):
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    [order] = orders(sessions)
    assert pay_with(client, card(DECLINED)).status_code == 402
    post_event(event_for("localstripe_payment_intent.payment_failed", intent_id=order.payment_intent_id,
                         order_id=order.id))
    deliver()
    assert orders(sessions)[0].status is OrderStatus.PAYMENT_FAILED
    assert "not charged" in page(client.get("/checkout/confirm?lang=en"))

    press_pay(client)
    assert pay_with(client, card(VISA)).get_json()["status"] == "succeeded"
    # Back, or a reload, before Stripe's succeeded event is processed: the order still reads payment_failed.
    confirm = client.get("/checkout/confirm?lang=en")
    assert confirm.status_code == 303, page(confirm)
    assert confirm.location.endswith(f"/orders/{order.id}/complete?token={order.access_token}")
    complete = page(client.get(confirm.location))
    assert "Payment received" in complete and "not charged" not in complete


# --- a hold that ran out -------------------------------------------------------------------------------------


@pytest.mark.parametrize("language, message", [
    ("en", "this order can no longer be paid"),
    ("ja", "このご注文はお支払いいただけません"),
], ids=["en", "ja"])
def test_confirmation_of_an_order_whose_hold_ran_out_says_so_and_offers_no_pay(client, sessions, language,
                                                                               message):
    order = placed_order(client, sessions)
    let_the_hold_run_out(sessions, order.id)
    confirm = client.get(f"/checkout/confirm?lang={language}")
    assert confirm.status_code == 200, confirm.location
    html_text = page(confirm)
    assert message in html_text
    assert 'id="pay"' not in html_text and 'id="pay-form"' not in html_text and "shop.js" not in html_text
    assert 'id="hold"' not in html_text and "まで確保しています" not in html_text   # no "held until"
    # The purchase is over for this session: the next visit starts a new cart.
    assert "¥2,400" not in page(client.get("/cart?lang=en"))


def test_confirmation_of_an_order_whose_hold_ran_out_after_a_card_was_sent_goes_to_the_complete_screen(
        client, sessions, localstripe):
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    assert pay_with(client, card(VISA)).get_json()["status"] == "succeeded"
    [order] = orders(sessions)
    let_the_hold_run_out(sessions, order.id)
    confirm = client.get("/checkout/confirm?lang=en")
    assert confirm.status_code == 303 and "/complete?token=" in confirm.location
