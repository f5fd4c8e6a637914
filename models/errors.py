"""Domain errors: raised by the rules in models/, translated to HTTP in one place."""
from __future__ import annotations


class DomainError(Exception):
    code = "domain_error"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    code = "not_found"


class InvalidInput(DomainError):
    code = "invalid_input"


class TotalTooLarge(InvalidInput):
    """A cart or order total over what one payment at Stripe can take."""

    code = "total_too_large"

    def __init__(self, total: int, currency: str | None, largest: int, *, field: str):
        super().__init__(f"the total would be {total} {currency or ''}".rstrip() + f", over {largest}, the most one "
                         f"payment at Stripe can take: buy fewer items, or split the purchase", field=field)
        self.total = total
        self.largest = largest


class Conflict(DomainError):
    code = "conflict"


class OutOfStock(Conflict):
    code = "out_of_stock"

    def __init__(self, sku: str, requested: int, available: int):
        super().__init__(
            f"not enough stock for {sku}: requested {requested}, available {available}", field="sku"
        )
        self.sku = sku
        self.requested = requested
        self.available = available


class IllegalTransition(DomainError):
    code = "illegal_transition"

    def __init__(self, order_id: str, current: str, target: str):
        super().__init__(f"order {order_id} cannot move from {current} to {target}")
        self.current = current
        self.target = target


def _priced(change: dict, which: str) -> str:
    """A changed line's old or new price, with its currency when that changed too (a catalog loaded again in another)."""
    currency = change.get(f"{which}_currency")
    return f"{change[f'{which}_unit_amount']} {currency}" if currency else str(change[f"{which}_unit_amount"])


class PriceChanged(Conflict):
    """A cart line's price is not the catalog's any more; the cart now holds the new prices."""

    code = "price_changed"

    def __init__(self, cart_id: str, changes: list[dict], subtotal: int, currency: str | None):
        described = ", ".join(f"{c['sku']} {_priced(c, 'old')} -> {_priced(c, 'new')}" for c in changes)
        super().__init__(f"prices changed since the items were added ({described}); the cart now holds the new "
                         f"prices, subtotal {subtotal} {currency}: confirm the new total and check out again",
                         field="cart_id")
        self.cart_id = cart_id
        self.changes = changes
        self.subtotal = subtotal
        self.currency = currency

    def details(self) -> dict:
        return {"cart_id": self.cart_id, "changes": self.changes, "subtotal": self.subtotal,
                "currency": self.currency}
