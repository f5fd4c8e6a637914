"""A worker batch pays its ordinary orders together (`_pay_ordinary_orders`): locked with one
statement per table, written at one flush. What it leaves must be what the same messages leave
run one at a time through `process_message`, for the ordinary orders and for every case that is
not one (declined first, amount off, a second event, another mode, a cancelled order)."""
from __future__ import annotations

import re

from sqlalchemy import event as sa_event
from sqlalchemy import select

import consumers.processing as processing
from consumers.relay import expire_reservations
from models.base import utcnow
from models.carts import Cart
from models.catalog import Reservation, Stock
from models.events import InboxEvent, OutboxMessage, Topic
from models.history import EventAttempt, OrderStatusChange, StaffAlert
from models.orders import Order
from tests.support import event_for


def succeeded(order: dict, **changes) -> dict:
    return event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=changes.pop("amount", order["total"]), **changes)


def declined(order: dict) -> dict:
    return event_for("localstripe_payment_intent.payment_failed", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"])


def message_ids(sessions, events: list[dict]) -> list[int]:
    with sessions() as session:
        return session.scalars(select(OutboxMessage.id).join(InboxEvent, InboxEvent.id == OutboxMessage.inbox_event_id)
                               .where(InboxEvent.event_id.in_([e["id"] for e in events]))
                               .order_by(OutboxMessage.id)).all()


def stock_levels(sessions) -> dict[str, tuple[int, int]]:
    with sessions() as session:
        return {s.sku: (s.on_hand, s.reserved) for s in session.scalars(select(Stock))}


def story(sessions, order: dict, events: list[dict]) -> dict:
    """Everything the service wrote about one order and its events, its own ids replaced by names."""
    with sessions() as session:
        stored = session.get(Order, order["order_id"])
        names = {order["order_id"]: "ORDER", order["payment_intent_id"]: "INTENT", stored.access_token: "TOKEN",
                 **{e["id"]: f"EVENT{k}" for k, e in enumerate(events)}}

        def named(text):
            if not isinstance(text, str):
                return text
            for value, name in names.items():
                text = text.replace(value, name)
            return re.sub(r"evt_[0-9a-f]+", "AN EARLIER EVENT", text)

        inbox = {e.event_id: e for e in session.scalars(
            select(InboxEvent).where(InboxEvent.event_id.in_([e["id"] for e in events])))}
        messages = {m.inbox_event_id: m for m in session.scalars(
            select(OutboxMessage).where(OutboxMessage.inbox_event_id.in_([e.id for e in inbox.values()])))}
        return {
            "order": (stored.status, stored.paid_amount, stored.payment_attempts, stored.failure_code,
                      named(stored.review_reason), named(stored.cancel_reason), stored.paid_at is not None),
            "holds": sorted((r.sku, r.quantity, r.status, r.closed_at is not None) for r in stored.reservations),
            "shipment": stored.shipment and (stored.shipment.fee, stored.shipment.status, stored.shipment.name),
            "cart deleted": session.get(Cart, stored.cart_id).deleted_at is not None,
            "history": [(c.from_status, c.to_status, named(c.cause), named(c.reason)) for c in session.scalars(
                select(OrderStatusChange).where(OrderStatusChange.order_id == stored.id)
                .order_by(OrderStatusChange.id))],
            "queued": [(m.topic, m.status, named(m.payload)) for m in session.scalars(
                select(OutboxMessage).where(OutboxMessage.order_id == stored.id).order_by(OutboxMessage.id))],
            "alerts": [named(a.text) for a in session.scalars(
                select(StaffAlert).where(StaffAlert.order_id == stored.id).order_by(StaffAlert.id))],
            "events": [(messages[inbox[e["id"]].id].status, messages[inbox[e["id"]].id].attempts,
                        inbox[e["id"]].status, named(inbox[e["id"]].outcome), inbox[e["id"]].attempts,
                        named(inbox[e["id"]].order_id), inbox[e["id"]].last_error,
                        [(a.runner, a.outcome, named(a.reason), a.error) for a in session.scalars(
                            select(EventAttempt).where(EventAttempt.inbox_event_id == inbox[e["id"]].id)
                            .order_by(EventAttempt.id))])
                       for e in events],
        }


CASES = ("ordinary", "two lines", "declined first", "amount off", "two events", "live mode", "cancelled",
         "declined")


def place_cases(checkout) -> dict[str, dict]:
    return {case: checkout([("TEA-01", 2), ("CUP-01", 1)] if case == "two lines" else [("TEA-01", 1)])
            for case in CASES}


def events_for(orders: dict[str, dict]) -> dict[str, list[dict]]:
    live = succeeded(orders["live mode"])
    live["livemode"] = True
    return {
        "ordinary": [succeeded(orders["ordinary"])],
        "two lines": [succeeded(orders["two lines"])],
        "declined first": [succeeded(orders["declined first"])],
        "amount off": [succeeded(orders["amount off"], amount=orders["amount off"]["total"] - 100)],
        "two events": [succeeded(orders["two events"]), succeeded(orders["two events"])],
        "live mode": [live],
        "cancelled": [succeeded(orders["cancelled"])],
        "declined": [declined(orders["declined"])],
    }


def test_a_batch_leaves_what_its_messages_run_one_at_a_time_leave(
        client, sessions, settings, checkout, post_event):
    with sessions() as session, session.begin():
        session.get(Stock, "CUP-01").on_hand += 10
        session.get(Stock, "TEA-01").on_hand += 10
    together, alone = place_cases(checkout), place_cases(checkout)
    # Before the batch: one order of each group declined once, one whose hold ran out (cancelled).
    first_declines = [declined(orders["declined first"]) for orders in (together, alone)]
    for event in first_declines:
        assert post_event(event).status_code == 200
    for outbox_id in message_ids(sessions, first_declines):
        assert processing.process_message(sessions, settings, outbox_id).outcome == "done"
    with sessions() as session, session.begin():
        for orders in (together, alone):
            for hold in session.scalars(select(Reservation).where(
                    Reservation.order_id == orders["cancelled"]["order_id"])):
                hold.expires_at = utcnow()
    assert expire_reservations(sessions) == 2

    events = {"together": events_for(together), "alone": events_for(alone)}
    for group in events.values():
        for case in CASES:
            for event in group[case]:
                assert post_event(event).status_code == 200

    levels = stock_levels(sessions)
    batch = message_ids(sessions, [e for case in CASES for e in events["together"][case]])
    results = processing.process_batch(sessions, settings, batch)
    assert {r.outcome for r in results.values()} == {"done"}
    after_batch = stock_levels(sessions)
    for outbox_id in message_ids(sessions, [e for case in CASES for e in events["alone"][case]]):
        assert processing.process_message(sessions, settings, outbox_id).outcome == "done"
    after_alone = stock_levels(sessions)

    for case in CASES:
        assert story(sessions, together[case], events["together"][case]) == \
            story(sessions, alone[case], events["alone"][case]), case
    # The same units left the shelf either way: 1 + 2 + 1 TEA-01 and 1 CUP-01 for the paid orders.
    taken = {sku: (levels[sku][0] - after_batch[sku][0], levels[sku][1] - after_batch[sku][1]) for sku in levels}
    assert taken == {sku: (after_batch[sku][0] - after_alone[sku][0], after_batch[sku][1] - after_alone[sku][1])
                     for sku in levels}
    assert (taken["TEA-01"], taken["CUP-01"]) == ((5, 5), (1, 1))
    # And what it is, not only that both paths agree.
    statuses = {case: story(sessions, together[case], events["together"][case])["order"][0].value for case in CASES}
    assert statuses == {"ordinary": "paid", "two lines": "paid", "declined first": "paid",
                        "amount off": "needs_review", "two events": "paid", "live mode": "pending_payment",
                        "cancelled": "needs_review", "declined": "payment_failed"}
    outcomes = [e[3] for e in story(sessions, together["two events"], events["together"]["two events"])["events"]]
    assert outcomes == ["order paid", "order already paid"]


def test_a_batch_pays_its_ordinary_orders_with_statements_that_do_not_grow_with_them(
        client, sessions, settings, checkout, post_event):
    """The ordinary orders' messages, events and orders are locked and written with one statement
    per table: a batch of 8 paid orders runs as many statements as a batch of 2."""
    with sessions() as session, session.begin():
        session.get(Stock, "TEA-01").on_hand += 10
    orders = [checkout([("TEA-01", 1)]) for _ in range(10)]
    events = [succeeded(order) for order in orders]
    for event in events:
        assert post_event(event).status_code == 200
    engine = sessions.kw["bind"]

    def statements_to_pay(events: list[dict]) -> list[str]:
        statements: list[str] = []

        def record(_conn, _cursor, statement, *_args):
            statements.append(" ".join(statement.split()[:3]).lower())

        def committed(_conn):
            statements.append("commit")

        ids = message_ids(sessions, events)
        sa_event.listen(engine, "before_cursor_execute", record)
        sa_event.listen(engine, "commit", committed)
        try:
            results = processing.process_batch(sessions, settings, ids)
        finally:
            sa_event.remove(engine, "before_cursor_execute", record)
            sa_event.remove(engine, "commit", committed)
        assert [results[i].outcome for i in ids] == ["done"] * len(ids)
        return statements

    def after_the_batch(statements: list[str]) -> list[str]:
        """What runs after the batch's commit (taken out of `statements`), begins and commits left out."""
        at = statements.index("commit")
        after = statements[at + 1:]
        del statements[at + 1:]
        return [s for s in after if s not in ("begin immediate", "commit")]

    two, eight = statements_to_pay(events[:2]), statements_to_pay(events[2:])
    # After its commit the batch marks its confirmations sent in one UPDATE, however many (mails
    # only logged here; a slow SMTP server's are marked every quarter of the redelivery wait).
    assert after_the_batch(two) == ["update outbox set"]
    assert after_the_batch(eight) == ["update outbox set"]
    # SQLite's driver inserts rows whose ids the session needs back one at a time (PostgreSQL's
    # in one statement); that is the one kind of statement that may grow with the orders there.
    grows = ("insert into",) if engine.dialect.name == "sqlite" else ()
    assert sorted(s for s in eight if not s.startswith(grows)) == sorted(s for s in two if not s.startswith(grows))
    assert set(eight) == set(two)
    # About 12 a paid order on its own; here the batch's.
    assert len([s for s in two if not s.startswith(("insert into", "begin", "commit"))]) < 15
    for order in orders:
        assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
