"""order_payment_intents: an index on payment_intent_id, to find the order that records an intent

A dispute on an intent an order records, for which no payment was ever stored (its succeeded event lost,
or not yet arrived), was ignored as 'no order of ours'. The dispute handler now finds that order through
order_payment_intents by the intent's id; the primary key (order_id, payment_intent_id) answers only "the
intents of this order", so this index answers "the orders of this intent".

The build stops the table's writes until the revision commits: on PostgreSQL each try waits at most 2 s
for that lock, as 0010.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27
"""
from alembic import op

from models.migrations import lock_tables_briefly


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


# Plain CREATE INDEX on both, as 0013's table: a row per intent an order held, small beside the inbox.
def upgrade() -> None:
    lock_tables_briefly('order_payment_intents', lambda: op.create_index(
        'ix_order_payment_intents_payment_intent_id', 'order_payment_intents', ['payment_intent_id']))


def downgrade() -> None:
    lock_tables_briefly('order_payment_intents', lambda: op.drop_index(
        'ix_order_payment_intents_payment_intent_id', table_name='order_payment_intents'))
