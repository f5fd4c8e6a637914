"""A card number a customer typed into the shipping address, however they typed it (glued to Japanese
text, in groups split by double spaces, line breaks or dots, glued to a word, by `_` too, in full-width
digits), is masked on the console's order page in its place, with the expiry and security code typed
right after it, while the numbers of an ordinary address (a postal code, a phone number, an amount, a
long number that is no card, a date, a room number) and the order's ids stay.

Data comes through the real paths: checkout, a card paid at localstripe, a signed webhook, the worker.
"""
from __future__ import annotations

import re

import pytest

from tests.integration.test_admin_pages import flagged_order, page, staff_client  # noqa: F401
from tests.support import SHIPPING

MASKED = "[card number ••••4242]"

# What the buyer typed as the address, and what the console shows in its place.
TYPED_CARDS = {
    "glued_to_japanese_text": ("北1条西2丁目 カード番号4242424242424242", f"北1条西2丁目 カード番号{MASKED}"),
    "grouped_after_japanese_text": ("札幌市中央区カード4242 4242 4242 4242", f"札幌市中央区カード{MASKED}"),
    "full_width_digits": ("札幌市 カード４２４２　４２４２　４２４２　４２４２", f"札幌市 カード{MASKED}"),
    "double_spaces": ("Kita 1-jo 4242  4242  4242  4242 Sapporo", f"Kita 1-jo {MASKED} Sapporo"),
    "line_breaks": ("Kita 1-jo\n4242 4242\n4242 4242\nSapporo", f"Kita 1-jo\n{MASKED}\nSapporo"),
    "dots": ("Kita 1-jo 4242.4242.4242.4242 Sapporo", f"Kita 1-jo {MASKED} Sapporo"),
    "slashes": ("Kita 1-jo 4242/4242/4242/4242 Sapporo", f"Kita 1-jo {MASKED} Sapporo"),
    "glued_to_a_word": ("Room4242424242424242 Sapporo", f"Room{MASKED} Sapporo"),
    "after_the_block_number": ("北1条西2-1-1 4242424242424242", f"北1条西2-1-1 {MASKED}"),
    "glued_to_a_word_by_an_underscore": ("Kita 1-jo card_4242424242424242 Sapporo", f"Kita 1-jo card_{MASKED} Sapporo"),
    "underscore_after": ("Kita 1-jo 4242424242424242_exp Sapporo", f"Kita 1-jo {MASKED}_exp Sapporo"),
    "four_spaces": ("Kita 1-jo 4242    4242    4242    4242 Sapporo", f"Kita 1-jo {MASKED} Sapporo"),
    "spaced_dashes": ("Kita 1-jo 4242  -  4242  -  4242  -  4242 Sapporo", f"Kita 1-jo {MASKED} Sapporo"),
    "expiry_and_code_after": ("Kita 1-jo 4242 4242 4242 4242 12/34 123", f"Kita 1-jo {MASKED} ••• •••"),
    "labelled_expiry_and_code_after": ("Kita 1-jo 4242 4242 4242 4242 exp 12/34 cvc 123 Sapporo",
                                       f"Kita 1-jo {MASKED} exp ••• cvc ••• Sapporo"),
    "japanese_labels": ("札幌市 4242 4242 4242 4242 有効期限12/34 セキュリティコード123",
                        f"札幌市 {MASKED} 有効期限••• セキュリティコード•••"),
}

# An ordinary Japanese address's numbers, none of them a card: a postal code beside a phone number
# (17 digits together), an amount, 13, 16 and 19 digits that fail Luhn, a timestamp with a fraction
# whose 16 digits pass Luhn, a date and time.
ORDINARY = ("〒060-0001 011-123-4567 電話011-123-4567 合計3,100円 番号1234567890123 1234567890123456 "
            "1234567890123456789 時刻1764331000.100001 2026-11-28 12:16:00")


def ship_to(text: str) -> str:
    """The order page's "Ship to" as shown: name, postal code and prefecture, address."""
    match = re.search(r"<dt>Ship to</dt><dd>(.*?)</dd>", text, flags=re.S)
    assert match, "no Ship to on the order page"
    return match.group(1)


@pytest.mark.parametrize("variant", list(TYPED_CARDS))
def test_a_card_number_typed_into_the_address_is_masked_in_its_place_on_the_order_page(
        variant, staff_client, checkout, post_event, deliver):
    typed, shown = TYPED_CARDS[variant]
    order = flagged_order(checkout, post_event, deliver, shipping=dict(SHIPPING, address=typed))
    text = page(staff_client, f"/admin/orders/{order['order_id']}")
    digits_only = re.sub(r"[^0-9０-９]", "", re.sub(r"<[^>]+>", "", text))
    assert "4242424242424242" not in digits_only and "４２４２４２４２" not in digits_only, variant
    assert ship_to(text) == f"{SHIPPING['name']}<br>{SHIPPING['postal_code']} {SHIPPING['prefecture']}<br>{shown}"
    assert order["order_id"] in text and order["payment_intent_id"] in text  # ids staff search by stay


def test_the_numbers_of_an_ordinary_address_are_shown_as_typed(staff_client, checkout, post_event, deliver):
    order = flagged_order(checkout, post_event, deliver, shipping=dict(SHIPPING, address=ORDINARY))
    text = page(staff_client, f"/admin/orders/{order['order_id']}")
    assert ship_to(text).endswith(f"<br>{ORDINARY}")
    assert "[card number" not in text


def test_an_expiry_or_code_like_number_away_from_a_card_is_shown_as_typed(
        staff_client, checkout, post_event, deliver):
    """Only what follows a card within a few words is taken for its expiry or code: a postal code, a date, a
    room number, an amount after a word, and the next field (the postal code after a card in the name)."""
    address = "4242 4242 4242 4242 Sapporo 12/34 123 〒060-0001 2026/11/28 Room 305 305号室 合計3,100円 cvc 123"
    order = flagged_order(checkout, post_event, deliver,
                          shipping=dict(SHIPPING, name="Hanako 4242424242424242", address=address))
    text = page(staff_client, f"/admin/orders/{order['order_id']}")
    assert ship_to(text) == (f"Hanako {MASKED}<br>{SHIPPING['postal_code']} {SHIPPING['prefecture']}"
                             f"<br>{address.replace('4242 4242 4242 4242', MASKED)}")
