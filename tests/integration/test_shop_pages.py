"""The shop's screens over plain HTTP (no JavaScript): statuses, CSRF, the token, languages, the pay steps."""
from __future__ import annotations

import re

import pytest
import stripe
from sqlalchemy import select

from consumers.order_story import order_story
from models.catalog import Product, Stock
from models.history import OrderStatusChange
from models.orders import Order, OrderStatus
from tests.integration.test_mail import Mailbox
from tests.support import event_for

BUYER = {"name": "Hanako Yamada", "email": "hanako@example.com", "postal_code": "060-0001",
         "prefecture": "Hokkaido", "address": "Kita 1-jo Nishi 2-chome, Sapporo"}
PERSONAL = ("Hanako Yamada", "hanako@example.com", "Kita 1-jo", "060-0001")


def page(response) -> str:
    return response.get_data(as_text=True)


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def hidden_fields(html: str, action: str) -> dict:
    """The hidden fields of the page's form that posts to `action`, as a browser sends them (the
    confirmation's carries the fingerprint of what it shows); else the page's CSRF token."""
    for attributes, body in re.findall(r"<form([^>]*)>(.*?)</form>", html, re.S):
        if f'action="{action}"' in attributes:
            return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', body))
    return {"csrf_token": csrf_token(html)}


def post_form(client, url: str, data: dict, *, from_page: str = "/?lang=en", **kwargs):
    fields = hidden_fields(page(client.get(from_page)), url)
    return client.post(url, data={**fields, **data}, **kwargs)


def fill_cart(client, sku="TEA-01", quantity=2):
    response = post_form(client, "/cart/items", {"sku": sku, "quantity": str(quantity)})
    assert response.status_code == 303 and response.location.endswith("/cart"), page(response)


def enter_information(client, **changes):
    return post_form(client, "/checkout/info", {**BUYER, **changes}, from_page="/checkout/info?lang=en")


def place_order_without_js(client):
    """Pay pressed with JavaScript off: the order is placed (stock held), the screen says card entry needs JS."""
    fill_cart(client)
    assert enter_information(client).status_code == 303
    response = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm")
    assert response.status_code == 303 and response.location.endswith("/checkout/confirm"), page(response)


def only_order(sessions) -> Order:
    with sessions() as session:
        (order,) = session.query(Order).all()
        return order


def stock(sessions, sku="TEA-01") -> tuple[int, int]:
    with sessions() as session:
        row = session.get(Stock, sku)
        return row.on_hand, row.reserved


def test_products_page_lists_prices_in_yen_and_what_is_available(client):
    response = client.get("/?lang=en")
    assert response.status_code == 200
    html = page(response)
    assert "¥1,200" in html and "¥3,500" in html
    assert "In stock (40)" in html
    assert "Only 3 left" in html


def test_every_screen_answers_without_javascript(client, sessions):
    assert client.get("/").status_code == 200
    assert client.get("/cart").status_code == 200
    # Nothing to check out yet: the information and confirmation screens send the buyer to the cart.
    assert client.get("/checkout/info").location.endswith("/cart")
    assert client.get("/checkout/confirm").location.endswith("/cart")
    fill_cart(client)
    assert client.get("/cart").status_code == 200
    assert client.get("/checkout/info").status_code == 200
    assert client.get("/checkout/confirm").location.endswith("/checkout/info")
    assert enter_information(client).location.endswith("/checkout/confirm")
    confirm = client.get("/checkout/confirm?lang=en")
    assert confirm.status_code == 200
    assert "¥3,100" in page(confirm)
    assert "Card entry needs JavaScript" in page(confirm)   # inside <noscript>
    place = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm")
    assert place.status_code == 303
    order = only_order(sessions)
    assert stock(sessions) == (40, 2)
    assert "held for you until" in page(client.get("/checkout/confirm?lang=en"))

    complete = client.get(f"/orders/{order.id}/complete?token={order.access_token}&lang=en")
    assert complete.status_code == 200
    # No card was sent (none can be without JavaScript): Stripe holds no payment, and the screen says so.
    assert "Not paid yet" in page(complete) and "Payment received" not in page(complete)
    assert "Order confirmed" not in page(complete)
    mine = client.get(f"/orders/{order.id}?token={order.access_token}", headers={"Accept": "text/html"})
    assert mine.status_code == 200
    assert "Awaiting payment" in page(mine) or "お支払い待ち" in page(mine)


def test_complete_screen_says_confirmed_only_after_the_worker_marked_the_order_paid(client, sessions, post_event,
                                                                                   deliver):
    place_order_without_js(client)
    order = only_order(sessions)
    url = f"/orders/{order.id}/complete?token={order.access_token}&lang=en"
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order.payment_intent_id,
                         order_id=order.id, amount=order.total))
    # The event is stored, not yet processed: still "being finalised".
    assert "Order confirmed" not in page(client.get(url))
    deliver()
    html = page(client.get(url))
    assert "Order confirmed" in html
    assert "Being prepared" in html
    assert 'http-equiv="refresh"' not in html
    # The purchase is over: the next visit starts a new cart.
    assert "Your cart is empty" in page(client.get("/cart?lang=en"))


def test_flagged_order_says_a_person_will_contact_the_buyer(client, sessions, post_event, deliver):
    place_order_without_js(client)
    order = only_order(sessions)
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order.payment_intent_id,
                         order_id=order.id, amount=order.total - 100))
    deliver()
    html = page(client.get(f"/orders/{order.id}/complete?token={order.access_token}&lang=en"))
    assert "staff will contact you" in html
    assert "Order confirmed" not in html


def test_my_page_without_the_token_shows_no_personal_data(client, sessions, make_client):
    place_order_without_js(client)
    order = only_order(sessions)
    stranger = make_client()
    html_headers = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    anonymous = stranger.get(f"/orders/{order.id}?lang=en", headers=html_headers)
    assert anonymous.status_code == 200
    assert anonymous.content_type.startswith("text/html")
    assert "¥3,100" in page(anonymous)
    for personal in PERSONAL:
        assert personal not in page(anonymous), personal
    wrong = stranger.get(f"/orders/{order.id}?token=not-the-token", headers=html_headers)
    assert wrong.status_code == 403
    for personal in PERSONAL:
        assert personal not in page(wrong)
    owner = stranger.get(f"/orders/{order.id}?token={order.access_token}&lang=en", headers=html_headers)
    assert owner.status_code == 200
    assert all(personal in page(owner) for personal in PERSONAL)
    assert "History" in page(owner)
    # The complete screen too needs the token.
    assert stranger.get(f"/orders/{order.id}/complete").status_code == 403
    assert stranger.get("/orders/ord_nope", headers=html_headers).status_code == 404


def test_api_clients_still_get_json_from_the_order_url(client, checkout):
    order = checkout()
    response = client.get(f"/orders/{order['order_id']}")
    assert response.content_type == "application/json"
    assert response.get_json()["status"] == "pending_payment"


@pytest.mark.parametrize("path", ["/", "/cart", "/checkout/info", "/checkout/confirm"])
def test_every_form_carries_a_csrf_token(client, path):
    fill_cart(client)
    enter_information(client)
    html = page(client.get(path))
    forms = re.findall(r"<form[^>]*method=\"post\"[^>]*>(.*?)</form>", html, re.S)
    assert forms, f"no form on {path}"
    for form in forms:
        assert re.search(r'name="csrf_token" value="[^"]+"', form), form[:200]


def test_a_form_without_the_csrf_token_is_refused_and_changes_nothing(client, sessions):
    response = client.post("/cart/items", data={"sku": "TEA-01", "quantity": "1"})
    assert response.status_code == 400
    fill_cart(client)
    response = client.post("/checkout/confirm", data={})
    assert response.status_code == 400
    with sessions() as session:
        assert session.query(Order).count() == 0


def test_wrong_postal_code_is_shown_next_to_its_field(client):
    fill_cart(client)
    response = enter_information(client, postal_code="06-01")
    assert response.status_code == 422
    html = page(response)
    field = re.search(r'<div class="field invalid">(.*?)</div>', html, re.S).group(1)
    assert 'id="postal_code"' in field and "123-4567" in field
    assert html.count('class="field-error"') == 1
    # What was typed stays in the form.
    assert 'value="Hanako Yamada"' in html


def test_cart_says_out_of_stock_and_only_n_left(client, sessions):
    response = post_form(client, "/cart/items", {"sku": "CUP-01", "quantity": "4"})
    assert response.status_code == 303
    assert "only 3 left" in page(client.get("/?lang=en"))
    fill_cart(client, "CUP-01", 3)
    assert "Only 3 left" in page(client.get("/cart?lang=en"))
    with sessions.begin() as session:
        session.get(Stock, "CUP-01").on_hand = 0
    assert "Out of stock" in page(client.get("/cart?lang=en"))


def test_cart_quantity_change_and_removal(client):
    fill_cart(client)
    response = post_form(client, "/cart/items/TEA-01", {"quantity": "3"}, from_page="/cart")
    assert response.status_code == 303
    assert "¥3,600" in page(client.get("/cart"))
    post_form(client, "/cart/items/TEA-01", {"remove": "1"}, from_page="/cart")
    assert "Your cart is empty" in page(client.get("/cart?lang=en"))


def test_price_change_before_pay_brings_the_buyer_back_to_the_new_total(client, sessions):
    fill_cart(client)
    enter_information(client)
    assert "¥3,100" in page(client.get("/checkout/confirm"))
    with sessions.begin() as session:
        session.get(Product, "TEA-01").unit_amount = 1500
    response = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm",
                         headers={"Accept": "application/json"})
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "price_changed"
    html = page(client.get("/checkout/confirm?lang=en"))
    assert "A price changed" in html
    assert "¥3,700" in html and "¥3,100" not in html
    assert stock(sessions) == (40, 0)


def test_declined_card_keeps_the_stock_held_for_another_try(client, sessions, localstripe):
    fill_cart(client)
    enter_information(client)
    started = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm",
                        headers={"Accept": "application/json"})
    assert started.status_code == 201, page(started)
    assert started.get_json()["setup_client_secret"].startswith("seti_")
    # What Stripe.js does in the page: the card goes to Stripe, the shop gets a pm_ id.
    method = stripe.PaymentMethod.create(type="card", card={"number": "4000000000000341", "exp_month": 12,
                                                            "exp_year": 2034, "cvc": "123"})
    token = csrf_token(page(client.get("/checkout/confirm")))
    paid = client.post("/checkout/pay", json={"payment_method": method.id, "order_id": started.get_json()["order_id"]},
                       headers={"Accept": "application/json", "X-CSRFToken": token})
    assert paid.status_code == 402, page(paid)
    error = paid.get_json()["error"]
    assert error["code"] == "card_declined" and "still held" in error["message"]
    assert stock(sessions) == (40, 2)
    assert only_order(sessions).status in (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED)


def card(number: str) -> str:
    """What Stripe.js does in the page: the card goes to Stripe, the shop gets a pm_ id."""
    return stripe.PaymentMethod.create(type="card", card={"number": number, "exp_month": 12, "exp_year": 2034,
                                                          "cvc": "123"}).id


def pay_with(client, payment_method: str, order_id: str | None = None):
    """The pay step as the page's script sends it: the card's pm_ id and the order the place step
    answered with (by default the one the session's last Pay placed). The CSRF token comes from the
    products screen: the confirmation of an order whose hold ran out forgets the order."""
    token = csrf_token(page(client.get("/")))
    if order_id is None:
        with client.session_transaction() as session:
            order_id = (session.get("order") or {}).get("id")
    return client.post("/checkout/pay", json={"payment_method": payment_method, "order_id": order_id},
                       headers={"Accept": "application/json", "X-CSRFToken": token})


def press_pay(client):
    started = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm",
                        headers={"Accept": "application/json"})
    assert started.status_code in (200, 201), page(started)
    return started


def test_another_card_after_a_decline_pays_the_same_order_through_a_new_intent(client, sessions, localstripe,
                                                                              post_event, deliver):
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    first = only_order(sessions).payment_intent_id
    declined = pay_with(client, card("4000000000000341"))
    assert declined.status_code == 402, page(declined)
    post_event(event_for("localstripe_payment_intent.payment_failed", intent_id=first, order_id=only_order(sessions).id))
    deliver()
    assert only_order(sessions).status is OrderStatus.PAYMENT_FAILED
    # localstripe keeps a declined intent in requires_payment_method for good: it refuses to
    # confirm it again, where Stripe would accept the new card on the same intent.
    assert stripe.PaymentIntent.retrieve(first).status == "requires_payment_method"

    # Pay again, on the same screen, with another card.
    press_pay(client)
    paid = pay_with(client, card("4242424242424242"))
    assert paid.status_code == 200, page(paid)
    assert paid.get_json()["status"] == "succeeded"
    order = only_order(sessions)
    second = order.payment_intent_id
    assert second != first
    assert order.client_secret.startswith(second)
    intent = stripe.PaymentIntent.retrieve(second)
    assert (intent.amount, intent.currency, intent.metadata["order_id"]) == (order.total, "jpy", order.id)
    assert intent.status == "succeeded"
    assert stock(sessions) == (40, 2)   # the same hold, not a second one
    # Until Stripe's event for the new card is processed the order still reads payment_failed: the
    # complete screen waits for it, rather than sending the buyer back with the first card's decline.
    complete = client.get(f"/orders/{order.id}/complete?token={order.access_token}&lang=en")
    assert complete.status_code == 200, complete.location
    assert "Payment received" in page(complete) and 'http-equiv="refresh"' in page(complete)

    # Stripe's late events for the first intent do not move the order; the worker cancels it at Stripe.
    post_event(event_for("localstripe_payment_intent.payment_failed", intent_id=first, order_id=order.id))
    post_event(event_for("payment_intent.canceled", intent_id=first, order_id=order.id))
    deliver()
    assert only_order(sessions).status is OrderStatus.PAYMENT_FAILED
    assert stock(sessions) == (40, 2)
    assert stripe.PaymentIntent.retrieve(first).status == "canceled"

    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=second, order_id=order.id,
                         amount=order.total))
    deliver()
    order = only_order(sessions)
    assert (order.status, order.paid_amount) == (OrderStatus.PAID, order.total)
    assert stock(sessions) == (38, 0)   # decremented once
    with sessions() as session:
        reasons = [change.reason or "" for change in session.scalars(
            select(OrderStatusChange).where(OrderStatusChange.order_id == order.id))]
    assert any(f"payment intent {first} replaced by {second}" in reason for reason in reasons), reasons
    with sessions() as session:   # the staff console's story of the order says so too
        story_lines = [" ".join((entry.summary, *entry.details)) for entry in order_story(session, order.id).entries]
    assert any(f"replaced by {second}" in line for line in story_lines), story_lines
    story = page(client.get(f"/orders/{order.id}?token={order.access_token}&lang=en",
                            headers={"Accept": "text/html"}))
    assert "Paid" in story


def test_a_card_stripe_refuses_is_said_plainly_not_as_an_unreachable_stripe(client, sessions, localstripe):
    fill_cart(client)
    enter_information(client)
    press_pay(client)
    refused = pay_with(client, "pm_0000000000000unknown")
    assert refused.status_code == 422, page(refused)
    error = refused.get_json()["error"]
    assert error["code"] == "payment_refused"
    assert "refused this payment" in error["message"] and "Not Found" in error["message"]
    assert stock(sessions) == (40, 2)
    # The order is still there to be paid with a card Stripe accepts.
    assert pay_with(client, card("4242424242424242")).get_json()["status"] == "succeeded"


def test_pay_step_refuses_what_is_not_a_payment_method(client):
    fill_cart(client)
    enter_information(client)
    token = csrf_token(page(client.get("/checkout/confirm")))
    response = client.post("/checkout/pay", json={"payment_method": "4242424242424242"},
                           headers={"Accept": "application/json", "X-CSRFToken": token})
    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "payment_method"


def test_product_names_in_japanese_on_japanese_screens_and_in_english_on_english_ones(make_client, sessions,
                                                                                    tmp_path):
    catalog = tmp_path / "catalog.yaml"
    # A name without its Japanese one (CUP-01 here) is shown in English on Japanese screens too.
    catalog.write_text("currency: jpy\nproducts:\n"
                       "  - {sku: TEA-01, name: Hokkaido black tea, name_ja: 北海道紅茶, unit_amount: 1200, stock: 40}\n"
                       "  - {sku: CUP-01, name: Arita tea cup, unit_amount: 3500, stock: 3}\n", encoding="utf-8")
    shop = make_client(catalog_file=str(catalog))
    ja = page(shop.get("/?lang=ja"))
    assert "北海道紅茶" in ja and "Hokkaido black tea" not in ja
    assert "Arita tea cup" in ja
    en = page(shop.get("/?lang=en"))
    assert "Hokkaido black tea" in en and "北海道紅茶" not in en

    fill_cart(shop)
    assert "北海道紅茶" in page(shop.get("/cart?lang=ja"))
    assert "Hokkaido black tea" in page(shop.get("/cart?lang=en"))
    assert enter_information(shop).status_code == 303
    post_form(shop, "/checkout/confirm", {}, from_page="/checkout/confirm")
    order = only_order(sessions)
    # The order's lines, on the confirmation, complete and my page screens.
    for url in ("/checkout/confirm?", f"/orders/{order.id}/complete?token={order.access_token}&",
                f"/orders/{order.id}?token={order.access_token}&"):
        assert "北海道紅茶" in page(shop.get(f"{url}lang=ja", headers={"Accept": "text/html"})), url
        assert "Hokkaido black tea" in page(shop.get(f"{url}lang=en", headers={"Accept": "text/html"})), url


def test_the_shipped_catalog_names_its_products_in_japanese(make_client):
    from webhook_app.devserver import CATALOG

    ja = page(make_client(catalog_file=str(CATALOG)).get("/?lang=ja"))
    assert "北海道紅茶" in ja and "有田焼の湯呑み" in ja


def test_japanese_from_accept_language_and_english_from_the_lang_parameter(client):
    ja = page(client.get("/", headers={"Accept-Language": "ja,en;q=0.5"}))
    assert 'lang="ja"' in ja and "カートに入れる" in ja
    en = page(client.get("/?lang=en", headers={"Accept-Language": "ja"}))
    assert 'lang="en"' in en and "Add to cart" in en
    # The choice is remembered for the next screens.
    assert "Your cart is empty" in page(client.get("/cart", headers={"Accept-Language": "ja"}))


def test_prefectures_are_a_select_of_the_47(client):
    fill_cart(client)
    html = page(client.get("/checkout/info?lang=ja"))
    select = re.search(r'<select id="prefecture".*?</select>', html, re.S).group(0)
    assert select.count("<option value=\"") == 48  # the 47 and "choose"
    assert "北海道" in select and "沖縄県" in select


def test_stripe_js_comes_from_the_configured_url_with_the_publishable_key(make_client):
    shop = make_client(stripe_js_url="http://127.0.0.1:9/js.stripe.com/v3/", stripe_publishable_key="pk_test_xyz")
    fill_cart(shop)
    enter_information(shop)
    response = shop.get("/checkout/confirm")
    html = page(response)
    assert '<script src="http://127.0.0.1:9/js.stripe.com/v3/"></script>' in html
    assert 'data-stripe-key="pk_test_xyz"' in html
    scripts = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assert all(s.startswith("/static/") or s.startswith("http://127.0.0.1:9/") for s in scripts), scripts
    assert "script-src 'self' http://127.0.0.1:9" in response.headers["Content-Security-Policy"]


def test_order_mail_links_to_my_page_with_the_token(client, sessions, post_event, settings):
    import dataclasses

    from tests.conftest import deliver_with

    mailbox = Mailbox()
    mailbox.start()
    try:
        place_order_without_js(client)
        order = only_order(sessions)
        post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order.payment_intent_id,
                             order_id=order.id, amount=order.total))
        deliver_with(dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{mailbox.port}"), sessions)
    finally:
        mailbox.stop()
    (recipients, mail), = mailbox.messages
    link = f"{settings.admin_base_url}/orders/{order.id}?token={order.access_token}"
    assert link in mail.get_payload(decode=True).decode()
    mine = client.get(link.removeprefix(settings.admin_base_url), headers={"Accept": "text/html"})
    assert mine.status_code == 200
    assert "Hanako Yamada" in page(mine)


def test_once_the_order_is_placed_its_address_is_what_the_confirmation_shows(client):
    place_order_without_js(client)
    # The information screen now leads back to the confirmation: the order was placed with this address.
    assert client.get("/checkout/info").location.endswith("/checkout/confirm")
    changed = post_form(client, "/checkout/info", {**BUYER, "address": "Somewhere else 1-1"},
                        from_page="/checkout/confirm")
    assert changed.location.endswith("/checkout/confirm")
    html = page(client.get("/checkout/confirm?lang=en"))
    assert "Kita 1-jo Nishi 2-chome" in html and "Somewhere else" not in html
    assert 'href="/checkout/info"' not in html


# --- what the confirmation showed is what Pay places ---------------------------------------------------------


def orders_placed(sessions) -> int:
    with sessions() as session:
        return session.query(Order).count()


def confirmation_form(client) -> dict:
    """The confirmation screen's form fields, as the buyer's browser holds them while they read it."""
    return hidden_fields(page(client.get("/checkout/confirm?lang=en")), "/checkout/confirm")


@pytest.mark.parametrize("change", [
    pytest.param({"address": "Somewhere else 1-1"}, id="address"),
    pytest.param({"email": "someone@example.com"}, id="email"),
    # Okinawa's fee is 1500, not Hokkaido's 700: the total the buyer saw is not the one Pay would charge.
    pytest.param({"prefecture": "Okinawa", "postal_code": "900-0001"}, id="prefecture-and-fee"),
])
def test_details_changed_in_another_tab_after_the_confirmation_was_shown_place_no_order(client, sessions, change):
    fill_cart(client)
    enter_information(client)
    shown = confirmation_form(client)
    assert enter_information(client, **change).status_code == 303   # another tab, before Pay
    response = client.post("/checkout/confirm", data=shown, headers={"Accept": "application/json"})
    assert response.status_code == 409, page(response)
    answer = response.get_json()
    assert answer["error"]["code"] == "details_changed"
    assert answer["navigate"] is True and answer["redirect"].endswith("/checkout/confirm")
    assert orders_placed(sessions) == 0
    assert stock(sessions) == (40, 0)
    # Back on the confirmation: the message, and the details Pay now places.
    html = page(client.get("/checkout/confirm?lang=en"))
    assert "Your details or your cart changed since this page was shown" in html
    assert all(value in html for value in change.values())
    # Pressing Pay on that screen places the order, with what it showed.
    placed = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm")
    assert placed.status_code == 303 and placed.location.endswith("/checkout/confirm"), page(placed)
    order = only_order(sessions)
    assert (order.email, order.ship_address, order.ship_prefecture) == (
        change.get("email", BUYER["email"]), change.get("address", BUYER["address"]),
        change.get("prefecture", BUYER["prefecture"]))


def test_details_changed_without_javascript_redirect_to_the_confirmation_with_the_message_in_japanese(client,
                                                                                                       sessions):
    fill_cart(client)
    enter_information(client)
    shown = confirmation_form(client)
    enter_information(client, address="Somewhere else 1-1")
    client.get("/?lang=ja")   # the buyer reads the screens in Japanese
    response = client.post("/checkout/confirm", data=shown)
    assert response.status_code == 303 and response.location.endswith("/checkout/confirm")
    assert orders_placed(sessions) == 0
    html = page(client.get("/checkout/confirm"))
    assert "お客様情報またはカートの内容が変更されました" in html and "Somewhere else 1-1" in html


def test_a_cart_changed_in_another_tab_after_the_confirmation_was_shown_places_no_order(client, sessions):
    fill_cart(client)
    enter_information(client)
    shown = confirmation_form(client)
    post_form(client, "/cart/items/TEA-01", {"quantity": "5"}, from_page="/cart")
    response = client.post("/checkout/confirm", data=shown, headers={"Accept": "application/json"})
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "details_changed"
    assert orders_placed(sessions) == 0


def test_a_pay_form_without_the_fingerprint_is_treated_as_changed_and_places_no_order(client, sessions):
    fill_cart(client)
    enter_information(client)
    token = csrf_token(page(client.get("/checkout/confirm")))
    response = client.post("/checkout/confirm", data={"csrf_token": token}, headers={"Accept": "application/json"})
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "details_changed"
    assert orders_placed(sessions) == 0


def test_unchanged_details_place_the_order_and_pay_again_answers_with_the_same_order(client, sessions, localstripe):
    fill_cart(client)
    enter_information(client)
    shown = confirmation_form(client)
    first = client.post("/checkout/confirm", data=shown, headers={"Accept": "application/json"})
    assert first.status_code == 201, page(first)
    # Pay pressed again from the same page (a declined card, a double click): the same order.
    again = client.post("/checkout/confirm", data=shown, headers={"Accept": "application/json"})
    assert again.status_code == 201, page(again)
    assert again.get_json()["order_id"] == first.get_json()["order_id"] == only_order(sessions).id
    assert stock(sessions) == (40, 2)
    # A reloaded screen shows the placed order, and its form pays that order too.
    reloaded = client.post("/checkout/confirm", data=confirmation_form(client), headers={"Accept": "application/json"})
    assert reloaded.get_json()["order_id"] == first.get_json()["order_id"]


def test_a_page_shown_before_another_tab_placed_the_order_with_other_details_does_not_pay_it(client, sessions):
    fill_cart(client)
    enter_information(client)
    shown = confirmation_form(client)
    enter_information(client, address="Somewhere else 1-1")
    place_from_other_tab = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm")
    assert place_from_other_tab.status_code == 303
    response = client.post("/checkout/confirm", data=shown, headers={"Accept": "application/json"})
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "details_changed"
    assert only_order(sessions).ship_address == "Somewhere else 1-1"
