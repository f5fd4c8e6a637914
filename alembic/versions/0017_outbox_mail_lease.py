"""outbox.leased_until: a mail a worker is sending is not sent by another worker

A worker about to send a mail pushed the row's available_at a redelivery wait ahead (its lease), which
holds the relay off but not another worker: one running a copy the relay had published before (a
backlog longer than REDELIVERY_SECONDS) sent the mail too. The lease is now written on the row, and a
worker finding it unexpired leaves the mail to its holder (consumers.processing).

One nullable column with no default and no index: rows are left as they are (no lease), nothing is
rewritten, and the webhook's inserts do not change. On PostgreSQL each try waits at most 2 s for the
outbox's exclusive lock, as 0010.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa

import models.base
from models.migrations import lock_tables_briefly


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both, as 0010 (SQLite has DROP COLUMN since 3.35): a batch copy would rewrite the
# outbox, the service's busiest table, under the webhook.
def upgrade() -> None:
    lock_tables_briefly('outbox', lambda: op.add_column(
        'outbox', sa.Column('leased_until', models.base.UTCDateTime(timezone=True), nullable=True)))


def downgrade() -> None:
    lock_tables_briefly('outbox', lambda: op.drop_column('outbox', 'leased_until'))
