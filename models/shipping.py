"""The shipping-fee table: a fee per prefecture, a default, and free shipping over a threshold."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from sqlalchemy import Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base

DEFAULT = "default"

# Japan's 47 prefectures in the official (JIS X 0401) order: the romaji name the service stores and shows,
# and the Japanese name with its suffix (都/道/府/県) as the Japanese screens write it. One list, so the names
# a buyer may type and the labels the screens show cannot drift apart.
_ROMAJI_AND_KANJI = (
    ("Hokkaido", "北海道"), ("Aomori", "青森県"), ("Iwate", "岩手県"), ("Miyagi", "宮城県"), ("Akita", "秋田県"),
    ("Yamagata", "山形県"), ("Fukushima", "福島県"), ("Ibaraki", "茨城県"), ("Tochigi", "栃木県"), ("Gunma", "群馬県"),
    ("Saitama", "埼玉県"), ("Chiba", "千葉県"), ("Tokyo", "東京都"), ("Kanagawa", "神奈川県"), ("Niigata", "新潟県"),
    ("Toyama", "富山県"), ("Ishikawa", "石川県"), ("Fukui", "福井県"), ("Yamanashi", "山梨県"), ("Nagano", "長野県"),
    ("Gifu", "岐阜県"), ("Shizuoka", "静岡県"), ("Aichi", "愛知県"), ("Mie", "三重県"), ("Shiga", "滋賀県"),
    ("Kyoto", "京都府"), ("Osaka", "大阪府"), ("Hyogo", "兵庫県"), ("Nara", "奈良県"), ("Wakayama", "和歌山県"),
    ("Tottori", "鳥取県"), ("Shimane", "島根県"), ("Okayama", "岡山県"), ("Hiroshima", "広島県"), ("Yamaguchi", "山口県"),
    ("Tokushima", "徳島県"), ("Kagawa", "香川県"), ("Ehime", "愛媛県"), ("Kochi", "高知県"), ("Fukuoka", "福岡県"),
    ("Saga", "佐賀県"), ("Nagasaki", "長崎県"), ("Kumamoto", "熊本県"), ("Oita", "大分県"), ("Miyazaki", "宮崎県"),
    ("Kagoshima", "鹿児島県"), ("Okinawa", "沖縄県"),
)

PREFECTURES = tuple(romaji for romaji, _ in _ROMAJI_AND_KANJI)
PREFECTURE_NAMES_JA = dict(_ROMAJI_AND_KANJI)

# What a prefecture field takes, for the messages that refuse one.
ACCEPTED_PREFECTURES = "one of Japan's 47 prefectures, in romaji such as Hokkaido or in Japanese such as 北海道"


def canonical_prefecture(name: str) -> str | None:
    """The prefecture's canonical (romaji) spelling, or None.

    Takes the romaji name in any case, with or without -ken/-fu/-to or " Prefecture", and the Japanese
    name with or without its 都/府/県 (東京都 and 東京, 京都府 and 京都); 北海道's 道 is part of its name.
    Full-width letters and spaces count as their half-width forms; spaces around the name are trimmed.
    """
    key = unicodedata.normalize("NFKC", name).strip()
    if key in _BY_KANJI:
        return _BY_KANJI[key]
    key = key.lower()
    for suffix in ("-ken", "-fu", "-to", " prefecture"):
        if key.endswith(suffix) and key[: -len(suffix)] in _BY_LOWER:
            key = key[: -len(suffix)]
    return _BY_LOWER.get(key)


_BY_LOWER = {romaji.lower(): romaji for romaji in PREFECTURES}
# Each Japanese name as written (北海道, 東京都) and without its 都/府/県 (東京); never without 北海道's 道.
_BY_KANJI = {kanji: romaji for romaji, kanji in _ROMAJI_AND_KANJI} | {
    kanji[:-1]: romaji for romaji, kanji in _ROMAJI_AND_KANJI if kanji[-1] in "都府県"}


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
