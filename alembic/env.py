"""Alembic environment: the URL comes from the config (set by `shop db upgrade`) or DATABASE_URL.

Each revision runs in its own transaction and commits with its version (transaction_per_migration): the
locks a revision takes on the service's tables last until its own commit, not the last revision's, and a
revision that fails leaves the database at the revision before it, as its version says. One run at a time:
under models.migrations.migration_lock, which `shop db upgrade` takes itself and hands its connection in."""
from alembic import context

from models import Base
from models.db import make_engine
from models.migrations import migration_lock
from models.settings import Settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _refuse_broken_references(ctx, step, heads, run_args) -> None:
    """Run inside each revision's transaction on SQLite: raising rolls that revision back, and the
    database stays at the revision before it. SystemExit: `shop db upgrade` stops with this one line."""
    broken = ctx.connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        rows = ", ".join(f"{table} row {rowid} -> {parent}" for table, rowid, parent, _ in broken[:5])
        more = f" and {len(broken) - 5} more" if len(broken) > 5 else ""
        raise SystemExit(
            f"revision {step.up_revision_id} was not {'applied' if step.is_upgrade else 'undone'}: the database "
            f"would hold rows that refer to rows it does not have ({rows}{more}), so it stays where it was before "
            "that revision. Repair or delete those rows, then run the migration again")


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:  # models.migrations.upgrade's, which holds the migration lock on it
        _run_migrations_on(given)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as connection, migration_lock(connection):
            _run_migrations_on(connection)
    finally:
        engine.dispose()


def _run_migrations_on(connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    options = {}
    if sqlite:
        # A batch migration copies a table, then drops the old one and renames the copy: with
        # foreign keys on, dropping orders fails while order_lines' rows refer to it. So they are
        # off for the migrations, and each revision checks every reference before it commits.
        # On the driver's connection, outside any transaction: there the PRAGMA would do nothing.
        connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        options["on_version_apply"] = _refuse_broken_references
    try:
        # With no transaction open on the connection (migration_lock leaves none), alembic begins and
        # commits one a revision; one left open would make the whole run a single transaction of the caller's.
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                          transaction_per_migration=True, **options)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if sqlite:
            connection.rollback()  # nothing left open: the PRAGMA must run outside a transaction
            connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
