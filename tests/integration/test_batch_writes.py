"""A worker batch's writes outside the unit of work (`models.db`). The rows it only appends
(`RowsAtCommit`) go in with one Core INSERT per table and set of columns just before the commit:
each once, with its defaults, and each row object learns its id (the confirmation mails are sent
by id after the commit). The ordinary payments' changed objects are written with one UPDATE per
table and set of changed columns (`write_and_release`) and leave the session."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from models.db import add_row, collect_rows_at_commit, transaction, write_and_release
from models.events import InboxEvent, OutboxMessage, OutboxStatus, Topic
from models.orders import Order


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
        with pytest.raises(TypeError, match="sets a relationship, which these Core writes do not carry"):
            later.add_to(session)


def test_write_and_release_writes_each_changed_column_once_per_shape_and_leaves_the_objects_out(sessions):
    with transaction(sessions) as session:
        event = InboxEvent(event_id="evt_release", type="payment_intent.succeeded", payload="{}")
        session.add(event)
        session.flush()
        messages = [OutboxMessage(topic=Topic.STRIPE_EVENT, payload="{}", inbox_event_id=event.id) for _ in range(3)]
        session.add_all(messages)
    first, second, untouched = messages
    with transaction(sessions) as session:
        loaded = {m.id: m for m in session.scalars(select(OutboxMessage).where(
            OutboxMessage.id.in_([m.id for m in messages])))}
        stored_event = session.get(InboxEvent, event.id)
        for message in (loaded[first.id], loaded[second.id]):
            message.mark_done()  # the same two columns: one UPDATE for both
        stored_event.outcome = "order paid"
        new = OutboxMessage(topic=Topic.MAIL, payload="{}", order_id="ord_new")
        session.add(new)
        write_and_release(session, [loaded[first.id], loaded[second.id], stored_event, loaded[untouched.id], new])
        assert not session.dirty and not session.new
        assert not any(obj in session for obj in (*loaded.values(), stored_event, new))
        # Loaded again in the same transaction, as written.
        assert session.get(OutboxMessage, first.id).status is OutboxStatus.DONE
    with sessions() as session:
        assert [session.get(OutboxMessage, m.id).status for m in messages] == [
            OutboxStatus.DONE, OutboxStatus.DONE, OutboxStatus.PENDING]
        assert session.get(OutboxMessage, first.id).done_at is not None
        assert session.get(OutboxMessage, untouched.id).done_at is None
        assert session.get(InboxEvent, event.id).outcome == "order paid"
        assert new.id is not None and session.get(OutboxMessage, new.id).order_id == "ord_new"


def test_write_and_release_sets_what_changes_on_update_as_a_flush_would(sessions, checkout):
    placed = checkout()
    with sessions() as session:
        before = session.get(Order, placed["order_id"]).updated_at
    with transaction(sessions) as session:
        order = session.get(Order, placed["order_id"])
        order.failure_code = "card_declined"
        write_and_release(session, [order])
    with sessions() as session:
        stored = session.get(Order, placed["order_id"])
        assert stored.failure_code == "card_declined" and stored.updated_at > before


def test_write_and_release_refuses_an_object_whose_relationship_changed(sessions):
    with transaction(sessions) as session:
        event = InboxEvent(event_id="evt_relation", type="payment_intent.succeeded", payload="{}")
        message = OutboxMessage(topic=Topic.STRIPE_EVENT, payload="{}")
        session.add_all([event, message])
    with transaction(sessions) as session:
        loaded = session.get(OutboxMessage, message.id)
        loaded.inbox_event = session.get(InboxEvent, event.id)
        with pytest.raises(TypeError, match="sets a relationship, which these Core writes do not carry"):
            write_and_release(session, [loaded])
