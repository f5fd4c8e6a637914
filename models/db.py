"""Engine and session factory: SQLite in WAL mode for a laptop, PostgreSQL in production."""
from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Iterator

import structlog

from sqlalchemy import bindparam, create_engine, event, func, insert, inspect, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import Executable

log = structlog.get_logger(__name__)


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    """The service's engine. Its errors never quote a statement's bound values (hide_parameters): they
    are an order's address and access token, a PaymentIntent's client secret, an event's payload, and
    an error's text goes to logs, tracebacks stored with failed runs, and alerts."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False},
                               hide_parameters=True)
        _configure_sqlite(engine)
        return engine
    _convert_long_statements_once()
    return commits_durable(create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        hide_parameters=True,
    ))


def commits_durable(engine: Engine) -> Engine:
    """PostgreSQL: every connection commits durably, whatever the server's or role's default. With
    `synchronous_commit = off` (a common speed-up) COMMIT returns before its WAL is on disk, and a
    crash of the server loses the last commits: webhooks already answered 200, payments applied.
    Raised to `on` only from `off`: `local`, `remote_write` and `remote_apply` are durable on this
    server already, and an operator who chose one for replicas keeps it. (The server itself must run
    with `fsync` and `full_page_writes` on: docs/deploy.md.)"""

    @event.listens_for(engine, "connect")
    def _durable(dbapi_connection, _record) -> None:
        autocommit, dbapi_connection.autocommit = dbapi_connection.autocommit, True
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SHOW synchronous_commit")
                if cursor.fetchone()[0] == "off":
                    cursor.execute("SET synchronous_commit = on")
        finally:
            dbapi_connection.autocommit = autocommit

    return engine


# psycopg rewrites each statement's %(name)s placeholders into PostgreSQL's $1, $2 in Python, and
# remembers the rewrite only for statements under 4,096 characters and 50 parameters. A worker
# batch's INSERTs of many rows (SQLAlchemy's "insertmanyvalues") are longer, so each was rewritten
# on every run: 16 % of a worker's time under load (py-spy). Their text repeats from batch to
# batch (one per row count), so they are remembered too, in psycopg's own cache of 128 statements.
# Worker CPU per order on the consumer benchmark, three alternating pairs: 1.85, 1.53, 1.60 →
# 1.53, 1.35, 1.57 ms (docs/benchmarks.md).
LONGEST_REMEMBERED_STATEMENT = 1 << 20


def _convert_long_statements_once() -> None:
    try:
        from psycopg import _queries
    except ImportError:  # no psycopg: the URL names another driver, which SQLAlchemy reports itself
        return
    if hasattr(_queries, "MAX_CACHED_STATEMENT_LENGTH"):
        _queries.MAX_CACHED_STATEMENT_LENGTH = max(_queries.MAX_CACHED_STATEMENT_LENGTH, LONGEST_REMEMBERED_STATEMENT)
        _queries.MAX_CACHED_STATEMENT_PARAMS = max(_queries.MAX_CACHED_STATEMENT_PARAMS, LONGEST_REMEMBERED_STATEMENT)


# --- SQLite: one writer at a time, handed over at once ----------------------------------------
#
# SQLite has one write lock per database file. A connection that finds it taken waits in
# SQLite's busy handler, which sleeps between tries (1 ms, growing to 100 ms a try): with the
# web processes, the relay and the workers all writing, a waiter sleeps on while the lock sits
# free, and under load the webhook accepted 30 events/s. So every write transaction first takes
# a turn: an exclusive flock on `<database>-writer`, one open file per connection, tried every
# 0.1-2 ms. It is released right after COMMIT or ROLLBACK (or by the kernel when a process
# dies). Bounded like busy_timeout: after 10 s the transaction fails as "database is locked".
# The webhook tries at least every 0.5 ms, the other writers every 2 ms: a web process waiting
# for a turn holds requests Stripe is waiting on, and tried every 2 ms it found the turn taken
# again by the other web process's next group; at 0.5 ms the ingest's ratio to the bare endpoint
# was higher in four pairs of alternating runs of four (docs/benchmarks.md).
TURN_TIMEOUT_SECONDS = 10.0
TURN_LONGEST_PAUSE_SECONDS = 0.002
WEBHOOK_TURN_LONGEST_PAUSE_SECONDS = 0.0005
_TURN_FILES: dict[int, int] = {}  # id(sqlite3 connection) -> its turn file's descriptor

# In WAL mode the COMMIT that takes the log past this many pages also copies it back into the
# database file (a checkpoint, with its fsyncs), under the turn: every other writer waits for
# it. SQLite's default of 1,000 pages (4 MB) did that about once a second under the webhook's
# load; at 10,000 (a log of up to 40 MB) the pages that every commit rewrites (the indexes'
# last pages, the outbox's) are copied ten times less often. Measured with wrk on the ingest
# (docs/benchmarks.md): 1,036 and 852 → 1,338 and 1,431 req/s, p99 38–56 → 61–66 ms.
WAL_CHECKPOINT_PAGES = 10_000


# That checkpoint runs inside the COMMIT that takes the log past the threshold, so under the
# turn: every writer of every process waits for its copy and fsyncs, and those waits were most of
# the webhook's p99. So each process that writes to the file also checkpoints it from a thread of
# its own, every CHECKPOINT_INTERVAL_SECONDS on a connection of its own (`_Checkpointer`). A
# PASSIVE checkpoint takes no write lock and waits for no reader or writer: the writers go on
# meanwhile, and the COMMIT that crosses the threshold finds little left to copy. SQLite's own stays
# as the backstop. Ingest alone, embedded, three alternating pairs (docs/benchmarks.md): p99
# 2.54, 2.86 and 3.93 × the bare endpoint's → 1.46, 2.07 and 1.09 ×.
CHECKPOINT_INTERVAL_SECONDS = 0.25


class _Checkpointer:
    """A daemon thread checkpointing one SQLite file in PASSIVE mode, for as long as its engine lives
    in this process (started at the engine's first connection; a forked process starts its own)."""

    def __init__(self, engine: Engine, database: str):
        self.database = os.path.abspath(database)
        self.pid: int | None = None
        self.stopped = threading.Event()
        self._starting = threading.Lock()  # the pool may open several connections at once
        weakref.finalize(engine, self.stopped.set)  # the thread holds no reference to the engine

    def start_in_this_process(self) -> None:
        with self._starting:
            if self.pid == os.getpid() or self.stopped.is_set():
                return
            self.pid = os.getpid()
        threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True).start()

    def _run(self) -> None:
        try:  # mode=rw: a file that is gone is not created again
            connection = sqlite3.connect(f"file:{self.database}?mode=rw", uri=True, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error:
            return
        try:
            while not self.stopped.wait(CHECKPOINT_INTERVAL_SECONDS):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):  # another checkpoint runs: next time
                        raise
        except sqlite3.Error as exc:
            log.warning("sqlite_checkpointer_stopped", database=self.database, error=str(exc))
        finally:
            connection.close()


def _take_turn(dbapi_connection, longest_pause: float = TURN_LONGEST_PAUSE_SECONDS) -> None:
    fd = _TURN_FILES.get(id(dbapi_connection))
    if fd is None:
        return
    deadline = time.monotonic() + TURN_TIMEOUT_SECONDS
    pause = 0.0001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                locked = sqlite3.OperationalError(
                    f"database is locked: no turn to write within {TURN_TIMEOUT_SECONDS:g} s")
                # As SQLAlchemy raises a locked database, so callers handle both alike.
                raise OperationalError("BEGIN IMMEDIATE", None, locked) from None
            time.sleep(pause)
            pause = min(pause * 2, longest_pause)


def _end_turn(dbapi_connection) -> None:
    # The pool's reset on return passes its proxy; the DBAPI connection is behind it.
    fd = _TURN_FILES.get(id(getattr(dbapi_connection, "dbapi_connection", dbapi_connection)))
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def writer_turn(dbapi_connection) -> Iterator[None]:
    """For code that runs BEGIN IMMEDIATE … COMMIT itself on a pooled sqlite3 connection (the webhook)."""
    _take_turn(dbapi_connection, WEBHOOK_TURN_LONGEST_PAUSE_SECONDS)
    try:
        yield
    finally:
        _end_turn(dbapi_connection)


def _into_wal_mode(cursor) -> None:
    """Puts the file in WAL mode (it stays so: a no-op once it is). Changing a file's mode needs it to itself,
    and SQLite answers "database is locked" at once, without waiting in its busy handler, when another
    connection is writing to a file still in rollback-journal mode: two processes opening a new database
    together (two `shop db upgrade` at once, say), one changing its mode and then migrating while the
    other connects. So the change is tried again, within the writers' turn timeout."""
    deadline = time.monotonic() + TURN_TIMEOUT_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _configure_sqlite(engine: Engine) -> None:
    database = engine.url.database
    turn_file = f"{database}-writer" if database and database != ":memory:" else None
    checkpointer = _Checkpointer(engine, database) if turn_file else None

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        _into_wal_mode(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # Under gunicorn's 20 s request timeout, so a request stuck behind the write lock
        # gets a clean 503 rather than being killed.
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        cur.close()
        if turn_file:
            _TURN_FILES[id(dbapi_conn)] = os.open(turn_file, os.O_RDWR | os.O_CREAT, 0o600)
            checkpointer.start_in_this_process()  # once the file is in WAL mode

    @event.listens_for(engine, "close")
    def _on_close(dbapi_conn, _record):
        fd = _TURN_FILES.pop(id(dbapi_conn), None)
        if fd is not None:
            os.close(fd)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Several processes write to one file: take the write lock up front so that a
        # read-then-write transaction (reserve stock, claim the outbox) never has to be
        # upgraded, which SQLite would refuse with "database is locked". This is what
        # makes SQLite transactions serialisable here, as row locks do on PostgreSQL.
        dbapi_conn = conn.connection.dbapi_connection
        _take_turn(dbapi_conn)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _end_turn(dbapi_conn)
            raise

    # The turn ends as soon as the transaction does, whichever way it ends.
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def do_commit(dbapi_connection):
        try:
            commit(dbapi_connection)
        finally:
            _end_turn(dbapi_connection)

    def do_rollback(dbapi_connection):
        try:
            rollback(dbapi_connection)
        finally:
            _end_turn(dbapi_connection)

    dialect.do_commit, dialect.do_rollback = do_commit, do_rollback


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
    return commits_durable(create_engine(settings.database_url, max_overflow=0, pool_recycle=1800,
                                         pool_size=settings.db_pool_size + settings.db_max_overflow,
                                         isolation_level="AUTOCOMMIT", hide_parameters=True))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session:
        with session.begin():
            yield session


# SQLSTATEs of a transaction PostgreSQL aborted so that another could go on: a deadlock (40P01) or a
# serialization failure (40001). Nothing of it was written, and run again it can succeed.
_CONFLICTS = ("40P01", "40001")


# What staff are told of a decision PostgreSQL aborted so: nothing of it was written.
DECISION_ABORTED = ("the database stopped the decision to break a deadlock with another transaction (a worker's, "
                    "say): nothing of it was written; run it again")


def aborted_by_a_conflict(exc: BaseException) -> bool:
    """True for a transaction PostgreSQL aborted to break a deadlock or a serialization conflict."""
    return getattr(getattr(exc, "orig", exc), "sqlstate", None) in _CONFLICTS


def retrying_conflicts(work, *, attempts: int = 3):
    """`work()` (one whole transaction), run again when PostgreSQL aborts it for a deadlock or a
    serialization conflict with another transaction, up to `attempts` times in all."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except Exception as exc:
            if attempt == attempts or not aborted_by_a_conflict(exc):
                raise
            log.warning("transaction_run_again", attempt=attempt, reason=str(getattr(exc, "orig", exc)).splitlines()[0])


def missing_sqlite_file(engine_or_url) -> str | None:
    """The absolute path of a SQLite database file that does not exist, else None (not SQLite, in memory,
    or there). Connecting to such a path would make an empty database there, so that a mistyped
    DATABASE_URL is left behind as a file: /readyz (`ping`) and the `shop` verbs other than
    `shop db upgrade` (which makes the database) check this first and say so instead."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(str(engine_or_url))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    database = os.path.abspath(url.database)
    return None if os.path.exists(database) else database


def no_database_file(database: str) -> str:
    """What is said of `missing_sqlite_file`'s path."""
    return f"no database file at {database}: run `shop db upgrade` (or correct DATABASE_URL)"


def missing_table(exc: BaseException) -> str | None:
    """The table a statement named that the database does not have (SQLite's "no such table",
    PostgreSQL's SQLSTATE 42P01 undefined_table), else None: a database never migrated, or not the
    service's."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) == "42P01":
        found = re.search(r'relation "([^"]+)" does not exist', str(orig))
        return found.group(1) if found else "?"
    if isinstance(orig, sqlite3.OperationalError):
        found = re.match(r"no such table: (\S+)", str(orig))
        return found.group(1) if found else None
    return None


def missing_column(exc: BaseException) -> str | None:
    """The column ("table.column") a statement named that the database's table does not have
    (SQLite's "no such column" or "has no column named", PostgreSQL's SQLSTATE 42703
    undefined_column), else None: most often a database migrated to an older revision than the code's."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) == "42703":
        found = re.search(r'column "?([\w.]+)"? (?:of relation "(\w+)" )?does not exist', str(orig))
        if not found:
            return "?"
        return f"{found.group(2)}.{found.group(1)}" if found.group(2) else found.group(1)
    if isinstance(orig, sqlite3.OperationalError):
        found = re.match(r"no such column: (\S+)", str(orig))
        if found:
            return found.group(1)
        found = re.match(r"table (\S+) has no column named (\S+)", str(orig))
        return f"{found.group(1)}.{found.group(2)}" if found else None
    return None


def schema_problem(exc: BaseException) -> dict:
    """For a long-running process's log line about a failure: `fix`, when a statement named a table or column
    the database lacks (not migrated, or an older revision than this release's: the worker and relay may
    start before the release's migration has run, and wait for it), else nothing."""
    if missing_table(exc) is None and missing_column(exc) is None:
        return {}
    return {"fix": "the database has not this release's schema: run `shop db upgrade` (or correct DATABASE_URL)"}


class DatabaseNotReady(Exception):
    """The database answers, but the service could not store an event in it (`ping`)."""


def ping(engine: Engine) -> None:
    """Raise unless the service can store an event now: the database answers, holds the service's tables
    (migrated), and takes writes. A read-only PostgreSQL (a standby after a failover, a database set
    read-only) answers `SELECT 1` while every webhook is refused; a SQLite path with no file would be made
    an empty database by connecting to it."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        database = os.path.abspath(engine.url.database)
        if missing_sqlite_file(engine):
            raise DatabaseNotReady(no_database_file(database))
        for path in (database, os.path.dirname(database)):  # the folder too: SQLite writes its journal there
            if not os.access(path, os.W_OK):
                raise DatabaseNotReady(f"{path} is not writable by this process")
    with engine.connect() as conn:
        try:
            conn.execute(text("SELECT 1 FROM inbox_events LIMIT 0"))
        except DBAPIError as exc:
            raise DatabaseNotReady(f"the database has no inbox_events table: run `shop db upgrade` "
                                   f"({type(exc.orig).__name__})") from exc
        if engine.dialect.name == "postgresql":
            standby, read_only = conn.execute(text(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")).one()
            if standby or read_only == "on":
                raise DatabaseNotReady("the database takes no writes: " + (
                    "a standby (in recovery)" if standby else "its transactions are read-only"))


class RowsAtCommit:
    """Rows a transaction only appends and never reads back (history rows, handler attempts,
    queued mails), written just before its commit with one Core INSERT per table (and set of
    columns given), not one per savepoint, and not through the session's unit of work, whose
    bookkeeping for them cost 3-11 % of a paid order's worker CPU on PostgreSQL (docs/benchmarks.md).
    Each row object gets its new id, and stays out of the session. Their times are set when they
    are made, so they read as if added at once. Likewise Core writes to rows nothing in the
    transaction reads back (a paid order's cart marked deleted): one executemany per statement.
    Attached with `collect_rows_at_commit`; without it `add_row` and `execute_at_commit` act at once.
    """

    def __init__(self) -> None:
        self.rows: list[object] = []
        self.writes: list[tuple[Executable, dict]] = []

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Around a savepoint: if it is rolled back, the rows and writes made inside it are dropped too."""
        kept, kept_writes = len(self.rows), len(self.writes)
        try:
            yield
        except BaseException:
            del self.rows[kept:]
            del self.writes[kept_writes:]
            raise

    def add_to(self, session: Session) -> None:
        session.flush()  # what the rows may point at is written first
        rows, self.rows = self.rows, []
        insert_rows(session, rows)
        by_statement: dict[Executable, list[dict]] = {}
        for statement, params in self.writes:
            by_statement.setdefault(statement, []).append(params)
        for statement, params_list in by_statement.items():
            session.execute(statement, params_list)
        self.writes = []


def insert_rows(session: Session, rows: list[object]) -> None:
    """Insert new mapped objects with one Core `INSERT … RETURNING` per table and set of columns
    given, not through the session's unit of work; each gets its id, and a flush never sees it.
    Columns left out take their defaults, as at a flush."""
    by_shape: dict[tuple, list[tuple[object, dict]]] = {}
    for row in rows:
        state = inspect(row)
        _refuse_relationships(state, state.dict)
        values = {prop.columns[0].key: state.dict[prop.key] for prop in state.mapper.column_attrs
                  if prop.key in state.dict}
        by_shape.setdefault((state.mapper, frozenset(values)), []).append((row, values))
    for (mapper, _), group in by_shape.items():
        (key,) = mapper.local_table.primary_key.columns
        ids = session.execute(insert(mapper.local_table).returning(key, sort_by_parameter_order=True),
                              [values for _, values in group]).scalars()
        for (row, _), row_id in zip(group, ids, strict=True):
            set_committed_value(row, mapper.get_property_by_column(key).key, row_id)


def _refuse_relationships(state, keys) -> None:
    """`keys`: what a new object was given (its dict), or what changed in a loaded one."""
    if any(relation.key in keys for relation in state.mapper.relationships):
        # A flush would turn it into the foreign key; a Core statement would drop it silently.
        raise TypeError(f"{state.class_.__name__} sets a relationship, which these Core writes do not "
                        "carry: set its foreign key column instead")


def write_and_release(session: Session, objects: list[object]) -> None:
    """Write what changed in these loaded objects with one UPDATE per table and set of changed
    columns (PostgreSQL: the rows' new values as arrays, joined by key; SQLite: an executemany),
    insert the new ones with `insert_rows`, and take them all out of the session: its flush never
    sees them, and a later query in the transaction loads them again as written.

    For a worker batch's ordinary payments, whose objects the same handler changed in the same
    way: the unit of work sent an UPDATE per row and kept books on every object. Only column
    attributes are written; an object whose relationship changed is refused (the flush would
    have written the foreign key), as is a new one given a relationship."""
    groups: dict[tuple, list[dict]] = {}
    new, seen = [], set()
    for obj in objects:
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        state = inspect(obj)
        if state.pending:
            new.append(obj)
            continue
        _refuse_relationships(state, state.committed_state)
        mapper = state.mapper
        # In the columns' order, so that objects changed alike share one statement whatever order
        # the changes were made in.
        changed = sorted((mapper.get_property(key).columns[0] for key in state.committed_state),
                         key=lambda column: column.key)
        if not changed:
            continue
        (key,) = mapper.local_table.primary_key.columns
        values = {column.key: state.dict[mapper.get_property_by_column(column).key] for column in changed}
        values[key.key] = state.identity[0]
        groups.setdefault((mapper.local_table, key, tuple(changed)), []).append(values)
    with session.no_autoflush:  # a flush now would write the new objects, and insert_rows them again
        _update_groups(session, groups)
        insert_rows(session, new)
    for obj in objects:
        if obj is not None and obj in session:
            session.expunge(obj)


def _update_groups(session: Session, groups: dict[tuple, list[dict]]) -> None:
    postgresql = session.get_bind().dialect.name == "postgresql"
    for (table, key, changed), rows in groups.items():
        if postgresql:
            names = [key.key, *(column.key for column in changed)]
            arrays = {f"new_{name}": [row[name] for row in rows] for name in names}
            source = func.unnest(*(bindparam(f"new_{column.key}", type_=ARRAY(column.type))
                                   for column in (key, *changed))).table_valued(*names).render_derived()
            session.execute(update(table).values({column: source.c[column.key] for column in changed})
                            .where(key == source.c[key.key]), arrays)
        else:
            session.execute(update(table).where(key == bindparam("_key"))
                            .values({column: bindparam(f"new_{column.key}") for column in changed}),
                            [{"_key": row[key.key], **{f"new_{c.key}": row[c.key] for c in changed}} for row in rows])


_ROWS_AT_COMMIT = "rows_at_commit"


def collect_rows_at_commit(session: Session) -> RowsAtCommit:
    return session.info.setdefault(_ROWS_AT_COMMIT, RowsAtCommit())


def add_row(session: Session, row: object) -> None:
    """Add a row nothing in this transaction reads back: at once, or at the commit of a worker batch."""
    later = session.info.get(_ROWS_AT_COMMIT)
    if later is not None:
        later.rows.append(row)
    else:
        session.add(row)


def execute_at_commit(session: Session, statement: Executable, params: dict) -> None:
    """Run a Core write whose rows nothing in this transaction reads back: at once, or with the
    others of the same statement (one executemany) at the commit of a worker batch."""
    later = session.info.get(_ROWS_AT_COMMIT)
    if later is not None:
        later.writes.append((statement, params))
    else:
        session.execute(statement, params)
