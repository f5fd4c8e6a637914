"""orders.paid_amount and charged_back_amount where earlier revisions left them at 0: the money is counted again

0004 added paid_amount and filled it for paid and refunded orders only. The code of 0003 moved an order
whose payment did not add up (paid after the order was cancelled, an amount or currency that was not
the order's, stock no longer held) to needs_review with the money taken: those orders came out of 0004
holding 0, so staff's `cancel --refund` cancelled them without giving anything back and accept refused
them. 0010 added charged_back_amount as 0 for every order, though disputes lost since 0004 had taken
their money back already: such an order went on holding it, and a refund of it was offered.

Both figures are now filled by the rules the code counts them by:
- paid_amount, of an order at 0 that a payment_intent.succeeded was processed for: the amount taken
  (amount_received, else amount) once per intent, only in the order's own currency
  (consumers.handlers.payment_intents._count_payment, models.orders.Order.counts_currency);
- charged_back_amount, where it is below it: the sum of the order's lost disputes in its currency on
  the intents such a payment was processed on (models.orders.settle_chargebacks).
A figure the code wrote is never lowered or replaced (paid_amount only where it is 0, charged_back_amount
only upward), so an order the code has handled is left as it is, and running this again changes nothing.
The rules are written here, not imported: the models change after this revision.

Each UPDATE touches only the orders it repairs (row locks, as a worker's payment takes): no
maintenance window.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-28
"""
from __future__ import annotations

import json
import logging

from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

log = logging.getLogger('alembic.runtime.migration')

# The payments the code counts: a succeeded event its handler ran and committed for the order.
# `order_id IS NOT NULL` lets PostgreSQL use the partial index on inbox_events.order_id (0007).
_PROCESSED_PAYMENT = ("e.type = 'payment_intent.succeeded' AND e.status = 'processed' "
                      "AND e.order_id IS NOT NULL AND e.object_id IS NOT NULL")


def _counts_currency(currency: object, order_currency: str) -> bool:
    """Order.counts_currency: only the order's own currency counts; none said is taken as the order's."""
    if not currency:
        return True
    return isinstance(currency, str) and currency.lower() == order_currency.lower()


def _amount_taken(payload: str, order_currency: str) -> int:
    """What a succeeded event's intent adds to its order's paid_amount (0: money in another currency)."""
    try:
        intent = (json.loads(payload).get('data') or {}).get('object') or {}
    except (ValueError, AttributeError):
        return 0  # no handler could have run on it either
    paid = intent.get('amount_received') or intent.get('amount') or 0
    if not isinstance(paid, int) or isinstance(paid, bool) or not _counts_currency(intent.get('currency'),
                                                                                   order_currency):
        return 0
    return paid


def _fill_paid_amounts(bind) -> int:
    rows = bind.execute(sa.text(
        "SELECT o.id, o.currency, e.object_id, e.payload FROM orders o "
        f"JOIN inbox_events e ON e.order_id = o.id WHERE o.paid_amount = 0 AND {_PROCESSED_PAYMENT} "
        "ORDER BY o.id, e.id"))
    paid: dict[str, int] = {}
    counted: set[tuple[str, str]] = set()  # (order, intent): Stripe's duplicate of an event, or a replay, counts once
    for order_id, order_currency, intent_id, payload in rows:
        if (order_id, intent_id) not in counted:
            counted.add((order_id, intent_id))
            paid[order_id] = paid.get(order_id, 0) + _amount_taken(payload, order_currency)
    filled = [{'order_id': order_id, 'paid': amount} for order_id, amount in sorted(paid.items()) if amount > 0]
    if filled:
        bind.execute(sa.text("UPDATE orders SET paid_amount = :paid WHERE id = :order_id AND paid_amount = 0"),
                     filled)
    return len(filled)


def _fill_charged_back_amounts(bind) -> int:
    rows = bind.execute(sa.text(
        "SELECT d.order_id, d.amount, d.currency, o.currency, o.charged_back_amount FROM disputes d "
        "JOIN orders o ON o.id = d.order_id WHERE d.status = 'lost' AND EXISTS (SELECT 1 FROM inbox_events e "
        f"WHERE e.order_id = d.order_id AND e.object_id = d.payment_intent_id AND {_PROCESSED_PAYMENT}) "
        "ORDER BY d.order_id, d.id"))
    settled: dict[str, int] = {}
    recorded: dict[str, int] = {}
    for order_id, amount, currency, order_currency, charged_back in rows:
        recorded[order_id] = charged_back
        if _counts_currency(currency, order_currency):
            settled[order_id] = settled.get(order_id, 0) + amount
    filled = [{'order_id': order_id, 'settled': amount} for order_id, amount in sorted(settled.items())
              if amount > recorded[order_id]]
    if filled:
        bind.execute(sa.text("UPDATE orders SET charged_back_amount = :settled "
                             "WHERE id = :order_id AND charged_back_amount < :settled"), filled)
    return len(filled)


def upgrade() -> None:
    bind = op.get_bind()
    paid = _fill_paid_amounts(bind)
    charged_back = _fill_charged_back_amounts(bind)
    if paid or charged_back:
        log.info('orders whose money was not counted: paid_amount filled for %d, charged_back_amount for %d',
                 paid, charged_back)


def downgrade() -> None:
    """Nothing to undo: 0015's schema is this one, and the figures filled are the ones its code counts too (its
    handlers would have written them). Setting them back to 0 would make those orders lose their money again."""
