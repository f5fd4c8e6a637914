"""The worker side: signed webhooks delivered through the in-memory broker to the handlers, and what they change."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select, text

from consumers.processing import run_event
from models.carts import Cart
from models.catalog import ReservationStatus
from models.db import transaction
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus, Topic
from models.orders import Order, Shipment
from tests.support import SHIPPING, event_for


def order_row(sessions, order_id: str) -> Order:
    with sessions() as session:
        return session.get(Order, order_id)


def inbox_row(sessions, event_id: str) -> InboxEvent:
    with sessions() as session:
        return session.scalars(select(InboxEvent).where(InboxEvent.event_id == event_id)).one()


def outbox(sessions, topic: Topic) -> list[OutboxMessage]:
    with sessions() as session:
        return session.scalars(select(OutboxMessage).where(OutboxMessage.topic == topic)
                               .order_by(OutboxMessage.id)).all()


def stock(client, sku: str) -> tuple[int, int]:
    p = client.get(f"/products/{sku}").get_json()
    return p["on_hand"], p["reserved"]


def shipments(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Shipment))


def succeeded(order: dict, **changes) -> dict:
    return event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=changes.pop("amount", order["total"]), **changes)


def failed(order: dict) -> dict:
    return event_for("localstripe_payment_intent.payment_failed", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=order["total"])


def canceled(order: dict) -> dict:
    return event_for("payment_intent.canceled", intent_id=order["payment_intent_id"], order_id=order["order_id"],
                     amount=order["total"], currency=order["currency"])


@pytest.fixture
def deliver_event(post_event, deliver):
    def run(event: dict) -> None:
        response = post_event(event)
        assert response.status_code == 200, response.get_json()
        deliver()

    return run


# --- payment_intent.succeeded ---------------------------------------------------------------------------------


def test_succeeded_marks_the_order_paid_and_turns_the_reservation_into_a_decrement(
        client, sessions, checkout, deliver_event):
    order = checkout([("TEA-01", 2), ("CUP-01", 1)])
    assert stock(client, "TEA-01") == (40, 2)
    deliver_event(succeeded(order))
    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "paid"
    assert body["paid_at"] is not None
    assert stock(client, "TEA-01") == (38, 0)
    assert stock(client, "CUP-01") == (2, 0)
    row = order_row(sessions, order["order_id"])
    assert {r.status for r in row.reservations} == {ReservationStatus.CONSUMED}


def test_succeeded_creates_a_pending_shipment_with_the_address_and_fee(client, checkout, deliver_event):
    shipping = {**SHIPPING, "prefecture": "Okinawa", "postal_code": "900-0001", "address": "Naha 1-1"}
    order = checkout([("TEA-01", 2)], shipping=shipping)
    deliver_event(succeeded(order))
    shipment = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()["shipment"]
    assert shipment["status"] == "pending"
    assert (shipment["name"], shipment["postal_code"], shipment["prefecture"], shipment["address"]) == (
        "Hanako Yamada", "900-0001", "Okinawa", "Naha 1-1")
    assert shipment["fee"] == order["shipping_fee"] == 1500


def test_succeeded_deletes_the_cart_logically_keeping_its_row(client, sessions, checkout, deliver_event):
    order = checkout([("TEA-01", 2)])
    cart_id = order_row(sessions, order["order_id"]).cart_id
    assert client.get(f"/carts/{cart_id}").status_code == 200
    deliver_event(succeeded(order))
    response = client.get(f"/carts/{cart_id}")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    with sessions() as session:
        cart = session.get(Cart, cart_id)
        assert cart is not None
        assert cart.deleted_at is not None
        assert [(i.sku, i.quantity) for i in cart.items] == [("TEA-01", 2)]


def test_succeeded_queues_and_sends_the_confirmation_mail(sessions, checkout, deliver_event):
    order = checkout([("TEA-01", 2)], email="hanako@example.com")
    deliver_event(succeeded(order))
    [mail] = outbox(sessions, Topic.MAIL)
    assert mail.status is OutboxStatus.DONE
    body = mail.body
    assert (body["kind"], body["to"], body["order_id"]) == ("confirmation", "hanako@example.com", order["order_id"])
    assert order["order_id"] in body["subject"]
    assert "TEA-01" in body["body"] and f"Total: {order['total']:,} JPY" in body["body"]


def test_succeeded_event_is_recorded_processed_with_its_order(sessions, checkout, deliver_event):
    order = checkout()
    event = succeeded(order)
    deliver_event(event)
    row = inbox_row(sessions, event["id"])
    assert (row.status, row.order_id, row.attempts, row.outcome) == (EventStatus.PROCESSED, order["order_id"], 1,
                                                                     "order paid")
    assert [m.status for m in outbox(sessions, Topic.STRIPE_EVENT)] == [OutboxStatus.DONE]


def test_a_second_succeeded_event_for_a_paid_order_changes_nothing(client, sessions, checkout, deliver_event):
    order = checkout([("TEA-01", 2)])
    deliver_event(succeeded(order))
    second = succeeded(order)  # a new event id: Stripe's own duplicate, not a redelivery
    deliver_event(second)
    assert stock(client, "TEA-01") == (38, 0)
    assert shipments(sessions) == 1
    assert len(outbox(sessions, Topic.MAIL)) == 1
    assert inbox_row(sessions, second["id"]).outcome == "order already paid"


# --- payment_intent.payment_failed ----------------------------------------------------------------------------


def test_payment_failed_records_the_decline_and_keeps_the_stock_reserved(client, sessions, checkout, deliver_event):
    order = checkout([("TEA-01", 2)])
    deliver_event(failed(order))
    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "payment_failed"
    assert body["failure_code"] == "card_declined"
    assert body["failure_message"]
    assert body["shipment"] is None
    assert stock(client, "TEA-01") == (40, 2)
    row = order_row(sessions, order["order_id"])
    assert row.payment_attempts == 1
    assert {r.status for r in row.reservations} == {ReservationStatus.ACTIVE}


def test_payment_failed_tells_the_customer(sessions, checkout, deliver_event):
    order = checkout([("TEA-01", 2)], email="hanako@example.com")
    deliver_event(failed(order))
    [mail] = outbox(sessions, Topic.MAIL)
    assert (mail.body["kind"], mail.body["to"], mail.status) == ("payment_failed", "hanako@example.com",
                                                                 OutboxStatus.DONE)


def test_payment_failed_then_succeeded_with_another_card_pays_the_order(client, sessions, checkout, deliver_event):
    order = checkout([("TEA-01", 2)])
    deliver_event(failed(order))
    deliver_event(succeeded(order))
    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "paid"
    assert body["failure_code"] is None
    assert body["shipment"]["status"] == "pending"
    assert stock(client, "TEA-01") == (38, 0)


def test_a_late_payment_failed_never_unpays_a_paid_order(client, sessions, checkout, deliver_event):
    order = checkout([("TEA-01", 2)])
    deliver_event(succeeded(order))
    stale = failed(order)
    deliver_event(stale)
    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "paid"
    assert body["failure_code"] is None
    assert stock(client, "TEA-01") == (38, 0)
    row = inbox_row(sessions, stale["id"])
    assert row.status is EventStatus.PROCESSED
    assert "stale" in row.outcome
    assert [m.body["kind"] for m in outbox(sessions, Topic.MAIL)] == ["confirmation"]


# --- business problems go to people ---------------------------------------------------------------------------


@pytest.mark.parametrize("change, said", [
    pytest.param({"amount": 3101}, "amount mismatch", id="amount"),
    pytest.param({"currency": "usd"}, "amount mismatch", id="currency"),
])
def test_payment_that_does_not_match_the_order_flags_it_for_review_and_takes_no_stock(
        client, sessions, checkout, deliver_event, change, said):
    order = checkout([("TEA-01", 2)])
    assert order["total"] == 3100
    event = succeeded(order, **change)
    deliver_event(event)
    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert said in body["review_reason"]
    assert body["shipment"] is None
    assert stock(client, "TEA-01") == (40, 2)
    assert outbox(sessions, Topic.MAIL) == []
    assert "flagged for review" in inbox_row(sessions, event["id"]).outcome


def test_payment_after_the_order_was_cancelled_is_flagged_for_review(client, checkout, deliver_event):
    order = checkout([("TEA-01", 2)])
    deliver_event(canceled(order))
    deliver_event(succeeded(order))
    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert "cancelled" in body["review_reason"]
    assert stock(client, "TEA-01") == (40, 0)


# --- payment_intent.canceled ----------------------------------------------------------------------------------


def test_canceled_cancels_the_order_and_releases_the_stock(client, sessions, checkout, deliver_event):
    order = checkout([("TEA-01", 2), ("CUP-01", 3)])
    assert stock(client, "CUP-01") == (3, 3)
    deliver_event(canceled(order))
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "cancelled"
    assert stock(client, "TEA-01") == (40, 0)
    assert stock(client, "CUP-01") == (3, 0)
    row = order_row(sessions, order["order_id"])
    assert "requested_by_customer" in row.cancel_reason
    assert {r.status for r in row.reservations} == {ReservationStatus.RELEASED}


def test_canceled_after_payment_leaves_the_paid_order_alone(client, checkout, deliver_event):
    order = checkout([("TEA-01", 2)])
    deliver_event(succeeded(order))
    deliver_event(canceled(order))
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
    assert stock(client, "TEA-01") == (38, 0)


# --- transient faults: retried, then dead-lettered ------------------------------------------------------------


def test_a_failing_handler_is_retried_then_dead_lettered_and_can_be_re_driven(
        client, sessions, settings, checkout, post_event, deliver):
    assert (settings.max_attempts, settings.retry_base_seconds) == (3, 0.0)
    order = checkout([("TEA-01", 2)])
    event = succeeded(order)
    post_event(event)
    with sessions() as session:
        session.execute(text("ALTER TABLE shipments RENAME TO shipments_away"))
        session.commit()
    try:
        seen = []
        for attempt in (1, 2, 3):
            assert deliver(max_rounds=1) == 1
            row = inbox_row(sessions, event["id"])
            [message] = outbox(sessions, Topic.STRIPE_EVENT)
            seen.append((row.status, row.attempts, message.status, message.attempts))
            assert "shipments" in row.last_error
            assert "shipments" in message.last_error
        assert seen == [
            (EventStatus.RETRYING, 1, OutboxStatus.PENDING, 1),
            (EventStatus.RETRYING, 2, OutboxStatus.PENDING, 2),
            (EventStatus.DEAD, 3, OutboxStatus.DEAD, 3),
        ]
        assert deliver() == 0  # a dead letter waits for a person, it is not published again
    finally:
        with sessions() as session:
            session.execute(text("ALTER TABLE shipments_away RENAME TO shipments"))
            session.commit()
    assert inbox_row(sessions, event["id"]).status is EventStatus.DEAD
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "pending_payment"
    assert stock(client, "TEA-01") == (40, 2)

    # The fault is gone: staff re-drive the stored event and the order is paid once.
    with transaction(sessions) as session:
        stored = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
        assert run_event(session, stored).reason == "order paid"
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
    assert stock(client, "TEA-01") == (38, 0)
    row = inbox_row(sessions, event["id"])
    assert (row.status, row.last_error) == (EventStatus.PROCESSED, None)


# --- re-drive (shop events replay) is idempotent --------------------------------------------------------------


def _snapshot(client, sessions, order_id: str) -> dict:
    # HTTP first, then the database: a session holds SQLite's write lock while it is open.
    snapshot = {"order": client.get(f"/orders/{order_id}").get_json(), "stock": client.get("/products").get_json()}
    with sessions() as session:
        order = session.get(Order, order_id)
        snapshot.update({
            "reservations": [(r.sku, r.status) for r in order.reservations],
            "cart_deleted_at": session.get(Cart, order.cart_id).deleted_at,
            "shipments": session.scalar(select(func.count()).select_from(Shipment)),
            "outbox": [(m.topic, m.payload) for m in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))],
        })
    return snapshot


def test_replaying_a_processed_event_changes_nothing(client, sessions, checkout, deliver_event):
    order = checkout([("TEA-01", 2)])
    event = succeeded(order)
    deliver_event(event)
    before = _snapshot(client, sessions, order["order_id"])
    assert before["order"]["status"] == "paid"
    with transaction(sessions) as session:
        stored = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
        outcome = run_event(session, stored)
    assert outcome.status is EventStatus.PROCESSED
    assert "already" in outcome.reason
    assert _snapshot(client, sessions, order["order_id"]) == before


def test_running_a_stored_event_twice_applies_it_once(client, sessions, checkout, post_event):
    order = checkout([("TEA-01", 2)])
    event = succeeded(order)
    post_event(event)
    outcomes = []
    for _ in range(2):
        with transaction(sessions) as session:
            stored = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
            outcomes.append(run_event(session, stored).reason)
        if len(outcomes) == 1:
            after_first = _snapshot(client, sessions, order["order_id"])
    assert outcomes[0] == "order paid"
    assert "already" in outcomes[1]
    assert _snapshot(client, sessions, order["order_id"]) == after_first
    assert after_first["order"]["status"] == "paid"
    assert after_first["shipments"] == 1
    assert [json.loads(p)["kind"] for t, p in after_first["outbox"] if t is Topic.MAIL] == ["confirmation"]


def test_replaying_a_processed_payment_failed_event_records_no_second_attempt(client, sessions, checkout,
                                                                                deliver_event):
    order = checkout([("TEA-01", 2)])
    event = failed(order)
    deliver_event(event)
    before = _snapshot(client, sessions, order["order_id"])
    assert before["order"]["status"] == "payment_failed"
    with sessions() as session:
        attempts_before = session.get(Order, order["order_id"]).payment_attempts
    assert attempts_before == 1
    with transaction(sessions) as session:
        stored = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
        run_event(session, stored)
    assert _snapshot(client, sessions, order["order_id"]) == before  # no second "card declined" mail
    with sessions() as session:
        assert session.get(Order, order["order_id"]).payment_attempts == 1


# --- two copies of one message: a late failure never reopens what the other finished ----------------------------


def test_a_late_failure_of_one_copy_never_reopens_the_message_another_copy_finished(
        client, sessions, settings, checkout, post_event, deliver, monkeypatch):
    # Two copies of one outbox message (a re-publish, a replay racing a worker). Copy 1's
    # handler runs and fails, its transaction rolls back; copy 2 then commits "done"; only
    # after that does copy 1 record its failure. Deterministic on both backends.
    import consumers.processing as processing
    from consumers.handlers import HANDLERS
    from models.history import AttemptOutcome, EventAttempt

    order = checkout([("TEA-01", 2)])
    event = failed(order)  # a declined card: applied twice it would count two attempts, send two mails
    post_event(event)
    [message] = outbox(sessions, Topic.STRIPE_EVENT)

    real_handler = HANDLERS["payment_intent.payment_failed"]
    runs = []

    def copy_one_fails(*args):
        runs.append(len(runs) + 1)
        outcome = real_handler(*args)
        if len(runs) == 1:
            raise RuntimeError("copy 1 lost its database connection")  # after the handler's changes: rolled back
        return outcome

    real_record_failure = processing._record_failure

    def copy_two_commits_first(*args, **kwargs):
        assert processing.process_message(sessions, settings, message.id).outcome == "done"  # copy 2
        return real_record_failure(*args, **kwargs)  # ... and only now copy 1 records its failure

    monkeypatch.setitem(HANDLERS, "payment_intent.payment_failed", copy_one_fails)
    monkeypatch.setattr(processing, "_record_failure", copy_two_commits_first)
    processing.process_message(sessions, settings, message.id)  # copy 1
    monkeypatch.undo()
    deliver()  # whatever is still open in the outbox (the mail), as relay + worker would

    assert runs == [1, 2]
    [message] = outbox(sessions, Topic.STRIPE_EVENT)
    assert message.status is OutboxStatus.DONE
    row = inbox_row(sessions, event["id"])
    assert (row.status, row.outcome) == (EventStatus.PROCESSED, "payment attempt failed: card_declined")
    with sessions() as session:
        assert session.get(Order, order["order_id"]).payment_attempts == 1
        attempts = session.scalars(select(EventAttempt.outcome).where(EventAttempt.inbox_event_id == row.id)
                                   .order_by(EventAttempt.id)).all()
    # Copy 1's failure is kept as history, after copy 2's success; it changed nothing.
    assert sorted(attempts) == sorted([AttemptOutcome.PROCESSED, AttemptOutcome.FAILED])
    assert [m.body["kind"] for m in outbox(sessions, Topic.MAIL)] == ["payment_failed"]


# --- a message that kills its worker: a dead letter after MAX_DELIVERIES starts ----------------------------------


def test_a_message_that_stops_every_worker_taking_it_is_a_dead_letter_and_a_redrive_starts_afresh(
        client, sessions, settings, checkout, post_event, deliver, monkeypatch):
    import dataclasses

    from kombu import Consumer

    from consumers.broker import QUEUES, ConfirmedPublisher, connect
    from consumers.relay import publish_due
    from consumers.worker import Worker
    from models.history import StaffAlert

    capped = dataclasses.replace(settings, max_deliveries=3, redelivery_seconds=0.0)
    order = checkout([("TEA-01", 2)])
    event = succeeded(order)
    post_event(event)

    def killed(*_args):
        raise SystemExit("the worker process was killed while running the message")

    # The worker's own code decides what a copy is and counts it; the run itself kills it.
    monkeypatch.setattr("consumers.worker.process_message", killed)
    monkeypatch.setattr("consumers.worker.process_batch", killed)
    worker = Worker(capped)
    outcomes = []
    try:
        with connect(capped) as conn:
            publisher = ConfirmedPublisher(conn)
            taken = []
            with Consumer(conn, queues=list(QUEUES.values()), accept=["json"],
                          callbacks=[lambda body, message: taken.append((body, message))]):
                for _ in range(5):  # the relay publishes a copy of what nobody finished, each time
                    publish_due(sessions, publisher, capped)
                    try:
                        conn.drain_events(timeout=0.5)
                    except TimeoutError:
                        pass
                    for body, message in taken:
                        try:
                            worker.collect(body, message)
                            worker.run_pending()
                            outcomes.append("given up")
                        except SystemExit:
                            outcomes.append("killed")
                            worker.pending = []
                    taken.clear()
    finally:
        worker.engine.dispose()
    # The first delivery and two copies were started and killed their worker; the third copy
    # is not run: three starts is MAX_DELIVERIES.
    assert outcomes == ["killed", "killed", "killed", "given up"]
    [message] = outbox(sessions, Topic.STRIPE_EVENT)
    assert (message.status, message.starts) == (OutboxStatus.DEAD, 3)
    assert "taken by a worker 3 times" in message.last_error
    assert inbox_row(sessions, event["id"]).status is EventStatus.DEAD
    with sessions() as session:
        [alert] = session.scalars(select(StaffAlert)).all()
    assert alert.outbox_id == message.id
    assert alert.url == f"{settings.admin_base_url}/admin/dead-letters/{message.id}"
    assert "dead-lettered" in alert.text and "buyer@example.com" not in alert.text
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "pending_payment"

    # Staff re-drive it: fresh counts (so a fresh, short redelivery wait), then it is paid.
    monkeypatch.undo()  # the fault is gone
    with transaction(sessions) as session:
        session.get(OutboxMessage, message.id).redrive()
    [message] = outbox(sessions, Topic.STRIPE_EVENT)
    assert (message.status, message.deliveries, message.starts, message.attempts) == (OutboxStatus.PENDING, 0, 0, 0)
    deliver()
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"


def test_copies_nobody_took_are_not_dead_letters_however_many(client, sessions, settings, checkout, post_event,
                                                              deliver):
    # Every worker stopped: the relay keeps publishing copies (the wait doubles, up to 64 minutes
    # in production); none was started, so none counts, and the workers pay it when they are back.
    import dataclasses

    from consumers.broker import ConfirmedPublisher, connect
    from consumers.relay import publish_due

    capped = dataclasses.replace(settings, max_deliveries=3, redelivery_seconds=0.0)
    order = checkout([("TEA-01", 1)])
    post_event(succeeded(order))
    with connect(capped) as conn:
        publisher = ConfirmedPublisher(conn)
        assert [publish_due(sessions, publisher, capped) for _ in range(6)] == [1] * 6
    [message] = outbox(sessions, Topic.STRIPE_EVENT)
    assert (message.status, message.deliveries, message.starts) == (OutboxStatus.PUBLISHED, 6, 0)
    deliver()  # six copies on the broker: one pays the order, the others find it done
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
    [message] = outbox(sessions, Topic.STRIPE_EVENT)
    assert message.status is OutboxStatus.DONE


def test_a_broker_redelivery_counts_as_a_start(client, sessions, settings, checkout, post_event):
    # RabbitMQ hands an unacknowledged message to the next worker itself, without the relay:
    # the worker counts that copy as started (committed) before running it.
    import dataclasses

    from consumers.processing import start_copy

    capped = dataclasses.replace(settings, max_deliveries=2)
    order = checkout([("TEA-01", 1)])
    post_event(succeeded(order))
    with transaction(sessions) as session:
        [message] = session.scalars(select(OutboxMessage)).all()
        message.mark_published(capped.redelivery_seconds)
    assert start_copy(sessions, capped, message.id) is False  # the first delivery and this copy: 2 runs
    [message] = outbox(sessions, Topic.STRIPE_EVENT)
    assert (message.status, message.starts) == (OutboxStatus.PUBLISHED, 1)
    assert start_copy(sessions, capped, message.id) is True  # a third run would pass MAX_DELIVERIES
    [message] = outbox(sessions, Topic.STRIPE_EVENT)
    assert (message.status, message.starts) == (OutboxStatus.DEAD, 2)
    assert "taken by a worker 2 times" in message.last_error
