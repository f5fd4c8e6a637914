"""Card numbers the console's masking let through (review F's leftovers): a number glued to a word by `_`,
a number whose groups are split by more than three separators, and the expiry and security code typed
right after a card. Stripe's ids and ours stay readable, and an address's own numbers stay as typed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from webhook_app.admin.masking import MASK, scrub_text

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "stripe"
MASKED = "[card number ••••4242]"
# An id as Stripe writes one: lowercase words each ended by `_`, then a token.
ID_SHAPE = re.compile(r"[a-z]+(?:_[a-z]+)*_[A-Za-z0-9]+")


# --- 1. glued by an underscore -------------------------------------------------------------------

@pytest.mark.parametrize("typed, shown", [
    ("card_4242424242424242", f"card_{MASKED}"),
    ("4242424242424242_exp", f"{MASKED}_exp"),
    ("card_no_4242424242424242", f"card_no_{MASKED}"),
    ("card_4242 4242 4242 4242", f"card_{MASKED}"),
    ("4242 4242 4242 4242_exp", f"{MASKED}_exp"),
    ("Room_4242424242424242", f"Room_{MASKED}"),
    ("カード_4242424242424242", f"カード_{MASKED}"),
    ("card_４２４２４２４２４２４２４２４２", f"card_{MASKED}"),
    ("card_4242424242424242exp", f"card_{MASKED}exp"),
    ("card_no_4242424242424242expires", f"card_no_{MASKED}expires"),
    ("card_4242424242424242exp 12/34 cvc 123", f"card_{MASKED}exp {MASK} cvc {MASK}"),
])
def test_a_card_number_glued_to_a_word_by_an_underscore_is_masked(typed, shown):
    assert scrub_text(f"北1条 {typed} 様") == f"北1条 {shown} 様"


def fixture_ids() -> set[str]:
    """Every id-like string (a lowercase prefix, `_`, a token with a digit) in Stripe's payloads we keep."""
    found: set[str] = set()

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            found.update(word for word in re.findall(r"[A-Za-z0-9_]+", value)
                         if ID_SHAPE.fullmatch(word) and re.search(r"\d", word))

    for path in FIXTURES.glob("*.json"):
        walk(json.loads(path.read_text()))
    return found


def test_every_id_in_stripes_payloads_is_shown_whole():
    ids = fixture_ids()
    assert {"dp_1JAyTwJSZQVUcJYgPqasUEn1", "pi_1JAyTwJSZQVUcJYgBbsz0NuH", "ch_8PSCaKqwSLth7G",
            "card_fakefakefakefakefake0001", "txn_fake_ch_fakefakefakefakefake0001"} <= ids
    for stripe_id in sorted(ids):
        text = f"id {stripe_id}, {stripe_id}: see {stripe_id}"
        assert scrub_text(text) == text, stripe_id


def test_a_card_like_run_inside_a_stripe_ids_token_stays_readable():
    """The same ids with a Luhn-valid run of 16 digits put inside their token, among its letters: Stripe's
    tokens are random base62, so such an id is still an id, not a card glued to a word."""
    for stripe_id in sorted(fixture_ids()):
        prefix, token = re.fullmatch(r"((?:[a-z]+_)+)([A-Za-z0-9]+)", stripe_id).groups()
        for spliced in (f"{prefix}{token[:1]}4242424242424242{token[1:]}", f"{prefix}{token}4242424242424242"):
            assert scrub_text(f"see {spliced} here") == f"see {spliced} here", spliced
    for text in ("cus_Ab4242424242424242Z", "seti_x4242424242424242", "pi_3Mtw4242424242424242BwLk",
                 "sub_sched_1Mx4242424242424242"):
        assert scrub_text(f"see {text} here") == f"see {text} here", text


def test_our_own_ids_stay_readable_when_their_hex_is_all_digits():
    """models.base.new_id makes `<prefix>_` and 16 hex digits: about one order id in 1,800 has no letter.
    Every prefix the code passes to new_id is covered (a new one must be added to the masking too)."""
    prefixes = set()
    for path in [*ROOT.glob("models/**/*.py"), *ROOT.glob("webhook_app/**/*.py"), *ROOT.glob("consumers/**/*.py"),
                 *ROOT.glob("bench/**/*.py")]:
        prefixes.update(re.findall(r"\bnew_id\(\"([a-z]+)\"\)", path.read_text()))
    assert {"ord", "req", "cart", "shp"} <= prefixes
    for prefix in sorted(prefixes):
        own_id = f"{prefix}_4242424242424242"
        assert scrub_text(f"order {own_id} here") == f"order {own_id} here", own_id
    # Not ours: 16 digits after another word are a card glued to it.
    assert scrub_text("ordx_4242424242424242") == f"ordx_{MASKED}"


# --- 2. more separators between groups -----------------------------------------------------------

@pytest.mark.parametrize("typed", [
    "4242    4242    4242    4242", "4242  -  4242  -  4242  -  4242", "4242 4242\r\n    4242 4242",
    "4242\t\t\t\t4242\t\t\t\t4242\t\t\t\t4242", "4242 . . 4242 . . 4242 . . 4242", "4242　　　　4242　　　　4242　　　　4242",
    "4242      4242      4242      4242",
])
def test_a_card_number_split_by_four_to_six_separators_is_masked(typed):
    assert scrub_text(f"Kita 1-jo {typed} Sapporo") == f"Kita 1-jo {MASKED} Sapporo", typed


def test_numbers_further_apart_or_with_anything_else_between_do_not_join_into_a_card():
    """4242 4242 and 4242 4242 together pass Luhn: seven separators apart (layout, not typing), or with a
    letter, a comma, a colon or a tag between, they stay two numbers as typed."""
    for between in (" " * 7, " -  -  - ", "\n\n\n\n\n\n\n", " x ", ", ", ": ", "</td><td>", " (", "円 "):
        text = f"tel 4242 4242{between}4242 4242"
        assert scrub_text(text) == text, repr(between)


# --- 3. the expiry and security code typed after a card --------------------------------------------

@pytest.mark.parametrize("typed, shown", [
    ("4242 4242 4242 4242 12/34 123", f"{MASKED} {MASK} {MASK}"),
    ("4242424242424242 12/34", f"{MASKED} {MASK}"),
    ("4242 4242 4242 4242 exp 12/34 cvc 123", f"{MASKED} exp {MASK} cvc {MASK}"),
    ("4242 4242 4242 4242 有効期限12/34 セキュリティコード123", f"{MASKED} 有効期限{MASK} セキュリティコード{MASK}"),
    ("4242424242424242, Expires: 12/2034, CVV: 1234", f"{MASKED}, Expires: {MASK}, CVV: {MASK}"),
    ("4242424242424242 (11-34) security code 567", f"{MASKED} ({MASK}) security code {MASK}"),
    ("4242424242424242 CVC 123 exp 1/34", f"{MASKED} CVC {MASK} exp {MASK}"),
    ("カード番号4242424242424242 期限１２／３４ セキュリティーコード１２３", f"カード番号{MASKED} 期限{MASK} セキュリティーコード{MASK}"),
    ("4242424242424242\nexp date 12/34\ncvc2 123", f"{MASKED}\nexp date {MASK}\ncvc2 {MASK}"),
    # The card's longest span takes a one-digit month in with it: the year left after the mask is masked.
    ("4242 4242 4242 0034 1/35 123", f"[card number ••••0341]{MASK} {MASK}"),
])
def test_an_expiry_and_security_code_typed_right_after_a_card_are_masked(typed, shown):
    assert scrub_text(f"Kita 1-jo {typed} Sapporo") == f"Kita 1-jo {shown} Sapporo"


def test_an_expiry_or_code_is_masked_only_within_a_few_words_after_a_card():
    # One of each: a second code is no card's.
    assert scrub_text("4242424242424242 12/34 123 456") == f"{MASKED} {MASK} {MASK} 456"
    # Forty characters of spaces and labels at most, and nothing else between.
    assert scrub_text("4242424242424242" + " " * 40 + "123") == MASKED + " " * 40 + MASK
    for text in ("4242424242424242" + " " * 41 + "123", "4242424242424242 Sapporo 12/34 123",
                 "4242424242424242 Room 305", "4242424242424242</dd><dd>12/34 123</dd>"):
        assert scrub_text(text) == text.replace("4242424242424242", MASKED), text


@pytest.mark.parametrize("numbers", [
    "060-0001", "〒060-0001", "2026/11/28", "2026-11-28 12:16:00", "305号室", "3100円", "合計3,100円", "¥3,100",
    "123.45", "12:30", "011-123-4567", "12/34/56", "12/345", "1234567",
])
def test_an_addresss_own_numbers_after_a_card_are_left_as_typed(numbers):
    """A postal code, a date, a room number, an amount, a phone number: glued to more digits or to a word,
    none of them is an expiry or a security code, even right after a card."""
    assert scrub_text(f"4242424242424242 {numbers} Sapporo") == f"{MASKED} {numbers} Sapporo"


def test_expiries_and_codes_with_no_card_before_them_are_left_as_typed():
    text = "〒060-0001 札幌市 12/34 Room 305 exp 12/34 cvc 123 合計3,100円 2026/11/28 有効期限12/34 セキュリティコード123"
    assert scrub_text(text) == text
