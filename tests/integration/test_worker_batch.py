"""The worker's batches (WORKER_BATCH): several messages in one transaction, one savepoint each,
acknowledged after the one commit, and every message still applied exactly once."""
from __future__ import annotations

import threading
import time

import pytest
from kombu import Consumer
from sqlalchemy import event as sa_event
from sqlalchemy import func, insert, select
from sqlalchemy.exc import OperationalError

import consumers.processing as processing
from consumers.broker import QUEUES, ConfirmedPublisher, connect
from consumers.handlers import HANDLERS
from consumers.relay import expire_reservations, publish_due
from consumers.worker import Worker
from models.catalog import ReservationStatus
from models.db import make_engine
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus, Topic
from models.history import AttemptOutcome, EventAttempt, OrderStatusChange
from models.orders import Order, OrderStatus, Shipment
from tests.backends import servers_available
from tests.support import event_for

SUCCEEDED = "payment_intent.succeeded"


def succeeded(order: dict) -> dict:
    return event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=order["total"])


def stock(client, sku: str) -> tuple[int, int]:
    product = client.get(f"/products/{sku}").get_json()
    return product["on_hand"], product["reserved"]


def event_messages(sessions) -> list[int]:
    with sessions() as session:
        return session.scalars(select(OutboxMessage.id).where(OutboxMessage.topic == Topic.STRIPE_EVENT)
                               .order_by(OutboxMessage.id)).all()


def attempts_of(sessions, event_id: str) -> list[AttemptOutcome]:
    with sessions() as session:
        row = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event_id)).one()
        return session.scalars(select(EventAttempt.outcome).where(EventAttempt.inbox_event_id == row.id)
                               .order_by(EventAttempt.id)).all()


def three_paid_orders(client, checkout, post_event) -> tuple[list[dict], list[dict]]:
    orders = [checkout([("TEA-01", 1)]), checkout([("TEA-01", 2)]), checkout([("CUP-01", 1)])]
    events = [succeeded(order) for order in orders]
    for event in events:
        assert post_event(event).status_code == 200
    assert (stock(client, "TEA-01"), stock(client, "CUP-01")) == ((40, 3), (3, 1))
    return orders, events


def test_a_handler_that_raises_in_a_batch_rolls_back_only_its_own_message(
        client, sessions, settings, checkout, post_event, monkeypatch):
    orders, events = three_paid_orders(client, checkout, post_event)
    real_handler = HANDLERS[SUCCEEDED]
    broken = orders[1]["order_id"]

    def fails_for_one_order(session, event, context):
        outcome = real_handler(session, event, context)  # its changes are made, then rolled back
        if outcome.order_id == broken:
            raise RuntimeError("the warehouse system refused the shipment")
        return outcome

    monkeypatch.setitem(HANDLERS, SUCCEEDED, fails_for_one_order)
    ids = event_messages(sessions)
    results = processing.process_batch(sessions, settings, ids)

    assert [results[i].outcome for i in ids] == ["done", "retry", "done"]
    statuses = {o["order_id"]: client.get(f"/orders/{o['order_id']}").get_json()["status"] for o in orders}
    assert statuses == {orders[0]["order_id"]: "paid", broken: "pending_payment", orders[2]["order_id"]: "paid"}
    # Order 2's two units are still held; orders 1 and 3 took theirs off the shelf.
    assert (stock(client, "TEA-01"), stock(client, "CUP-01")) == ((39, 2), (2, 0))
    with sessions() as session:
        messages = {m.id: m for m in session.scalars(select(OutboxMessage))}
        assert [(messages[i].status, messages[i].attempts) for i in ids] == [
            (OutboxStatus.DONE, 0), (OutboxStatus.PENDING, 1), (OutboxStatus.DONE, 0)]
        assert "warehouse system refused" in messages[ids[1]].last_error
        mails = [m.body["order_id"] for m in messages.values() if m.topic is Topic.MAIL]
        assert sorted(mails) == sorted([orders[0]["order_id"], orders[2]["order_id"]])
        assert session.scalar(select(func.count()).select_from(Shipment)) == 2
    # Recorded as for a message on its own: one failed run, the event waiting for its retry.
    assert attempts_of(sessions, events[1]["id"]) == [AttemptOutcome.FAILED]
    assert attempts_of(sessions, events[0]["id"]) == [AttemptOutcome.PROCESSED]

    monkeypatch.undo()
    assert processing.process_batch(sessions, settings, ids)[ids[1]].outcome == "done"
    assert client.get(f"/orders/{broken}").get_json()["status"] == "paid"
    assert (stock(client, "TEA-01"), stock(client, "CUP-01")) == ((37, 0), (2, 0))
    assert attempts_of(sessions, events[1]["id"]) == [AttemptOutcome.FAILED, AttemptOutcome.PROCESSED]


@pytest.mark.parametrize("when", ["before_commit", "after_commit"])
def test_a_batch_whose_commit_fails_still_applies_each_message_exactly_once(
        client, sessions, settings, checkout, post_event, when):
    """Before the commit nothing of the batch is kept; after it (the answer to COMMIT lost) all of
    it is. Either way each message then runs on its own and every order is paid once."""
    orders, events = three_paid_orders(client, checkout, post_event)
    ids = event_messages(sessions)
    engine = sessions.kw["bind"]
    failed = []

    def fail_first_commit(conn):
        if not failed:
            failed.append(True)
            if when == "after_commit":
                conn.connection.dbapi_connection.commit()  # the server has it; its answer is lost
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    sa_event.listen(engine, "commit", fail_first_commit)
    try:
        results = processing.process_batch(sessions, settings, ids)
    finally:
        sa_event.remove(engine, "commit", fail_first_commit)

    assert failed == [True]
    expected = "done" if when == "before_commit" else "skipped"  # after: the batch had finished them
    assert [results[i].outcome for i in ids] == [expected] * 3
    assert processing.process_batch(sessions, settings, ids) == {i: processing.Result("skipped", "done") for i in ids}
    for order in orders:
        assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
    assert (stock(client, "TEA-01"), stock(client, "CUP-01")) == ((37, 0), (2, 0))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Shipment)) == 3
        mails = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL)).all()
        assert sorted(m.body["order_id"] for m in mails) == sorted(o["order_id"] for o in orders)
        for order in orders:
            stored = session.get(Order, order["order_id"])
            assert (stored.status, stored.paid_amount) == (OrderStatus.PAID, order["total"])
            assert {r.status for r in stored.reservations} == {ReservationStatus.CONSUMED}
    for event in events:
        assert attempts_of(sessions, event["id"]) == [AttemptOutcome.PROCESSED]


def test_the_worker_acks_a_batch_only_after_its_commit_and_requeues_it_when_the_database_is_down(
        client, sessions, settings, checkout, post_event, monkeypatch):
    orders, _ = three_paid_orders(client, checkout, post_event)
    worker = Worker(settings)
    acked, requeued = [], []
    try:
        with connect(settings) as conn:
            publish_due(sessions, ConfirmedPublisher(conn), settings)
            with Consumer(conn, queues=list(QUEUES.values()), accept=["json"], callbacks=[worker.collect]):
                for _ in range(3):
                    conn.drain_events(timeout=1)
                assert len(worker.pending) == 3
                for _, message in worker.pending:
                    monkeypatch.setattr(message, "ack", lambda m=message: acked.append(m.delivery_tag))
                    monkeypatch.setattr(message, "requeue", lambda m=message: requeued.append(m.delivery_tag))

                def database_down(*_args):
                    raise OperationalError("BEGIN", {}, Exception("connection refused"))

                monkeypatch.setattr("consumers.worker.process_batch", database_down)
                monkeypatch.setattr("consumers.worker.time.sleep", lambda _s: None)
                tags = [message.delivery_tag for _, message in worker.pending]
                pending = list(worker.pending)
                worker.run_pending()
                assert (acked, sorted(requeued)) == ([], sorted(tags))

                monkeypatch.setattr("consumers.worker.process_batch", processing.process_batch)
                worker.pending = pending
                worker.run_pending()
                assert sorted(acked) == sorted(tags)
    finally:
        worker.engine.dispose()
    for order in orders:
        assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"


def test_the_worker_runs_messages_that_came_before_its_loop_though_the_broker_sends_no_more(
        client, sessions, settings, checkout, post_event):
    """RabbitMQ delivers from a queue as soon as it is consumed, which can be while the worker is
    still subscribing to its next queue, before its loop waits for anything. Once `prefetch_count`
    messages are unacknowledged the broker sends nothing more: the loop must run what it holds
    without waiting for another message. (A CI run lost 90 s this way and failed.)"""
    orders, _ = three_paid_orders(client, checkout, post_event)
    worker = Worker(settings)

    def statuses() -> set[OrderStatus]:
        with sessions() as session:
            return set(session.scalars(select(Order.status)))

    try:
        with connect(settings) as conn:
            publish_due(sessions, ConfirmedPublisher(conn), settings)
            with Consumer(conn, queues=list(QUEUES.values()), accept=["json"], callbacks=[worker.collect]):
                for _ in range(3):
                    conn.drain_events(timeout=1)
            # Held, unacknowledged, and the queues are empty: nothing more will arrive.
            assert len(worker.pending) == 3
            loop = threading.Thread(target=worker.serve, args=(conn,))
            loop.start()
            deadline = time.monotonic() + 15
            while statuses() != {OrderStatus.PAID} and time.monotonic() < deadline:
                time.sleep(0.1)
            worker.stopping = True
            loop.join(15)
    finally:
        worker.engine.dispose()
    assert not loop.is_alive()
    assert statuses() == {OrderStatus.PAID}
    assert worker.pending == []


def test_an_event_needing_stripes_record_leaves_the_batch_and_is_confirmed_outside_it(
        client, sessions, settings, checkout, post_event, localstripe):
    """An order found by metadata.order_id alone is confirmed with Stripe's API: with no
    transaction open, so the batch's other messages commit without waiting for Stripe."""
    orders, events = three_paid_orders(client, checkout, post_event)
    with sessions() as session, session.begin():
        # As if the checkout's answer from Stripe had been lost: the order holds no intent yet.
        session.get(Order, orders[0]["order_id"]).payment_intent_id = None
    ids = event_messages(sessions)
    results = processing.process_batch(sessions, settings, ids)
    assert [results[i].outcome for i in ids] == ["done"] * 3
    body = client.get(f"/orders/{orders[0]['order_id']}").get_json()
    assert (body["status"], body["payment_intent_id"]) == ("paid", orders[0]["payment_intent_id"])
    with sessions() as session:
        row = session.scalars(select(InboxEvent).where(InboxEvent.event_id == events[0]["id"])).one()
        assert (row.status, row.outcome) == (EventStatus.PROCESSED, "order paid")


def test_a_batch_takes_its_paid_units_off_the_shelf_in_one_update_per_sku_just_before_its_commit(
        client, sessions, settings, checkout, post_event):
    """Paying only turns held units into sold ones: the batch adds them up per sku and writes each
    stock row once, in sku order, after its last message, so the row is locked only for the
    commit (not from the batch's first order on, which made the workers take turns). An order
    whose hold ran out changes no stock: stock moves once per paid order, never for that one."""
    lapsed = checkout([("TEA-01", 3)])
    with sessions() as session, session.begin():
        for reservation in session.get(Order, lapsed["order_id"]).reservations:
            reservation.expires_at = reservation.created_at
    assert expire_reservations(sessions) == 1  # released and the order cancelled
    orders = [checkout([("TEA-01", 1)]), checkout([("CUP-01", 1)]), checkout([("TEA-01", 2), ("CUP-01", 1)])]
    for order in [lapsed, *orders]:
        assert post_event(succeeded(order)).status_code == 200
    assert (stock(client, "TEA-01"), stock(client, "CUP-01")) == ((40, 3), (3, 2))

    engine = sessions.kw["bind"]
    statements: list[str] = []

    parameters: list = []

    def record(_conn, _cursor, statement, params, *_args):
        statements.append(" ".join(statement.split()).lower())
        parameters.append(params)

    def commit(_conn):
        statements.append("commit")
        parameters.append(None)

    ids = event_messages(sessions)
    sa_event.listen(engine, "before_cursor_execute", record)
    sa_event.listen(engine, "commit", commit)
    try:
        results = processing.process_batch(sessions, settings, ids)
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)
        sa_event.remove(engine, "commit", commit)
    del statements[statements.index("commit"):]  # the batch's transaction (then its mails are marked sent)

    assert [results[i].outcome for i in ids] == ["done"] * 4
    assert (stock(client, "TEA-01"), stock(client, "CUP-01")) == ((37, 0), (1, 0))
    assert {client.get(f"/orders/{o['order_id']}").get_json()["status"] for o in orders} == {"paid"}
    assert client.get(f"/orders/{lapsed['order_id']}").get_json()["status"] == "needs_review"
    on_stock = [(i, s.replace("%(", "?(").split(" where ")[0]) for i, s in enumerate(statements)
                if s.startswith("update stock ") or " from stock" in s]
    assert [s.split(" set ")[0] for _, s in on_stock] == ["update stock"] * 2, on_stock
    assert all("on_hand=(stock.on_hand - " in s and "reserved=(stock.reserved - " in s for _, s in on_stock)
    # Each sku's units at once, in sku order (as checkouts lock), after every message's statements.
    values = [parameters[i].values() if isinstance(parameters[i], dict) else parameters[i] for i, _ in on_stock]
    assert [sorted(map(str, v)) for v in values] == [["2", "2", "CUP-01"], ["3", "3", "TEA-01"]]
    last_message = max(i for i, s in enumerate(statements) if s.startswith(("update outbox", "insert into outbox")))
    assert on_stock[0][0] > last_message


def test_a_batch_writes_its_history_attempts_and_mails_at_its_commit_as_messages_on_their_own_would(
        client, sessions, settings, checkout, post_event):
    """History rows, handler attempts and queued mails are only appended, never read back in the
    transaction: a batch adds them at its commit, so its last flush writes each table's rows
    together (one INSERT per table on PostgreSQL) instead of one per message's savepoint. The
    rows are the ones a message on its own writes."""
    orders, events = three_paid_orders(client, checkout, post_event)
    engine = sessions.kw["bind"]
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(" ".join(statement.split()).lower())

    ids = event_messages(sessions)
    sa_event.listen(engine, "before_cursor_execute", record)
    try:
        results = processing.process_batch(sessions, settings, ids[:2])
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)
    assert processing.process_message(sessions, settings, ids[2]) == processing.Result("done")
    assert [results[i].outcome for i in ids[:2]] == ["done", "done"]

    last_savepoint = max(i for i, s in enumerate(statements) if s.startswith("release savepoint"))
    for table in ("order_status_changes", "event_attempts", "outbox"):
        inserts = [i for i, s in enumerate(statements) if s.startswith(f"insert into {table} ")]
        assert inserts and min(inserts) > last_savepoint, table

    def written(order_id: str, event_id: str) -> tuple:
        with sessions() as session:
            inbox = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event_id)).one()
            changes = session.scalars(select(OrderStatusChange).where(OrderStatusChange.order_id == order_id)
                                      .order_by(OrderStatusChange.id)).all()
            attempts = session.scalars(select(EventAttempt).where(EventAttempt.order_id == order_id)).all()
            mails = session.scalars(select(OutboxMessage).where(OutboxMessage.order_id == order_id,
                                                                OutboxMessage.topic == Topic.MAIL)).all()
            assert all(c.at is not None for c in changes) and all(m.created_at is not None for m in mails)
            return (
                [(c.from_status, c.to_status, c.cause.replace(event_id, "EVT"), c.reason) for c in changes],
                [(a.inbox_event_id == inbox.id, a.outbox_id is not None, a.runner, a.outcome, a.reason, a.error)
                 for a in attempts],
                [(m.status, m.inbox_event_id, {k: v for k, v in m.body.items() if k not in ("order_id", "subject",
                  "body", "my_page_path", "to")}, m.body["order_id"] == order_id) for m in mails],
            )

    alone = written(orders[2]["order_id"], events[2]["id"])
    assert alone == (
        [(None, "pending_payment", "checkout", "checkout"), ("pending_payment", "paid", "event EVT", None)],
        [(True, True, "worker", AttemptOutcome.PROCESSED, "order paid", None)],
        [(OutboxStatus.DONE, None, {"kind": "confirmation"}, True)],  # sent by the worker after its commit
    )
    assert [written(o["order_id"], e["id"]) for o, e in zip(orders[:2], events[:2])] == [alone, alone]


if servers_available():
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_long_statement_that_comes_again_is_converted_for_postgresql_once(database_url):
        """psycopg rewrites %(name)s placeholders in Python and by itself remembers only short
        statements; a batch's many-row INSERTs come again from batch to batch and are remembered too."""
        from psycopg import _queries

        engine = make_engine(database_url)
        rows = [{"topic": Topic.MAIL, "payload": "{}" * 20, "status": OutboxStatus.DONE} for _ in range(60)]
        statement = insert(OutboxMessage).returning(OutboxMessage.id)
        try:
            with engine.begin() as connection:
                connection.execute(statement, rows)  # one INSERT of 60 rows: over 4,096 characters
                before = _queries._query2pg.cache_info()
                assert len(connection.execute(statement, rows).all()) == 60
                after = _queries._query2pg.cache_info()
        finally:
            engine.dispose()
        assert after.hits == before.hits + 1 and after.misses == before.misses


@pytest.mark.parametrize("outbox_id", [2**64, 2**63, 0, -1, True, 1.0, "1"])
@pytest.mark.parametrize("path", ["batch", "one at a time"])
def test_a_message_whose_outbox_id_is_no_outbox_id_is_rejected_not_put_back(settings, outbox_id, path):
    """A message from a foreign or corrupt publisher: an id past the outbox's id column (64 bits)
    failed in the database when claimed and again when its failure was recorded, which the
    worker took for a database that is down, so it put the message back and tried it again, forever."""
    worker = Worker(settings)
    outcomes = []
    try:
        with connect(settings) as conn:
            queue = QUEUES[Topic.STRIPE_EVENT]
            conn.Producer().publish({"outbox_id": outbox_id}, exchange=queue.exchange, routing_key=queue.routing_key,
                                    declare=[queue], serializer="json")
            callback = worker.collect if path == "batch" else worker.on_message

            def record(body, message):
                for name in ("ack", "reject", "requeue"):
                    setattr(message, name, lambda name=name, real=getattr(message, name): (outcomes.append(name),
                                                                                        real()))
                callback(body, message)

            with Consumer(conn, queues=[queue], accept=["json"], callbacks=[record]):
                conn.drain_events(timeout=5)
                worker.run_pending()
            assert outcomes == ["reject"]
            assert worker.pending == []
            with pytest.raises(TimeoutError), Consumer(conn, queues=[queue], accept=["json"], callbacks=[record]):
                conn.drain_events(timeout=1)  # not put back on the queue
    finally:
        worker.engine.dispose()
    assert outcomes == ["reject"]
