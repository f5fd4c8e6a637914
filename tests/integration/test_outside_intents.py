"""A PaymentIntent made outside the service (Stripe's dashboard, the shop's other code) for one of our orders.

Its metadata.order_id names the order, but checkout never recorded it in order_payment_intents. From the
first time a worker handles one of its events and finds the order by that metadata, it is the order's, even
when that handling fails (Stripe unreachable) and is retried or dead-lettered: a payment on it stored and not
yet applied keeps the order's hold, so the units are not sold twice. Everything goes through the real paths:
checkout, localstripe for the money, Stripe's event through the webhook endpoint, the worker, the relay's sweep.
"""
from __future__ import annotations

import pytest
import stripe
from click.testing import CliRunner
from sqlalchemy import event as sa_event, select

from consumers.relay import expire_reservations
from models.events import EventStatus, InboxEvent, OutboxMessage
from models.orders import OrderPaymentIntent
from tests.support import confirm_card, event_for, let_the_hold_run_out, stripe_unreachable
from webhook_app.cli import shop

CARD = "4242424242424242"


def _made_outside(placed: dict) -> str:
    """An intent for the order made in Stripe's dashboard: its metadata names the order, nothing recorded it."""
    intent = stripe.PaymentIntent.create(amount=placed["total"], currency="jpy",
                                         metadata={"order_id": placed["order_id"]})
    return intent.id


def _paid(post_event, placed: dict, intent_id: str, kind: str = "localstripe_payment_intent.succeeded") -> dict:
    assert confirm_card(intent_id, CARD) == "succeeded"
    event = event_for(kind, intent_id=intent_id, order_id=placed["order_id"], amount=placed["total"])
    assert post_event(event).status_code == 200
    return event


def _inbox(sessions, event: dict) -> InboxEvent:
    with sessions() as session:
        return session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()


def _intents_of(sessions, order_id: str) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(OrderPaymentIntent.payment_intent_id)
                                   .where(OrderPaymentIntent.order_id == order_id)))


def _cups(client) -> tuple[int, int]:
    body = client.get("/products/CUP-01").get_json()
    return body["on_hand"], body["reserved"]


def _status(client, order_id: str) -> str:
    return client.get(f"/orders/{order_id}").get_json()["status"]


def _run(settings, *args):
    return CliRunner().invoke(shop, list(args), env={"DATABASE_URL": settings.database_url,
                                                     "STRIPE_API_BASE": settings.stripe_api_base,
                                                     "LOG_FORMAT": "console", "SHOP_STAFF": None})


@pytest.mark.parametrize("stored_as", ["retrying", "dead"])
def test_a_payment_on_an_intent_made_outside_keeps_the_hold_while_its_handling_fails(
        client, sessions, settings, checkout, post_event, deliver, stored_as):
    """The intent was never recorded: the sweep did not see the stored payment, and the last three cups went
    back on sale while the customer's money waited to be applied."""
    placed = checkout([("CUP-01", 3)])  # the last three cups
    order_id = placed["order_id"]
    outside = _made_outside(placed)
    assert _intents_of(sessions, order_id) == {placed["payment_intent_id"]}
    payment = _paid(post_event, placed, outside)

    with stripe_unreachable():  # linking the intent asks Stripe for its refunds: the handling fails
        deliver(max_rounds=1 if stored_as == "retrying" else 20)
    stored = _inbox(sessions, payment)
    assert stored.status is EventStatus(stored_as), stored.last_error
    # The link the failed handling found was kept, in a transaction of its own.
    assert _intents_of(sessions, order_id) == {placed["payment_intent_id"], outside}

    let_the_hold_run_out(sessions, order_id)
    assert expire_reservations(sessions) == 0
    assert (_status(client, order_id), _cups(client)) == ("pending_payment", (3, 3))
    cart = client.post("/carts").get_json()
    refused = client.post(f"/carts/{cart['id']}/items", json={"sku": "CUP-01", "quantity": 3})
    assert refused.get_json()["error"]["code"] == "out_of_stock"

    # Stripe answers again: the payment is applied (retried, or re-driven by staff) to the units still held.
    if stored_as == "dead":
        with sessions() as session:
            message_id = session.scalars(select(OutboxMessage.id).where(
                OutboxMessage.inbox_event_id == stored.id)).one()
        retried = _run(settings, "dlq", "retry", str(message_id), "--as", "alice")
        assert retried.exit_code == 0, retried.output
    deliver()
    assert _inbox(sessions, payment).status is EventStatus.PROCESSED
    body = client.get(f"/orders/{order_id}?token={placed['access_token']}").get_json()
    assert body["status"] == "needs_review"  # paid on an intent the order does not hold: a person decides
    assert f"on payment intent {outside}, but the order holds {placed['payment_intent_id']}" in body["review_reason"]
    assert _cups(client) == (3, 3)
    assert _intents_of(sessions, order_id) == {placed["payment_intent_id"], outside}


def test_an_outside_intent_is_the_orders_from_its_first_event_that_is_handled(
        client, sessions, checkout, post_event, deliver):
    """A decline on it (handled without a fault) links it too: the payment on it that follows, stored while
    the workers are behind, keeps the order's hold."""
    placed = checkout([("CUP-01", 3)])
    order_id = placed["order_id"]
    outside = _made_outside(placed)
    failed = event_for("localstripe_payment_intent.payment_failed", intent_id=outside, order_id=order_id,
                       amount=placed["total"])
    assert post_event(failed).status_code == 200
    deliver()
    assert _inbox(sessions, failed).status is EventStatus.IGNORED  # not the intent the order holds
    assert _intents_of(sessions, order_id) == {placed["payment_intent_id"], outside}

    _paid(post_event, placed, outside)  # no worker has run it yet
    let_the_hold_run_out(sessions, order_id)
    assert expire_reservations(sessions) == 0
    assert (_status(client, order_id), _cups(client)) == ("pending_payment", (3, 3))


def test_an_event_for_an_order_we_do_not_have_links_nothing(client, sessions, checkout, post_event, deliver):
    placed = checkout([("CUP-01", 3)])
    stranger = stripe.PaymentIntent.create(amount=placed["total"], currency="jpy",
                                           metadata={"order_id": "ord_NotOneOfOurs"}).id
    payment = _paid(post_event, {**placed, "order_id": "ord_NotOneOfOurs"}, stranger)
    deliver()
    assert _inbox(sessions, payment).status is EventStatus.IGNORED
    with sessions() as session:
        assert session.scalars(select(OrderPaymentIntent.payment_intent_id)
                               .where(OrderPaymentIntent.payment_intent_id == stranger)).all() == []


def test_an_ordinary_payment_writes_nothing_to_the_intents_table(client, sessions, checkout, post_event, deliver):
    """The link is written only for an intent found by its metadata, never on the worker's ordinary path."""
    placed = checkout([("CUP-01", 3)])
    _paid(post_event, placed, placed["payment_intent_id"])
    engine, statements = sessions.kw["bind"], []

    def keep(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    # The worker makes its own engine on the same database: listen on every engine's connections.
    sa_event.listen(type(engine), "before_cursor_execute", keep)
    try:
        deliver()
    finally:
        sa_event.remove(type(engine), "before_cursor_execute", keep)
    assert _status(client, placed["order_id"]) == "paid"
    assert any("UPDATE orders" in statement for statement in statements)  # the listener saw the worker's work
    assert not [statement for statement in statements if "order_payment_intents" in statement]
