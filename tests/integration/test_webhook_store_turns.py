"""On SQLite the webhook's stores take turns within a process; a request that gets no turn in time is a 503."""
from __future__ import annotations

import json

import pytest

from sqlalchemy import func, select

from models.events import InboxEvent
from tests.support import assert_error, event_for, signed_headers
from webhook_app import webhooks


def test_a_store_that_gets_no_turn_in_time_answers_503_and_the_retry_is_stored(client, sessions, settings,
                                                                                monkeypatch):
    monkeypatch.setattr(webhooks, "_SQLITE_WRITER_TIMEOUT", 0.05)
    payload = json.dumps(event_for("localstripe_payment_intent.succeeded"))
    event_id = json.loads(payload)["id"]

    def post():
        return client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload))

    def stored() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(InboxEvent).where(InboxEvent.event_id == event_id))

    with webhooks._SQLITE_WRITER:  # another thread of this process is storing an event
        while_busy = post()
    if settings.database_url.startswith("sqlite"):
        # Nothing stored, so Stripe's retry (a 5xx makes it deliver again) is the first copy.
        assert_error(while_busy, 503, "storage_unavailable")
        assert stored() == 0
        retry = post()
        assert retry.status_code == 200 and retry.get_json() == {"received": True, "duplicate": False}
    else:
        # PostgreSQL has row locks, not one write lock: its stores never wait on this one.
        assert while_busy.status_code == 200 and while_busy.get_json()["duplicate"] is False
    assert stored() == 1


# --- every SQLite writer, in every process, takes a turn (models.db) -------------------------------------


def _begin_in_thread(engine):
    """A write transaction begun on another connection, in a thread: (thread, result list)."""
    import threading

    result: list = []

    def run():
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql("SELECT 1")
            result.append("committed")
        except Exception as exc:  # noqa: BLE001 - reported by the caller's assertion
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _turn_is_free(path) -> bool:
    """Whether another process could take the writers' turn now (a lock of its own on the file)."""
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing the file drops the lock
    return True


def test_a_sqlite_writer_waits_for_the_turn_and_gets_it_when_the_holder_commits_or_rolls_back(tmp_path):
    from models.db import make_engine
    from models.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'turns.db'}"
    upgrade(url)
    holder, waiter = make_engine(url), make_engine(url)  # two processes' engines, as far as the file knows
    try:
        for end in ("commit", "rollback"):
            connection = holder.connect()
            assert _turn_is_free(tmp_path / "turns.db-writer")
            transaction = connection.begin()
            assert not _turn_is_free(tmp_path / "turns.db-writer")  # held for the whole transaction
            thread, result = _begin_in_thread(waiter)
            thread.join(0.5)
            assert thread.is_alive() and result == []  # waiting for its turn, not failing
            getattr(transaction, end)()
            thread.join(10)
            assert result == ["committed"], end
            assert _turn_is_free(tmp_path / "turns.db-writer")  # and given back when it ends
            connection.close()
    finally:
        holder.dispose()
        waiter.dispose()


def test_a_sqlite_writer_that_gets_no_turn_in_time_fails_as_a_locked_database(tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from models import db
    from models.migrations import upgrade

    monkeypatch.setattr(db, "TURN_TIMEOUT_SECONDS", 0.2)
    url = f"sqlite:///{tmp_path / 'turns.db'}"
    upgrade(url)
    holder, waiter = db.make_engine(url), db.make_engine(url)
    try:
        with holder.begin():
            thread, result = _begin_in_thread(waiter)
            thread.join(10)
        [error] = result
        assert isinstance(error, OperationalError) and "no turn to write" in str(error)
        thread, result = _begin_in_thread(waiter)  # the turn is free again: the next writer gets it
        thread.join(10)
        assert result == ["committed"]
    finally:
        holder.dispose()
        waiter.dispose()


def test_the_webhook_tries_for_the_turn_more_often_than_the_other_writers(tmp_path, monkeypatch):
    """Waiting, the webhook tries at least every 0.5 ms (requests Stripe waits on are held), others every 2 ms."""
    from models import db
    from models.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'turns.db'}"
    upgrade(url)
    holder, waiter = db.make_engine(url), db.make_engine(url)
    sleep = db.time.sleep
    try:
        with holder.begin():
            waiting = waiter.raw_connection()
            for take, longest in ((lambda: db.writer_turn(waiting.dbapi_connection).__enter__(),
                                   db.WEBHOOK_TURN_LONGEST_PAUSE_SECONDS),
                                  (lambda: db._take_turn(waiting.dbapi_connection), db.TURN_LONGEST_PAUSE_SECONDS)):
                pauses = []

                def pause(seconds):
                    pauses.append(seconds)
                    if len(pauses) == 30:
                        raise TimeoutError("still waiting")  # enough tries seen
                    sleep(seconds)

                monkeypatch.setattr(db.time, "sleep", pause)
                with pytest.raises(TimeoutError):
                    take()
                monkeypatch.setattr(db.time, "sleep", sleep)
                assert max(pauses) == longest and pauses[-1] == longest and pauses[0] < longest
            waiting.close()
    finally:
        holder.dispose()
        waiter.dispose()
    assert db.WEBHOOK_TURN_LONGEST_PAUSE_SECONDS == 0.0005 and db.TURN_LONGEST_PAUSE_SECONDS == 0.002


# PostgreSQL's store is one autocommit statement under row locks: it has no turn to take.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_webhooks_own_store_takes_the_writers_turn_too(client, sessions, settings, monkeypatch):
    from models import db
    from tests.support import rendered_logs

    monkeypatch.setattr(db, "TURN_TIMEOUT_SECONDS", 0.2)
    payload = json.dumps(event_for("localstripe_payment_intent.succeeded"))
    other = db.make_engine(settings.database_url)  # another process's writer
    try:
        with other.begin(), rendered_logs() as lines:
            refused = client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload))
    finally:
        other.dispose()
    assert_error(refused, 503, "storage_unavailable")
    assert any("no turn to write" in line for line in lines), lines
    stored = client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload))
    assert stored.get_json() == {"received": True, "duplicate": False}


def test_sqlite_copies_its_log_into_the_database_only_every_wal_checkpoint_pages(tmp_path, monkeypatch):
    """A checkpoint runs inside the COMMIT that takes the WAL past its size, under the writers' turn:
    every other writer waits for it. The service lets the log grow to WAL_CHECKPOINT_PAGES first
    (SQLite's own checkpoint is the backstop of the process's checkpointer, held off here)."""
    from models import db
    from models.migrations import upgrade

    monkeypatch.setattr(db, "CHECKPOINT_INTERVAL_SECONDS", 3600.0)
    path = tmp_path / "wal.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = db.make_engine(url)
    page = 4096
    filler = "x" * 3000  # one row a page, about
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE filler (text TEXT)")
        before = path.stat().st_size

        def fill(pages: int) -> None:
            for _ in range(pages // 500):
                with engine.begin() as connection:
                    connection.exec_driver_sql("INSERT INTO filler VALUES (?)", [(filler,)] * 500)

        fill(2500)  # past SQLite's default of 1,000 pages, which would have checkpointed by now
        assert path.stat().st_size == before
        assert (tmp_path / "wal.db-wal").stat().st_size > 2000 * page
        fill(db.WAL_CHECKPOINT_PAGES - 2000)  # now past the service's own size
        assert path.stat().st_size > before + 2000 * page
    finally:
        engine.dispose()


def test_each_process_copies_the_log_into_the_database_outside_the_writers_turn(tmp_path):
    """The process's checkpointer copies a committed write into the database file within a moment,
    with the log far below WAL_CHECKPOINT_PAGES and no COMMIT doing it; it stops with its engine."""
    import gc
    import threading
    import time

    from models import db

    path = tmp_path / "checkpointed.db"
    running = set(threading.enumerate())
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE filler (text TEXT)")
    before = path.stat().st_size
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO filler VALUES (?)", [("x" * 3000,)] * 200)  # about 200 pages
    deadline = time.monotonic() + 10 * db.CHECKPOINT_INTERVAL_SECONDS
    while path.stat().st_size < before + 150 * 4096 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size >= before + 150 * 4096

    checkpointers = [thread for thread in set(threading.enumerate()) - running if thread.name == "sqlite-checkpointer"]
    assert len(checkpointers) == 1
    engine.dispose()
    del engine, connection
    gc.collect()
    for thread in checkpointers:
        thread.join(timeout=5 * db.CHECKPOINT_INTERVAL_SECONDS)
    assert not any(thread.is_alive() for thread in checkpointers)
