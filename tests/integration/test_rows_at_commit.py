"""Rows a worker batch only appends (`models.db.RowsAtCommit`) are written with one Core INSERT per
table and set of columns just before the commit: each once, with its defaults, and each row object
learns its id (the confirmation mails are sent by id after the commit)."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from models.db import add_row, collect_rows_at_commit, transaction
from models.events import InboxEvent, OutboxMessage, OutboxStatus, Topic


def mail(order_id: str, **columns) -> OutboxMessage:
    return OutboxMessage(topic=Topic.MAIL, payload=f'{{"order_id": "{order_id}"}}', order_id=order_id, **columns)


def test_rows_are_written_once_each_with_their_defaults_and_learn_their_ids(sessions):
    # Two shapes (one sets its status, two leave it to the column's default): two INSERTs.
    rows = [mail("ord_a"), mail("ord_b", status=OutboxStatus.PUBLISHED), mail("ord_c")]
    with transaction(sessions) as session:
        later = collect_rows_at_commit(session)
        for row in rows:
            add_row(session, row)
        assert all(row.id is None for row in rows)
        later.add_to(session)
        assert not any(row in session for row in rows)  # written by Core, never flushed again
    assert len({row.id for row in rows}) == 3 and all(row.id is not None for row in rows)
    with sessions() as session:
        stored = {m.id: m for m in session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL))}
    assert sorted(stored) == sorted(row.id for row in rows)
    assert {row.id: stored[row.id].order_id for row in rows} == {row.id: row.order_id for row in rows}
    assert [stored[row.id].status for row in rows] == [OutboxStatus.PENDING, OutboxStatus.PUBLISHED,
                                                       OutboxStatus.PENDING]
    assert all(stored[row.id].attempts == 0 and stored[row.id].created_at is not None for row in rows)


def test_rows_added_in_a_savepoint_that_is_rolled_back_are_not_written(sessions):
    kept, dropped = mail("ord_kept"), mail("ord_dropped")
    with transaction(sessions) as session:
        later = collect_rows_at_commit(session)
        add_row(session, kept)
        with pytest.raises(RuntimeError):
            with later.savepoint(), session.begin_nested():
                add_row(session, dropped)
                raise RuntimeError("this message's handler failed")
        later.add_to(session)
    with sessions() as session:
        assert session.scalars(select(OutboxMessage.order_id).where(OutboxMessage.topic == Topic.MAIL)).all() \
            == ["ord_kept"]
    assert dropped.id is None


def test_a_row_that_sets_a_relationship_is_refused_rather_than_written_without_it(sessions):
    with transaction(sessions) as session:
        event = InboxEvent(event_id="evt_rows_at_commit", type="payment_intent.succeeded", payload="{}")
        session.add(event)
        session.flush()
        later = collect_rows_at_commit(session)
        add_row(session, OutboxMessage(topic=Topic.STRIPE_EVENT, payload="{}", inbox_event=event))
        with pytest.raises(TypeError, match="sets a relationship: set its foreign key column instead"):
            later.add_to(session)
