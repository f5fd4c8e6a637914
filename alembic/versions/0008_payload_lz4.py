"""compress inbox_events.payload with lz4 on PostgreSQL, not pglz

A Stripe event's payload (2 KB and up) takes its row past PostgreSQL's 2 KB TOAST threshold, so
PostgreSQL compresses every stored event, with pglz unless told otherwise: pglz_compress was
PostgreSQL's costliest function while the webhook stored events. With lz4 a group of four events
cost PostgreSQL 335–370 µs of CPU instead of 385–440 µs (docs/benchmarks.md). Rows stored before
keep pglz; PostgreSQL reads both.

Only the column's setting changes (no rewrite), under a brief ACCESS EXCLUSIVE lock. So that the
webhook's inserts never queue behind it for long, each try waits at most LOCK_TIMEOUT for the
lock, and the migration fails after TRIES, saying so (run it again). A PostgreSQL built without
lz4 keeps pglz, with a warning. SQLite does not compress its rows: nothing to do there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""
import logging

from alembic import op
from sqlalchemy.exc import DBAPIError


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

log = logging.getLogger('alembic.runtime.migration')

LOCK_TIMEOUT = '2s'
TRIES = 5
_LOCK_NOT_AVAILABLE = '55P03'
_FEATURE_NOT_SUPPORTED = '0A000'


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return
    for attempt in range(1, TRIES + 1):
        savepoint = bind.begin_nested()
        try:
            bind.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            bind.exec_driver_sql(f'ALTER TABLE inbox_events ALTER COLUMN payload SET COMPRESSION {method}')
            bind.exec_driver_sql('SET LOCAL lock_timeout TO DEFAULT')
            savepoint.commit()
            return
        except DBAPIError as exc:
            savepoint.rollback()
            state = getattr(exc.orig, 'sqlstate', None)
            if state == _FEATURE_NOT_SUPPORTED:
                log.warning('this PostgreSQL has no %s compression: inbox_events.payload keeps its own (%s)',
                            method, str(exc.orig).strip())
                return
            if state != _LOCK_NOT_AVAILABLE or attempt == TRIES:
                if state == _LOCK_NOT_AVAILABLE:
                    raise RuntimeError(
                        f'inbox_events stayed locked by another transaction for {TRIES} tries of '
                        f'{LOCK_TIMEOUT}; nothing was changed, run the migration again') from exc
                raise
            log.info('inbox_events is locked by another transaction; trying again (%d of %d)', attempt + 1, TRIES)


def upgrade() -> None:
    _set_compression('lz4')


def downgrade() -> None:
    _set_compression('default')
