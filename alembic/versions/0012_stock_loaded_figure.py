"""stock.loaded_stock: a catalog load changes stock by the difference from the figure loaded last

`shop catalog load` set on_hand to the file's figure, so loading the same file again (to change a
price) put every unit sold since back on sale. Each sku now keeps the figure it was last loaded
with, and a load moves on_hand by its figure less that one: sales and restocks since are kept.

The figure last loaded before this revision is not known: each row's on_hand now stands for it, so
the first load after the upgrade sets on_hand to its figure less the units sold since the upgrade.

Adding a column with a constant default rewrites nothing on PostgreSQL (11 and later) or SQLite;
the backfill writes each stock row once (one row per sku). On PostgreSQL the stock table is locked
exclusively from the ALTER to the revision's commit (a moment: a row per sku); each try waits at most
2 s for that lock, as 0010.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa

from models.migrations import lock_tables_briefly


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both (SQLite has DROP COLUMN since 3.35), as 0010 and 0011: no batch copy of the table.
def _add_loaded_stock() -> None:
    op.add_column('stock', sa.Column('loaded_stock', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE stock SET loaded_stock = on_hand")


def upgrade() -> None:
    lock_tables_briefly('stock', _add_loaded_stock)


def downgrade() -> None:
    lock_tables_briefly('stock', lambda: op.drop_column('stock', 'loaded_stock'))
