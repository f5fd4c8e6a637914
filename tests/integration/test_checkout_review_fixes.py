"""Checkout and the shop's API after a review: the currency a cart was filled in, totals Stripe cannot take,
request bodies too large or with a repeated key, Pay while the first Pay is still at Stripe, and the cart
of an order whose hold ran out."""
from __future__ import annotations

import copy
import io
import json

import pytest
import stripe
from sqlalchemy import func, select

from consumers.relay import expire_reservations
from models.carts import Cart, CartStatus, get_cart
from models.catalog_file import apply_catalog
from models.db import transaction
from models.orders import Order, ShippingAddress, place_order
from tests.integration.test_shop_pages import BUYER, confirmation_form, enter_information, fill_cart
from tests.support import CATALOG, SHIPPING, assert_error, event_for, stripe_unreachable
from webhook_app.shop_text import TEXT

# The shop's API reads no body larger (webhook_app.validation.MAX_REQUEST_BYTES, documented in the README).
MAX_REQUEST_BYTES = 64 * 1024


def _load(sessions, catalog: dict) -> None:
    with transaction(sessions) as session:
        apply_catalog(session, json.loads(json.dumps(catalog)))


def _catalog(currency: str = "jpy", *, shipping: bool = True, products=None, free_over="keep") -> dict:
    catalog = copy.deepcopy(CATALOG)
    catalog["currency"] = currency
    if products is not None:
        catalog["products"] = products
    if not shipping:
        del catalog["shipping"]
    elif free_over != "keep":
        catalog["shipping"]["free_over"] = free_over
    return catalog


def _cart(client, *items) -> str:
    cart_id = client.post("/carts").get_json()["id"]
    for sku, quantity in items:
        response = client.post(f"/carts/{cart_id}/items", json={"sku": sku, "quantity": quantity})
        assert response.status_code == 200, response.get_json()
    return cart_id


def _checkout(client, cart_id: str, key: str | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/checkout", json={"cart_id": cart_id, "email": "b@example.com", "shipping": SHIPPING},
                       headers=headers)


def _orders(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Order))


def _reserved(client, sku: str) -> int:
    return client.get(f"/products/{sku}").get_json()["reserved"]


# --- 1. a price is an amount and its currency ------------------------------------------------------------------


def test_a_cart_filled_while_the_catalog_was_in_another_currency_is_repriced_not_charged_in_the_old_one(
        client, sessions):
    _load(sessions, _catalog("usd"))           # loaded in the wrong currency by mistake
    cart_id = _cart(client, ("TEA-01", 2))
    _load(sessions, _catalog("jpy"))           # corrected

    refused = _checkout(client, cart_id)
    assert refused.status_code == 409, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "price_changed"
    assert error["changes"] == [{"sku": "TEA-01", "quantity": 2, "old_unit_amount": 1200, "new_unit_amount": 1200,
                                 "old_currency": "usd", "new_currency": "jpy"}]
    assert (error["subtotal"], error["currency"]) == (2400, "jpy")
    assert "TEA-01 1200 usd -> 1200 jpy" in error["message"]   # not "1200 -> 1200"
    assert _orders(sessions) == 0 and _reserved(client, "TEA-01") == 0
    assert client.get(f"/carts/{cart_id}").get_json()["currency"] == "jpy"   # the cart holds the new price

    placed = _checkout(client, cart_id)
    assert placed.status_code == 201, placed.get_json()
    body = placed.get_json()
    intent = stripe.PaymentIntent.retrieve(body["payment_intent_id"])
    assert (body["currency"], body["total"]) == ("jpy", 3100)
    assert (intent.currency, intent.amount) == ("jpy", 3100)


def test_shipping_rates_in_another_currency_than_the_cart_refuse_the_checkout_before_anything_is_held(
        client, sessions):
    # The products were loaded again in dollars without a shipping section: the yen rates stay.
    _load(sessions, _catalog("usd", shipping=False))
    cart_id = _cart(client, ("TEA-01", 2))
    response = _checkout(client, cart_id)
    error = assert_error(response, 409, "currency_mismatch", "cart_id")
    assert cart_id in error["message"] and "usd" in error["message"] and "jpy" in error["message"]
    assert _orders(sessions) == 0 and _reserved(client, "TEA-01") == 0
    assert client.get(f"/carts/{cart_id}").get_json()["status"] == "open"


def test_a_cart_whose_lines_end_up_in_two_currencies_is_refused_not_charged_in_the_first_lines(client, sessions):
    cart_id = _cart(client, ("TEA-01", 1), ("CUP-01", 1))
    # One product loaded again in dollars (a partial catalog file), the other still in yen.
    _load(sessions, _catalog("usd", shipping=False, products=[
        {"sku": "CUP-01", "name": "Arita tea cup", "unit_amount": 2500, "stock": 3}]))
    first = _checkout(client, cart_id)
    assert first.status_code == 409 and first.get_json()["error"]["code"] == "price_changed", first.get_json()
    second = _checkout(client, cart_id)
    error = assert_error(second, 409, "currency_mismatch", "cart_id")
    assert "jpy and usd" in error["message"]
    assert _orders(sessions) == 0 and _reserved(client, "TEA-01") == _reserved(client, "CUP-01") == 0


# --- 3. a total Stripe cannot take ---------------------------------------------------------------------------------


@pytest.mark.parametrize("unit_amount", [0, 30, 49])
def test_a_total_under_stripes_smallest_charge_is_refused_as_input_naming_the_cart_before_anything_is_held(
        client, sessions, unit_amount):
    catalog = _catalog(free_over=0)   # free shipping: the total is the goods alone
    catalog["products"].append({"sku": "SAMPLE-01", "name": "Tea sample", "unit_amount": unit_amount, "stock": 100})
    _load(sessions, catalog)
    cart_id = _cart(client, ("SAMPLE-01", 1))
    error = assert_error(_checkout(client, cart_id), 422, "total_too_small", "cart_id")
    assert cart_id in error["message"] and "50" in error["message"]
    assert _orders(sessions) == 0 and _reserved(client, "SAMPLE-01") == 0
    assert client.get(f"/carts/{cart_id}").get_json()["status"] == "open"


def test_a_total_of_stripes_smallest_charge_is_placed(client, sessions):
    catalog = _catalog(free_over=0)
    catalog["products"].append({"sku": "SAMPLE-01", "name": "Tea sample", "unit_amount": 50, "stock": 100})
    _load(sessions, catalog)
    response = _checkout(client, _cart(client, ("SAMPLE-01", 1)))
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["total"] == 50


# --- 2. a body over the limit; 4. a repeated key --------------------------------------------------------------------


def test_a_body_of_many_megabytes_is_refused_with_413_before_it_is_read(client, sessions):
    cart_id = client.post("/carts").get_json()["id"]
    body = b'{"sku": "TEA-01", "quantity": 1, "note": "' + b"x" * (32 * 1024 * 1024) + b'"}'
    response = client.post(f"/carts/{cart_id}/items", data=body, content_type="application/json")
    error = assert_error(response, 413, "request_entity_too_large", "body")
    assert str(MAX_REQUEST_BYTES) in error["message"]
    with sessions() as session:
        assert session.get(Cart, cart_id).items == []


def test_a_body_without_a_length_is_cut_off_at_the_limit_with_413(client, sessions):
    cart_id = client.post("/carts").get_json()["id"]
    body = b'{"sku": "TEA-01", "quantity": 1, "note": "' + b"x" * (2 * MAX_REQUEST_BYTES) + b'"}'
    # As gunicorn hands over a chunked body: no Content-Length, the server ends the stream.
    response = client.post(f"/carts/{cart_id}/items", input_stream=io.BytesIO(body), content_type="application/json",
                           environ_overrides={"wsgi.input_terminated": True})
    assert_error(response, 413, "request_entity_too_large")
    with sessions() as session:
        assert session.get(Cart, cart_id).items == []


def test_a_body_just_under_the_limit_is_read(client):
    cart_id = client.post("/carts").get_json()["id"]
    head = b'{"sku": "TEA-01", "quantity": 1, "note": "'
    body = head + b"x" * (MAX_REQUEST_BYTES - len(head) - 2) + b'"}'
    assert len(body) == MAX_REQUEST_BYTES
    response = client.post(f"/carts/{cart_id}/items", data=body, content_type="application/json")
    assert response.status_code == 200, response.get_json()


def test_the_webhooks_own_limit_is_not_the_apis(client, post_event):
    # Over the API's limit, under the webhook's (WEBHOOK_MAX_BYTES, 256 KiB by default): stored.
    event = event_for("localstripe_payment_intent.succeeded")
    event["data"]["object"]["description"] = "x" * (2 * MAX_REQUEST_BYTES)
    response = post_event(event)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"received": True, "duplicate": False}


def test_a_json_body_with_a_repeated_key_is_422_naming_it(client, sessions):
    cart_id = client.post("/carts").get_json()["id"]
    response = client.post(f"/carts/{cart_id}/items", data=b'{"sku": "TEA-01", "quantity": 1, "quantity": 30}',
                           content_type="application/json")
    error = assert_error(response, 422, "invalid_input", "quantity")
    assert "'quantity'" in error["message"]
    with sessions() as session:
        assert session.get(Cart, cart_id).items == []


def test_a_repeated_key_inside_the_shipping_address_is_422_naming_it(client, sessions):
    cart_id = _cart(client, ("TEA-01", 1))
    body = ('{"cart_id": "%s", "email": "b@example.com", "shipping": {"name": "Hanako Yamada", '
            '"postal_code": "060-0001", "prefecture": "Hokkaido", "prefecture": "Okinawa", '
            '"address": "Kita 1-jo"}}' % cart_id)
    error = assert_error(client.post("/checkout", data=body, content_type="application/json"), 422,
                         "invalid_input", "prefecture")
    assert "repeats the key 'prefecture'" in error["message"]
    assert _orders(sessions) == 0


# --- 5. Pay while the first Pay is still at Stripe ---------------------------------------------------------------


def test_pay_while_the_first_request_is_still_at_stripe_is_the_shops_refusal_in_the_buyers_language(
        client, sessions):
    fill_cart(client)
    enter_information(client)
    shown = confirmation_form(client)
    with client.session_transaction() as cookie:
        cart_id = cookie["cart_id"]
    # The first Pay got as far as the order (the shop's key) and is waiting on Stripe, or its process died there.
    with transaction(sessions) as session:
        place_order(session, get_cart(session, cart_id), email=BUYER["email"],
                    shipping=ShippingAddress(name=BUYER["name"], postal_code=BUYER["postal_code"],
                                             prefecture=BUYER["prefecture"], address=BUYER["address"]),
                    reservation_ttl_seconds=600, idempotency_key=f"shop-{cart_id}")
    with stripe_unreachable():
        again = client.post("/checkout/confirm?lang=ja", data=shown, headers={"Accept": "application/json"})
    assert again.status_code == 409, again.get_data(as_text=True)
    body = again.get_json()
    assert body.get("redirect", "").endswith("/checkout/confirm") and body.get("navigate") is False, body
    assert body["error"] == {"code": "checkout_in_progress", "message": TEXT["checkout_in_progress"]["ja"]}
    assert _orders(sessions) == 1


# --- 6. the cart of an order whose hold ran out -----------------------------------------------------------------


def test_the_cart_of_an_order_whose_hold_ran_out_opens_again_and_is_checked_out_anew_at_todays_prices(
        client, sessions, make_client, post_event, deliver):
    short_hold = make_client(reservation_ttl_seconds=0)
    cart_id = _cart(client, ("TEA-01", 2))
    first = short_hold.post("/checkout", json={"cart_id": cart_id, "email": "b@example.com", "shipping": SHIPPING},
                            headers={"Idempotency-Key": "first-try"}).get_json()
    assert expire_reservations(sessions) == 1
    assert client.get(f"/orders/{first['order_id']}").get_json()["status"] == "cancelled"
    assert client.get(f"/carts/{cart_id}").get_json()["status"] == "open"
    assert _reserved(client, "TEA-01") == 0

    # The first order's key still answers with that order's end, never a second order.
    replay = client.post("/checkout", json={"cart_id": cart_id, "email": "b@example.com", "shipping": SHIPPING},
                         headers={"Idempotency-Key": "first-try"})
    assert_error(replay, 409, "checkout_cancelled", "Idempotency-Key")

    # The price went up meanwhile: the reopened cart is re-priced before anything is held again.
    catalog = _catalog()
    catalog["products"][0]["unit_amount"] = 1300
    _load(sessions, catalog)
    assert _checkout(client, cart_id, "second-try").get_json()["error"]["code"] == "price_changed"
    second = _checkout(client, cart_id, "second-try")
    assert second.status_code == 201, second.get_json()
    assert second.get_json()["total"] == 2 * 1300 + 700
    assert _reserved(client, "TEA-01") == 2

    # The first order paid late (its intent confirmed before its cancellation reached Stripe): flagged for a
    # person, and the units the second order holds are not touched.
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=first["payment_intent_id"],
                         order_id=first["order_id"], amount=first["total"]))
    deliver()
    late = client.get(f"/orders/{first['order_id']}?token={first['access_token']}").get_json()
    assert late["status"] == "needs_review" and "paid after the order was cancelled" in late["review_reason"]
    stock = client.get("/products/TEA-01").get_json()
    assert (stock["on_hand"], stock["reserved"]) == (40, 2)
    assert client.get(f"/orders/{second.get_json()['order_id']}").get_json()["status"] == "pending_payment"


def test_the_sweep_leaves_a_paid_orders_deleted_cart_closed(client, sessions, make_client):
    short_hold = make_client(reservation_ttl_seconds=0)
    cart_id = _cart(client, ("TEA-01", 1))
    assert _checkout(short_hold, cart_id).status_code == 201
    with transaction(sessions) as session:
        session.get(Cart, cart_id).delete_logically()
    assert expire_reservations(sessions) == 1
    with sessions() as session:
        assert session.get(Cart, cart_id).status is CartStatus.CHECKED_OUT
