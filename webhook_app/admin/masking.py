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
# A card number as people type it: 13 to 19 digits, whole or in groups. Between groups, up to three
# separators: spaces (the ideographic space and line breaks too), dots, slashes, dashes (full-width and
# other dashes, the long-vowel mark a Japanese input method types). Any Unicode digit counts, so
# full-width ４２４２ is found as 4242 (what NFKC would make of it) without rewriting the page around it.
# Its edges are any character but a digit: a number glued to Japanese text ("カード番号4242…") or to a
# word ("Room4242…") is still found. The run's lookahead skips, without a Python call, every number on a
# page that has fewer than 13 digits.
_SEPARATOR = r"[ \t\r\n\u00a0\u3000./\uff0e\uff0f\-\u2010-\u2015\u2212\uff0d\u30fc]"
_DIGIT_RUN = re.compile(rf"(?<!\d)(?=(?:\d{_SEPARATOR}{{0,3}}){{13}})\d+(?:{_SEPARATOR}{{1,3}}\d+)*")
_DIGIT_GROUP = re.compile(r"\d+")
# People group a card's digits by 4 (Amex 4-6-5, Diners 4-6-4); a longer group among others is not a
# card typed in groups but numbers side by side (a timestamp's seconds and fraction, 1764331000.123456).
_LONGEST_GROUP = 8
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a digit doubled, its two digits summed (Luhn)
# Stripe's ids are at most 255 characters: looking no further keeps a hostile page of digits glued to
# letters from costing a walk over the whole page for each number.
_LONGEST_ID = 255
_ID_BEFORE = re.compile(r"[A-Za-z0-9_]*\Z")
_ID_AFTER = re.compile(r"[A-Za-z0-9_]*")


def _in_identifier(text: str, start: int, end: int) -> bool:
    """Digits inside an id like pi_3Mtw…, evt_…, ord_… (an ASCII word with an underscore): staff search
    by these, so they stay readable."""
    before = _ID_BEFORE.search(text, max(0, start - _LONGEST_ID), start).group()
    after = _ID_AFTER.match(text, end, end + _LONGEST_ID).group()
    return "_" in before or "_" in after


def _card_spans(groups: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """(start, end, digits) of each card number among consecutive digit groups: a card starts and ends
    at a group's edge (so "2-1-1 4242424242424242", an address's block number before it, is found)."""
    digits = "".join(group[2] for group in groups)
    # Luhn sums by prefix, for either parity of the last digit: any span's check is two look-ups, so a
    # run of thousands of short groups (a list of numbers, or a hostile address) costs little.
    sums = ([0], [0])
    for position, char in enumerate(digits):
        plain, doubled = int(char), _DOUBLED[int(char)]
        sums[0].append(sums[0][-1] + (plain if position % 2 == 0 else doubled))
        sums[1].append(sums[1][-1] + (doubled if position % 2 == 0 else plain))
    offsets = [0]
    for group in groups:
        offsets.append(offsets[-1] + len(group[2]))
    found, first = [], 0
    while first < len(groups):
        chosen, last, longest = None, first, 0
        while last < len(groups) and offsets[last + 1] - offsets[first] <= 19:
            longest = max(longest, len(groups[last][2]))
            start, end = offsets[first], offsets[last + 1]
            table = sums[(end - 1) % 2]  # the last digit is never doubled
            if (end - start >= 13 and (last == first or longest <= _LONGEST_GROUP)
                    and (table[end] - table[start]) % 10 == 0):
                chosen = last  # the longest that passes: no digit of a card left out
            last += 1
        if chosen is None:
            first += 1
        else:
            found.append((groups[first][0], groups[chosen][1], digits[offsets[first]:offsets[chosen + 1]]))
            first = chosen + 1
    return found


def _mask_cards(match: re.Match) -> str:
    text, offset = match.string, match.start()
    run = match.group(0)
    # An id's digits split the run: a card is looked for on either side of them, never through them.
    segments: list[list[tuple[int, int, str]]] = [[]]
    for group in _DIGIT_GROUP.finditer(run):
        if _in_identifier(text, offset + group.start(), offset + group.end()):
            segments.append([])
        else:  # any Unicode digit as its ASCII digit, as NFKC would make it
            segments[-1].append((group.start(), group.end(), "".join(str(int(char)) for char in group.group())))
    pieces, done = [], 0
    for segment in segments:
        for start, end, digits in _card_spans(segment):
            pieces += [run[done:start], f"[card number ••••{digits[-4:]}]"]
            done = end
    return "".join(pieces) + run[done:]


def scrub_text(text: str) -> str:
    """Card numbers, client secrets and API/webhook secrets masked in any text (a whole page too)."""
    return _DIGIT_RUN.sub(_mask_cards, _SECRET.sub(MASK, text))


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
