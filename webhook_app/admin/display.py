"""How the console writes amounts, times and reasons for people: template filters and sentences."""
from __future__ import annotations

import re
from datetime import datetime, timezone

from models.money import money  # the console writes amounts as mails do: 1,200 JPY, 12.50 EUR


def when(at: datetime | None) -> str:
    if at is None:
        return "-"
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


_AMOUNT = re.compile(r"amount mismatch: paid (\S+) (\S*), order total (\S+) (\S+)")
_STOCK = re.compile(r"paid but the stock is no longer held: (.+)")
_AFTER_CANCEL = re.compile(r"paid after the order was cancelled \((.*)\)")


def _amount(text: str, currency: str) -> str:
    return money(int(text), currency) if text.isdigit() else f"{text} {currency.upper()}"


def review_sentence(reason: str | None) -> str:
    """Why an order is in review, as one sentence a person acts on (the stored reason is terse)."""
    if not reason:
        return "Flagged for review; no reason was recorded."
    if match := _AMOUNT.fullmatch(reason):
        paid, paid_currency, total, currency = match.groups()
        if paid_currency and paid_currency.lower() != currency.lower():
            return (f"The customer paid {_amount(paid, paid_currency)}, but the order is in {currency.upper()} "
                    f"for {_amount(total, currency)}: the currency differs.")
        return (f"The customer paid {_amount(paid, currency)}, but the order's total is {_amount(total, currency)}: "
                f"the amounts differ.")
    if match := _STOCK.fullmatch(reason):
        return (f"The customer paid, but the stock held for the order was no longer there ({match.group(1)}): "
                f"its hold had expired and the units may have been sold since.")
    if match := _AFTER_CANCEL.fullmatch(reason):
        return (f"The customer paid after the order had been cancelled ({match.group(1)}), so the money is "
                f"taken for an order that was no longer going to ship.")
    return f"{reason[:1].upper()}{reason[1:]}{'' if reason.endswith('.') else '.'}"
