"""The shipping-fee table: a fee per prefecture, a default, free shipping from a threshold."""
from __future__ import annotations

import pytest

from models.shipping import PREFECTURES, ShippingTable, canonical_prefecture, shipping_fee

TABLE = ShippingTable(fees={"Hokkaido": 700, "Okinawa": 1500}, default_fee=900, free_over=8000)


@pytest.mark.parametrize("prefecture, fee", [("Hokkaido", 700), ("Okinawa", 1500)])
def test_listed_prefecture_pays_its_own_fee(prefecture, fee):
    assert TABLE.fee_for(prefecture, 1200) == fee
    assert shipping_fee(TABLE, prefecture, 1200) == fee


@pytest.mark.parametrize("prefecture", ["Tokyo", "Osaka", "Kagoshima"])
def test_unlisted_prefecture_pays_the_default_fee(prefecture):
    assert shipping_fee(TABLE, prefecture, 1200) == 900


@pytest.mark.parametrize("prefecture", ["Hokkaido", "Okinawa", "Tokyo"])
def test_shipping_is_free_from_the_threshold_on(prefecture):
    assert shipping_fee(TABLE, prefecture, 8000) == 0
    assert shipping_fee(TABLE, prefecture, 8001) == 0
    assert shipping_fee(TABLE, prefecture, 250_000) == 0


@pytest.mark.parametrize("prefecture, fee", [("Hokkaido", 700), ("Okinawa", 1500), ("Tokyo", 900)])
def test_one_yen_below_the_threshold_still_pays_shipping(prefecture, fee):
    assert shipping_fee(TABLE, prefecture, 7999) == fee


def test_without_a_threshold_shipping_is_never_free():
    table = ShippingTable(fees={"Hokkaido": 700}, default_fee=900, free_over=None)
    assert shipping_fee(table, "Hokkaido", 10_000_000) == 700
    assert shipping_fee(table, "Tokyo", 10_000_000) == 900


def test_unlisted_prefecture_without_a_default_rate_raises_lookup_error():
    table = ShippingTable(fees={"Hokkaido": 700}, default_fee=None, free_over=8000)
    with pytest.raises(LookupError, match="Tokyo"):
        shipping_fee(table, "Tokyo", 1200)


def test_listed_prefecture_without_a_default_rate_still_pays_its_fee():
    table = ShippingTable(fees={"Hokkaido": 700}, default_fee=None, free_over=8000)
    assert shipping_fee(table, "Hokkaido", 1200) == 700


def test_a_default_fee_of_zero_is_a_fee_not_a_missing_default():
    table = ShippingTable(fees={}, default_fee=0, free_over=None)
    assert shipping_fee(table, "Tokyo", 1200) == 0


@pytest.mark.parametrize("spelling, canonical", [
    ("Tokyo", "Tokyo"),
    ("tokyo", "Tokyo"),
    ("TOKYO", "Tokyo"),
    ("  Hokkaido  ", "Hokkaido"),
    ("Tokyo-to", "Tokyo"),
    ("TOKYO-TO", "Tokyo"),
    ("Osaka-fu", "Osaka"),
    ("kyoto-fu", "Kyoto"),
    ("Chiba-ken", "Chiba"),
    ("Okinawa-Ken", "Okinawa"),
    ("Kanagawa Prefecture", "Kanagawa"),
])
def test_canonical_prefecture_accepts_any_case_and_administrative_suffixes(spelling, canonical):
    assert canonical_prefecture(spelling) == canonical


@pytest.mark.parametrize("prefecture", PREFECTURES)
def test_every_prefecture_is_recognised_in_lower_case_and_with_a_ken_suffix(prefecture):
    assert canonical_prefecture(prefecture) == prefecture
    assert canonical_prefecture(prefecture.lower()) == prefecture
    assert canonical_prefecture(f"{prefecture.upper()}-ken") == prefecture


def test_there_are_forty_seven_prefectures():
    assert len(set(PREFECTURES)) == 47


@pytest.mark.parametrize("name", ["Atlantis", "", "   ", "-ken", "Tokyo-city", "Toky", "California", "Kyo"])
def test_unknown_prefecture_is_none(name):
    assert canonical_prefecture(name) is None
