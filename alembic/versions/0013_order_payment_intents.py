"""order_payment_intents: every PaymentIntent an order has held, so a payment on any keeps its hold

The expiry sweep kept the hold of an order whose payment was stored but not yet applied only when
the payment was on the intent the order held at that moment. The pay step replaces an intent Stripe
will not confirm again and only queues the old one's cancellation: a buyer who completed the old one
in another tab, in time, lost the units to the sweep (and to the next buyer). The sweep and staff
cancel now look for a stored payment on every intent the order has held, recorded here.

Backfilled with each order's current intent and, for the orders still open (waiting for their
payment, or in review), the intents the pay step replaced, as their history names them
("payment intent pi_old replaced by pi_new (…)"). Intents checkout created before this revision
that never became the order's are not known: their cancellation was queued when they were made.

On PostgreSQL the new table's reference to orders takes a lock on orders that stops its writes (a
checkout, a payment) until the revision commits: each try waits at most 2 s for it, as 0010, and the
backfill that follows reads the open orders only.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27
"""
import re

from alembic import op
import sqlalchemy as sa

from models.migrations import lock_tables_briefly


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

_REPLACED = re.compile(r"^payment intent (\S+) replaced by (\S+) ")


# Plain DDL on both (a new table: nothing is copied or rewritten), as 0010 and 0011.
def _create_table() -> None:
    op.create_table(
        'order_payment_intents',
        sa.Column('order_id', sa.String(length=40), nullable=False),
        sa.Column('payment_intent_id', sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name='fk_order_payment_intents_order_id_orders'),
        sa.PrimaryKeyConstraint('order_id', 'payment_intent_id', name='pk_order_payment_intents'),
    )


def upgrade() -> None:
    lock_tables_briefly('orders', _create_table)
    op.execute("INSERT INTO order_payment_intents (order_id, payment_intent_id) "
               "SELECT id, payment_intent_id FROM orders WHERE payment_intent_id IS NOT NULL")
    bind = op.get_bind()
    # Open orders only (by the orders' status index, then each one's history by its order_id index):
    # a paid, cancelled or refunded order's hold is no longer the sweep's or a cancel's to release.
    replaced = bind.execute(sa.text(
        "SELECT c.order_id, c.reason, o.payment_intent_id FROM orders o "
        "JOIN order_status_changes c ON c.order_id = o.id "
        "WHERE o.status IN ('pending_payment', 'payment_failed', 'needs_review') "
        "AND c.reason LIKE 'payment intent % replaced by %'")).all()
    rows = set()
    for order_id, reason, current in replaced:
        match = _REPLACED.match(reason)
        if match:
            rows.update((order_id, intent) for intent in match.groups() if intent != current)
    if rows:
        bind.execute(sa.text("INSERT INTO order_payment_intents (order_id, payment_intent_id) "
                             "VALUES (:order_id, :payment_intent_id)"),
                     [{"order_id": order_id, "payment_intent_id": intent} for order_id, intent in sorted(rows)])


def downgrade() -> None:
    lock_tables_briefly('orders and order_payment_intents', lambda: op.drop_table('order_payment_intents'))
