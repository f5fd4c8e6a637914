"""What the console never shows: customers' contact details inside payloads, card numbers,
client secrets and API or webhook secrets, wherever they turn up (a payload, an error, a note), and
an order's access token (a link holding it opens the buyer's details to anyone who has it).
"""
from __future__ import annotations

import json
import re

from models.logs import redact

MASK = "•••"

# Keys whose values are a person's contact details (Stripe's billing_details, shipping,
# customer_details, receipt_email; our mails' `to`), or a secret.
_PRIVATE_KEYS = frozenset({"name", "email", "phone", "address", "shipping", "billing_details", "customer_details",
                           "line1", "line2", "city", "postal_code", "state", "to", "receipt_email",
                           "customer_email", "customer_name", "customer_phone", "customer_address"})
# Any key naming an address (a card's address_line1 and address_zip, dispute evidence's
# billing_address, a source owner's verified_address, ip_address), an e-mail, a phone or a secret.
_PRIVATE_KEY_PARTS = ("email", "phone", "secret", "password", "address")
# Suffixes of a person's name (verified_name, customer_name) and of an IP address (customer_purchase_ip).
_PRIVATE_KEY_ENDINGS = ("_name", "_ip")
# A token in a link (our mails' my_page_path: /orders/ID?token=…): the link stays, the token goes.
_TOKEN_IN_LINK = re.compile(r"([?&](?:access_)?token=)[^&#\s\"'<>]+")

# A client secret (`pi_…_secret_…`, `seti_…_secret_…`) and Stripe's key and webhook-secret prefixes.
_SECRET = re.compile(r"\b(?:[a-z]+_[A-Za-z0-9]+_secret_[A-Za-z0-9]+|whsec_[A-Za-z0-9]+|"
                     r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9_]+)")
# 13 to 19 digits, optionally grouped by spaces or dashes: checked with Luhn before masking. Digits
# and separators as a Japanese input method types them count too (full-width digits, the
# ideographic space, full-width and other dashes, the long-vowel mark).
_DIGIT_RUN = re.compile(r"(?<![\w])(?:\d[ \t\u00a0\u3000\-\u2010-\u2015\u2212\uff0d\u30fc]?){12,18}\d(?![\w])")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _mask_card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return f"[card number ••••{digits[-4:]}]" if _luhn_ok(digits) else match.group(0)


def scrub_text(text: str) -> str:
    """Card numbers, client secrets and API/webhook secrets masked in any text (a whole page too)."""
    return _DIGIT_RUN.sub(_mask_card, _SECRET.sub(MASK, text))


def _is_private(key: str) -> bool:
    lowered = key.lower()
    if lowered.endswith("_check"):  # Stripe's verification results (address_zip_check: "pass"), no one's details
        return False
    # A key with the word `token` (token, access_token) holds a bearer credential, e.g. an order's.
    return (lowered in _PRIVATE_KEYS or lowered == "ip" or lowered.endswith(_PRIVATE_KEY_ENDINGS)
            or any(part in lowered for part in _PRIVATE_KEY_PARTS) or "token" in lowered.split("_"))


def mask_payload(value, private_values: tuple[str, ...] = ()):
    """A copy of a JSON value with customers' details and secrets masked at any depth.

    A private key keeps its place (so staff see the field was there and set) with its value
    masked; `private_values` (the order's e-mail, name, address and access token) are masked inside
    any text, e.g. a mail's body; e-mail addresses and a link's `token=` value anywhere are masked too.
    """
    if isinstance(value, dict):
        return {key: (MASK if _is_private(str(key)) and item not in (None, "", {}, [])
                      else mask_payload(item, private_values)) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_payload(item, private_values) for item in value]
    if isinstance(value, str):
        for private in private_values:
            if private and len(private) >= 3:
                value = value.replace(private, MASK)
        return scrub_text(redact(_TOKEN_IN_LINK.sub(rf"\g<1>{MASK}", value)))
    return value


def pretty_masked(payload: str | dict, private_values: tuple[str, ...] = ()) -> str:
    """A payload as indented JSON for staff eyes, masked; text that is not JSON is masked as text."""
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return mask_payload(payload, private_values)
    return json.dumps(mask_payload(payload, private_values), indent=2, sort_keys=True, ensure_ascii=False)


# SQLAlchemy's error text ends with the statement's bound parameters: an order's address, an
# event's payload. A traceback shows the statement; its values are masked.
_BOUND_PARAMETERS = re.compile(r"^\[parameters: .*$", re.M)


def mask_error(text: str, private_values: tuple[str, ...] = ()) -> str:
    """An error or traceback for staff eyes: bound parameters, customer details and secrets masked."""
    return mask_payload(_BOUND_PARAMETERS.sub(f"[parameters: {MASK}]", text), private_values)
