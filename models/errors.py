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
