"""orders.charged_back_amount: money a card network took back for a dispute the shop lost

A lost dispute's amount is gone from the shop as a refund is, yet the order went on holding it:
a refund was offered for money already given back, and an order whose goods never left could
be neither cancelled (it held money) nor refunded. The order's money held now subtracts it.

Adding a column with a constant default rewrites nothing on PostgreSQL (11 and later) or SQLite. It
needs orders' exclusive lock for a moment on PostgreSQL: each try waits at most 2 s for it, and the
revision fails after five, saying so (models.migrations.lock_tables_briefly).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa

from models.migrations import lock_tables_briefly


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both (SQLite has DROP COLUMN since 3.35): a batch copy of the table would
# have to drop the orders table, which the other tables' rows refer to.
def upgrade() -> None:
    lock_tables_briefly('orders', lambda: op.add_column(
        'orders', sa.Column('charged_back_amount', sa.Integer(), nullable=False, server_default='0')))


def downgrade() -> None:
    lock_tables_briefly('orders', lambda: op.drop_column('orders', 'charged_back_amount'))
