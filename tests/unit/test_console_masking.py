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
