"""staff_members.session_generation: logging out ends the login's sessions, copies of the cookie too

The console's session is Flask's signed cookie, kept by the browser: logging out only cleared the
browser's copy, and any other copy of it opened the console until it expired (12 hours). Each
session now carries the generation of its login it was opened under, compared with this column on
every request (the read that already checks for a disabled login); logging out and disabling the
login add one to it. Sessions opened before this revision carry none and end at their next request:
every staff member logs in again once.

Adding a column with a constant default rewrites nothing on PostgreSQL (11 and later) or SQLite; on
PostgreSQL it waits at most 2 s a try for the table's exclusive lock, as 0010.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa

from models.migrations import lock_tables_briefly


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both (SQLite has DROP COLUMN since 3.35), as 0010: a batch copy of the table
# would drop and recreate staff_members under every console request.
def upgrade() -> None:
    lock_tables_briefly('staff_members', lambda: op.add_column(
        'staff_members', sa.Column('session_generation', sa.Integer(), nullable=False, server_default='0')))


def downgrade() -> None:
    lock_tables_briefly('staff_members', lambda: op.drop_column('staff_members', 'session_generation'))
