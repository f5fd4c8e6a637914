"""What the console never shows: customers' contact details inside payloads, card numbers (and an
expiry or security code typed right after one), client secrets and API or webhook secrets, wherever they
turn up (a payload, an error, a note), and an order's access token (a link holding it opens the buyer's
details to anyone who has it).
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
# A card number as people type it: 13 to 19 digits, whole or in groups. Between groups, up to six
# separators: spaces (the ideographic space and line breaks too), dots, slashes, dashes (full-width and
# other dashes, the long-vowel mark a Japanese input method types). Six covers what typing puts between two
# groups ("4242    4242", "4242  -  4242", a line break with a few spaces of indent); a wider gap is layout
# (aligned columns), and numbers with anything else between them (a letter, a comma, a colon, a bracket,
# a tag) never join at any distance. Any Unicode digit counts, so full-width ４２４２ is found as 4242 (what
# NFKC would make of it) without rewriting the page around it.
# Its edges are any character but a digit: a number glued to Japanese text ("カード番号4242…") or to a
# word ("Room4242…") is still found. The run's lookahead skips, without a Python call, every number on a
# page that has fewer than 13 digits; it looks at most 13 groups of six separators ahead of a digit, and
# the run itself never backtracks more than six characters, so a page costs time in proportion to its
# length whatever it holds.
_SEPARATOR = r"[ \t\r\n\u00a0\u3000./\uff0e\uff0f\-\u2010-\u2015\u2212\uff0d\u30fc]"
_MOST_SEPARATORS = 6
_DIGIT_RUN = re.compile(rf"(?<!\d)(?=(?:\d{_SEPARATOR}{{0,{_MOST_SEPARATORS}}}){{13}})\d+"
                        rf"(?:{_SEPARATOR}{{1,{_MOST_SEPARATORS}}}\d+)*")
_DIGIT_GROUP = re.compile(r"\d+")
# People group a card's digits by 4 (Amex 4-6-5, Diners 4-6-4); a longer group among others is not a
# card typed in groups but numbers side by side (a timestamp's seconds and fraction, 1764331000.123456).
_LONGEST_GROUP = 8
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a digit doubled, its two digits summed (Luhn)
# Stripe's ids are at most 255 characters: looking no further keeps a hostile page of digits glued to
# letters from costing a walk over the whole page for each number.
_LONGEST_ID = 255
_ID_CHARACTERS = re.compile(r"[A-Za-z0-9_]*")
# An id is lowercase words each ended by `_` (pi_, evt_, sub_sched_), then a token. Stripe's token is random
# base62 (pi_3MtwBwLkdIwHu7ix28a3tqPa): digits inside one sit among letters. Ours (models.base.new_id) are 16
# hex digits, all of them digits for about one order in 1,800, so our prefixes are known by name.
_ID_PREFIX = re.compile(r"(?:[a-z]+_)+")
_LETTER = re.compile(r"[A-Za-z]")
_OWN_ID_PREFIXES = frozenset({"ord_", "cart_", "shp_", "req_"})
_OWN_ID_TOKEN = re.compile(r"[0-9a-f]{16}")
_SHORTEST_CARD = 13


def _in_identifier(text: str, start: int, end: int) -> bool:
    """Digits inside an id like pi_3Mtw…, evt_1N…, ord_… (staff search by these, so they stay readable),
    but not a card number glued to a word by `_` ("card_4242…", "4242…_exp", "card_4242…exp"): there the token
    after the prefix is, or opens with, the card's digits."""
    # The word before is read backwards: a search for it forwards would try each of the 255 places.
    window = text[max(0, start - _LONGEST_ID):start][::-1]
    before = _ID_CHARACTERS.match(window).group()[::-1]
    after = _ID_CHARACTERS.match(text, end, end + _LONGEST_ID).group()
    prefix, underscore, token_start = before.rpartition("_")
    prefix += underscore
    if not _ID_PREFIX.fullmatch(prefix):
        return False
    token = token_start + text[start:end] + after.partition("_")[0]
    if prefix in _OWN_ID_PREFIXES and _OWN_ID_TOKEN.fullmatch(token):
        return True
    # A token that opens with 13 digits or more ("card_4242…exp") is a card glued to words on both sides:
    # Stripe's random base62 token opens so about once in 10^10 ids.
    if not token_start and end - start >= _SHORTEST_CARD:
        return False
    return bool(_LETTER.search(token))


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


# What a customer types after a card number: its expiry (MM/YY, MM/YYYY, MM-YY) and security code, bare or
# after a label ("exp 12/34 cvc 123", "有効期限12/34 セキュリティコード123"). Looked for only within a few words after
# a masked card: the same digits elsewhere (a postal code, a room number, an amount, a date) are an
# address's own. The window ends at a tag ("<": a customer's own is escaped), so on a page it never reaches
# the next field; a value glued to more digits (060-0001, 2026/11/28, 123.45) or to a word (305号室, 3100円)
# is not one.
_MASKED_CARD = re.compile(r"\[card number ••••\d{4}\]")
_DETAILS_WINDOW = 40
_WIDE_DIGIT = "[0-9\uff10-\uff19]"
_DETAIL_LABEL = (r"(?:exp(?:ir(?:y|es|ation))?(?:[ \t]?date)?|valid[ \t]?(?:thru|through|until)|good[ \t]?thru"
                 r"|cvc2?|cvv2?|cid|csc|security[ \t]?code|card[ \t]?code"
                 r"|有効期限|期限|セキュリティー?コード|確認コード|確認番号)")
_DETAIL_GAP = r"[ \t\r\n\u00a0\u3000,;:.=|()/\-\uff1a\u3001\u3002\uff1d\uff08\uff09\uff0f\uff0d]"
_DATE_SEPARATOR = "[/\\-\uff0f\uff0d]"
_DETAIL_END = rf"(?!{_WIDE_DIGIT}|[/\-.\uff0e\uff0f\uff0d]{_WIDE_DIGIT})(?=\Z|\W|{_DETAIL_LABEL})"
_DETAIL = re.compile(
    rf"(?:{_DETAIL_GAP}|{_DETAIL_LABEL}){{0,{_DETAILS_WINDOW}}}"
    rf"(?:(?P<expiry>(?:[0\uff10]?[1-9\uff11-\uff19]|[1\uff11][0-2\uff10-\uff12]){_DATE_SEPARATOR}"
    rf"{_WIDE_DIGIT}{{2}}(?:{_WIDE_DIGIT}{{2}})?)|(?P<code>{_WIDE_DIGIT}{{3,4}})){_DETAIL_END}", re.I)
# A card typed in groups whose digits and a one-digit month pass Luhn together ("4242 4242 4242 0034 1/35")
# is masked with the month (a card's longest span is taken): the year is left glued to the mask.
_EXPIRY_YEAR_LEFT = re.compile(rf"{_DATE_SEPARATOR}{_WIDE_DIGIT}{{2}}(?:{_WIDE_DIGIT}{{2}})?{_DETAIL_END}", re.I)


def _mask_card_details(text: str) -> str:
    """An expiry and a security code (one of each) typed within a few words after a masked card, masked."""
    pieces, done = [], 0
    for card in _MASKED_CARD.finditer(text):
        position, seen = card.end(), set()
        year_left = _EXPIRY_YEAR_LEFT.match(text, position)
        if year_left:
            pieces += [text[done:position], MASK]
            done = position = year_left.end()
            seen.add("expiry")
        while len(seen) < 2:
            detail = _DETAIL.match(text, position)
            kind = detail and detail.lastgroup
            if not detail or kind in seen or detail.start(kind) - card.end() > _DETAILS_WINDOW:
                break
            pieces += [text[done:detail.start(kind)], MASK]
            done = position = detail.end()
            seen.add(kind)
    return "".join(pieces) + text[done:]


def scrub_text(text: str) -> str:
    """Card numbers (with an expiry or code typed right after), client secrets and API/webhook secrets
    masked in any text (a whole page too)."""
    return _mask_card_details(_DIGIT_RUN.sub(_mask_cards, _SECRET.sub(MASK, text)))


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
