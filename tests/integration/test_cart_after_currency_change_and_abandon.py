"""Two leftovers of a cart's second chance: adding to a cart filled before the catalog changed currency, and
what the late refusal of an abandoned checkout tells the client to do with its Idempotency-Key."""
from __future__ import annotations

import copy

import stripe
from sqlalchemy import func, select

from consumers.relay import expire_reservations
from models.catalog_file import apply_catalog
from models.db import transaction
from models.carts import Cart
from models.orders import Order
from tests.integration.test_checkout import abandon_while_a_twin_creates
from tests.integration.test_checkout_review_fixes import _catalog
from tests.integration.test_checkout_review_fixes import _load as load_catalog
from tests.support import CATALOG, SHIPPING, assert_error


def _load(sessions, currency: str, *, products=None, shipping: bool = True) -> None:
    load_catalog(sessions, _catalog(currency, shipping=shipping, products=products))


def _add(client, cart_id: str, sku: str, quantity: int):
    return client.post(f"/carts/{cart_id}/items", json={"sku": sku, "quantity": quantity})


def _cart(client, *items) -> str:
    cart_id = client.post("/carts").get_json()["id"]
    for sku, quantity in items:
        response = _add(client, cart_id, sku, quantity)
        assert response.status_code == 200, response.get_json()
    return cart_id


def _checkout(client, cart_id: str, key: str | None = None):
    return client.post("/checkout", json={"cart_id": cart_id, "email": "b@example.com", "shipping": SHIPPING},
                       headers={"Idempotency-Key": key} if key else {})


def _orders(sessions) -> list[Order]:
    with sessions() as session:
        return list(session.scalars(select(Order).order_by(Order.created_at)))


def _reserved(client, sku: str) -> int:
    return client.get(f"/products/{sku}").get_json()["reserved"]


# --- 1. adding to a cart filled before the catalog changed currency ------------------------------------------------


def test_adding_to_a_cart_priced_in_the_old_currency_reprices_it_and_says_so_then_takes_the_item(
        client, sessions):
    _load(sessions, "usd")                      # loaded in the wrong currency by mistake
    cart_id = _cart(client, ("TEA-01", 2))
    _load(sessions, "jpy")                      # corrected

    refused = _add(client, cart_id, "CUP-01", 1)
    assert refused.status_code == 409, refused.get_json()
    error = refused.get_json()["error"]
    assert (error["code"], error["field"]) == ("price_changed", "cart_id")
    assert error["changes"] == [{"sku": "TEA-01", "quantity": 2, "old_unit_amount": 1200, "new_unit_amount": 1200,
                                 "old_currency": "usd", "new_currency": "jpy"}]
    assert (error["cart_id"], error["subtotal"], error["currency"]) == (cart_id, 2400, "jpy")
    assert "TEA-01 1200 usd -> 1200 jpy" in error["message"]
    assert "CUP-01 was not added" in error["message"] and "add it again" in error["message"]
    # The cart holds the new prices (committed), and not the item: the buyer sees them before adding to them.
    cart = client.get(f"/carts/{cart_id}").get_json()
    assert cart["items"] == [{"sku": "TEA-01", "quantity": 2, "unit_amount": 1200}]
    assert (cart["currency"], cart["subtotal"], cart["status"]) == ("jpy", 2400, "open")

    added = _add(client, cart_id, "CUP-01", 1)
    assert added.status_code == 200, added.get_json()
    body = added.get_json()
    assert sorted((i["sku"], i["quantity"], i["unit_amount"]) for i in body["items"]) == [
        ("CUP-01", 1, 3500), ("TEA-01", 2, 1200)]
    assert (body["currency"], body["subtotal"]) == ("jpy", 5900)

    # Checkout finds nothing changed since the buyer was told, and charges yen.
    placed = _checkout(client, cart_id)
    assert placed.status_code == 201, placed.get_json()
    order = placed.get_json()
    assert (order["currency"], order["total"]) == ("jpy", 5900 + 700)
    intent = stripe.PaymentIntent.retrieve(order["payment_intent_id"])
    assert (intent.currency, intent.amount) == ("jpy", 6600)


def test_adding_to_a_cart_with_a_line_the_new_currency_has_no_price_for_is_a_409_naming_that_line(
        client, sessions):
    cart_id = _cart(client, ("CUP-01", 1))
    # The catalog loaded again in dollars with the tea alone: the cup keeps its yen price, none in dollars.
    _load(sessions, "usd", shipping=False,
          products=[{"sku": "TEA-01", "name": "Hokkaido black tea", "unit_amount": 1200, "stock": 40}])

    error = assert_error(_add(client, cart_id, "TEA-01", 1), 409, "currency_mismatch", "sku")
    assert "TEA-01 is priced in usd" in error["message"]
    assert "CUP-01 (3500 jpy)" in error["message"] and "no usd price" in error["message"]
    cart = client.get(f"/carts/{cart_id}").get_json()
    assert cart["items"] == [{"sku": "CUP-01", "quantity": 1, "unit_amount": 3500}]
    assert cart["currency"] == "jpy"
    # Refused the same way however often it is asked: nothing was re-priced to report.
    assert_error(_add(client, cart_id, "TEA-01", 1), 409, "currency_mismatch", "sku")


def test_adding_a_product_in_the_carts_own_currency_leaves_its_other_lines_to_checkout(client, sessions):
    cart_id = _cart(client, ("TEA-01", 2))
    catalog_price = copy.deepcopy(CATALOG)
    catalog_price["products"][0]["unit_amount"] = 1500
    with transaction(sessions) as session:
        apply_catalog(session, catalog_price)
    added = _add(client, cart_id, "CUP-01", 1)
    assert added.status_code == 200, added.get_json()
    # Same currency: the tea's new price is checkout's to report, as before.
    refused = _checkout(client, cart_id)
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "price_changed"


# --- 2. the late refusal of an abandoned checkout, and the same key afterwards ----------------------------------------


def test_the_late_refusal_of_an_abandoned_checkout_says_the_same_key_checks_the_cart_out_again_and_it_does(
        client, sessions, localstripe, make_client):
    """A's call to Stripe fails and A abandons the order (cart open again, key freed) while B's create,
    same key, is on its way back: B's 409 must say what really works next."""
    cart_id = _cart(client, ("TEA-01", 2))
    b = abandon_while_a_twin_creates(localstripe, make_client, cart_id, "key-abandoned")
    [abandoned] = _orders(sessions)
    error = assert_error(b, 409, "checkout_cancelled", "Idempotency-Key")
    assert abandoned.id in error["message"]
    assert "same key" in error["message"] and "new Idempotency-Key" not in error["message"]
    assert "new key" not in error["message"]

    # What the message says is what happens: the same key places a new order for the reopened cart.
    again = _checkout(client, cart_id, "key-abandoned")
    assert again.status_code == 201, again.get_json()
    assert again.get_json()["order_id"] != abandoned.id
    assert _reserved(client, "TEA-01") == 2
    # And the same key once more answers with that order: one order per key, as always.
    assert _checkout(client, cart_id, "key-abandoned").get_json()["order_id"] == again.get_json()["order_id"]
    assert len(_orders(sessions)) == 2


def test_the_key_of_an_order_whose_hold_ran_out_says_a_new_key_checks_the_reopened_cart_out_and_it_does(
        client, sessions, make_client):
    short_hold = make_client(reservation_ttl_seconds=0)
    cart_id = _cart(client, ("TEA-01", 1))
    first = _checkout(short_hold, cart_id, "key-expired")
    assert first.status_code == 201, first.get_json()
    assert expire_reservations(sessions) == 1

    replay = _checkout(client, cart_id, "key-expired")
    error = assert_error(replay, 409, "checkout_cancelled", "Idempotency-Key")
    assert "open again" in error["message"] and "new Idempotency-Key" in error["message"]
    # The expiry sweep keeps the order's key: the same key keeps answering with the cancelled order...
    assert_error(_checkout(client, cart_id, "key-expired"), 409, "checkout_cancelled", "Idempotency-Key")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 1
    # ...and a new key checks the reopened cart out.
    second = _checkout(client, cart_id, "key-after-expiry")
    assert second.status_code == 201, second.get_json()
    assert second.get_json()["order_id"] != first.get_json()["order_id"]


# --- 1b. the same on the shop's screens -------------------------------------------------------------------------------

def _screen_cart(client) -> str:
    from tests.integration.test_shop_pages import page
    return page(client.get("/cart?lang=en"))


def test_the_cart_screen_reprices_a_cart_of_the_old_currency_and_asks_to_add_again(client, sessions):
    from tests.integration.test_shop_pages import fill_cart, post_form
    _load(sessions, "usd")
    fill_cart(client, "TEA-01", 2)
    _load(sessions, "jpy")

    response = post_form(client, "/cart/items", {"sku": "CUP-01", "quantity": "1"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/cart")
    html = _screen_cart(client)
    assert "The prices in your cart have changed. Please check the new prices, then add" in html
    assert "Choose a quantity" not in html
    with sessions() as session:
        cart = session.scalars(select(Cart)).one()
        assert [(i.sku, i.quantity, i.currency) for i in cart.items] == [("TEA-01", 2, "jpy")]

    fill_cart(client, "CUP-01", 1)  # added this time
    with sessions() as session:
        cart = session.scalars(select(Cart)).one()
        assert sorted((i.sku, i.quantity, i.currency) for i in cart.items) == [("CUP-01", 1, "jpy"), ("TEA-01", 2, "jpy")]


def test_the_cart_screen_names_the_clash_when_a_line_has_no_price_in_the_new_currency(client, sessions):
    from tests.integration.test_shop_pages import fill_cart, post_form
    fill_cart(client, "CUP-01", 1)
    _load(sessions, "usd", shipping=False,
          products=[{"sku": "TEA-01", "name": "Hokkaido black tea", "unit_amount": 1200, "stock": 40}])

    response = post_form(client, "/cart/items", {"sku": "TEA-01", "quantity": "1"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/cart")
    html = _screen_cart(client)
    assert "cannot go in your cart: an item in it has no price in" in html
    with sessions() as session:
        cart = session.scalars(select(Cart)).one()
        assert [(i.sku, i.currency) for i in cart.items] == [("CUP-01", "jpy")]
