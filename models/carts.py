"""Carts: a cart is checked out into an order and logically deleted once paid, never removed."""
from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, UniqueConstraint, bindparam, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from models.base import ID_TYPE, Base, enum_column, new_id, utcnow
from models.catalog import Product
from models.db import execute_at_commit
from models.errors import Conflict, InvalidInput, NotFound, PriceChanged, TotalTooLarge

MAX_QUANTITY = 99
# The most one payment at Stripe can take: eight digits of the currency's smallest unit (¥99,999,999,
# $999,999.99); Stripe refuses a PaymentIntent for more. A cart or an order past it is refused
# here, saying so, before any stock is held (and before the order's total column could overflow).
LARGEST_CHARGE = 99_999_999
# The least one payment at Stripe can take, in the currency's smallest unit, for the currencies a shop
# here sells in: Stripe's table "Minimum and maximum charge amounts" (docs.stripe.com/currencies,
# read 2026-11: ¥50, $0.50, €0.50, £0.30). Stripe refuses a PaymentIntent for less (and for 0 in every
# currency); an order under it is refused at checkout, naming the cart, before any stock is held,
# rather than answered as a Stripe failure. Another currency is held to 1 (a total of 0 or less is
# never a payment); a higher minimum Stripe has for it still comes back as Stripe's refusal.
SMALLEST_CHARGE = {"jpy": 50, "usd": 50, "eur": 50, "gbp": 30}


def smallest_charge(currency: str | None) -> int:
    return SMALLEST_CHARGE.get((currency or "").lower(), 1)


class TotalTooSmall(InvalidInput):
    """An order total under the least one payment at Stripe can take (SMALLEST_CHARGE)."""

    code = "total_too_small"

    def __init__(self, cart_id: str, total: int, currency: str | None, smallest: int):
        super().__init__(f"the total of cart {cart_id} would be {total} {currency or ''}".rstrip()
                         + f", under {smallest}, the least one payment at Stripe can take: add items to the cart",
                         field="cart_id")
        self.cart_id = cart_id
        self.total = total
        self.smallest = smallest


class CurrencyMismatch(Conflict):
    """The cart's lines, or its lines and the shop's shipping rates, are priced in different currencies:
    no one payment can charge them (the catalog was loaded in another currency, in part)."""

    code = "currency_mismatch"


class PriceChangedBeforeAdding(PriceChanged):
    """Adding `sku` found the cart's lines priced in another currency than the catalog's now: the cart
    was brought to the catalog's prices (committed) and nothing was added, as checkout refuses a
    re-priced cart: the buyer sees the new prices before adding to them (and before checkout charges
    them: it finds nothing changed since)."""

    def __init__(self, cart_id: str, sku: str, changes: list[dict], subtotal: int, currency: str | None):
        super().__init__(cart_id, changes, subtotal, currency)
        # Checkout's sentence (the changed lines, the new subtotal), with what to do after an addition instead.
        said = self.message.removesuffix(": confirm the new total and check out again")
        self.message = f"{said}, and {sku} was not added: confirm the new prices and add it again"
        self.args = (self.message,)
        self.sku = sku


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

    def ensure_open(self) -> None:
        if self.deleted_at is not None or self.status is not CartStatus.OPEN:
            raise Conflict(f"cart {self.id} is already checked out", field="cart_id")

    def add(self, product: Product, quantity: int) -> "CartItem":
        self.ensure_open()
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

    def ensure_payable(self, total: int, *, field: str, charged: bool = False) -> None:
        """Refuse a total one payment at Stripe cannot take: over LARGEST_CHARGE (TotalTooLarge, naming
        `field`) or, for the total about to be charged (`charged`, at checkout), under the currency's
        smallest charge (TotalTooSmall, naming the cart). A cart being filled may hold less: its next
        line may bring it over."""
        if total > LARGEST_CHARGE:
            raise TotalTooLarge(total, self.currency, LARGEST_CHARGE, field=field)
        if charged and total < smallest_charge(self.currency):
            raise TotalTooSmall(self.id, total, self.currency, smallest_charge(self.currency))

    def ensure_one_currency(self, shipping_currency: str | None) -> None:
        """Refuse (CurrencyMismatch, 409) a cart that cannot be charged as one payment in its currency: lines
        in several currencies, or shipping rates in another currency than its lines (the fee and the
        free-shipping threshold would be read as amounts of the cart's currency)."""
        currencies = sorted({item.currency for item in self.items})
        if len(currencies) > 1:
            raise CurrencyMismatch(f"cart {self.id} holds lines priced in {' and '.join(currencies)}; one payment "
                                   f"is in one currency: remove the lines of one of them", field="cart_id")
        if shipping_currency is not None and currencies and shipping_currency != currencies[0]:
            raise CurrencyMismatch(f"cart {self.id} is priced in {currencies[0]} but the shop's shipping rates are "
                                   f"in {shipping_currency}; nothing was reserved: please try again once the shop "
                                   f"has corrected its catalog", field="cart_id")

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
    when the item was added. A price is an amount and its currency: 1200 in a catalog reloaded
    from `usd` to `jpy` is another price (charged as it was, ¥1,200 would be $12.00), so a line
    whose currency changed is a changed line too, and says both currencies.
    """
    changes = []
    for item in cart.items:
        product = session.get(Product, item.sku)
        if product is None or (product.unit_amount, product.currency) == (item.unit_amount, item.currency):
            continue
        change = {"sku": item.sku, "quantity": item.quantity, "old_unit_amount": item.unit_amount,
                  "new_unit_amount": product.unit_amount}
        if product.currency != item.currency:
            change.update(old_currency=item.currency, new_currency=product.currency)
        changes.append(change)
        item.unit_amount, item.currency = product.unit_amount, product.currency
    return changes


def reprice_before_adding(session: Session, cart: Cart, product: Product) -> list[dict]:
    """Before `product` is added: a cart holding lines in another currency than the product's (the
    catalog was loaded again in another currency since they were added) is brought to the catalog's
    current prices (reprice_cart) and the changes returned; the caller commits them and refuses the
    addition with PriceChangedBeforeAdding. A cart in the product's currency is left as it is (checkout
    re-prices it). A line still in another currency with nothing changed (its product was not in the
    catalog loaded in the new currency, so it has no price in it) is refused with CurrencyMismatch,
    naming it: one payment is in one currency, and only the buyer can choose to remove it.
    """
    cart.ensure_open()
    if all(item.currency == product.currency for item in cart.items):
        return []
    changes = reprice_cart(session, cart)
    stranded = [item for item in cart.items if item.currency != product.currency]
    if not changes and stranded:
        lines = ", ".join(f"{item.sku} ({item.unit_amount} {item.currency})" for item in stranded)
        raise CurrencyMismatch(f"{product.sku} is priced in {product.currency}, but cart {cart.id} holds "
                               f"{lines}, which the catalog has no {product.currency} price for; one payment is "
                               f"in one currency: put {product.sku} in a new cart, or remove "
                               f"{'that line' if len(stranded) == 1 else 'those lines'} first", field="sku")
    return changes


def reopen_cart(session: Session, cart_id: str) -> None:
    """Open a checked-out cart again once its order ended unpaid (its hold expired), in the caller's
    transaction, so the buyer can check it out anew: at the catalog's prices then, and with the stock
    available then (nothing stays held for it). A cart logically deleted (its order was paid) stays closed."""
    cart = session.get(Cart, cart_id)
    if cart is not None and cart.deleted_at is None and cart.status is CartStatus.CHECKED_OUT:
        cart.status = CartStatus.OPEN


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
