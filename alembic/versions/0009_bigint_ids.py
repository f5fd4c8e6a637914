"""64-bit integer ids on PostgreSQL: every integer id and every column holding one becomes BIGINT

INTEGER is 32-bit on PostgreSQL, so the inbox, the outbox, event_attempts and the other tables
numbered by a sequence stopped at 2,147,483,647 rows. Each id column and each column that holds
another table's id (outbox.inbox_event_id, event_attempts.inbox_event_id and outbox_id,
staff_alerts.outbox_id) becomes BIGINT, and so does each id's sequence: 0001 and 0004 made the ids
SERIAL, whose sequence is created AS integer with MAXVALUE 2147483647, which would stop it there
whatever the column's type.

On PostgreSQL changing a column's type REWRITES THE TABLE (and its indexes) under an ACCESS
EXCLUSIVE lock: nothing reads or writes the table until the migration commits, which on a large
inbox takes minutes or more. On a database holding many rows, run it in a maintenance window with
the service stopped (web, worker and relay), as docs/deploy.md says. If a table is still in use,
the migration fails after LOCK_TIMEOUT, saying so, with nothing changed.

On SQLite there is nothing to do: an INTEGER column holds any 64-bit integer, and an INTEGER
PRIMARY KEY is the table's rowid, numbered by SQLite up to 2**63-1 (the models keep spelling it
INTEGER there: a BIGINT primary key would not be the rowid and would get no numbering).

The downgrade refuses, saying which, while any id or sequence is past INTEGER's range.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""
from alembic import op
from sqlalchemy.exc import DBAPIError


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# Each table's integer id (numbered by its sequence) and the columns that hold another table's id.
ID_COLUMNS = {
    'inbox_events': ('id',),
    'outbox': ('id', 'inbox_event_id'),
    'event_attempts': ('id', 'inbox_event_id', 'outbox_id'),
    'staff_alerts': ('id', 'outbox_id'),
    'order_status_changes': ('id',),
    'staff_actions': ('id',),
    'staff_members': ('id',),
    'staff_login_failures': ('id',),
    'refunds': ('id',),
    'disputes': ('id',),
    'cart_items': ('id',),
    'order_lines': ('id',),
    'reservations': ('id',),
}

LARGEST_INTEGER = 2**31 - 1
# The service is meant to be stopped: a table still in use fails the migration fast, rather than
# leaving it waiting for the lock with every insert of the webhook queued behind it.
LOCK_TIMEOUT = '5s'
_LOCK_NOT_AVAILABLE = '55P03'


def _id_sequence(bind, table: str) -> str | None:
    """The sequence numbering `table`.id (serial or identity), as a quoted name; None if it has none."""
    return bind.exec_driver_sql('SELECT pg_get_serial_sequence(%(table)s, %(column)s)',
                                {'table': table, 'column': 'id'}).scalar_one()


def _lock_tables(bind) -> None:
    """Every table altered, locked at once before any is rewritten (the ALTERs would take them one by one)."""
    bind.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    try:
        bind.exec_driver_sql(f'LOCK TABLE {", ".join(ID_COLUMNS)} IN ACCESS EXCLUSIVE MODE')
    except DBAPIError as exc:
        if getattr(exc.orig, 'sqlstate', None) == _LOCK_NOT_AVAILABLE:
            raise RuntimeError(f'the tables are in use by another transaction (waited {LOCK_TIMEOUT}): stop web, '
                               'worker and relay, then run the migration again; nothing was changed') from exc
        raise
    bind.exec_driver_sql('SET LOCAL lock_timeout TO DEFAULT')


def _set_type(bind, column_type: str) -> None:
    _lock_tables(bind)
    for table, columns in ID_COLUMNS.items():
        # One ALTER TABLE a table: one rewrite, however many of its columns change.
        alters = ', '.join(f'ALTER COLUMN {column} TYPE {column_type}' for column in columns)
        bind.exec_driver_sql(f'ALTER TABLE {table} {alters}')
        sequence = _id_sequence(bind, table)
        if sequence is not None:
            bind.exec_driver_sql(f'ALTER SEQUENCE {sequence} AS {column_type}')


def _past_integer(bind) -> list[str]:
    """What holds a number INTEGER cannot: a column's largest value, or a sequence's last one."""
    past = []
    for table, columns in ID_COLUMNS.items():
        for column in columns:
            largest = bind.exec_driver_sql(f'SELECT max({column}) FROM {table}').scalar_one()
            if largest is not None and largest > LARGEST_INTEGER:
                past.append(f'{table}.{column} holds {largest}')
        sequence = _id_sequence(bind, table)
        if sequence is not None:
            last = bind.exec_driver_sql(f'SELECT last_value FROM {sequence}').scalar_one()
            if last > LARGEST_INTEGER:
                past.append(f'sequence {sequence} is at {last}')
    return past


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return  # SQLite's INTEGER is already 64-bit (see above)
    _set_type(bind, 'BIGINT')


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return
    past = _past_integer(bind)
    if past:
        raise RuntimeError(f'cannot go back to 32-bit ids, past {LARGEST_INTEGER}: {"; ".join(past)}. '
                           'Nothing was changed')
    _set_type(bind, 'INTEGER')
