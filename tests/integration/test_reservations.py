"""Reservations that run out: the relay releases the stock and cancels the unpaid order."""
from __future__ import annotations

import pytest

import stripe
from sqlalchemy import select

from consumers.relay import expire_reservations
from models.events import OutboxMessage, OutboxStatus, Topic
from tests.support import SHIPPING, confirm_card, event_for, signed_headers


@pytest.fixture
def short_hold_client(make_client):
    return make_client(reservation_ttl_seconds=0)


def _checkout(client, quantity=2):
    cart = client.post("/carts").get_json()
    client.post(f"/carts/{cart['id']}/items", json={"sku": "TEA-01", "quantity": quantity})
    response = client.post("/checkout", json={"cart_id": cart["id"], "email": "a@example.com", "shipping": SHIPPING})
    assert response.status_code == 201
    return response.get_json()


def _post(client, event):
    import json

    payload = json.dumps(event)
    return client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload))


def test_expired_reservation_releases_stock_and_cancels_the_unpaid_order(short_hold_client, sessions, deliver):
    order = _checkout(short_hold_client)
    assert short_hold_client.get("/products/TEA-01").get_json()["reserved"] == 2

    assert expire_reservations(sessions) == 1
    assert expire_reservations(sessions) == 0  # a second sweep finds nothing left to release

    stock = short_hold_client.get("/products/TEA-01").get_json()
    assert (stock["on_hand"], stock["reserved"]) == (40, 0)
    body = short_hold_client.get(f"/orders/{order['order_id']}").get_json()
    assert body["status"] == "cancelled"
    # ... and the PaymentIntent is cancelled at Stripe, so nobody can pay for the released stock.
    assert stripe.PaymentIntent.retrieve(order["payment_intent_id"]).status == "requires_payment_method"
    deliver()
    assert stripe.PaymentIntent.retrieve(order["payment_intent_id"]).status == "canceled"


def test_declined_order_keeps_its_hold_until_expiry_then_is_cancelled(short_hold_client, sessions, deliver):
    order = _checkout(short_hold_client, quantity=1)
    _post(short_hold_client, event_for("localstripe_payment_intent.payment_failed",
                                       intent_id=order["payment_intent_id"], order_id=order["order_id"],
                                       amount=order["total"]))
    deliver()
    assert short_hold_client.get(f"/orders/{order['order_id']}").get_json()["status"] == "payment_failed"
    assert short_hold_client.get("/products/TEA-01").get_json()["reserved"] == 1

    expire_reservations(sessions)
    assert short_hold_client.get(f"/orders/{order['order_id']}").get_json()["status"] == "cancelled"
    assert short_hold_client.get("/products/TEA-01").get_json()["reserved"] == 0


def test_payment_after_expiry_flags_the_order_for_review_without_touching_stock(short_hold_client, sessions,
                                                                                deliver):
    order = _checkout(short_hold_client)
    expire_reservations(sessions)
    _post(short_hold_client, event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                                       order_id=order["order_id"], amount=order["total"]))
    deliver()

    body = short_hold_client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert "paid after the order was cancelled" in body["review_reason"]
    stock = short_hold_client.get("/products/TEA-01").get_json()
    assert (stock["on_hand"], stock["reserved"]) == (40, 0)


def test_intent_paid_just_before_expiry_is_not_cancelled_and_the_order_goes_to_review(short_hold_client, sessions,
                                                                                       deliver):
    order = _checkout(short_hold_client)
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    expire_reservations(sessions)  # the sweep ran before the succeeded webhook arrived
    deliver()
    with sessions() as session:
        cancel = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.PAYMENT_CANCEL)).one()
        assert cancel.status is OutboxStatus.DONE
    assert stripe.PaymentIntent.retrieve(order["payment_intent_id"]).status == "succeeded"

    _post(short_hold_client, event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                                       order_id=order["order_id"], amount=order["total"]))
    deliver()
    assert short_hold_client.get(f"/orders/{order['order_id']}").get_json()["status"] == "needs_review"


def test_expiry_leaves_the_reservation_of_an_order_under_review_alone(short_hold_client, sessions, deliver):
    order = _checkout(short_hold_client)
    # Paid the wrong amount: flagged for a person, who decides whether its units ship.
    _post(short_hold_client, event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                                       order_id=order["order_id"], amount=order["total"] + 1))
    deliver()
    assert short_hold_client.get(f"/orders/{order['order_id']}").get_json()["status"] == "needs_review"

    assert expire_reservations(sessions) == 0

    assert short_hold_client.get(f"/orders/{order['order_id']}").get_json()["status"] == "needs_review"
    stock = short_hold_client.get("/products/TEA-01").get_json()
    assert (stock["on_hand"], stock["reserved"]) == (40, 2)


@pytest.mark.parametrize("stored_as", ["received", "retrying", "dead"])
def test_expiry_keeps_the_hold_of_an_order_whose_payment_is_stored_but_not_yet_applied(
        short_hold_client, sessions, deliver, stored_as):
    from sqlalchemy import update

    from models.events import EventStatus, InboxEvent

    order = _checkout(short_hold_client)
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    event = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"], amount=order["total"])
    _post(short_hold_client, event)  # stored; no worker has run it yet (a backlog, a broker outage)
    if stored_as != "received":
        with sessions() as session:
            session.execute(update(InboxEvent).where(InboxEvent.event_id == event["id"])
                            .values(status=EventStatus(stored_as)))
            session.commit()

    assert expire_reservations(sessions) == 0

    assert short_hold_client.get(f"/orders/{order['order_id']}").get_json()["status"] == "pending_payment"
    stock = short_hold_client.get("/products/TEA-01").get_json()
    assert (stock["on_hand"], stock["reserved"]) == (40, 2)
    with sessions() as session:
        assert session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.PAYMENT_CANCEL)).all() == []
    if stored_as == "received":
        deliver()
        assert short_hold_client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
        stock = short_hold_client.get("/products/TEA-01").get_json()
        assert (stock["on_hand"], stock["reserved"]) == (38, 0)
