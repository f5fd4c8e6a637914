"""The one table of event handlers: each handler names its Stripe event type with `@handles(...)`.

The handled types (what the webhook queues for a worker, what it stores as ignored) are read
from this table, never from a second list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from sqlalchemy.orm import Session

from consumers.handlers.outcome import Outcome

if TYPE_CHECKING:
    from models.orders import Order


@dataclass(frozen=True)
class HandlerContext:
    """What a handler may need beyond the session and the event, passed in (no globals).

    `livemode` is the mode of the configured STRIPE_API_KEY; `retrieve_payment_intent` asks
    Stripe's API for an intent, `list_refunds` for the refunds of an intent (both raise
    PaymentGatewayError when Stripe cannot be reached).
    `locked_orders` are orders the caller has already locked in this transaction, by the payment
    intent id they hold (a worker batch locks its orders in one statement): a handler takes its
    order from there instead of locking it again.
    """

    livemode: bool
    retrieve_payment_intent: Callable[[str], dict | None]
    list_refunds: Callable[[str], list[dict]]
    locked_orders: Mapping[str, "Order"] = field(default_factory=dict)


class Handler(Protocol):
    def __call__(self, session: Session, event: dict, context: HandlerContext) -> Outcome: ...


HANDLERS: dict[str, Handler] = {}


def handles(event_type: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        if event_type in HANDLERS:
            raise RuntimeError(f"two handlers for {event_type}: {HANDLERS[event_type].__name__}, {handler.__name__}")
        HANDLERS[event_type] = handler
        return handler

    return register
