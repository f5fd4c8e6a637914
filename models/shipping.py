"""The shipping-fee table: a fee per prefecture, a default, and free shipping over a threshold."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base

DEFAULT = "default"

PREFECTURES = (
    "Hokkaido", "Aomori", "Iwate", "Miyagi", "Akita", "Yamagata", "Fukushima", "Ibaraki",
    "Tochigi", "Gunma", "Saitama", "Chiba", "Tokyo", "Kanagawa", "Niigata", "Toyama",
    "Ishikawa", "Fukui", "Yamanashi", "Nagano", "Gifu", "Shizuoka", "Aichi", "Mie", "Shiga",
    "Kyoto", "Osaka", "Hyogo", "Nara", "Wakayama", "Tottori", "Shimane", "Okayama",
    "Hiroshima", "Yamaguchi", "Tokushima", "Kagawa", "Ehime", "Kochi", "Fukuoka", "Saga",
    "Nagasaki", "Kumamoto", "Oita", "Miyazaki", "Kagoshima", "Okinawa",
)


def canonical_prefecture(name: str) -> str | None:
    """The prefecture's canonical spelling, accepting any case and a trailing -ken/-fu/-to."""
    key = name.strip().lower()
    for suffix in ("-ken", "-fu", "-to", " prefecture"):
        if key.endswith(suffix) and key[: -len(suffix)] in _BY_LOWER:
            key = key[: -len(suffix)]
    return _BY_LOWER.get(key)


_BY_LOWER = {p.lower(): p for p in PREFECTURES}


class ShippingRate(Base):
    __tablename__ = "shipping_rates"

    prefecture: Mapped[str] = mapped_column(String(32), primary_key=True)
    fee: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    # The same threshold on every row of one table; kept per row so the table is one query.
    free_over: Mapped[int | None] = mapped_column(Integer, default=None)


@dataclass(frozen=True)
class ShippingTable:
    fees: dict[str, int]
    default_fee: int | None
    free_over: int | None
    # The currency of its fees and threshold (every row's, as one catalog load writes them); rows that
    # disagree read "jpy/usd", which no cart's currency is. None for a shop without rates.
    currency: str | None = None

    def fee_for(self, prefecture: str, subtotal: int) -> int:
        if self.free_over is not None and subtotal >= self.free_over:
            return 0
        if prefecture in self.fees:
            return self.fees[prefecture]
        if self.default_fee is None:
            raise LookupError(f"no shipping rate for {prefecture} and no default rate")
        return self.default_fee


def shipping_fee(table: ShippingTable, prefecture: str, subtotal: int) -> int:
    return table.fee_for(prefecture, subtotal)


def load_shipping_table(session: Session) -> ShippingTable:
    rows = session.scalars(select(ShippingRate)).all()
    fees = {r.prefecture: r.fee for r in rows if r.prefecture != DEFAULT}
    default = next((r.fee for r in rows if r.prefecture == DEFAULT), None)
    free_over = next((r.free_over for r in rows if r.free_over is not None), None)
    currency = "/".join(sorted({r.currency.lower() for r in rows})) or None
    return ShippingTable(fees=fees, default_fee=default, free_over=free_over, currency=currency)
