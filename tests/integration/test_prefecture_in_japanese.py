"""A prefecture written in Japanese (北海道, 東京都 or 東京) is the same prefecture as its romaji name: checkout
prices and stores it under the canonical romaji name, and a catalog's shipping rate may name it so."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from models.orders import Order
from models.shipping import PREFECTURES, ShippingRate, canonical_prefecture
from tests.support import SHIPPING, assert_error, confirm_card, event_for, signed_headers
from webhook_app.cli import shop
from webhook_app.shop_text import PREFECTURE_NAMES_JA  # the Japanese screens' labels

ACCEPTED = "one of Japan's 47 prefectures, in romaji such as Hokkaido or in Japanese such as 北海道"


def _checkout(client, prefecture: str):
    cart_id = client.post("/carts").get_json()["id"]
    assert client.post(f"/carts/{cart_id}/items", json={"sku": "TEA-01", "quantity": 1}).status_code == 200
    return client.post("/checkout", json={"cart_id": cart_id, "email": "buyer@example.com",
                                          "shipping": {**SHIPPING, "prefecture": prefecture}})


@pytest.mark.parametrize("japanese, romaji", [
    ("北海道", "Hokkaido"),         # the test catalog's own rate (700); 道 is part of the name
    ("沖縄県", "Okinawa"),          # its own rate (1500)
    ("沖縄", "Okinawa"),
    ("東京都", "Tokyo"),            # the default rate (900)
    ("東京", "Tokyo"),
    ("大阪府", "Osaka"),
    ("京都", "Kyoto"),
    ("　北海道　", "Hokkaido"),     # full-width spaces around it, as a Japanese keyboard types them
    (" 神奈川県 ", "Kanagawa"),
])
def test_checkout_with_a_japanese_prefecture_charges_the_romaji_fee_and_stores_the_romaji_name(
        client, sessions, japanese, romaji):
    by_romaji = _checkout(client, romaji)
    by_japanese = _checkout(client, japanese)
    assert by_romaji.status_code == 201, by_romaji.get_json()
    assert by_japanese.status_code == 201, by_japanese.get_json()
    placed = by_japanese.get_json()
    assert placed["shipping_fee"] == by_romaji.get_json()["shipping_fee"]
    assert placed["total"] == by_romaji.get_json()["total"]
    with sessions() as session:
        assert session.scalar(select(Order.ship_prefecture).where(Order.id == placed["order_id"])) == romaji
    shown = client.get(f"/orders/{placed['order_id']}", headers={"Authorization": f"Bearer {placed['access_token']}"})
    assert shown.get_json()["shipping"]["prefecture"] == romaji


def test_the_shipment_of_an_order_placed_in_japanese_goes_to_the_romaji_prefecture(client, deliver):
    response = _checkout(client, "沖縄県")
    assert response.status_code == 201, response.get_json()
    placed = response.get_json()
    assert placed["shipping_fee"] == 1500
    assert confirm_card(placed["payment_intent_id"], "4242424242424242") == "succeeded"
    payload = json.dumps(event_for("localstripe_payment_intent.succeeded", intent_id=placed["payment_intent_id"],
                                   order_id=placed["order_id"], amount=placed["total"]))
    assert client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload)).status_code == 200
    deliver()
    body = client.get(f"/orders/{placed['order_id']}?token={placed['access_token']}").get_json()
    assert body["status"] == "paid"
    assert (body["shipment"]["prefecture"], body["shipment"]["fee"]) == ("Okinawa", 1500)


@pytest.mark.parametrize("prefecture", ["Atlantis", "北海", "東京県", "京都都", "カリフォルニア", "Tokyo-city"])
def test_checkout_refuses_an_unknown_prefecture_saying_what_is_accepted(client, sessions, prefecture):
    error = assert_error(_checkout(client, prefecture), 422, "invalid_input", "shipping.prefecture")
    assert error["message"] == f"shipping.prefecture {prefecture!r} is not {ACCEPTED}"
    with sessions() as session:
        assert session.scalars(select(Order)).all() == []


@pytest.fixture
def load_catalog_file(settings, tmp_path):
    """`shop catalog load FILE` in this process, as an operator runs it, of a catalog with these rates."""
    def run(rates: list[dict]):
        path = tmp_path / "catalog.json"
        path.write_text(json.dumps({"currency": "jpy", "products": [], "shipping": {"rates": rates}},
                                   ensure_ascii=False), encoding="utf-8")
        env = {"DATABASE_URL": settings.database_url, "BROKER_URL": settings.broker_url, "LOG_FORMAT": "console"}
        return CliRunner().invoke(shop, ["catalog", "load", str(path)], env=env, catch_exceptions=False)
    return run


def test_catalog_load_takes_rates_for_prefectures_written_in_japanese_under_their_romaji_names(
        client, sessions, load_catalog_file):
    result = load_catalog_file([{"prefectures": ["北海道", "沖縄"], "fee": 800},
                                {"prefectures": ["東京都", "大阪"], "fee": 600},
                                {"prefectures": "default", "fee": 1000}])
    assert result.exit_code == 0, result.output
    with sessions() as session:
        fees = {rate.prefecture: rate.fee for rate in session.scalars(select(ShippingRate))}
    assert fees == {"Hokkaido": 800, "Okinawa": 800, "Tokyo": 600, "Osaka": 600, "default": 1000}
    # And a checkout to the prefecture, in either spelling, pays the loaded rate.
    for spelling in ("Tokyo", "東京都", "東京"):
        response = _checkout(client, spelling)
        assert response.status_code == 201, response.get_json()
        assert response.get_json()["shipping_fee"] == 600


def test_catalog_load_refuses_a_second_rate_for_one_prefecture_in_its_other_spelling(load_catalog_file):
    result = load_catalog_file([{"prefectures": ["Hokkaido"], "fee": 700}, {"prefectures": ["北海道"], "fee": 800}])
    assert result.exit_code == 2
    assert "shipping.rates[1].prefectures: Hokkaido already has a rate" in result.output


def test_catalog_load_refuses_an_unknown_prefecture_saying_what_is_accepted(load_catalog_file):
    result = load_catalog_file([{"prefectures": ["北海"], "fee": 700}, {"prefectures": "default", "fee": 900}])
    assert result.exit_code == 2
    assert f"shipping.rates[0].prefectures: unknown prefecture '北海': each must be {ACCEPTED}" in result.output


@pytest.mark.parametrize("romaji", PREFECTURES)
def test_every_prefecture_is_known_by_its_japanese_name_with_and_without_its_suffix(romaji):
    japanese = PREFECTURE_NAMES_JA[romaji]
    assert canonical_prefecture(japanese) == romaji
    assert canonical_prefecture(f"\u3000{japanese} ") == romaji
    if romaji == "Hokkaido":
        assert canonical_prefecture(japanese[:-1]) is None     # 北海道's 道 is not a suffix
    else:
        assert japanese[-1] in "都府県"
        assert canonical_prefecture(japanese[:-1]) == romaji
