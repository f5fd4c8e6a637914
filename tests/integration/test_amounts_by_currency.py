"""Amounts written in the currency Stripe charges: a catalog loaded in dollars (or euros, pounds, francs)
is shown as $31.00 on the shop's screens, not ¥3,100, and mailed as 31.00 USD, Shipping and Total too.

The shop's screens put a sign before yen, dollars, euros and pounds and the code after any other
currency; the buyer's mails and the staff console write every amount as `1,200 JPY`, `12.00 USD`.
Both come from models.money, which knows which currencies Stripe counts in whole units.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest
from click.testing import CliRunner

from models.catalog import Product, Stock
from models.db import transaction
from models.orders import Order
from tests.integration.test_mail import smtp  # noqa: F401 - a fixture
from tests.integration.test_shop_pages import enter_information, fill_cart, page, post_form
from tests.support import CATALOG, confirm_card, event_for
from webhook_app.cli import shop


def load_catalog_in(settings, tmp_path, currency: str, **changes) -> None:
    """The test catalog (tea 1200, cup 3500, Hokkaido's fee 700, free over 8000) loaded with `shop catalog
    load` in `currency`, as an operator would."""
    catalog = copy.deepcopy(CATALOG)
    catalog["currency"] = currency
    catalog.update(changes)
    path = tmp_path / f"catalog-{currency}.json"
    path.write_text(json.dumps(catalog))
    result = CliRunner().invoke(shop, ["catalog", "load", str(path)],
                                env={"DATABASE_URL": settings.database_url, "LOG_FORMAT": "console"})
    assert result.exit_code == 0, result.output


def pay_button(html: str) -> str:
    return re.search(r'id="pay">([^<]*)<', html).group(1)


def cell(html: str, element_id: str) -> str:
    return re.search(rf'id="{element_id}">([^<]*)<', html).group(1)


def test_amounts_are_written_by_their_currency():
    from models.money import money  # here, so that the screens' and mails' tests below fail on what they say

    assert money(3100, "jpy", sign=True) == "¥3,100"
    assert money(3100, "usd", sign=True) == "$31.00"
    assert money(1250, "eur", sign=True) == "€12.50"
    assert money(999, "gbp", sign=True) == "£9.99"
    assert money(1250, "chf", sign=True) == "12.50 CHF"
    assert money(99_999_999, "usd", sign=True) == "$999,999.99"
    assert money(1200, "jpy") == "1,200 JPY"
    assert money(1250, "EUR") == "12.50 EUR"
    assert money(5120, "kwd") == "5.120 KWD"   # Stripe counts Kuwaiti dinars in thousandths
    assert money(-50, "usd") == "-0.50 USD"
    assert money(None, "usd") == "-"


def test_the_console_writes_amounts_by_the_same_rule():
    from models.money import money
    from webhook_app.admin.display import money as console_money

    assert console_money is money


@pytest.mark.parametrize("currency, tea, total", [("usd", "$12.00", "$31.00"), ("eur", "€12.00", "€31.00"),
                                                  ("gbp", "£12.00", "£31.00"), ("chf", "12.00 CHF", "31.00 CHF")])
def test_a_catalog_in_another_currency_is_shown_in_it_on_every_screen(client, sessions, settings, tmp_path,
                                                                       currency, tea, total):
    load_catalog_in(settings, tmp_path, currency)
    products = page(client.get("/?lang=en"))
    assert re.findall(r'class="price">([^<]*)<', products) == [tea.replace("12.00", "35.00"), tea]  # CUP, TEA

    fill_cart(client)   # two teas: 2400, Hokkaido's fee 700, 3100 in all
    cart = page(client.get("/cart?lang=en"))
    assert cell(cart, "subtotal") == tea.replace("12.00", "24.00")
    assert enter_information(client).status_code == 303
    confirm = page(client.get("/checkout/confirm?lang=en"))
    assert (cell(confirm, "subtotal"), cell(confirm, "shipping-fee"), cell(confirm, "total")) == (
        tea.replace("12.00", "24.00"), tea.replace("12.00", "7.00"), total)
    assert pay_button(confirm) == f"Pay {total}"

    # Pressed without JavaScript: the order is placed at Stripe in that currency, and the screen still says so.
    placed = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm")
    assert placed.status_code == 303, page(placed)
    with sessions() as db:
        (order,) = db.query(Order).all()
        assert (order.total, order.currency) == (3100, currency)
        order_id, token = order.id, order.access_token
    assert pay_button(page(client.get("/checkout/confirm?lang=en"))) == f"Pay {total}"
    my_page = page(client.get(f"/orders/{order_id}?token={token}&lang=en", headers={"Accept": "text/html"}))
    assert cell(my_page, "total") == total
    for html in (products, cart, confirm, my_page):
        assert "¥" not in html


def test_a_yen_catalog_keeps_the_yen_sign(client):
    fill_cart(client)
    assert enter_information(client).status_code == 303
    confirm = page(client.get("/checkout/confirm?lang=en"))
    assert (cell(confirm, "shipping-fee"), cell(confirm, "total"), pay_button(confirm)) == ("¥700", "¥3,100",
                                                                                            "Pay ¥3,100")


def test_the_largest_and_smallest_payment_are_said_in_the_carts_currency(client, sessions, settings, tmp_path):
    # Free shipping from the first cent, so a ten-cent cart is a ten-cent total.
    load_catalog_in(settings, tmp_path, "usd", shipping={"free_over": 1, "rates": [
        {"prefectures": "default", "fee": 900}]})
    with transaction(sessions) as db:
        db.add(Product(sku="GOLD-01", name="Gold tea kettle", unit_amount=40_000_000, currency="usd",
                       weight_grams=900))
        db.add(Stock(sku="GOLD-01", on_hand=10, reserved=0))
        db.add(Product(sku="LEAF-01", name="One tea leaf", unit_amount=10, currency="usd", weight_grams=1))
        db.add(Stock(sku="LEAF-01", on_hand=10, reserved=0))

    fill_cart(client, "GOLD-01", 2)
    too_many = page(post_form(client, "/cart/items", {"sku": "GOLD-01", "quantity": "1"}, follow_redirects=True))
    assert "The total would be over $999,999.99, the most one card payment can take" in too_many, too_many
    changed = page(post_form(client, "/cart/items/GOLD-01", {"quantity": "3"}, from_page="/cart?lang=en",
                             follow_redirects=True))
    assert "over $999,999.99" in changed
    post_form(client, "/cart/items/GOLD-01", {"remove": "1"}, from_page="/cart?lang=en")

    fill_cart(client, "LEAF-01", 1)
    assert enter_information(client).status_code == 303
    refused = post_form(client, "/checkout/confirm", {}, from_page="/checkout/confirm?lang=en")
    assert refused.status_code == 303 and refused.location.endswith("/cart"), page(refused)
    assert "The total is under $0.50, the least one card payment can take" in page(client.get("/cart?lang=en"))


def paid_order_mail(client, checkout, post_event, sessions, settings, smtp, currency: str) -> str:
    from tests.conftest import deliver_with

    order = checkout([("TEA-01", 1)], email="hanako@example.jp")   # 1200, Hokkaido's fee 700: 1900
    assert (order["total"], order["currency"]) == (1900, currency)
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    assert post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                                order_id=order["order_id"], amount=order["total"],
                                currency=currency)).status_code == 200
    deliver_with(dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{smtp.port}"), sessions)
    [(_, mail)] = smtp.messages
    return mail.get_payload(decode=True).decode().replace("\r\n", "\n")   # SMTP sends CRLF


def test_an_order_in_dollars_is_mailed_in_dollars(client, checkout, post_event, sessions, settings, smtp,
                                                  tmp_path):
    load_catalog_in(settings, tmp_path, "usd")
    text = paid_order_mail(client, checkout, post_event, sessions, settings, smtp, "usd")
    assert "1 x Hokkaido black tea (TEA-01): 12.00 USD\nShipping: 7.00 USD\nTotal: 19.00 USD\n" in text, text


def test_an_order_in_yen_is_mailed_with_its_currency_on_every_amount(client, checkout, post_event, sessions,
                                                                      settings, smtp):
    text = paid_order_mail(client, checkout, post_event, sessions, settings, smtp, "jpy")
    assert "1 x Hokkaido black tea (TEA-01): 1,200 JPY\nShipping: 700 JPY\nTotal: 1,900 JPY\n" in text, text
