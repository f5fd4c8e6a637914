"""drop three indexes no query needs: each cost a B-tree write per stored event

- ix_outbox_available_at: the relay's poll (status and available_at) uses
  ix_outbox_status_available_at, and nothing looks the outbox up by available_at alone.
- ix_outbox_topic: only the dead-letter filter reads the topic, among rows found by status.
- ix_inbox_events_type: every look-up by type also names the intent (ix_inbox_events_object_id);
  `shop events list --type` reads the newest rows first and stops at its limit.

Each was written on every stored event, and on PostgreSQL again on every update of an
outbox or inbox row that changes an indexed column (a status): the SQLite webhook's turn to
write took about a sixth less time without them (docs/benchmarks.md).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_available_at')
        batch_op.drop_index('ix_outbox_topic')
    with op.batch_alter_table('inbox_events', schema=None) as batch_op:
        batch_op.drop_index('ix_inbox_events_type')


def downgrade() -> None:
    with op.batch_alter_table('inbox_events', schema=None) as batch_op:
        batch_op.create_index('ix_inbox_events_type', ['type'], unique=False)
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_topic', ['topic'], unique=False)
        batch_op.create_index('ix_outbox_available_at', ['available_at'], unique=False)
