"""The shop's Pay after its order's hold ran out, and the totals Stripe cannot charge, as the buyer meets them.

The expiry sweep opens the cart of an order whose hold ran out again (consumers/relay.py), and the shop
keys its checkout on the cart: Pay on the open cart must place a new order, not replay the cancelled one.
"""
from __future__ import annotations

import copy
import json

from sqlalchemy import select

from consumers.relay import expire_reservations
from models.catalog_file import apply_catalog
from models.db import transaction
from models.orders import Order, OrderStatus
from tests.integration.test_shop_pages import confirmation_form, enter_information, fill_cart, page
from tests.support import CATALOG, let_the_hold_run_out
from webhook_app.shop_text import TEXT


def _orders(sessions) -> list[Order]:
    with sessions() as session:
        return list(session.scalars(select(Order).order_by(Order.created_at)))


def _pay(client, form: dict):
    return client.post("/checkout/confirm?lang=en", data=form, headers={"Accept": "application/json"})


def test_pay_on_the_cart_the_sweep_opened_again_places_a_new_order_and_holds_the_stock_again(client, sessions):
    fill_cart(client)
    assert enter_information(client).status_code == 303
    first = _pay(client, confirmation_form(client))
    assert first.status_code in (200, 201), page(first)
    [placed] = _orders(sessions)
    let_the_hold_run_out(sessions, placed.id)
    assert expire_reservations(sessions) == 1

    # The buyer comes back to the open cart and goes through to Pay again.
    assert client.get("/cart?lang=en").status_code == 200
    again = _pay(client, confirmation_form(client))
    assert again.status_code in (200, 201), page(again)
    cancelled, second = _orders(sessions)
    assert (cancelled.id, cancelled.status) == (placed.id, OrderStatus.CANCELLED)
    assert second.status is OrderStatus.PENDING_PAYMENT and second.cart_id == placed.cart_id
    assert client.get("/products/TEA-01").get_json()["reserved"] == 2

    # Pressed again, Pay answers with that same new order: one order per try, as before.
    assert _pay(client, confirmation_form(client)).status_code in (200, 201)
    assert len(_orders(sessions)) == 2


def test_a_total_under_stripes_smallest_charge_sends_the_buyer_to_the_cart_saying_so(client, sessions):
    catalog = copy.deepcopy(CATALOG)
    catalog["shipping"]["free_over"] = 0  # free shipping: the total is the goods alone
    catalog["products"].append({"sku": "SAMPLE-01", "name": "Tea sample", "unit_amount": 30, "stock": 100})
    with transaction(sessions) as session:
        apply_catalog(session, json.loads(json.dumps(catalog)))
    fill_cart(client, sku="SAMPLE-01", quantity=1)
    assert enter_information(client).status_code == 303
    refused = _pay(client, confirmation_form(client))
    assert refused.status_code == 422, page(refused)
    body = refused.get_json()
    assert body["error"]["code"] == "total_too_small" and body["redirect"].endswith("/cart")
    assert body["error"]["message"] == TEXT["total_too_small"]["en"].format(smallest="¥50")
    assert _orders(sessions) == []
