"""Amounts in minor units written for people, by their currency: the shop's screens, the buyer's
mails and the staff console all write them through `money`, so ¥3,100 is never shown for $31.00."""
from __future__ import annotations

# Currencies Stripe counts in whole units (no minor unit): 1200 jpy is ¥1,200.
ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd",
                          "vuv", "xaf", "xof", "xpf"})
# Currencies Stripe counts in thousandths: 5120 kwd is 5.120 KWD. Every other one is in hundredths.
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
# The signs the shop's screens put before an amount; any other currency is followed by its code.
SIGNS = {"jpy": "¥", "usd": "$", "eur": "€", "gbp": "£"}


def decimal_places(currency: str) -> int:
    code = currency.lower()
    return 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2


def money(amount: int | None, currency: str | None, *, sign: bool = False) -> str:
    """Minor units as a person reads them: `3,100 JPY`, `12.50 EUR`; with `sign`, as the shop's screens
    write them: `¥3,100`, `$31.00`, `€12.50`, `£9.99`, and `12.50 CHF` for a currency without a sign
    there. `-` for no amount; an amount of no known currency is written as the bare integer."""
    if amount is None:
        return "-"
    if not currency:
        return f"{amount:,}"
    places = decimal_places(currency)
    whole, minor = divmod(abs(amount), 10 ** places)
    figure = f"{whole:,}" + (f".{minor:0{places}d}" if places else "")
    minus, code = ("-" if amount < 0 else ""), currency.lower()
    if sign and code in SIGNS:
        return f"{minus}{SIGNS[code]}{figure}"
    return f"{minus}{figure} {code.upper()}"


def per_currency(amounts: dict[str, int]) -> str:
    """Minor units per currency as the worker's alerts and staff's audit rows write them (the figures
    Stripe's API and dashboard show): `2000 usd, 3100 jpy`, in the currencies' order."""
    return ", ".join(f"{amount} {currency}" for currency, amount in sorted(amounts.items()))
