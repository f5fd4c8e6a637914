"""One handler per Stripe event type, in one visible table.

Each handler takes the session (inside the worker's one transaction) and the event, returns
an Outcome, and is safe to run twice: it keys on the order's state, which only moves forward.
"""
from __future__ import annotations

from consumers.handlers.outcome import Outcome
from consumers.handlers.payment_intents import on_payment_canceled, on_payment_failed, on_payment_succeeded

HANDLERS = {
    "payment_intent.succeeded": on_payment_succeeded,
    "payment_intent.payment_failed": on_payment_failed,
    "payment_intent.canceled": on_payment_canceled,
}

__all__ = ["HANDLERS", "Outcome"]
