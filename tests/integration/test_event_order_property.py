"""Any order and any repetition of a purchase's events gives the same final order status and stock.

Each hypothesis example is a whole purchase on a fresh migrated SQLite database: checkout through
the API against the real localstripe, the purchase's signed webhooks posted in a drawn order with
repetitions, then every outbox message run through the worker's `process_message` in a drawn
order (some of them delivered twice, as a broker may). A last test re-drives stored events
(`shop events replay`) and expects nothing to change.
"""
from __future__ import annotations

import itertools
import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from consumers.processing import process_message, run_event
from models.db import transaction
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus, Topic
from models.migrations import upgrade
from models.orders import Order, Shipment
from models.settings import Settings
from tests.support import CATALOG, SHIPPING, event_for, load_catalog, settings_for, signed_headers, use_stripe

SUCCEEDED = "localstripe_payment_intent.succeeded"
FAILED = "localstripe_payment_intent.payment_failed"
STOCK = {p["sku"]: p["stock"] for p in CATALOG["products"]}

# Each example is a whole purchase (~0.2 s). The fixtures are session/module scoped and every
# example builds its own database, so no function-scoped state leaks between examples.
PROPERTY = hypothesis_settings(max_examples=25, deadline=None)


@dataclass
class Shop:
    app: Flask
    client: FlaskClient
    settings: Settings
    sessions: sessionmaker[Session]


@pytest.fixture(scope="module")
def fresh_shop(localstripe, tmp_path_factory):
    """A factory of isolated shops: a new migrated database with the catalog, and the app on it."""
    root = tmp_path_factory.mktemp("event_order")
    numbers = itertools.count()

    @contextmanager
    def build():
        folder = root / f"example-{next(numbers)}"
        folder.mkdir()
        url = f"sqlite:///{folder / 'shop.db'}"
        upgrade(url)
        settings = settings_for(url, broker_url=f"memory://localhost/{folder.name}", stripe_api_base=localstripe.base)
        from webhook_app import create_app

        app = create_app(settings)
        app.config["TESTING"] = True
        use_stripe(settings.stripe_api_base)
        sessions = app.extensions["shop"].sessions
        load_catalog(sessions)
        try:
            yield Shop(app, app.test_client(), settings, sessions)
        finally:
            app.extensions["shop"].dispose()

    return build


def place_order(shop: Shop, items: dict[str, int]) -> dict:
    client = shop.client
    cart = client.post("/carts").get_json()
    for sku, quantity in items.items():
        response = client.post(f"/carts/{cart['id']}/items", json={"sku": sku, "quantity": quantity})
        assert response.status_code == 200, response.get_json()
    response = client.post("/checkout", json={"cart_id": cart["id"], "email": "buyer@example.com",
                                              "shipping": SHIPPING})
    assert response.status_code == 201, response.get_json()
    return {**response.get_json(), "cart_id": cart["id"]}


def post_all(shop: Shop, events: list[dict]) -> None:
    """POST every delivery signed; the first of each id is stored, the rest are acknowledged duplicates."""
    seen: set[str] = set()
    for event in events:
        payload = json.dumps(event)
        response = shop.client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload))
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {"received": True, "duplicate": event["id"] in seen}
        seen.add(event["id"])


def deliver_all(shop: Shop, data: st.DataObject | None = None) -> None:
    """Run every outbox message (stripe events, then the mail they queue) in a drawn order.

    Without `data`, in outbox order, each once.
    """
    for _ in range(5):
        with shop.sessions() as session:
            waiting = session.scalars(
                select(OutboxMessage.id).where(OutboxMessage.status.not_in([OutboxStatus.DONE, OutboxStatus.DEAD]))
            ).all()
        if not waiting:
            return
        if data is not None:
            waiting = data.draw(st.permutations(waiting), label="delivery order")
        for outbox_id in waiting:
            result = process_message(shop.sessions, shop.settings, outbox_id)
            assert result.outcome == "done", result
            if data is not None and data.draw(st.booleans(), label=f"redeliver {outbox_id}"):
                assert process_message(shop.sessions, shop.settings, outbox_id).outcome == "skipped"
    pytest.fail("the outbox did not drain in 5 rounds")


def deliveries(names: list[str], copies: list[int]) -> st.SearchStrategy[list[str]]:
    return st.permutations([name for name, n in zip(names, copies) for _ in range(n)])


def assert_each_event_stored_once(session: Session, event_ids: set[str]) -> None:
    rows = session.execute(select(InboxEvent.event_id, InboxEvent.status)).all()
    assert Counter(event_id for event_id, _ in rows) == Counter(event_ids)
    assert {status for _, status in rows} == {EventStatus.PROCESSED}


def assert_stock_accounted_for(session: Session, order: Order, context) -> None:
    """Stock never negative; what left the shelf is exactly what the paid, unrefunded order still
    has out; what is reserved is exactly what it still holds (the shop's only order)."""
    from models.catalog import ReservationStatus, Stock

    for sku, initial in STOCK.items():
        row = session.get(Stock, sku)
        assert row.on_hand >= 0 and 0 <= row.reserved <= row.on_hand, sku
        held = [r for r in order.reservations if r.sku == sku]
        out = sum(r.quantity for r in held if r.status is ReservationStatus.CONSUMED)
        reserved = sum(r.quantity for r in held if r.status is ReservationStatus.ACTIVE)
        assert row.on_hand + out == initial, (sku, context, order.status.value)
        assert row.reserved == reserved, (sku, context, order.status.value)


ITEMS = st.fixed_dictionaries({
    "TEA-01": st.integers(min_value=1, max_value=5),
    "CUP-01": st.integers(min_value=0, max_value=STOCK["CUP-01"]),
}).map(lambda items: {sku: q for sku, q in items.items() if q})


@PROPERTY
@given(items=ITEMS, copies=st.tuples(st.integers(1, 5), st.integers(1, 5)), data=st.data())
def test_any_order_and_repetition_of_failed_and_succeeded_events_ends_paid_with_stock_taken_once(
        fresh_shop, items, copies, data):
    with fresh_shop() as shop:
        order = place_order(shop, items)
        address = dict(intent_id=order["payment_intent_id"], order_id=order["order_id"], amount=order["total"])
        events = {"failed": event_for(FAILED, **address), "succeeded": event_for(SUCCEEDED, **address)}
        sequence = data.draw(deliveries(["failed", "succeeded"], list(copies)), label="webhook deliveries")

        post_all(shop, [events[name] for name in sequence])
        deliver_all(shop, data)

        body = shop.client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
        assert body["status"] == "paid"
        assert body["payment_intent_id"] == order["payment_intent_id"]
        assert body["shipment"] is not None and body["shipment"]["prefecture"] == SHIPPING["prefecture"]
        for sku, initial in STOCK.items():
            product = shop.client.get(f"/products/{sku}").get_json()
            assert (product["on_hand"], product["reserved"]) == (initial - items.get(sku, 0), 0), sku
        # Paid: the cart is logically deleted.
        assert shop.client.get(f"/carts/{order['cart_id']}").status_code == 404

        with shop.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Shipment)
                                  .where(Shipment.order_id == order["order_id"])) == 1
            assert_each_event_stored_once(session, {e["id"] for e in events.values()})
            mails = Counter(json.loads(p)["kind"] for p in session.scalars(
                select(OutboxMessage.payload).where(OutboxMessage.topic == Topic.MAIL)))
            assert mails["confirmation"] == 1
            assert mails["payment_failed"] <= 1


@PROPERTY
@given(items=ITEMS, copies=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data())
def test_any_repetition_of_failed_events_ends_payment_failed_with_stock_still_reserved(
        fresh_shop, items, copies, data):
    with fresh_shop() as shop:
        order = place_order(shop, items)
        address = dict(intent_id=order["payment_intent_id"], order_id=order["order_id"], amount=order["total"])
        # One distinct event per declined card; each may be delivered several times.
        events = {f"failed-{i}": event_for(FAILED, **address) for i in range(len(copies))}
        sequence = data.draw(deliveries(list(events), copies), label="webhook deliveries")

        post_all(shop, [events[name] for name in sequence])
        deliver_all(shop, data)

        body = shop.client.get(f"/orders/{order['order_id']}").get_json()
        assert body["status"] == "payment_failed"
        assert body["shipment"] is None
        for sku, initial in STOCK.items():
            product = shop.client.get(f"/products/{sku}").get_json()
            assert (product["on_hand"], product["reserved"]) == (initial, items.get(sku, 0)), sku
        # Not paid: the cart stays (checked out, not deleted).
        assert shop.client.get(f"/carts/{order['cart_id']}").status_code == 200

        with shop.sessions() as session:
            stored = session.get(Order, order["order_id"])
            assert stored.payment_attempts == len(events)
            assert stored.failure_code == "card_declined"
            assert session.scalar(select(func.count()).select_from(Shipment)) == 0
            assert_each_event_stored_once(session, {e["id"] for e in events.values()})


def snapshot(shop: Shop, order_id: str) -> dict:
    """Everything a re-drive must leave as it was: the order, its stock, shipment and e-mails."""
    products = {sku: shop.client.get(f"/products/{sku}").get_json() for sku in STOCK}
    # Read after the HTTP calls: a SQLite session here holds the write lock until it closes.
    with shop.sessions() as session:
        order = session.get(Order, order_id)
        return {
            "order": (order.status, order.payment_attempts, order.failure_code, order.paid_at),
            "stock": {sku: (p["on_hand"], p["reserved"]) for sku, p in products.items()},
            "shipments": session.scalar(select(func.count()).select_from(Shipment)),
            "mails": Counter(json.loads(p)["kind"] for p in session.scalars(
                select(OutboxMessage.payload).where(OutboxMessage.topic == Topic.MAIL))),
        }


def redrive(shop: Shop, event_id: str) -> None:
    """What `shop events replay EVT_ID` does: run the stored event through its handler again."""
    with transaction(shop.sessions) as session:
        run_event(session, session.scalars(select(InboxEvent).where(InboxEvent.event_id == event_id)).one())


@pytest.mark.parametrize("paid", [True, False], ids=["paid", "payment_failed"])
def test_redriving_stored_events_changes_nothing(fresh_shop, paid):
    # A re-drive (`shop events replay`) runs an already processed event through its handler
    # again: handlers are keyed on event and order state, so a second run must change nothing.
    with fresh_shop() as shop:
        order = place_order(shop, {"TEA-01": 2})
        address = dict(intent_id=order["payment_intent_id"], order_id=order["order_id"], amount=order["total"])
        events = [event_for(FAILED, **address)] + ([event_for(SUCCEEDED, **address)] if paid else [])
        post_all(shop, events)
        deliver_all(shop)
        before = snapshot(shop, order["order_id"])
        assert before["order"][0].value == ("paid" if paid else "payment_failed")

        for event in events + events[::-1]:
            redrive(shop, event["id"])
        deliver_all(shop)

        assert snapshot(shop, order["order_id"]) == before


# --- money events: payments, refunds and disputes in any order -----------------------------------------------------

CHARGE_ID = "ch_PropertyCharge0001"
PARTIAL = 1000


def _charge_refunded(order: dict, refunds: list[tuple[str, int]]) -> dict:
    """charge.refunded as Stripe sends it: the charge with every refund made so far."""
    event = event_for("charge.refunded")
    charge = event["data"]["object"]
    charge.update(id=CHARGE_ID, payment_intent=order["payment_intent_id"], amount=order["total"],
                  currency=order["currency"], amount_refunded=sum(amount for _, amount in refunds),
                  refunded=sum(amount for _, amount in refunds) >= order["total"])
    charge["refunds"]["data"] = [{"id": refund_id, "object": "refund", "amount": amount, "charge": CHARGE_ID,
                                  "currency": order["currency"], "payment_intent": order["payment_intent_id"],
                                  "status": "succeeded", "reason": None} for refund_id, amount in refunds]
    return event


def _dispute(order: dict, kind: str, status: str) -> dict:
    event = event_for("charge.dispute.created")
    event["type"] = f"charge.dispute.{kind}"
    event["data"]["object"].update(id="dp_PropertyDispute01", charge=CHARGE_ID,
                                   payment_intent=order["payment_intent_id"], amount=order["total"],
                                   currency=order["currency"], status=status)
    return event


def money_events(order: dict) -> dict[str, dict]:
    address = dict(intent_id=order["payment_intent_id"], order_id=order["order_id"], amount=order["total"])
    return {
        "succeeded": event_for(SUCCEEDED, **address),
        "failed": event_for(FAILED, **address),
        "canceled": event_for("payment_intent.canceled", currency=order["currency"], **address),
        "refund_partial": _charge_refunded(order, [("re_PropertyPart01", PARTIAL)]),
        "refund_full": _charge_refunded(order, [("re_PropertyPart01", PARTIAL),
                                                ("re_PropertyRest01", order["total"] - PARTIAL)]),
        "dispute_created": _dispute(order, "created", "needs_response"),
        "dispute_closed": _dispute(order, "closed", "lost"),
    }


@PROPERTY
@given(items=ITEMS, kinds=st.lists(st.sampled_from(["succeeded", "failed", "canceled", "refund_partial",
                                                    "refund_full", "dispute_created", "dispute_closed"]),
                                   min_size=1, max_size=10),
       data=st.data())
def test_any_order_and_repetition_of_money_events_keeps_money_and_stock_accounted_for(
        fresh_shop, items, kinds, data):
    from models.catalog import ReservationStatus
    from models.refunds import Dispute, Refund

    with fresh_shop() as shop:
        order = place_order(shop, items)
        events = money_events(order)
        post_all(shop, [events[kind] for kind in kinds])
        deliver_all(shop, data)

        with shop.sessions() as session:
            stored = session.get(Order, order["order_id"])
            status = stored.status.value
            # Every event ran to an end: none left retrying or dead.
            assert {s for (s,) in session.execute(select(InboxEvent.status))} <= {EventStatus.PROCESSED,
                                                                                  EventStatus.IGNORED}
            # Money taken is never silent: the order is paid, refunded or in front of a person.
            if stored.money_held > 0:
                assert status in ("paid", "refunded", "needs_review"), (kinds, status)
            # The payment is counted once, each refund recorded once.
            assert stored.paid_amount == (order["total"] if "succeeded" in kinds else 0)
            refund_rows = session.scalars(select(Refund)).all()
            assert len({r.stripe_refund_id for r in refund_rows}) == len(refund_rows)
            expected_refunds = ({"re_PropertyPart01"} if {"refund_partial", "refund_full"} & set(kinds) else set()) \
                | ({"re_PropertyRest01"} if "refund_full" in kinds else set())
            assert {r.stripe_refund_id for r in refund_rows} == expected_refunds
            assert stored.refunded_amount == sum(r.amount for r in refund_rows)
            assert session.scalar(select(func.count()).select_from(Dispute)) == (
                1 if {"dispute_created", "dispute_closed"} & set(kinds) else 0)
            # One shipment and one confirmation at most, and only for a payment applied.
            shipments = session.scalar(select(func.count()).select_from(Shipment))
            assert shipments <= 1
            if shipments:
                assert "succeeded" in kinds
            mails = Counter(json.loads(p)["kind"] for p in session.scalars(
                select(OutboxMessage.payload).where(OutboxMessage.topic == Topic.MAIL)))
            assert mails["confirmation"] == shipments
            assert mails["payment_failed"] <= 1
            assert_stock_accounted_for(session, stored, kinds)
            if status == "refunded":
                assert all(r.status is not ReservationStatus.ACTIVE for r in stored.reservations)
                assert stored.shipment is None or stored.shipment.status.value == "cancelled"
