"""Products and their stock. Stock is never negative and a unit is never reserved twice."""
from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from models.base import ID_TYPE, Base, enum_column, utcnow
from models.errors import NotFound, OutOfStock


class Product(Base):
    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    unit_amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    weight_grams: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    stock: Mapped["Stock"] = relationship(back_populates="product", uselist=False, lazy="joined")

    __table_args__ = (CheckConstraint("unit_amount >= 0", name="unit_amount_not_negative"),)

    def to_dict(self) -> dict:
        return {
            "sku": self.sku,
            "name": self.name,
            "unit_amount": self.unit_amount,
            "currency": self.currency,
            "on_hand": self.stock.on_hand,
            "reserved": self.stock.reserved,
            "available": self.stock.available,
        }


# on_hand is a 32-bit INTEGER column (alembic/versions/0001).
LARGEST_ON_HAND = 2**31 - 1


class Stock(Base):
    """Units on the shelf (`on_hand`) and units held by checkouts awaiting payment (`reserved`).

    `loaded_stock` is the figure the last catalog load gave this sku: the next load moves on_hand
    by how much its figure differs from it (`load_stock_figure`), so sales and restocks since stay.
    """

    __tablename__ = "stock"

    sku: Mapped[str] = mapped_column(ForeignKey("products.sku"), primary_key=True)
    on_hand: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    loaded_stock: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    product: Mapped[Product] = relationship(back_populates="stock")

    __table_args__ = (
        CheckConstraint("on_hand >= 0", name="on_hand_not_negative"),
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        CheckConstraint("reserved <= on_hand", name="reserved_within_on_hand"),
    )

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def reserve(self, quantity: int) -> None:
        _positive(quantity)
        if quantity > self.available:
            raise OutOfStock(self.sku, quantity, self.available)
        self.reserved += quantity

    def release(self, quantity: int) -> None:
        """Give back units a reservation held (expired, cancelled or failed checkout)."""
        _positive(quantity)
        if quantity > self.reserved:
            raise ValueError(f"cannot release {quantity} of {self.sku}: only {self.reserved} reserved")
        self.reserved -= quantity

    def consume(self, quantity: int) -> None:
        """Turn reserved units into a real decrement: they leave the shelf."""
        self.release(quantity)
        self.on_hand -= quantity

    def restock(self, quantity: int) -> None:
        """Units that left the reserved pool for an order that will not ship come back on the shelf."""
        _positive(quantity)
        self.on_hand += quantity

    def set_on_hand(self, on_hand: int) -> None:
        if on_hand < self.reserved:
            raise ValueError(f"{self.sku}: on hand {on_hand} is below the {self.reserved} units reserved")
        self.on_hand = on_hand

    def load_stock_figure(self, figure: int) -> None:
        """A catalog load's stock figure for this sku: on_hand moves by the figure less the one loaded last.

        The file's figure is the stock as of the load that brought it, not a count of the shelf now:
        setting on_hand to it would put every unit sold since back on sale (and undo what a refund
        put back). So an unchanged figure changes nothing, a higher one adds the units received, a
        lower one takes units off: refused if fewer would be left than checkouts hold, or fewer than
        none. A new sku (nothing loaded, nothing on hand) starts at its figure. Lock the row first.
        """
        on_hand = self.on_hand + figure - self.loaded_stock
        change = f"{self.sku}: stock {self.loaded_stock} -> {figure} would"
        if on_hand < 0:
            raise ValueError(f"{change} take {self.loaded_stock - figure} off the {self.on_hand} on hand "
                             f"(units sold since the last load stay sold)")
        if on_hand < self.reserved:
            raise ValueError(f"{change} leave {on_hand} on hand, below the {self.reserved} units reserved by checkouts")
        if on_hand > LARGEST_ON_HAND:
            raise ValueError(f"{change} put {on_hand} on hand, past {LARGEST_ON_HAND}, the most the column holds")
        self.set_on_hand(on_hand)
        self.loaded_stock = figure


def _positive(quantity: int) -> None:
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
        raise ValueError(f"quantity must be a positive integer, got {quantity!r}")


def lock_stock(session: Session, sku: str) -> Stock:
    """Load a stock row for update (a row lock on PostgreSQL; SQLite's write lock is already held)."""
    stock = session.scalars(select(Stock).where(Stock.sku == sku).with_for_update()).one_or_none()
    if stock is None:
        raise NotFound(f"unknown sku {sku}", field="sku")
    return stock


class SoldUnits:
    """Reserved units a transaction turns into sold ones, per sku, written in one UPDATE per sku
    just before its commit (`apply`), so the stock row is locked only for the commit.

    Consuming held units changes `on_hand` and `reserved` alike and leaves `available` as it
    was: nothing decided on a stock row in the same transaction depends on whether it was
    written yet, and the relative UPDATE adds to whatever the row holds then. Whatever must
    read stock to decide (reserving, releasing, staff's accept) still locks the row at once.
    Attached to a session with `collect_sold_units`; without it units are consumed at once.
    """

    def __init__(self) -> None:
        self.units: dict[str, int] = {}

    def consume(self, sku: str, quantity: int) -> None:
        _positive(quantity)
        self.units[sku] = self.units.get(sku, 0) + quantity

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Around a savepoint: if it is rolled back, what was collected inside it is dropped too."""
        kept = dict(self.units)
        try:
            yield
        except BaseException:
            self.units = kept
            raise

    def apply(self, session: Session) -> None:
        """Flush the session's own changes, then write the units, in sku order (as checkouts lock)."""
        if not self.units:
            return
        session.flush()
        for sku, quantity in sorted(self.units.items()):
            written = session.execute(
                update(Stock).where(Stock.sku == sku)
                .values(on_hand=Stock.on_hand - quantity, reserved=Stock.reserved - quantity)
                .execution_options(synchronize_session=False))
            if written.rowcount != 1:
                raise NotFound(f"unknown sku {sku}", field="sku")
        for obj in list(session.identity_map.values()):
            if isinstance(obj, Stock) and obj.sku in self.units:
                session.expire(obj)  # its loaded values are behind the row now
        self.units = {}


_SOLD_UNITS = "sold_units"


def collect_sold_units(session: Session) -> SoldUnits:
    """From now on this session's consumed units are collected, to be applied before its commit."""
    return session.info.setdefault(_SOLD_UNITS, SoldUnits())


def sold_units(session: Session) -> SoldUnits | None:
    return session.info.get(_SOLD_UNITS)


class ReservationStatus(str, enum.Enum):
    ACTIVE = "active"
    CONSUMED = "consumed"      # paid: the units left on_hand for the order's shipment
    RELEASED = "released"      # expired or cancelled before payment: the units were never taken
    RETURNED = "returned"      # consumed, then the order was refunded or cancelled before shipping


class Reservation(Base):
    """Units held for one order until it is paid or the hold expires."""

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    sku: Mapped[str] = mapped_column(ForeignKey("products.sku"))
    quantity: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    status: Mapped[ReservationStatus] = mapped_column(
        enum_column(ReservationStatus),
        default=ReservationStatus.ACTIVE,
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        # The expiry sweep: active holds past their time, without scanning every reservation ever made.
        Index("ix_reservations_status_expires_at", "status", "expires_at"),
    )
