"""`shop_outbox_overdue_seconds`: how long work the relay should have acted on has been due, not how old it is.

The gauge its alert ("over 300 s: the relay or the broker is stuck") is set on. The alert was set on
`shop_outbox_oldest_age_seconds`, the age of the oldest pending or published row (`created_at`), so a
dead letter staff re-drove after a day read 86,400 s at once, and a retry waiting out its back-off
counted as stuck; that gauge stays, for dashboards.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event as sa_event

from consumers.metrics import DatabaseCollector
from models.base import utcnow
from models.db import transaction
from models.events import OutboxMessage, OutboxStatus
from tests.integration.test_admin_pages import dead_letter
from tests.integration.test_health_and_cli import _samples
from tests.integration.test_staff_cli import _run

OVERDUE = "shop_outbox_overdue_seconds"


def _set(sessions, message_id: int, **columns) -> None:
    with transaction(sessions) as session:
        message = session.get(OutboxMessage, message_id)
        for name, value in columns.items():
            setattr(message, name, value)


def test_a_dead_letter_re_driven_a_day_later_is_due_now_not_a_day_overdue(settings, sessions, client, checkout,
                                                                          post_event, deliver):
    _, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    with sessions() as session:
        created = session.get(OutboxMessage, message_id).created_at
    _set(sessions, message_id, created_at=created - timedelta(days=1))  # it waited a day for staff

    retried = _run(settings, "dlq", "retry", str(message_id))
    assert retried.exit_code == 0, retried.output
    samples = _samples(client)
    assert samples['shop_outbox_backlog{status="pending"}'] == 1  # waiting for the relay's next poll
    assert 0 <= samples[OVERDUE] < 60, samples[OVERDUE]  # not 86,400: the alert at 300 s stays quiet

    deliver()  # the relay publishes it and a worker finishes it: nothing waits
    assert _samples(client)[OVERDUE] == 0


def test_a_retry_waiting_out_its_back_off_is_not_overdue_and_one_the_relay_left_behind_is(
        settings, sessions, client, checkout, post_event, deliver):
    _, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    day_ago = utcnow() - timedelta(days=1)
    # A retry scheduled an hour ahead, of a message created a day ago: nothing is due yet.
    _set(sessions, message_id, status=OutboxStatus.PENDING, created_at=day_ago,
         available_at=utcnow() + timedelta(hours=1))
    assert _samples(client)[OVERDUE] == 0

    # Due ten minutes ago and still pending: the relay has not published it for ten minutes.
    _set(sessions, message_id, available_at=utcnow() - timedelta(minutes=10))
    assert 600 <= _samples(client)[OVERDUE] < 660

    # Published, and a worker on it until its redelivery time in a minute: not overdue.
    _set(sessions, message_id, status=OutboxStatus.PUBLISHED, published_at=utcnow(),
         available_at=utcnow() + timedelta(minutes=1))
    assert _samples(client)[OVERDUE] == 0

    # Published, unfinished, and its redelivery time seven minutes past: the relay has not published it again.
    _set(sessions, message_id, available_at=utcnow() - timedelta(minutes=7))
    assert 420 <= _samples(client)[OVERDUE] < 480


def test_the_overdue_gauge_is_read_from_the_status_and_due_time_index(settings, sessions, client, checkout,
                                                                      post_event, deliver):
    """Read at every scrape: an index lookup per status, never a scan of every message ever sent."""
    dead_letter(settings, sessions, checkout, post_event, deliver)
    engine, seen = sessions.kw["bind"], []

    def keep(conn, cursor, statement, parameters, context, executemany):
        if "min(outbox.available_at)" in statement.lower():
            seen.append((statement, parameters))

    sa_event.listen(engine, "before_cursor_execute", keep)
    try:
        list(DatabaseCollector(sessions).collect())  # what GET /metrics reads from the database
    finally:
        sa_event.remove(engine, "before_cursor_execute", keep)
    [(statement, parameters)] = seen
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET enable_seqscan = off")  # the table is all but empty
            plan = " ".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters))
        else:
            plan = " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                                                          parameters))
    assert plan.count("ix_outbox_status_available_at") == 2, plan
    assert "SCAN outbox" not in plan and "Seq Scan" not in plan and "Sort" not in plan, plan
