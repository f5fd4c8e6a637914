"""Ids past 2**31 - 1 (INTEGER's range, where PostgreSQL's ids stopped before migration 0009) work end
to end: the webhook stores an event and its outbox row, the relay and the worker run it, staff find
a dead letter by its id in the CLI and the console.

Each table's sequence is moved past 32 bits first, each to its own range, so an id taken for
another table's (an inbox id for an outbox id) is seen. SQLite's ids were always 64-bit (its rowid);
this is PostgreSQL's.
"""
from __future__ import annotations

import json

import pytest
from sqlalchemy import Integer, select

import models  # noqa: F401 - every model's table on Base.metadata
from consumers.handlers import HANDLED_EVENT_TYPES
from models.base import Base
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus, store_events_pg
from models.history import AttemptOutcome, EventAttempt
from tests.backends import servers_available
from tests.integration.test_admin_pages import dead_letter
from tests.integration.test_cli_and_console_bounds import run, staff_client  # noqa: F401 - fixtures
from tests.support import event_for

# Every table numbered by a sequence, and the first id each gives from now on: its own billion past 2**31.
_NUMBERED = sorted(name for name, table in Base.metadata.tables.items()
                   if "id" in table.c and isinstance(table.c.id.type, Integer))
FIRST_IDS = {table: 3_000_000_000 + n * 1_000_000_000 for n, table in enumerate(_NUMBERED)}


@pytest.fixture
def ids_past_32_bits(sessions):
    """Each table's next id is FIRST_IDS's (on a 32-bit sequence this fails: past its MAXVALUE)."""
    with sessions.kw["bind"].begin() as connection:
        for table, first in FIRST_IDS.items():
            connection.exec_driver_sql("SELECT setval(pg_get_serial_sequence(%(table)s, 'id'), %(first)s, false)",
                                       {"table": table, "first": first})
    return FIRST_IDS


def _between(value: int, table: str) -> bool:
    """`value` is one of the first ids `table` gave after ids_past_32_bits."""
    return FIRST_IDS[table] <= value < FIRST_IDS[table] + 1_000


if servers_available():
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_an_event_with_ids_past_32_bits_is_stored_run_by_the_worker_and_listed(
            ids_past_32_bits, client, checkout, post_event, deliver, sessions, run):
        order = checkout([("TEA-01", 2)])
        event = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                          order_id=order["order_id"], amount=order["total"])
        assert post_event(event).get_json() == {"received": True, "duplicate": False}
        assert post_event(event).get_json() == {"received": True, "duplicate": True}
        with sessions() as session:
            inbox = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
            message = session.scalars(select(OutboxMessage).where(OutboxMessage.inbox_event_id == inbox.id)).one()
            inbox_id, message_id = inbox.id, message.id
        assert _between(inbox_id, "inbox_events") and _between(message_id, "outbox")

        deliver()  # the relay publishes {"outbox_id": message_id}; the worker refused any past 2**31 - 1

        assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
        with sessions() as session:
            assert session.get(InboxEvent, inbox_id).status is EventStatus.PROCESSED
            assert session.get(OutboxMessage, message_id).status is OutboxStatus.DONE
            [attempt] = session.scalars(select(EventAttempt).where(EventAttempt.inbox_event_id == inbox_id)).all()
            assert (attempt.outbox_id, attempt.outcome) == (message_id, AttemptOutcome.PROCESSED)
            assert _between(attempt.id, "event_attempts")
        listed = run("events", "list")
        assert listed.exit_code == 0, listed.output
        assert f"{event['id']}  payment_intent.succeeded" in listed.output and "processed" in listed.output

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_group_of_events_stored_together_gets_ids_past_32_bits_and_its_outbox_rows_hold_them(
            ids_past_32_bits, sessions):
        events = [event_for("localstripe_payment_intent.succeeded") for _ in range(3)]
        raw = sessions.kw["bind"].raw_connection()
        try:
            stored = store_events_pg(raw.dbapi_connection, [(event, json.dumps(event)) for event in events],
                                     handled_types=HANDLED_EVENT_TYPES)
            raw.dbapi_connection.commit()
        finally:
            raw.close()
        assert [answer.duplicate for answer in stored] == [False] * 3
        assert all(_between(answer.id, "inbox_events") for answer in stored)
        with sessions() as session:
            queued = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
            assert sorted(message.inbox_event_id for message in queued) == sorted(answer.id for answer in stored)
            assert all(_between(message.id, "outbox") for message in queued)

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_staff_find_and_retry_a_dead_letter_whose_id_is_past_32_bits(
            ids_past_32_bits, settings, sessions, checkout, post_event, deliver, run, staff_client):
        _order, event, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
        assert _between(message_id, "outbox")

        shown = run("dlq", "show", message_id)
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["id"] == message_id
        page = staff_client.get(f"/admin/dead-letters/{message_id}")
        assert page.status_code == 200 and event["id"] in page.get_data(as_text=True)

        retried = run("dlq", "retry", message_id, "--note", "shipments are back")
        assert retried.exit_code == 0, retried.output
        deliver()
        with sessions() as session:
            assert session.get(OutboxMessage, message_id).status is OutboxStatus.DONE
