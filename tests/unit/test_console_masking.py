"""What the console masks in payloads and text: customers' details wherever Stripe names them, and
card numbers however they were typed."""
from __future__ import annotations

import json
from pathlib import Path

from webhook_app.admin.masking import MASK, mask_payload, scrub_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stripe"


def test_a_cards_billing_address_in_a_payload_is_masked_and_its_checks_stay_readable():
    """Only the card's name was masked: its address lines, postal code and city were shown."""
    card = {"name": "Hanako Yamada", "address_line1": "7-3-1 Hongo Bunkyo-ku", "address_line2": "Room 2",
            "address_zip": "113-8654", "address_city": "Tokyo-to", "address_state": "Tokyo",
            "address_country": "JP", "address_zip_check": "pass", "address_line1_check": "unchecked",
            "cvc_check": "pass", "last4": "4242"}
    masked = mask_payload({"source": card})["source"]
    assert {key for key, value in masked.items() if value == MASK} == {
        "name", "address_line1", "address_line2", "address_zip", "address_city", "address_state", "address_country"}
    assert (masked["address_zip_check"], masked["cvc_check"], masked["last4"]) == ("pass", "pass", "4242")


def test_dispute_evidence_and_a_source_owner_are_masked():
    """billing_address, shipping_address, customer_purchase_ip and verified_name were shown."""
    evidence = {"billing_address": "7-3-1 Hongo", "shipping_address": "Kita 1-jo, Sapporo",
                "customer_purchase_ip": "223.182.253.19", "customer_name": "Hanako", "product_description": "tea"}
    owner = {"verified_name": "Hanako Yamada", "verified_address": "7-3-1 Hongo", "verified_email": "h@example.com"}
    masked = mask_payload({"evidence": evidence, "owner": owner})
    assert masked["evidence"] == {**dict.fromkeys(evidence, MASK), "product_description": "tea"}
    assert masked["owner"] == dict.fromkeys(owner, MASK)


def test_the_purchase_ip_in_stripes_own_dispute_event_is_not_shown():
    event = json.loads((FIXTURES / "charge.dispute.created.json").read_text())
    assert "223.182.253.19" in json.dumps(event)
    assert "223.182.253.19" not in json.dumps(mask_payload(event), ensure_ascii=False)


def test_a_card_number_typed_with_a_japanese_input_method_is_masked():
    """Full-width digits grouped by ideographic spaces or long-vowel marks were shown in full."""
    for typed in ("４２４２　４２４２　４２４２　４２４２", "4242　4242　4242　4242", "４２４２ー４２４２ー４２４２ー４２４２",
                  "4242－4242－4242－4242"):
        shown = scrub_text(f"Kita 1-jo {typed} Sapporo")
        assert typed not in shown and "[card number ••••" in shown, typed


def test_digits_that_are_not_a_card_number_stay_as_they_are():
    for text in ("order 4242 4242 4242 4241 of a kind", "tel 03-1234-5678", "2026-11-27 12:00:00"):
        assert scrub_text(text) == text


def test_a_card_number_glued_to_japanese_text_or_to_a_word_is_masked():
    """`\\w` edges: kana, kanji and ASCII letters right before the digits let the number through."""
    for before in ("カード番号", "札幌市中央区カード", "Room", "No.", "番号："):
        for typed in ("4242424242424242", "4242 4242 4242 4242", "４２４２４２４２４２４２４２４２"):
            shown = scrub_text(f"北1条 {before}{typed} 様")
            assert shown == f"北1条 {before}[card number ••••4242] 様", (before, typed)


def test_a_card_number_split_by_several_spaces_line_breaks_dots_or_slashes_is_masked():
    for typed in ("4242  4242  4242  4242", "4242\n4242\n4242\n4242", "4242 4242\r\n4242 4242", "4242.4242.4242.4242",
                  "4242/4242/4242/4242", "4242 - 4242 - 4242 - 4242", "4242．4242．4242．4242", "3782 822463 10005"):
        shown = scrub_text(f"Kita 1-jo {typed} Sapporo")
        assert shown.startswith("Kita 1-jo [card number ••••") and shown.endswith("] Sapporo"), typed


def test_a_card_number_after_other_numbers_is_masked_and_they_stay():
    """A card starts and ends at a group's edge: the block number before it and the postal code after it
    are not taken into it (the run's 19 or more digits together fail Luhn)."""
    assert scrub_text("北1条西2-1-1 4242424242424242") == "北1条西2-1-1 [card number ••••4242]"
    assert scrub_text("Room 12 4242 4242 4242 4242 Sapporo") == "Room 12 [card number ••••4242] Sapporo"
    assert scrub_text("4242424242424242 060-0001") == "[card number ••••4242] 060-0001"


def test_ids_with_a_card_like_run_of_digits_stay_readable():
    """Staff search by Stripe's ids and ours: digits inside one (among a Stripe token's letters, or an id of
    ours whose 16 hex digits are all digits) are never taken for a card."""
    for text in ("pi_3Mtw4242424242424242", "evt_1N4242424242424242xY", "ord_4242424242424242",
                 "cus_Ab4242424242424242Z", "seti_x4242424242424242", "req_4242424242424242"):
        assert scrub_text(f"see {text} here") == f"see {text} here"
    assert scrub_text("pi_1 4242 4242 4242 4242") == "pi_1 [card number ••••4242]"


def test_ordinary_numbers_stay_as_they_are():
    """Luhn still decides: a phone number, a postal code, an amount, numbers of 13 to 19 digits that fail
    Luhn, a postal code beside a phone number (17 digits), a timestamp whose 16 digits pass Luhn but whose
    seconds are not a card's group."""
    for text in ("tel 011-123-4567", "〒060-0001", "合計 3,100円", "1234567890123", "1234567890123456",
                 "1234567890123456789", "〒060-0001 011-123-4567", "tel 011-123-4567 / 011-123-4568",
                 "created 1764331000.100001", "2026-11-28 12:16:00.123456", "223.182.253.19"):
        assert scrub_text(text) == text, text
    assert scrub_text("1764331000100001") == "[card number ••••0001]"  # the same 16 digits typed whole pass Luhn
