"""POST /checkout and GET /orders/<id>: reservation, shipping fee, the PaymentIntent in localstripe, every status."""
from __future__ import annotations

import copy
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
import stripe
from sqlalchemy import func, select

from consumers.relay import expire_reservations
from models.catalog import Reservation, ReservationStatus
from models.catalog_file import apply_catalog
from models.carts import Cart, CartStatus
from models.db import transaction
from models.events import OutboxMessage, Topic
from models.orders import Order
from tests.stripe_proxy import BlackHole, HoldingProxy, creates_payment_intent
from tests.support import CATALOG, SHIPPING, assert_error, free_port, use_stripe

CHECKOUT_KEYS = {"order_id", "payment_intent_id", "client_secret", "access_token", "subtotal", "shipping_fee", "total",
                 "currency", "reserved_until"}


@pytest.fixture
def new_cart(client):
    """An open cart holding the given items, built through the API."""

    def make(items=(("TEA-01", 2),)) -> str:
        cart_id = client.post("/carts").get_json()["id"]
        for sku, quantity in items:
            assert client.post(f"/carts/{cart_id}/items", json={"sku": sku, "quantity": quantity}).status_code == 200
        return cart_id

    return make


def checkout_body(cart_id: str, **overrides) -> dict:
    body = {"cart_id": cart_id, "email": "buyer@example.com", "shipping": dict(SHIPPING)}
    body.update(overrides)
    return body


def order_count(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Order))


def stock(client, sku: str) -> tuple[int, int, int]:
    p = client.get(f"/products/{sku}").get_json()
    return p["on_hand"], p["reserved"], p["available"]


# --- 201 ------------------------------------------------------------------------------------------------------


def test_checkout_is_201_with_exactly_the_contract_fields(client, new_cart):
    cart_id = new_cart([("TEA-01", 2)])
    response = client.post("/checkout", json=checkout_body(cart_id))
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert set(body) == CHECKOUT_KEYS
    assert body["subtotal"] == 2400
    assert body["shipping_fee"] == 700
    assert body["total"] == 3100
    assert body["currency"] == "jpy"
    assert body["payment_intent_id"].startswith("pi_")
    assert body["client_secret"].startswith(body["payment_intent_id"])
    reserved_until = datetime.fromisoformat(body["reserved_until"])
    assert reserved_until.tzinfo is not None
    now = datetime.now(timezone.utc)
    assert now + timedelta(seconds=1700) < reserved_until <= now + timedelta(seconds=1801)


def test_checkout_creates_a_payment_intent_in_stripe_for_the_total_with_the_order_id(checkout):
    order = checkout([("TEA-01", 2), ("CUP-01", 1)])
    intent = stripe.PaymentIntent.retrieve(order["payment_intent_id"])
    assert intent.id == order["payment_intent_id"]
    assert intent.amount == order["total"] == 2400 + 3500 + 700
    assert intent.currency == "jpy"
    assert intent.metadata["order_id"] == order["order_id"]
    assert intent.client_secret == order["client_secret"]
    assert intent.status == "requires_payment_method"


@pytest.mark.parametrize("prefecture, expected_fee", [
    ("Hokkaido", 700),
    ("Okinawa", 1500),
    ("Tokyo", 900),
    ("Osaka", 900),
    ("okinawa-ken", 1500),
])
def test_shipping_fee_comes_from_the_table_by_prefecture(checkout, prefecture, expected_fee):
    order = checkout([("TEA-01", 2)], shipping={**SHIPPING, "prefecture": prefecture})
    assert order["subtotal"] == 2400
    assert order["shipping_fee"] == expected_fee
    assert order["total"] == 2400 + expected_fee
    assert stripe.PaymentIntent.retrieve(order["payment_intent_id"]).amount == order["total"]


@pytest.mark.parametrize("items, subtotal, expected_fee", [
    pytest.param((("TEA-01", 6),), 7200, 700, id="below-threshold"),
    pytest.param((("GIFT-8K", 1),), 8000, 0, id="exactly-at-threshold"),
    pytest.param((("TEA-01", 7),), 8400, 0, id="over-threshold"),
])
def test_shipping_is_free_from_a_subtotal_of_8000(client, sessions, checkout, items, subtotal, expected_fee):
    catalog = copy.deepcopy(CATALOG)
    catalog["products"].append({"sku": "GIFT-8K", "name": "Gift box", "unit_amount": 8000, "stock": 5})
    with transaction(sessions) as session:
        apply_catalog(session, catalog)
    order = checkout(items)
    assert (order["subtotal"], order["shipping_fee"]) == (subtotal, expected_fee)
    assert order["total"] == subtotal + expected_fee


def test_checkout_reserves_the_stock_without_taking_it_off_the_shelf(client, checkout):
    checkout([("TEA-01", 2), ("CUP-01", 1)])
    assert stock(client, "TEA-01") == (40, 2, 38)
    assert stock(client, "CUP-01") == (3, 1, 2)
    listed = {p["sku"]: p for p in client.get("/products").get_json()}
    assert (listed["TEA-01"]["reserved"], listed["TEA-01"]["available"]) == (2, 38)


def test_checkout_closes_the_cart_to_more_items(client, new_cart):
    cart_id = new_cart([("TEA-01", 1)])
    assert client.post("/checkout", json=checkout_body(cart_id)).status_code == 201
    assert client.get(f"/carts/{cart_id}").get_json()["status"] == "checked_out"
    assert_error(client.post("/checkout", json=checkout_body(cart_id)), 409, "conflict", "cart_id")


# --- 409 ------------------------------------------------------------------------------------------------------


def test_second_cart_for_the_last_units_is_409_naming_the_sku_and_stock_never_goes_negative(
        client, sessions, new_cart):
    first, second = new_cart([("CUP-01", 2)]), new_cart([("TEA-01", 1), ("CUP-01", 2)])
    assert client.post("/checkout", json=checkout_body(first)).status_code == 201
    response = client.post("/checkout", json=checkout_body(second))
    error = assert_error(response, 409, "out_of_stock", "sku")
    assert "CUP-01" in error["message"]
    assert stock(client, "CUP-01") == (3, 2, 1)
    # Nothing of the refused checkout is held: not the TEA-01 it also wanted, nor an order.
    assert stock(client, "TEA-01") == (40, 0, 40)
    assert order_count(sessions) == 1
    assert client.get(f"/carts/{second}").get_json()["status"] == "open"


def test_concurrent_checkouts_for_the_last_units_sell_them_once(app, sessions, new_cart):
    carts = [new_cart([("CUP-01", 2)]) for _ in range(4)]
    barrier = threading.Barrier(len(carts))

    def attempt(cart_id):
        client = app.test_client()
        barrier.wait()
        response = client.post("/checkout", json=checkout_body(cart_id))
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(len(carts)) as pool:
        results = list(pool.map(attempt, carts))

    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 409, 409, 409], results
    for status, body in results:
        if status == 409:
            assert body["error"]["code"] == "out_of_stock" and "CUP-01" in body["error"]["message"]
    assert stock(app.test_client(), "CUP-01") == (3, 2, 1)
    assert order_count(sessions) == 1


# --- 422 ------------------------------------------------------------------------------------------------------


def _without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


INVALID = [
    pytest.param(lambda b: _without(b, "cart_id"), "cart_id", id="missing-cart_id"),
    pytest.param(lambda b: {**b, "cart_id": 12}, "cart_id", id="cart_id-not-a-string"),
    pytest.param(lambda b: _without(b, "email"), "email", id="missing-email"),
    pytest.param(lambda b: {**b, "email": "not-an-email"}, "email", id="bad-email"),
    pytest.param(lambda b: {**b, "email": "a b@example.com"}, "email", id="email-with-space"),
    pytest.param(lambda b: _without(b, "shipping"), "shipping", id="missing-shipping"),
    pytest.param(lambda b: {**b, "shipping": "Sapporo"}, "shipping", id="shipping-a-string"),
    pytest.param(lambda b: {**b, "shipping": [SHIPPING]}, "shipping", id="shipping-a-list"),
    *[pytest.param(lambda b, k=key: {**b, "shipping": _without(b["shipping"], k)}, f"shipping.{key}",
                   id=f"missing-shipping.{key}")
      for key in ("name", "postal_code", "prefecture", "address")],
    *[pytest.param(lambda b, k=key: {**b, "shipping": {**b["shipping"], k: "  "}}, f"shipping.{key}",
                   id=f"blank-shipping.{key}")
      for key in ("name", "postal_code", "prefecture", "address")],
    pytest.param(lambda b: {**b, "shipping": {**b["shipping"], "postal_code": "12-34567"}}, "shipping.postal_code",
                 id="bad-postal-code"),
    pytest.param(lambda b: {**b, "shipping": {**b["shipping"], "postal_code": "abc-defg"}}, "shipping.postal_code",
                 id="letters-postal-code"),
    pytest.param(lambda b: {**b, "shipping": {**b["shipping"], "prefecture": "Atlantis"}}, "shipping.prefecture",
                 id="unknown-prefecture"),
]


@pytest.mark.parametrize("mutate, field", INVALID)
def test_invalid_checkout_input_is_422_naming_the_field_and_reserves_nothing(
        client, sessions, new_cart, mutate, field):
    cart_id = new_cart([("TEA-01", 2)])
    response = client.post("/checkout", json=mutate(checkout_body(cart_id)))
    error = assert_error(response, 422, "invalid_input", field)
    assert field.split(".")[-1] in error["message"]
    assert order_count(sessions) == 0
    assert stock(client, "TEA-01") == (40, 0, 40)
    assert client.get(f"/carts/{cart_id}").get_json()["status"] == "open"


@pytest.mark.parametrize("data", ["not json", "[1, 2]", ""])
def test_checkout_body_that_is_not_a_json_object_is_422(client, sessions, data):
    response = client.post("/checkout", data=data, content_type="application/json")
    assert_error(response, 422, "invalid_input", "body")
    assert order_count(sessions) == 0


def test_checkout_of_an_empty_cart_is_422_naming_the_cart(client, sessions):
    cart_id = client.post("/carts").get_json()["id"]
    error = assert_error(client.post("/checkout", json=checkout_body(cart_id)), 422, "invalid_input", "cart_id")
    assert "empty" in error["message"]
    assert order_count(sessions) == 0


# --- 404 ------------------------------------------------------------------------------------------------------


def test_checkout_of_an_unknown_cart_is_404_naming_the_cart(client, sessions):
    error = assert_error(client.post("/checkout", json=checkout_body("cart_doesnotexist")), 404, "not_found",
                         "cart_id")
    assert "cart_doesnotexist" in error["message"]
    assert order_count(sessions) == 0


# --- Idempotency-Key ------------------------------------------------------------------------------------------


def test_repeated_idempotency_key_answers_the_same_order_and_creates_nothing_new(client, sessions, new_cart):
    cart_id = new_cart([("TEA-01", 2)])
    headers = {"Idempotency-Key": "checkout-attempt-1"}
    first = client.post("/checkout", json=checkout_body(cart_id), headers=headers)
    second = client.post("/checkout", json=checkout_body(cart_id), headers=headers)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.get_json() == first.get_json()
    assert order_count(sessions) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Reservation)) == 1
    assert stock(client, "TEA-01") == (40, 2, 38)


def test_idempotency_key_reused_for_another_cart_is_422(client, sessions, new_cart):
    headers = {"Idempotency-Key": "checkout-attempt-2"}
    first_cart, other_cart = new_cart([("TEA-01", 1)]), new_cart([("TEA-01", 3)])
    assert client.post("/checkout", json=checkout_body(first_cart), headers=headers).status_code == 201
    response = client.post("/checkout", json=checkout_body(other_cart), headers=headers)
    assert_error(response, 422, "idempotency_key_reused", "Idempotency-Key")
    assert order_count(sessions) == 1
    assert stock(client, "TEA-01") == (40, 1, 39)
    assert client.get(f"/carts/{other_cart}").get_json()["status"] == "open"


@pytest.mark.parametrize("change", [
    pytest.param({"email": "someone.else@example.com"}, id="e-mail"),
    pytest.param({"shipping": {**SHIPPING, "address": "2-2-2 Other Street"}}, id="address"),
])
def test_idempotency_key_repeated_with_other_details_is_422_not_the_first_order(client, sessions, new_cart, change):
    """The first order would ship to the first address while the caller asked for another."""
    cart_id = new_cart([("TEA-01", 1)])
    headers = {"Idempotency-Key": "checkout-attempt-3"}
    first = client.post("/checkout", json=checkout_body(cart_id), headers=headers)
    assert first.status_code == 201
    response = client.post("/checkout", json={**checkout_body(cart_id), **change}, headers=headers)
    error = assert_error(response, 422, "idempotency_key_reused", "Idempotency-Key")
    assert f"placed order {first.get_json()['order_id']} with another e-mail or shipping address" in error["message"]
    assert order_count(sessions) == 1
    assert stock(client, "TEA-01") == (40, 1, 39)
    # The same details again are still the same request: the first order.
    again = client.post("/checkout", json=checkout_body(cart_id), headers=headers)
    assert again.status_code == 201 and again.get_json()["order_id"] == first.get_json()["order_id"]


def test_blank_idempotency_key_is_422(client, sessions, new_cart):
    response = client.post("/checkout", json=checkout_body(new_cart()), headers={"Idempotency-Key": "   "})
    assert_error(response, 422, "invalid_input", "Idempotency-Key")
    assert order_count(sessions) == 0


# --- 502 ------------------------------------------------------------------------------------------------------


@pytest.fixture
def unreachable_stripe_client(make_client, localstripe):
    """A client of an app whose Stripe API base is a closed port (same database as `client`).

    Built after `app` (make_client is), because create_app points the SDK's global api_base at its
    settings; pointed back at localstripe before make_client disposes the app's engine.
    """
    try:
        yield make_client(stripe_api_base=f"http://127.0.0.1:{free_port()}")
    finally:
        use_stripe(localstripe.base)


def test_stripe_unreachable_is_502_and_releases_stock_and_cancels_the_order(
        client, sessions, new_cart, unreachable_stripe_client):
    cart_id = new_cart([("TEA-01", 2)])
    response = unreachable_stripe_client.post("/checkout", json=checkout_body(cart_id))
    error = assert_error(response, 502, "payment_provider_unavailable")
    assert "released" in error["message"]
    assert stock(client, "TEA-01") == (40, 0, 40)
    with sessions() as session:
        orders = session.scalars(select(Order)).all()
        assert [o.status.value for o in orders] == ["cancelled"]
        assert orders[0].payment_intent_id is None
        assert [r.status for r in orders[0].reservations] == [ReservationStatus.RELEASED]
        assert session.get(Cart, cart_id).status is CartStatus.OPEN


def test_after_a_502_the_same_cart_and_idempotency_key_check_out_afresh(
        client, sessions, localstripe, new_cart, unreachable_stripe_client):
    cart_id = new_cart([("TEA-01", 2)])
    headers = {"Idempotency-Key": "retry-after-outage"}
    failed = unreachable_stripe_client.post("/checkout", json=checkout_body(cart_id), headers=headers)
    assert failed.status_code == 502
    use_stripe(localstripe.base)

    retried = client.post("/checkout", json=checkout_body(cart_id), headers=headers)
    assert retried.status_code == 201, retried.get_json()
    order = retried.get_json()
    assert stock(client, "TEA-01") == (40, 2, 38)
    assert stripe.PaymentIntent.retrieve(order["payment_intent_id"]).metadata["order_id"] == order["order_id"]
    with sessions() as session:
        statuses = {o.id: o.status.value for o in session.scalars(select(Order))}
    assert statuses[order["order_id"]] == "pending_payment"
    assert sorted(statuses.values()) == ["cancelled", "pending_payment"]


# --- GET /orders/<id> -----------------------------------------------------------------------------------------


def test_order_is_shown_with_the_contract_fields(client, checkout):
    placed = checkout([("TEA-01", 2), ("CUP-01", 1)])
    response = client.get(f"/orders/{placed['order_id']}")
    assert response.status_code == 200
    body = response.get_json()
    assert {"order_id", "status", "total", "currency", "lines", "shipment", "payment_intent_id"} <= set(body)
    assert body["order_id"] == placed["order_id"]
    assert body["status"] == "pending_payment"
    assert body["total"] == placed["total"] == 2400 + 3500 + 700
    assert body["currency"] == "jpy"
    assert body["payment_intent_id"] == placed["payment_intent_id"]
    assert body["shipment"] is None
    assert sorted((line["sku"], line["quantity"], line["unit_amount"]) for line in body["lines"]) == [
        ("CUP-01", 1, 3500), ("TEA-01", 2, 1200)]
    json.dumps(body)  # plain JSON all the way down


def test_unknown_order_is_404(client):
    error = assert_error(client.get("/orders/ord_doesnotexist"), 404, "not_found", "order_id")
    assert "ord_doesnotexist" in error["message"]


def test_a_key_whose_first_request_died_before_storing_the_intent_is_completed_by_the_retry(client, sessions):
    from models.carts import get_cart
    from models.orders import ShippingAddress, place_order

    cart = client.post("/carts").get_json()
    client.post(f"/carts/{cart['id']}/items", json={"sku": "TEA-01", "quantity": 1})
    # The first request's process got as far as the order and its reservation, then died.
    with transaction(sessions) as session:
        died = place_order(session, get_cart(session, cart["id"]), email="a@example.com",
                           shipping=ShippingAddress(**SHIPPING), reservation_ttl_seconds=600,
                           idempotency_key="key-died")
        died_id = died.id

    retry = client.post("/checkout", json={"cart_id": cart["id"], "email": "a@example.com", "shipping": SHIPPING},
                        headers={"Idempotency-Key": "key-died"})
    assert retry.status_code == 201, retry.get_json()
    body = retry.get_json()
    assert body["order_id"] == died_id and body["payment_intent_id"].startswith("pi_")
    assert stripe.PaymentIntent.retrieve(body["payment_intent_id"]).metadata["order_id"] == died_id
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 1


def test_order_shows_status_and_totals_but_no_email_or_address_without_its_token(client, checkout, deliver_paid):
    placed = checkout([("TEA-01", 2)])
    deliver_paid(placed)
    response = client.get(f"/orders/{placed['order_id']}")
    assert response.status_code == 200
    body = response.get_json()
    assert {"order_id", "status", "total", "currency", "lines", "shipment", "payment_intent_id"} <= set(body)
    assert (body["status"], body["total"]) == ("paid", placed["total"])
    assert body["shipment"] == {"status": "pending", "fee": placed["shipping_fee"]}
    text = response.get_data(as_text=True)
    for private in ("buyer@example.com", SHIPPING["name"], SHIPPING["postal_code"], SHIPPING["address"]):
        assert private not in text


@pytest.mark.parametrize("how", ["query", "bearer"])
def test_order_shows_email_and_address_with_its_access_token(client, checkout, deliver_paid, how):
    placed = checkout([("TEA-01", 2)])
    deliver_paid(placed)
    token = placed["access_token"]
    assert isinstance(token, str) and len(token) >= 24
    if how == "query":
        response = client.get(f"/orders/{placed['order_id']}?token={token}")
    else:
        response = client.get(f"/orders/{placed['order_id']}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["email"] == "buyer@example.com"
    assert body["shipping"] == SHIPPING
    assert (body["shipment"]["name"], body["shipment"]["address"]) == (SHIPPING["name"], SHIPPING["address"])


@pytest.mark.parametrize("token", ["wrong-token", "éé", "x" * 300])
def test_a_wrong_access_token_is_403_and_shows_nothing(client, checkout, token):
    placed = checkout([("TEA-01", 1)])
    other = checkout([("TEA-01", 1)])
    for params in ({"token": token}, {"token": other["access_token"]}):
        response = client.get(f"/orders/{placed['order_id']}", query_string=params)
        error = assert_error(response, 403, "forbidden", "token")
        assert "token" in error["message"]
        assert "buyer@example.com" not in response.get_data(as_text=True)
    response = client.get(f"/orders/{placed['order_id']}", headers={"Authorization": f"Bearer {other['access_token']}"})
    assert_error(response, 403, "forbidden")


@pytest.fixture
def deliver_paid(client, localstripe, deliver):
    """Pay the order at localstripe and deliver its signed succeeded event (as Stripe would)."""
    from tests.support import confirm_card, event_for, signed_headers

    def pay(order: dict) -> None:
        assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
        payload = json.dumps(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                                       order_id=order["order_id"], amount=order["total"]))
        assert client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload)).status_code == 200
        deliver()
        assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"

    return pay


# --- prices change between the cart and the checkout ------------------------------------------------------------


def _set_price(sessions, sku: str, unit_amount: int) -> None:
    catalog = copy.deepcopy(CATALOG)
    for product in catalog["products"]:
        if product["sku"] == sku:
            product["unit_amount"] = unit_amount
    with transaction(sessions) as session:
        apply_catalog(session, catalog)


def test_a_price_changed_since_the_item_was_added_is_409_with_the_new_figures_and_updates_the_cart(
        client, sessions, new_cart):
    cart_id = new_cart([("TEA-01", 2), ("CUP-01", 1)])
    _set_price(sessions, "TEA-01", 1500)
    response = client.post("/checkout", json=checkout_body(cart_id))
    assert response.status_code == 409, response.get_json()
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == ("price_changed", "cart_id")
    assert error["changes"] == [{"sku": "TEA-01", "quantity": 2, "old_unit_amount": 1200, "new_unit_amount": 1500}]
    assert (error["subtotal"], error["currency"]) == (2 * 1500 + 3500, "jpy")
    assert "TEA-01" in error["message"] and "1500" in error["message"]
    cart = client.get(f"/carts/{cart_id}").get_json()
    assert cart["status"] == "open"
    assert sorted((i["sku"], i["unit_amount"]) for i in cart["items"]) == [("CUP-01", 3500), ("TEA-01", 1500)]
    assert cart["subtotal"] == 6500
    # Nothing was reserved and no order exists.
    assert order_count(sessions) == 0
    assert stock(client, "TEA-01") == (40, 0, 40)
    assert stock(client, "CUP-01") == (3, 0, 3)


def test_after_a_price_change_the_same_cart_checks_out_at_the_new_total(client, sessions, new_cart):
    cart_id = new_cart([("TEA-01", 2)])
    _set_price(sessions, "TEA-01", 900)
    assert client.post("/checkout", json=checkout_body(cart_id)).status_code == 409
    response = client.post("/checkout", json=checkout_body(cart_id))
    assert response.status_code == 201, response.get_json()
    order = response.get_json()
    assert (order["subtotal"], order["total"]) == (1800, 1800 + 700)
    assert stripe.PaymentIntent.retrieve(order["payment_intent_id"]).amount == 2500
    lines = client.get(f"/orders/{order['order_id']}").get_json()["lines"]
    assert [(line["sku"], line["unit_amount"]) for line in lines] == [("TEA-01", 900)]


# --- two requests with one Idempotency-Key, one of them failing at Stripe --------------------------------------


def _in_thread(pool, client, cart_id, key):
    return pool.submit(lambda: client.post("/checkout", json=checkout_body(cart_id), headers={"Idempotency-Key": key}))


def abandon_while_a_twin_creates(localstripe, make_client, cart_id: str, key: str):
    """Request A's call to Stripe fails and A abandons its order (502) while twin B's create, same key, is
    on its way back from Stripe; B's answer is returned once B has heard."""
    hole = BlackHole()
    proxy = HoldingProxy(localstripe.port, hold=creates_payment_intent)
    try:
        request_a = make_client(stripe_api_base=hole.base, stripe_deadline_seconds=30)
        with ThreadPoolExecutor(2) as pool:
            a = _in_thread(pool, request_a, cart_id, key)
            hole.wait_for_requests(1)  # A placed the order and waits on Stripe
            # Built now: an app sets the Stripe SDK's one API base as it is built.
            request_b = make_client(stripe_api_base=proxy.base, stripe_deadline_seconds=30)
            b = _in_thread(pool, request_b, cart_id, key)
            proxy.wait_for_answers(1)  # Stripe made B's intent; B has not heard yet
            hole.cut()
            a = a.result(30)
            assert a.status_code == 502, a.get_json()
            proxy.release()
            return b.result(30)
    finally:
        hole.close()
        proxy.close()
        use_stripe(localstripe.base)


def _payment_cancels(sessions) -> list[dict]:
    with sessions() as session:
        return [json.loads(m.payload) for m in session.scalars(
            select(OutboxMessage).where(OutboxMessage.topic == Topic.PAYMENT_CANCEL))]


def test_a_request_whose_stripe_call_failed_answers_the_order_its_key_twin_attached_and_cancels_nothing(
        client, sessions, localstripe, make_client, new_cart):
    """A's call to Stripe hangs; B (same key) attaches an intent and answers 201; then A's call fails."""
    cart_id = new_cart([("TEA-01", 2)])
    hole = BlackHole()
    try:
        request_a = make_client(stripe_api_base=hole.base, stripe_deadline_seconds=30)
        with ThreadPoolExecutor(1) as pool:
            a = _in_thread(pool, request_a, cart_id, "key-twins")
            hole.wait_for_requests(1)  # A placed the order and waits on Stripe
            use_stripe(localstripe.base)
            b = client.post("/checkout", json=checkout_body(cart_id), headers={"Idempotency-Key": "key-twins"})
            assert b.status_code == 201, b.get_json()
            hole.cut()  # now A's call fails
            a = a.result(30)
    finally:
        hole.close()
        use_stripe(localstripe.base)
    assert a.status_code == 201, a.get_json()
    assert a.get_json() == b.get_json()
    order = client.get(f"/orders/{b.get_json()['order_id']}").get_json()
    assert (order["status"], order["payment_intent_id"]) == ("pending_payment", b.get_json()["payment_intent_id"])
    assert stock(client, "TEA-01") == (40, 2, 38)
    assert client.get(f"/carts/{cart_id}").get_json()["status"] == "checked_out"
    assert _payment_cancels(sessions) == []
    assert stripe.PaymentIntent.retrieve(order["payment_intent_id"]).status == "requires_payment_method"


def test_an_intent_that_arrives_after_its_checkout_was_abandoned_is_refused_and_cancelled(
        client, sessions, localstripe, make_client, new_cart, deliver):
    """A's call fails and A abandons the order while B's create (same key) is on its way back."""
    cart_id = new_cart([("TEA-01", 2)])
    b = abandon_while_a_twin_creates(localstripe, make_client, cart_id, "key-late")
    error = assert_error(b, 409, "checkout_cancelled", "Idempotency-Key")
    assert "client_secret" not in b.get_data(as_text=True)
    assert "cancelled" in error["message"]
    with sessions() as session:
        order = session.scalars(select(Order)).one()
        assert (order.status.value, order.payment_intent_id) == ("cancelled", None)
    assert stock(client, "TEA-01") == (40, 0, 40)
    # B's intent is payable at Stripe until the worker cancels it.
    intents = [m["payment_intent_id"] for m in _payment_cancels(sessions) if "payment_intent_id" in m]
    assert len(intents) == 1
    assert stripe.PaymentIntent.retrieve(intents[0]).metadata["order_id"] == order.id
    deliver()
    assert stripe.PaymentIntent.retrieve(intents[0]).status == "canceled"


def test_a_replayed_key_of_a_cancelled_order_is_409_and_never_shows_the_client_secret(
        client, sessions, make_client, new_cart):
    short_hold = make_client(reservation_ttl_seconds=0)
    cart_id = new_cart([("TEA-01", 1)])
    headers = {"Idempotency-Key": "key-expired"}
    first = short_hold.post("/checkout", json=checkout_body(cart_id), headers=headers)
    assert first.status_code == 201
    assert expire_reservations(sessions) == 1
    replay = client.post("/checkout", json=checkout_body(cart_id), headers=headers)
    error = assert_error(replay, 409, "checkout_cancelled", "Idempotency-Key")
    assert first.get_json()["order_id"] in error["message"]
    assert first.get_json()["client_secret"] not in replay.get_data(as_text=True)


def test_a_checkout_over_the_processs_cap_of_stripe_calls_is_a_fast_503_and_reserves_nothing(
        client, sessions, localstripe, make_client, new_cart, monkeypatch):
    from consumers.checkout import StripeCallSlots

    # Any call in flight counts as slow, so the cap refuses at once instead of after a second.
    monkeypatch.setattr(StripeCallSlots, "SLOW_SECONDS", 0.0)
    first, second = new_cart([("TEA-01", 1)]), new_cart([("CUP-01", 1)])
    hole = BlackHole()
    try:
        stalled = make_client(stripe_api_base=hole.base, stripe_deadline_seconds=30, stripe_max_concurrent_calls=1)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(lambda: stalled.post("/checkout", json=checkout_body(first)))
            hole.wait_for_requests(1)
            refused = stalled.post("/checkout", json=checkout_body(second))
            error = assert_error(refused, 503, "payment_provider_busy")
            assert "nothing is reserved" in error["message"]
            assert stock(client, "CUP-01") == (3, 0, 3)
            assert order_count(sessions) == 1
            assert client.get(f"/carts/{second}").get_json()["status"] == "open"
            hole.cut()
            assert_error(waiting.result(30), 502, "payment_provider_unavailable")
    finally:
        hole.close()
        use_stripe(localstripe.base)
    assert stock(client, "TEA-01") == (40, 0, 40)


def test_a_burst_of_checkouts_over_the_cap_waits_for_a_quick_stripe_instead_of_being_refused(
        app, sessions, new_cart, make_client):
    capped = make_client(stripe_max_concurrent_calls=2)
    carts = [new_cart([("TEA-01", 1)]) for _ in range(4)]
    barrier = threading.Barrier(len(carts))

    def attempt(cart_id):
        barrier.wait()
        return capped.post("/checkout", json=checkout_body(cart_id)).status_code

    with ThreadPoolExecutor(len(carts)) as pool:
        assert list(pool.map(attempt, carts)) == [201] * 4
    assert stock(app.test_client(), "TEA-01") == (40, 4, 36)


def test_checkout_use_case_runs_without_the_web_app(sessions, settings, catalog, localstripe):
    """The shop's screens call the same function as POST /checkout: plain values in, the order out."""
    from consumers.checkout import CheckoutRequest, checkout as check_out
    from models.catalog import Product
    from models.orders import OrderStatus, ShippingAddress

    use_stripe(localstripe.base)
    with transaction(sessions) as session:
        cart = Cart()
        session.add(cart)
        cart.add(session.get(Product, "TEA-01"), 2)
        session.flush()
        cart_id = cart.id
    request = CheckoutRequest(cart_id=cart_id, email="buyer@example.com", shipping=ShippingAddress(**SHIPPING),
                              idempotency_key="screens-1")
    order = check_out(sessions, settings, request)
    assert (order.status, order.total) == (OrderStatus.PENDING_PAYMENT, 2400 + 700)
    assert stripe.PaymentIntent.retrieve(order.payment_intent_id).metadata["order_id"] == order.id
    assert check_out(sessions, settings, request).id == order.id
    assert order_count(sessions) == 1


def declined_order(sessions, settings, localstripe, checkout) -> tuple[str, str]:
    """An order placed through the API whose intent localstripe declined: (order id, intent id)."""
    from consumers.checkout import confirm_payment
    from consumers.payments import CardDeclined

    use_stripe(localstripe.base)
    placed = checkout()
    with pytest.raises(CardDeclined):
        confirm_payment(sessions, settings, placed["order_id"], card("4000000000000341"))
    return placed["order_id"], placed["payment_intent_id"]


def card(number: str) -> str:
    return stripe.PaymentMethod.create(type="card", card={"number": number, "exp_month": 12, "exp_year": 2034,
                                                          "cvc": "123"}).id


def intents_of(order_id: str) -> list[str]:
    return [i.id for i in stripe.PaymentIntent.list(limit=100).auto_paging_iter()
            if (i.metadata.to_dict() if i.metadata else {}).get("order_id") == order_id]


def test_a_second_replacement_of_the_same_intent_pays_through_the_first_ones_intent(
        sessions, settings, localstripe, checkout):
    from consumers.checkout import replace_payment_intent

    order_id, declined = declined_order(sessions, settings, localstripe, checkout)
    first = replace_payment_intent(sessions, settings, order_id, declined, "requires_payment_method")
    again = replace_payment_intent(sessions, settings, order_id, declined, "requires_payment_method")
    assert again == first != declined
    assert sorted(intents_of(order_id)) == sorted([declined, first])   # no third intent at Stripe
    with sessions() as session:
        assert session.get(Order, order_id).payment_intent_id == first


def test_an_order_whose_hold_expired_gets_no_new_intent_and_keeps_its_own(sessions, settings, localstripe, checkout):
    from consumers.checkout import CheckoutCancelled, confirm_payment

    order_id, declined = declined_order(sessions, settings, localstripe, checkout)
    with transaction(sessions) as session:
        session.get(Order, order_id).reserved_until = datetime.now(timezone.utc) - timedelta(seconds=1)
    with pytest.raises(CheckoutCancelled):
        confirm_payment(sessions, settings, order_id, card("4242424242424242"))
    with sessions() as session:
        assert session.get(Order, order_id).payment_intent_id == declined
    assert intents_of(order_id) == [declined]
