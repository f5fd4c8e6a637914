"""Totals one payment at Stripe cannot take (over ¥99,999,999): refused where they would arise, saying so.

A cart line is refused when it would take the cart past the limit (the API's 422, the shop's
message), a checkout whose total with shipping is past it is refused before any stock is held,
and a product priced past it is refused by `shop catalog load`. Stripe would refuse the
PaymentIntent after the stock was held, and PostgreSQL's 32-bit total column would overflow first
for a large enough cart. (The test catalog ships free over ¥8,000, so shipping never adds to these.)
"""
from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import func, select

from models.carts import LARGEST_CHARGE
from models.catalog import Product, Stock
from models.db import transaction
from models.orders import Order
from tests.integration.test_shop_pages import enter_information, page, post_form
from tests.support import SHIPPING, assert_error
from webhook_app.cli import shop

GOLD = "GOLD-01"
PRICE = 40_000_000  # two fit under the limit, three do not


def add_gold(sessions, unit_amount: int = PRICE, stock: int = 10) -> None:
    with transaction(sessions) as session:
        session.add(Product(sku=GOLD, name="Gold tea kettle", unit_amount=unit_amount, currency="jpy",
                            weight_grams=900))
        session.add(Stock(sku=GOLD, on_hand=stock, reserved=0))


def new_cart(client, *items) -> str:
    cart_id = client.post("/carts").get_json()["id"]
    for sku, quantity in items:
        response = client.post(f"/carts/{cart_id}/items", json={"sku": sku, "quantity": quantity})
        assert response.status_code == 200, response.get_json()
    return cart_id


def orders(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Order))


def test_an_item_that_takes_the_cart_past_one_payment_is_422_and_the_cart_keeps_what_it_had(client, sessions):
    add_gold(sessions)
    cart_id = new_cart(client, (GOLD, 2))
    refused = client.post(f"/carts/{cart_id}/items", json={"sku": GOLD, "quantity": 1})
    error = assert_error(refused, 422, "total_too_large", "quantity")
    assert f"the total would be {3 * PRICE} jpy, over {LARGEST_CHARGE}" in error["message"]
    assert client.get(f"/carts/{cart_id}").get_json()["items"] == [{"sku": GOLD, "quantity": 2, "unit_amount": PRICE}]
    other = client.post(f"/carts/{cart_id}/items", json={"sku": "TEA-01", "quantity": 40})
    assert other.status_code == 200  # 80,000,000 + 40 × 1,200 still fits


def test_a_checkout_past_one_payment_after_prices_rose_is_422_and_holds_nothing(client, sessions):
    add_gold(sessions)
    cart_id = new_cart(client, (GOLD, 2))
    with transaction(sessions) as session:
        session.get(Product, GOLD).unit_amount = PRICE + 10_000_000
    body = {"cart_id": cart_id, "email": "buyer@example.com", "shipping": SHIPPING}
    repriced = client.post("/checkout", json=body)
    assert repriced.status_code == 409 and repriced.get_json()["error"]["code"] == "price_changed"  # new price held
    error = assert_error(client.post("/checkout", json=body), 422, "total_too_large", "cart_id")
    assert f"the total would be {2 * (PRICE + 10_000_000)} jpy, over {LARGEST_CHARGE}" in error["message"]
    assert orders(sessions) == 0
    with sessions() as session:
        assert session.get(Stock, GOLD).reserved == 0
    assert client.get(f"/carts/{cart_id}").get_json()["status"] == "open"


def test_the_shop_says_why_it_will_not_add_change_or_place_past_one_payment(client, sessions):
    add_gold(sessions)
    added = post_form(client, "/cart/items", {"sku": GOLD, "quantity": "2"})
    assert added.status_code == 303 and added.location.endswith("/cart")
    too_many = post_form(client, "/cart/items", {"sku": GOLD, "quantity": "1"}, follow_redirects=True)
    assert "the most one card payment can take" in page(too_many) and "¥99,999,999" in page(too_many)

    changed = post_form(client, f"/cart/items/{GOLD}", {"quantity": "3"}, from_page="/cart?lang=en",
                        follow_redirects=True)
    assert "the most one card payment can take" in page(changed)
    cart = client.get("/cart?lang=en")
    assert "¥80,000,000" in page(cart)  # still two

    # Prices rise after the cart was filled: Pay says so first, then why the order cannot be placed.
    with transaction(sessions) as session:
        session.get(Product, GOLD).unit_amount = PRICE + 10_000_000
    assert enter_information(client).status_code == 303
    repriced = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm?lang=en")
    assert repriced.status_code == 303 and repriced.location.endswith("/checkout/confirm")
    refused = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm?lang=en")
    assert refused.status_code == 303 and refused.location.endswith("/cart"), page(refused)
    assert "the most one card payment can take" in page(client.get("/cart?lang=en"))
    assert orders(sessions) == 0


def test_catalog_load_refuses_a_price_one_payment_cannot_take(sessions, settings, client, tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"currency": "jpy", "products": [
        {"sku": GOLD, "name": "Gold tea kettle", "unit_amount": LARGEST_CHARGE + 1, "stock": 1}]}))
    result = CliRunner().invoke(shop, ["catalog", "load", str(path)],
                                env={"DATABASE_URL": settings.database_url, "LOG_FORMAT": "console"})
    assert result.exit_code == 2, result.output  # a catalog file with a value out of bounds: bad usage
    assert f"products[0].unit_amount is over {LARGEST_CHARGE}, the most one payment at Stripe can take" in result.output
    assert client.get(f"/products/{GOLD}").status_code == 404
