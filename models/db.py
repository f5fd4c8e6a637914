"""Engine and session factory: SQLite in WAL mode for a laptop, PostgreSQL in production."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # Under gunicorn's 20 s request timeout, so a request stuck behind the write lock
        # gets a clean 503 rather than being killed.
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Several processes write to one file: take the write lock up front so that a
        # read-then-write transaction (reserve stock, claim the outbox) never has to be
        # upgraded, which SQLite would refuse with "database is locked". This is what
        # makes SQLite transactions serialisable here, as row locks do on PostgreSQL.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def engine_for(settings) -> Engine:
    """The engine a process of the service uses, with the pool sized from its settings."""
    return make_engine(settings.database_url, pool_size=settings.db_pool_size,
                       max_overflow=settings.db_max_overflow)


def store_engine_for(settings, engine: Engine) -> Engine:
    """The webhook's engine for storing events.

    PostgreSQL: its own pool in autocommit, without the pre-ping (a `SELECT 1` per request): the
    store is one statement, which is its own transaction, and a connection found dead is retried
    once by the caller (`webhook_app.webhooks`). The pool keeps all its connections open (no
    overflow): under a burst every request thread stores at once, and an overflow connection
    would be opened and closed again per request. SQLite: the service's engine (its
    transactions take the write lock up front).
    """
    if engine.dialect.name != "postgresql":
        return engine
    return create_engine(settings.database_url, pool_size=settings.db_pool_size + settings.db_max_overflow,
                         max_overflow=0, pool_recycle=1800, isolation_level="AUTOCOMMIT")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session:
        with session.begin():
            yield session


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
