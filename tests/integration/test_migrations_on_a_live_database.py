"""`shop db upgrade` against a database the service is using: each revision waits a bounded time for the
locks it needs and commits on its own, a revision that cannot run says where the database is in one line,
and two upgrades at once (two machines' release step) run one after the other."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest
from sqlalchemy import text

from models.db import make_engine
from models.migrations import alembic_config, database_revision, upgrade
from tests.backends import (create_postgres_database, drop_postgres_database, servers_available,
                            wait_until_waiting_for_a_lock)
from tests.integration.test_db_upgrade_messages import empty_database_url  # noqa: F401 (fixture)

SHOP = os.path.join(os.path.dirname(sys.executable), "shop")


def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def start_db_upgrade(database_url: str) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=database_url, BROKER_URL="memory://localhost/db-upgrade", LOG_FORMAT="console")
    return subprocess.Popen([SHOP, "db", "upgrade"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=120)  # a guard against waiting for ever, not a measure
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"`shop db upgrade` still running after 120 s: {out} {err[-2000:]}") from None
    return proc.returncode, out, err


def test_two_upgrades_at_once_one_migrates_and_the_other_then_finds_the_database_at_head(empty_database_url):
    runs = [start_db_upgrade(empty_database_url) for _ in range(2)]
    results = [finished(proc) for proc in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    assert sorted(out for _, out, _ in results) == [
        f"database already at head ({head()}); nothing done\n",
        f"database migrated to head ({head()}), from an empty database\n"], results
    assert database_revision(empty_database_url) == head()


def _has_open(pid: int, path: str) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_on_sqlite_two_upgrades_held_up_together_still_run_one_after_the_other(tmp_path):
    """Both start while a writer of the service holds SQLite's write lock (and its turn): each has connected,
    so each is about to read the database's revision, before either can migrate. The second must read it only
    once the first has migrated, and say so."""
    path = str(tmp_path / "shop.db")
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    try:
        with engine.connect() as writer:
            writer.exec_driver_sql("SELECT 1")  # a transaction: the write lock, taken up front
            runs = [start_db_upgrade(url) for _ in range(2)]
            # The first to connect waits for the writers' turn for at most 10 s: the other must connect within
            # 8 s of it. Its own start (imports, on a loaded machine) may take longer: a minute.
            deadline = time.monotonic() + 60
            while not all(_has_open(proc.pid, f"{path}-writer") for proc in runs):
                if any(_has_open(proc.pid, f"{path}-writer") for proc in runs):
                    deadline = min(deadline, time.monotonic() + 8)
                assert time.monotonic() < deadline, "the two upgrades did not both connect"
                assert all(proc.poll() is None for proc in runs), [proc.communicate() for proc in runs]
                time.sleep(0.01)
            writer.rollback()
        results = [finished(proc) for proc in runs]
    finally:
        engine.dispose()
    assert [code for code, _, _ in results] == [0, 0], results
    assert sorted(out for _, out, _ in results) == [
        f"database already at head ({head()}); nothing done\n",
        f"database migrated to head ({head()}), from an empty database\n"], results


def test_on_sqlite_a_process_connecting_while_another_writes_to_the_new_file_waits_to_put_it_in_wal_mode(tmp_path):
    """The second of two upgrades at once can connect while the first, having made the file, writes to it still
    in rollback-journal mode. SQLite refuses the second's change to WAL mode at once, without waiting in its
    busy handler: that upgrade failed, "database is locked". The change waits for the writer instead."""
    path = tmp_path / "new.db"
    first = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    engine = make_engine(f"sqlite:///{path}")
    try:
        first.execute("CREATE TABLE made_by_the_first (x)")
        first.execute("BEGIN IMMEDIATE")
        first.execute("INSERT INTO made_by_the_first VALUES (1)")
        with ThreadPoolExecutor(1) as pool:
            connecting = pool.submit(engine.connect)
            with pytest.raises(FutureTimeout):  # still waiting, not failed
                connecting.result(timeout=0.5)
            first.commit()
            with connecting.result(timeout=60) as connection:
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
                assert connection.exec_driver_sql("SELECT x FROM made_by_the_first").scalars().all() == [1]
    finally:
        engine.dispose()
        first.close()

# PostgreSQL only: SQLite has one writer at a time and no lock to wait for on a table.
if servers_available():
    @pytest.fixture
    def postgres_url():
        url = create_postgres_database()
        yield url
        drop_postgres_database(url)

    def _wait_until_one_waits_for_a_table_and_another_has_connected(engine, holder_pid: int, runs) -> None:
        """Until, of the two upgrades' connections, one waits for a lock (on the table the holder holds) and
        the other has connected too: the second has started before the first can go on."""
        deadline = time.monotonic() + 30
        with engine.connect() as connection:
            while time.monotonic() < deadline:
                connected, waiting = connection.execute(text(
                    "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid NOT IN (pg_backend_pid(), :holder)"),
                    {"holder": holder_pid}).one()
                connection.rollback()
                if connected >= 2 and waiting >= 1:
                    return
                for proc in runs:
                    if proc.poll() is not None:
                        raise AssertionError(f"finished before the other started: {proc.communicate()}")
                time.sleep(0.02)
        raise AssertionError("the two upgrades did not both start within 30 s")

    def test_a_second_upgrade_waits_for_the_first_then_says_the_database_is_at_head(postgres_url):
        upgrade(postgres_url, "0014")
        engine = make_engine(postgres_url)
        try:
            with engine.connect() as holder:
                holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
                holder.exec_driver_sql("SELECT count(*) FROM staff_alerts").scalar_one()  # 0015 alters it
                runs = [start_db_upgrade(postgres_url) for _ in range(2)]
                _wait_until_one_waits_for_a_table_and_another_has_connected(engine, holder_pid, runs)
                holder.rollback()
            results = [finished(proc) for proc in runs]
        finally:
            engine.dispose()
        assert [code for code, _, _ in results] == [0, 0], results
        assert sorted(out for _, out, _ in results) == [f"database already at head ({head()}); nothing done\n",
                                                        f"database migrated to head ({head()}), from 0014\n"]
        assert database_revision(postgres_url) == head()

    # (revision to start at, the table another transaction holds, how, the revision that waits for it and fails,
    # the revision the database is then at). A reader's lock stops an ALTER TABLE; a writer's stops a new
    # reference to the table (0013) and an index build (0014).
    HELD = [("0009", "orders", "ACCESS SHARE", "0010", "0009"),
            ("0010", "staff_members", "ACCESS SHARE", "0011", "0010"),
            ("0011", "stock", "ACCESS SHARE", "0012", "0011"),
            ("0012", "orders", "ROW EXCLUSIVE", "0013", "0012"),
            ("0013", "order_payment_intents", "ROW EXCLUSIVE", "0014", "0013"),
            ("0014", "staff_alerts", "ACCESS SHARE", "0015", "0014"),
            # The revisions before the one that waits are committed, each with its version, and their locks
            # given back: nothing of theirs is held while 0015 waits.
            ("0009", "staff_alerts", "ACCESS SHARE", "0015", "0014")]

    @pytest.mark.parametrize("start, table, mode, waits, at", HELD, ids=[f"{c[0]}-{c[1]}-{c[3]}" for c in HELD])
    def test_a_revision_waits_a_bounded_time_for_a_table_in_use_then_says_where_the_database_is(
            postgres_url, start, table, mode, waits, at):
        upgrade(postgres_url, start)
        engine = make_engine(postgres_url)
        try:
            with engine.connect() as holder:
                holder.exec_driver_sql(f"LOCK TABLE {table} IN {mode} MODE")  # a report's or a checkout's
                run = start_db_upgrade(postgres_url)
                wait_until_waiting_for_a_lock(engine, proc=run)
                # While it waits, it holds no exclusive lock of a revision before: those committed.
                with engine.connect() as look:
                    held = look.exec_driver_sql(
                        "SELECT c.relname FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                        "JOIN pg_class c ON c.oid = l.relation "  # a table of the service (not one it is creating)
                        "WHERE a.datname = current_database() AND a.wait_event_type = 'Lock' AND l.granted "
                        "AND l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' ORDER BY 1").scalars().all()
                code, out, err = finished(run)
                holder.rollback()
        finally:
            engine.dispose()
        moved = f" (migrated from {start})" if start != at else ""
        assert (code, out, err.splitlines()[-1:]) == (1, "", [
            f"Error: the database is at {at}{moved}: revision {waits} was not applied: {table} stayed locked by "
            "another transaction for 5 tries of 2s; nothing was changed, run the migration again"])
        assert database_revision(postgres_url) == at
        assert held == []

        again = start_db_upgrade(postgres_url)
        assert finished(again) == (0, f"database migrated to head ({head()}), from {at}\n", "")

    def test_0009_on_a_table_in_use_says_in_one_line_that_the_database_is_at_0008_and_0008_is_done(postgres_url):
        upgrade(postgres_url, "0006")
        engine = make_engine(postgres_url)
        try:
            with engine.connect() as holder:
                holder.exec_driver_sql("SELECT count(*) FROM refunds").scalar_one()  # a web transaction left open
                code, out, err = finished(start_db_upgrade(postgres_url))
                holder.rollback()
            with engine.connect() as connection:
                partial = connection.exec_driver_sql(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_outbox_order_id'").scalar_one()
                compression = connection.exec_driver_sql(
                    "SELECT attcompression FROM pg_attribute "
                    "WHERE attrelid = 'inbox_events'::regclass AND attname = 'payload'").scalar_one()
        finally:
            engine.dispose()
        assert (code, out, err.splitlines()) == (1, "", [
            "Error: the database is at 0008 (migrated from 0006): revision 0009 was not applied: the tables are "
            "in use by another transaction (waited 5s): stop web, worker and relay, then run the migration "
            "again; nothing was changed"])
        # What the database's version says is what it has: 0007's indexes and 0008's compression.
        assert database_revision(postgres_url) == "0008"
        assert partial.endswith("WHERE (order_id IS NOT NULL)") and compression == "l"
