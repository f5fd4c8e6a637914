"""staff_alerts.next_attempt_at and attempts: a staff alert whose POST failed is POSTed again

An alert was POSTed once, right after the commit that recorded it; when STAFF_ALERT_URL was down
for that one POST (a chat outage, a deploy of the hook) it was never sent. The relay now POSTs
again the alerts whose next_attempt_at has come, with back-off, for a day (consumers.alerts), and
shop_staff_alerts_undelivered counts the rows that have one, through the partial index.

Alerts recorded before this revision get none: the relay never POSTs them (a deployment that
turns STAFF_ALERT_URL on is not flooded with its old, logged alerts).

Two added columns (a constant default rewrites nothing on PostgreSQL 11 and later or SQLite) and
an index of the rows where next_attempt_at is set, empty when it is built. On PostgreSQL each try
waits at most 2 s for the table's exclusive lock, as 0010.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa

import models.base
from models.migrations import lock_tables_briefly


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

IS_SET = sa.text('next_attempt_at IS NOT NULL')


# Plain ALTER TABLE and CREATE INDEX on both, as 0011: staff_alerts holds a row per alert, small
# beside the inbox, and a batch copy would drop and recreate it under every worker's alert.
def _add_retries() -> None:
    op.add_column('staff_alerts', sa.Column('next_attempt_at', models.base.UTCDateTime(timezone=True), nullable=True))
    op.add_column('staff_alerts', sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
    op.create_index('ix_staff_alerts_next_attempt_at', 'staff_alerts', ['next_attempt_at'],
                    sqlite_where=IS_SET, postgresql_where=IS_SET)


def _drop_retries() -> None:
    op.drop_index('ix_staff_alerts_next_attempt_at', table_name='staff_alerts')
    op.drop_column('staff_alerts', 'attempts')
    op.drop_column('staff_alerts', 'next_attempt_at')


def upgrade() -> None:
    lock_tables_briefly('staff_alerts', _add_retries)


def downgrade() -> None:
    lock_tables_briefly('staff_alerts', _drop_retries)
