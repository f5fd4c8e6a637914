"""The store process (webhook_app.store_process), run for real as a subprocess on the test's SQLite file:
it stores the events that many clients send it in few transactions, answers each for its own,
refuses a bad frame without harming the other clients, answers a database error as an error
(503 at the endpoint), and a web process that cannot reach it stores the event itself.

The endpoint is the app's own (Flask's test client), built with the socket announced in the
environment as gunicorn's master announces it; PostgreSQL never uses it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from models.db import make_engine
from models.events import InboxEvent, OutboxMessage
from tests.support import assert_error, event_for, signed_headers
from webhook_app import store_process
from webhook_app.store_process import SOCKET_ENV, answer_of, frame, read_frame, request_for, socket_path

WAIT = 20.0  # seconds before a test gives up waiting for a process (never a timing assert)
ROOT = Path(__file__).resolve().parents[2]
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class StoreProcess:
    """`python -m webhook_app.store_process` on the test's database, its log lines kept in a file."""

    def __init__(self, database_url: str, log_file: Path):
        self.database_url, self.log_file = database_url, log_file
        self.path = socket_path(make_engine(database_url).url.database)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StoreProcess":
        env = {**os.environ, "DATABASE_URL": self.database_url, "LOG_FORMAT": "json",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        started = len(self.lines("store_process_started")) if self.log_file.exists() else 0
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "webhook_app.store_process"], env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        _wait_until(lambda: len(self.lines("store_process_started")) > started or self.proc.poll() is not None,
                    "it started")
        assert self.proc.poll() is None, self.log_file.read_text()
        return self

    def lines(self, event: str) -> list[dict]:
        found = []
        for line in self.log_file.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == event:
                found.append(json.loads(line))
        return found

    def stop(self) -> dict:
        """SIGTERM; its last stop line (groups and events it stored)."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(WAIT) == 0, self.log_file.read_text()
        return self.lines("store_process_stopped")[-1]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.01)


@pytest.fixture
def store(settings, tmp_path):
    running = StoreProcess(settings.database_url, tmp_path / "store-process.log").start()
    yield running
    running.kill()


@pytest.fixture
def announced_app(settings, catalog, monkeypatch):
    """The app as a gunicorn web process builds it: the store process's socket in its environment."""
    from webhook_app import create_app

    monkeypatch.setenv(SOCKET_ENV, socket_path(make_engine(settings.database_url).url.database) or "")
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["shop"].dispose()


def _post(app, event: dict):
    payload = json.dumps(event)
    return app.test_client().post("/webhooks/stripe", data=payload, headers=signed_headers(payload))


def _count(settings, model) -> int:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(model))
    finally:
        engine.dispose()


def _connected(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def _answer(sock: socket.socket):
    sock.settimeout(WAIT)
    return answer_of(read_frame(sock))


@SQLITE_ONLY
def test_events_sent_from_many_threads_are_stored_in_few_transactions_each_answered_for_its_own(settings, store):
    events = [event_for("localstripe_payment_intent.succeeded") for _ in range(24)]
    answers: dict[str, object] = {}
    all_sent = threading.Barrier(len(events) + 1)

    def send(event):
        with _connected(store.path) as sock:
            sock.sendall(request_for(event, json.dumps(event)))
            all_sent.wait(WAIT)
            answers[event["id"]] = _answer(sock)

    holder = make_engine(settings.database_url)
    try:
        # Beginning takes the writers' turn (models.db): the store process's first group waits behind it,
        # and everything sent meanwhile is stored together after it.
        with holder.begin():
            threads = [threading.Thread(target=send, args=(event,), daemon=True) for event in events]
            for thread in threads:
                thread.start()
            all_sent.wait(WAIT)
    finally:
        holder.dispose()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()

    assert len({answer.id for answer in answers.values()}) == len(events)  # each its own inbox row
    assert all(answer.status.value == "received" and answer.duplicate is False for answer in answers.values())
    assert (_count(settings, InboxEvent), _count(settings, OutboxMessage)) == (24, 24)
    stopped = store.stop()
    # At most: what it read before the turn was free, what had arrived by then, and connections
    # accepted only after that.
    assert stopped["events"] == 24 and stopped["groups"] <= 3, stopped
    assert not os.path.exists(store.path)  # removed at exit


@SQLITE_ONLY
def test_the_endpoint_stores_through_the_store_process_and_a_second_delivery_answers_duplicate(
        settings, store, announced_app):
    endpoint = announced_app.extensions["webhook_endpoint"]
    assert endpoint.store_process is not None
    event = event_for("localstripe_payment_intent.succeeded")

    assert _post(announced_app, event).get_json() == {"received": True, "duplicate": False}
    assert _post(announced_app, event).get_json() == {"received": True, "duplicate": True}

    # Two copies of one event from two connections at once: stored once, the other copy a duplicate.
    twice = event_for("localstripe_payment_intent.succeeded")
    with _connected(store.path) as first, _connected(store.path) as second:
        first.sendall(request_for(twice, json.dumps(twice)))
        second.sendall(request_for(twice, json.dumps(twice)))
        copies = sorted(answer.duplicate for answer in (_answer(first), _answer(second)))
    assert copies == [False, True]

    assert (_count(settings, InboxEvent), _count(settings, OutboxMessage)) == (2, 2)
    assert endpoint.group_commit.events == 0  # this process stored nothing itself
    assert store.stop()["events"] == 4


@SQLITE_ONLY
def test_the_socket_is_for_the_services_user_only(store):
    assert stat.S_ISSOCK(os.stat(store.path).st_mode)
    assert stat.S_IMODE(os.stat(store.path).st_mode) & 0o077 == 0


@SQLITE_ONLY
def test_a_bad_frame_closes_only_its_own_connection_and_the_other_clients_are_answered(settings, store):
    good = _connected(store.path)
    bad_frames = [
        struct.pack("!I", 5) + b"\xff\xff\xff\xff\xff",  # not marshal data
        frame({"id": "evt_1"}),  # marshal, but not a request
        frame(("evt_1", "payment_intent.succeeded", None, "yes", None, "{}")),  # livemode not true or false
        struct.pack("!I", 1 << 30),  # a length over the limit: refused before a byte of it is read
    ]
    for bad_frame in bad_frames:
        with _connected(store.path) as bad:
            bad.sendall(bad_frame)
            bad.settimeout(WAIT)
            assert bad.recv(100) == b""  # closed, with no answer
    event = event_for("localstripe_payment_intent.succeeded")
    with good:
        good.sendall(request_for(event, json.dumps(event)))
        assert _answer(good).duplicate is False
    assert store.proc.poll() is None
    assert len(store.lines("store_process_bad_frame")) == len(bad_frames)
    assert _count(settings, InboxEvent) == 1


def _refuse_outbox_rows_of(settings, event_id: str) -> None:
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"""
                CREATE TRIGGER refuse_outbox_row BEFORE INSERT ON outbox
                WHEN instr(NEW.payload, '{event_id}') > 0
                BEGIN SELECT RAISE(ABORT, 'outbox row refused'); END""")
    finally:
        engine.dispose()


@SQLITE_ONLY
def test_a_database_error_in_the_store_process_answers_503_and_the_web_does_not_store_it_itself(
        settings, store, announced_app):
    refused = event_for("localstripe_payment_intent.succeeded")
    _refuse_outbox_rows_of(settings, refused["id"])

    assert_error(_post(announced_app, refused), 503, "storage_unavailable")

    assert _count(settings, InboxEvent) == 0  # one transaction: nothing half-stored
    assert announced_app.extensions["webhook_endpoint"].group_commit.events == 0  # refused, not lost: no fallback
    assert "outbox row refused" in store.lines("store_process_store_failed")[0]["error"]
    other = event_for("localstripe_payment_intent.succeeded")  # the store process goes on
    assert _post(announced_app, other).get_json() == {"received": True, "duplicate": False}


@SQLITE_ONLY
def test_a_web_process_that_cannot_reach_the_store_process_stores_the_event_itself_and_retries_later(
        settings, tmp_path, announced_app):
    endpoint = announced_app.extensions["webhook_endpoint"]
    client, group_commit = endpoint.store_process, endpoint.group_commit
    client.RETRY_SECONDS = 60.0  # longer than this test: no second try before the window is over

    first = event_for("localstripe_payment_intent.succeeded")
    assert _post(announced_app, first).get_json() == {"received": True, "duplicate": False}  # no socket yet
    assert group_commit.events == 1
    store = StoreProcess(settings.database_url, tmp_path / "store-process.log").start()
    try:
        second = event_for("localstripe_payment_intent.succeeded")
        assert _post(announced_app, second).get_json() == {"received": True, "duplicate": False}
        assert group_commit.events == 2  # not tried again within a second of the failed connect

        client.RETRY_SECONDS = 0.2
        client._retry_at = 0.0  # as if the window were over
        third = event_for("localstripe_payment_intent.succeeded")
        assert _post(announced_app, third).get_json() == {"received": True, "duplicate": False}
        assert group_commit.events == 2  # through the store process now

        store.proc.kill()  # connection lost: this request's event is stored here
        store.proc.wait(WAIT)
        fourth = event_for("localstripe_payment_intent.succeeded")
        assert _post(announced_app, fourth).get_json() == {"received": True, "duplicate": False}
        assert group_commit.events == 3
    finally:
        store.kill()
    assert (_count(settings, InboxEvent), _count(settings, OutboxMessage)) == (4, 4)


@SQLITE_ONLY
def test_no_answer_in_time_answers_503_and_the_late_store_makes_the_next_delivery_a_duplicate(
        settings, store, announced_app, monkeypatch):
    from webhook_app import webhooks

    monkeypatch.setattr(webhooks, "_QUEUE_TIMEOUT", 0.5)
    event = event_for("localstripe_payment_intent.succeeded")
    store.proc.send_signal(signal.SIGSTOP)
    try:
        assert_error(_post(announced_app, event), 503, "storage_unavailable")
    finally:
        store.proc.send_signal(signal.SIGCONT)
    _wait_until(lambda: _count(settings, InboxEvent) == 1, "the store process stored it after all")
    assert _post(announced_app, event).get_json() == {"received": True, "duplicate": True}
    assert announced_app.extensions["webhook_endpoint"].group_commit.events == 0


def test_the_test_client_and_postgresql_store_in_process_even_with_a_socket_announced(settings, catalog,
                                                                                     monkeypatch):
    from webhook_app import create_app

    app = create_app(settings)  # nothing announced: Flask's test client, no gunicorn
    assert app.extensions["webhook_endpoint"].store_process is None
    app.extensions["shop"].dispose()
    monkeypatch.setenv(SOCKET_ENV, "/tmp/some-other-database.db-store.sock")
    app = create_app(settings)  # another database's socket is never used
    assert app.extensions["webhook_endpoint"].store_process is None
    app.extensions["shop"].dispose()
    if settings.database_url.startswith("postgresql"):
        from sqlalchemy.engine import make_url

        monkeypatch.setenv(SOCKET_ENV, socket_path(make_url(settings.database_url).database))
        app = create_app(settings)
        assert app.extensions["webhook_endpoint"].store_process is None
        app.extensions["shop"].dispose()
        assert store_process.StoreProcessSupervisor.for_database(settings.database_url) is None


@SQLITE_ONLY
def test_a_connection_kept_from_before_a_restart_is_replaced_and_the_event_goes_to_the_new_store_process(
        settings, store, announced_app):
    endpoint = announced_app.extensions["webhook_endpoint"]
    assert _post(announced_app, event_for("localstripe_payment_intent.succeeded")).status_code == 200
    assert store.stop()["events"] == 1  # this thread's connection to it is kept, now to nothing
    store.start()

    event = event_for("localstripe_payment_intent.succeeded")
    assert _post(announced_app, event).get_json() == {"received": True, "duplicate": False}
    assert endpoint.group_commit.events == 0  # not stored here: through the new store process
    assert store.stop()["events"] == 1
