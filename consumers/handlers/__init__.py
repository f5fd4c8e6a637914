"""One handler per Stripe event type, in one visible table (`HANDLERS`, filled by `@handles`).

Each handler takes the session (inside the worker's one transaction), the event and a
HandlerContext, returns an Outcome, and is safe to run twice: it keys on the order's state,
which only moves forward, and on Stripe's ids for refunds and disputes.
"""
from __future__ import annotations

# Importing the handler modules registers them.
from consumers.handlers import charges, disputes, payment_intents  # noqa: F401
from consumers.handlers.outcome import Outcome
from consumers.handlers.registry import HANDLERS, HandlerContext, handles

HANDLED_EVENT_TYPES: frozenset[str] = frozenset(HANDLERS)

__all__ = ["HANDLED_EVENT_TYPES", "HANDLERS", "HandlerContext", "Outcome", "handles"]
