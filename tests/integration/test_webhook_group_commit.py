"""The webhook's group commit: events that arrive while a store is in flight are stored together by
the next one (one statement on PostgreSQL, one BEGIN IMMEDIATE … COMMIT on SQLite), and each
request still answers for its own event, only after the commit that holds it.

A group is made for real: a transaction on another connection holds what the store needs (the
SQLite writers' turn, or PostgreSQL's inbox table), the first request's store waits behind it
while the others queue, and releasing it lets the first store finish and the queued ones go
together as the next group.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest
from sqlalchemy import func, select, text

from models.db import make_engine
from models.events import EventStatus, InboxEvent, OutboxMessage
from tests.backends import servers_available
from tests.support import assert_error, event_for, signed_headers, stripe_fixture

WAIT = 20.0  # seconds before a test gives up waiting for threads to reach a point (never a timing assert)


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.005)


@contextlib.contextmanager
def _store_held(settings):
    """Another connection's transaction holding what every store of the webhook needs, until the block ends."""
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql("LOCK TABLE inbox_events IN EXCLUSIVE MODE")
            # On SQLite, beginning took the writers' turn and the write lock (models.db).
            yield connection
    finally:
        engine.dispose()


class _Post(threading.Thread):
    """One delivery, POSTed from a thread of its own (as one of gunicorn's threads would run it)."""

    def __init__(self, app, payload: str):
        super().__init__(daemon=True)
        self.client, self.payload, self.response = app.test_client(), payload, None

    def run(self):
        self.response = self.client.post("/webhooks/stripe", data=self.payload, headers=signed_headers(self.payload))


def _post_as_one_group(app, settings, payloads: list[str], before_release=None) -> tuple[_Post, list[_Post]]:
    """POST an opening event, then `payloads` while its store waits: they queue and go as ONE group."""
    group_commit = app.extensions["webhook_endpoint"].group_commit
    opener = _Post(app, json.dumps(event_for("localstripe_payment_intent.succeeded")))
    posts = [_Post(app, payload) for payload in payloads]
    groups_before, events_before = group_commit.groups, group_commit.events
    with _store_held(settings) as holder:
        opener.start()
        _wait_until(lambda: group_commit._leading, "the opening event's store is in flight")
        for post in posts:
            post.start()
        _wait_until(lambda: len(group_commit._queued) == len(posts), "every delivery is queued")
        if before_release is not None:
            before_release(holder)
    for post in [opener, *posts]:
        post.join(WAIT)
        assert not post.is_alive()
    assert opener.response.status_code == 200, opener.response.get_json()
    # The opener's store alone, then everything queued behind it together.
    assert (group_commit.groups - groups_before, group_commit.events - events_before) == (2, 1 + len(payloads))
    return opener, posts


def _rows(sessions, event_ids) -> dict[str, tuple[InboxEvent, list[OutboxMessage]]]:
    with sessions() as session:
        inbox = session.scalars(select(InboxEvent).where(InboxEvent.event_id.in_(event_ids))).all()
        return {row.event_id: (row, session.scalars(select(OutboxMessage).where(
            OutboxMessage.inbox_event_id == row.id)).all()) for row in inbox}


def _count(sessions, model) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_deliveries_stored_as_one_group_each_get_their_answer_and_their_own_rows(app, settings, sessions):
    handled = [event_for("localstripe_payment_intent.succeeded") for _ in range(4)]
    unhandled = {**stripe_fixture("charge.refunded"), "id": "evt_group_unhandled_1", "type": "customer.updated"}
    events = [*handled, unhandled]
    payloads = [json.dumps(event) for event in events]

    _opener, posts = _post_as_one_group(app, settings, payloads)

    for post in posts:
        assert post.response.status_code == 200, post.response.get_json()
        assert post.response.get_json() == {"received": True, "duplicate": False}
    rows = _rows(sessions, [event["id"] for event in events])
    assert sorted(rows) == sorted(event["id"] for event in events)
    for event, payload in zip(events, payloads):
        inbox, outbox = rows[event["id"]]
        assert inbox.payload == payload and inbox.type == event["type"]  # its own body, byte for byte
        assert inbox.object_id == event["data"]["object"]["id"]
        if event is unhandled:
            assert inbox.status is EventStatus.IGNORED and outbox == []
        else:
            assert inbox.status is EventStatus.RECEIVED
            assert [json.loads(message.payload) for message in outbox] == [{"event_id": event["id"]}]
    assert (_count(sessions, InboxEvent), _count(sessions, OutboxMessage)) == (6, 5)  # the opener's too


def test_two_copies_of_one_event_in_one_group_store_it_once_and_the_other_is_a_duplicate(app, settings,
                                                                                          sessions, post_event):
    already = event_for("localstripe_payment_intent.succeeded")
    assert post_event(already).get_json() == {"received": True, "duplicate": False}
    twice = event_for("localstripe_payment_intent.succeeded")
    other = event_for("localstripe_payment_intent.succeeded")
    payloads = [json.dumps(twice), json.dumps(other), json.dumps(twice), json.dumps(already)]

    _opener, posts = _post_as_one_group(app, settings, payloads)

    answers = [post.response.get_json() for post in posts]
    assert all(post.response.status_code == 200 for post in posts), answers
    copies = sorted(answer["duplicate"] for answer, payload in zip(answers, payloads) if payload == payloads[0])
    assert copies == [False, True]  # whichever came first stored it
    assert answers[1] == {"received": True, "duplicate": False}
    assert answers[3] == {"received": True, "duplicate": True}  # stored before the group
    rows = _rows(sessions, [twice["id"], other["id"], already["id"]])
    assert {event_id: len(outbox) for event_id, (_inbox, outbox) in rows.items()} == {
        twice["id"]: 1, other["id"]: 1, already["id"]: 1}
    assert (_count(sessions, InboxEvent), _count(sessions, OutboxMessage)) == (4, 4)


def _refuse_outbox_rows_of(connection, event_id: str) -> None:
    """A trigger that makes the database refuse the outbox row of one event (so its group's transaction fails)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"""
            CREATE FUNCTION refuse_outbox_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF strpos(NEW.payload, '{event_id}') > 0 THEN RAISE EXCEPTION 'outbox row refused'; END IF;
                RETURN NEW;
            END $$""")
        connection.exec_driver_sql("CREATE TRIGGER refuse_outbox_row BEFORE INSERT ON outbox "
                                   "FOR EACH ROW EXECUTE FUNCTION refuse_outbox_row()")
    else:
        connection.exec_driver_sql(f"""
            CREATE TRIGGER refuse_outbox_row BEFORE INSERT ON outbox
            WHEN instr(NEW.payload, '{event_id}') > 0
            BEGIN SELECT RAISE(ABORT, 'outbox row refused'); END""")


def test_a_group_whose_transaction_fails_answers_503_to_every_delivery_in_it_and_stores_none(app, settings,
                                                                                            sessions):
    events = [event_for("localstripe_payment_intent.succeeded") for _ in range(3)]
    payloads = [json.dumps(event) for event in events]
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            _refuse_outbox_rows_of(connection, events[1]["id"])

        _opener, posts = _post_as_one_group(app, settings, payloads)

        for post in posts:  # the two good events fail with the bad one: one transaction, one outcome
            assert_error(post.response, 503, "storage_unavailable")
        assert _rows(sessions, [event["id"] for event in events]) == {}  # nothing half-stored
        assert (_count(sessions, InboxEvent), _count(sessions, OutboxMessage)) == (1, 1)  # the opener's

        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER refuse_outbox_row" + (
                " ON outbox" if engine.dialect.name == "postgresql" else ""))
    finally:
        engine.dispose()
    # Stripe delivers each again: now stored, and not as duplicates.
    client = app.test_client()
    for payload in payloads:
        response = client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload))
        assert response.get_json() == {"received": True, "duplicate": False}
    assert (_count(sessions, InboxEvent), _count(sessions, OutboxMessage)) == (4, 4)


if servers_available():
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_group_that_finds_its_connection_closed_by_the_server_is_stored_on_a_fresh_one(app, settings,
                                                                                            sessions):
        store_engine = app.extensions["shop"].store_engine
        # Two pooled connections: the opener's store takes one, the group the other.
        first, second = store_engine.raw_connection(), store_engine.raw_connection()
        first.close()
        second.close()
        events = [event_for("localstripe_payment_intent.succeeded") for _ in range(3)]

        def end_the_idle_sessions(holder):
            # A restart or failover, for every session but the holder and the opener's waiting store.
            ended = holder.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND wait_event_type IS DISTINCT FROM 'Lock'").scalar()
            assert ended >= 1  # at least the group's pooled connection

        _opener, posts = _post_as_one_group(app, settings, [json.dumps(event) for event in events],
                                            before_release=end_the_idle_sessions)

        for post in posts:
            assert post.response.get_json() == {"received": True, "duplicate": False}
        assert sorted(_rows(sessions, [event["id"] for event in events])) == sorted(event["id"] for event in events)
        assert (_count(sessions, InboxEvent), _count(sessions, OutboxMessage)) == (4, 4)


def test_a_delivery_still_queued_when_its_wait_runs_out_answers_503_and_is_never_stored(app, settings, sessions,
                                                                                      monkeypatch):
    from webhook_app import webhooks

    monkeypatch.setattr(webhooks, "_QUEUE_TIMEOUT", 0.2)
    group_commit = app.extensions["webhook_endpoint"].group_commit
    opener = _Post(app, json.dumps(event_for("localstripe_payment_intent.succeeded")))
    late = event_for("localstripe_payment_intent.succeeded")
    queued = _Post(app, json.dumps(late))
    with _store_held(settings):
        opener.start()
        _wait_until(lambda: group_commit._leading, "the opening event's store is in flight")
        queued.start()
        queued.join(WAIT)  # answered while the store it waited behind is still in flight
        assert not queued.is_alive()
        assert_error(queued.response, 503, "storage_unavailable")
        assert group_commit._queued == []  # taken out of the queue: no later group stores it
    opener.join(WAIT)
    assert opener.response.status_code == 200
    assert _rows(sessions, [late["id"]]) == {}
    assert (_count(sessions, InboxEvent), _count(sessions, OutboxMessage)) == (1, 1)
