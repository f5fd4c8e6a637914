"""Carts: a cart is checked out into an order and logically deleted once paid, never removed."""
from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, UniqueConstraint, bindparam, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from models.base import ID_TYPE, Base, enum_column, new_id, utcnow
from models.catalog import Product
from models.db import execute_at_commit
from models.errors import Conflict, InvalidInput, NotFound, TotalTooLarge

MAX_QUANTITY = 99
# The most one payment at Stripe can take: eight digits of the currency's smallest unit (¥99,999,999,
# $999,999.99); Stripe refuses a PaymentIntent for more. A cart or an order past it is refused
# here, saying so, before any stock is held (and before the order's total column could overflow).
LARGEST_CHARGE = 99_999_999


class CartStatus(str, enum.Enum):
    OPEN = "open"
    CHECKED_OUT = "checked_out"


def _require_quantity(quantity) -> None:
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidInput(f"quantity must be an integer from 1 to {MAX_QUANTITY}", field="quantity")


class Cart(Base):
    __tablename__ = "carts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("cart"))
    status: Mapped[CartStatus] = mapped_column(
        enum_column(CartStatus),
        default=CartStatus.OPEN,
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)

    items: Mapped[list["CartItem"]] = relationship(
        back_populates="cart", order_by="CartItem.id", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def currency(self) -> str | None:
        return self.items[0].currency if self.items else None

    @property
    def subtotal(self) -> int:
        return sum(i.unit_amount * i.quantity for i in self.items)

    def add(self, product: Product, quantity: int) -> "CartItem":
        if self.deleted_at is not None or self.status is not CartStatus.OPEN:
            raise Conflict(f"cart {self.id} is already checked out", field="cart_id")
        _require_quantity(quantity)
        if self.currency is not None and product.currency != self.currency:
            raise InvalidInput(
                f"{product.sku} is priced in {product.currency}, this cart in {self.currency}", field="sku"
            )
        item = next((i for i in self.items if i.sku == product.sku), None)
        if item is not None and item.quantity + quantity > MAX_QUANTITY:
            raise InvalidInput(f"at most {MAX_QUANTITY} of one sku per cart", field="quantity")
        held = item.quantity if item is not None else 0
        self.ensure_payable(self._subtotal_without(item) + product.unit_amount * (held + quantity), field="quantity")
        if item is None:
            item = CartItem(sku=product.sku, quantity=0, unit_amount=product.unit_amount, currency=product.currency)
            self.items.append(item)
        item.quantity += quantity
        item.unit_amount = product.unit_amount
        return item

    def change_quantity(self, item: "CartItem", quantity: int) -> None:
        """A line's new quantity (removing it is `items.remove`): refused past MAX_QUANTITY or past
        what one payment can take."""
        _require_quantity(quantity)
        self.ensure_payable(self._subtotal_without(item) + item.unit_amount * quantity, field="quantity")
        item.quantity = quantity

    def _subtotal_without(self, item: "CartItem | None") -> int:
        return sum(i.unit_amount * i.quantity for i in self.items if i is not item)

    def ensure_payable(self, total: int, *, field: str) -> None:
        """Refuse a total one payment at Stripe cannot take (TotalTooLarge, naming `field`)."""
        if total > LARGEST_CHARGE:
            raise TotalTooLarge(total, self.currency, LARGEST_CHARGE, field=field)

    def delete_logically(self) -> None:
        if self.deleted_at is None:
            self.deleted_at = utcnow()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "status": self.status.value,
            "items": [{"sku": i.sku, "quantity": i.quantity, "unit_amount": i.unit_amount} for i in self.items],
            "subtotal": self.subtotal,
            "currency": self.currency,
        }


class CartItem(Base):
    __tablename__ = "cart_items"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    cart_id: Mapped[str] = mapped_column(ForeignKey("carts.id"), index=True)
    sku: Mapped[str] = mapped_column(ForeignKey("products.sku"))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))

    cart: Mapped[Cart] = relationship(back_populates="items")

    __table_args__ = (
        UniqueConstraint("cart_id", "sku"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
    )


def reprice_cart(session: Session, cart: Cart) -> list[dict]:
    """Bring the cart's lines to the catalog's current prices; returns the lines that changed.

    A cart may wait for days: checkout charges what the catalog says now, never what it said
    when the item was added.
    """
    changes = []
    for item in cart.items:
        product = session.get(Product, item.sku)
        if product is not None and product.unit_amount != item.unit_amount:
            changes.append({"sku": item.sku, "quantity": item.quantity, "old_unit_amount": item.unit_amount,
                            "new_unit_amount": product.unit_amount})
            item.unit_amount = product.unit_amount
    return changes


def get_cart(session: Session, cart_id: str, *, for_update: bool = False) -> Cart:
    query = select(Cart).where(Cart.id == cart_id, Cart.deleted_at.is_(None))
    if for_update:
        query = query.with_for_update()
    cart = session.scalars(query).one_or_none()
    if cart is None:
        raise NotFound(f"no cart {cart_id}", field="cart_id")
    return cart


_DELETE_CART = (update(Cart.__table__)
                .where(Cart.__table__.c.id == bindparam("cart_id"), Cart.__table__.c.deleted_at.is_(None))
                .values(deleted_at=bindparam("now")))


def delete_cart_logically(session: Session, cart_id: str) -> None:
    """`Cart.delete_logically` in one Core UPDATE, built once, without loading the cart and its items
    (in a worker batch, with the batch's others at its commit: nothing reads a paid order's cart)."""
    execute_at_commit(session, _DELETE_CART, {"cart_id": cart_id, "now": utcnow()})
