"""Run the Alembic migrations from code (`shop db upgrade`, tests), wherever the process starts, and say
where they left the database; and what every revision that locks a table on a live database runs it through."""
from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"

# pg_advisory_lock's key for "a migration runs on this database" (any constant no other code uses).
MIGRATION_LOCK_KEY = 0x73686F702D6D6967  # "shop-mig"
MIGRATION_LOCK_PAUSE_SECONDS = 0.2

# A revision that needs a lock on a table the service uses waits at most LOCK_TIMEOUT a try for it, so that
# the statements queued behind its request (the webhook's inserts, a checkout's reads) wait no longer, and
# fails after LOCK_TRIES tries, saying so (docs/deploy.md). As 0008 does, which came first.
LOCK_TIMEOUT = "2s"
LOCK_TRIES = 5
_LOCK_NOT_AVAILABLE = "55P03"

log = logging.getLogger("alembic.runtime.migration")


class UnknownDatabaseRevision(Exception):
    """The database is at a revision none of this release's migrations make: a newer release migrated it
    (this code was rolled back since), and nothing here can move it, up or down."""

    def __init__(self, revision: str):
        super().__init__(revision)
        self.revision = revision


class RevisionNotApplied(Exception):
    """A revision refused to run (a RuntimeError of its own: a table in use, rows it cannot convert). Each
    revision commits with its version, so the database is at the revision before it: `at`."""

    def __init__(self, revision: str | None, before: str | None, at: str | None, reason: str):
        super().__init__(reason)
        self.revision, self.before, self.at, self.reason = revision, before, at, reason


@dataclass(frozen=True)
class Upgrade:
    """Where `upgrade` left the database. A revision of None is an empty database (no migration run yet)."""
    asked: str          # as asked: "head", "0003"
    target: str | None  # the revision that names (None for a relative one, such as "+1")
    before: str | None
    after: str | None

    @property
    def moved(self) -> bool:
        return self.before != self.after


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


@contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Held by one migration run on a database at a time, from before it reads the database's revision to
    after its last revision commits: a second run (two machines' release step at once) waits for it, then
    finds the database where the first left it. PostgreSQL: a session-level advisory lock, which outlives
    each revision's transaction. SQLite: an exclusive flock on `<database>-migration` (its write lock lasts
    one transaction only). Leaves `connection` with no transaction open."""
    if connection.dialect.name == "postgresql":
        # Tried, not waited for in a statement: a CREATE INDEX CONCURRENTLY of the run holding the lock (0007)
        # waits for every statement running since before it to end, pg_advisory_lock's wait too: a deadlock.
        waiting = False
        while not connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({MIGRATION_LOCK_KEY})").scalar_one():
            connection.commit()
            if not waiting:
                structlog.get_logger(__name__).warning("migration_waiting_for_another_run")
                waiting = True
            time.sleep(MIGRATION_LOCK_PAUSE_SECONDS)
        connection.commit()
        try:
            yield
        finally:
            try:
                if connection.in_transaction():
                    connection.rollback()  # an aborted transaction runs nothing, the unlock included
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
                connection.commit()
            except DBAPIError:  # the connection is gone: its session, and the lock with it, ended with it
                connection.invalidate()
        return
    database = connection.engine.url.database
    if connection.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    fd = os.open(f"{database}-migration", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # gives the flock back


def revision_of(connection: Connection) -> str | None:
    """The revision the database on `connection` is at, or None when it has none yet; in a transaction that
    this ends, so that a migration run after it starts with none open."""
    try:
        heads = MigrationContext.configure(connection).get_current_heads()
    finally:
        connection.rollback()
    return heads[0] if heads else None  # one line of revisions: never two heads


def database_revision(database_url: str) -> str | None:
    """The revision the database is at, or None when it has none yet."""
    from models.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return revision_of(connection)
    finally:
        engine.dispose()


def upgrade(database_url: str, revision: str = "head") -> Upgrade:
    """Migrate to `revision`; one the database is already at or past is left as it is (upgrade never goes
    down). Under the migration lock, so `before` is where this run found the database, after any other run
    ended. Raises UnknownDatabaseRevision for a database a newer release migrated, alembic's CommandError for
    a `revision` no migration here names, and RevisionNotApplied for a revision that refused to run."""
    from models.db import make_engine

    config = alembic_config(database_url)
    script = ScriptDirectory.from_config(config)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection, migration_lock(connection):
            before = revision_of(connection)
            if before is not None:
                try:
                    script.get_revision(before)
                except CommandError:
                    raise UnknownDatabaseRevision(before) from None
            try:
                target = script.get_revision(revision)
            except CommandError:
                target = None  # a relative revision ("+1"), or none: command.upgrade tells which
            config.attributes["connection"] = connection  # env.py migrates on it: the lock is held on it
            try:
                command.upgrade(config, revision)
            except RuntimeError as exc:  # a revision's own refusal, which says why
                if connection.in_transaction():
                    connection.rollback()
                at = revision_of(connection)
                raise RevisionNotApplied(_next_revision(script, at), before, at, str(exc)) from exc
            return Upgrade(asked=revision, target=target.revision if target is not None else None,
                           before=before, after=revision_of(connection))
    finally:
        engine.dispose()


def _next_revision(script: ScriptDirectory, at: str | None) -> str | None:
    """The revision that upgrades a database at `at` (one line of revisions)."""
    following = [rev.revision for rev in script.walk_revisions() if rev.down_revision == at]
    return following[0] if len(following) == 1 else None


def lock_tables_briefly(tables: str, change: Callable[[], None]) -> None:
    """Run `change`, a revision's statements that lock `tables` (ALTER TABLE, CREATE TABLE ... REFERENCES,
    CREATE INDEX), so that on PostgreSQL each try waits at most LOCK_TIMEOUT for a lock, and the service's
    statements queued behind that request wait no longer; after LOCK_TRIES tries a RuntimeError says so, the
    revision changed nothing. The locks last until the revision commits (each revision its own transaction),
    so `change` should be over in moments. SQLite: `change` runs as it is (one writer at a time)."""
    from alembic import op

    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        change()
        return
    for attempt in range(1, LOCK_TRIES + 1):
        savepoint = bind.begin_nested()
        try:
            bind.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            change()
            bind.exec_driver_sql("SET LOCAL lock_timeout TO DEFAULT")
            savepoint.commit()
            return
        except DBAPIError as exc:
            savepoint.rollback()
            if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            if attempt == LOCK_TRIES:
                raise RuntimeError(f"{tables} stayed locked by another transaction for {LOCK_TRIES} tries of "
                                   f"{LOCK_TIMEOUT}; nothing was changed, run the migration again") from exc
            log.info("%s is locked by another transaction; trying again (%d of %d)", tables, attempt + 1, LOCK_TRIES)
