"""A payment stored but not yet applied keeps its order's hold: the customer paid in time.

On whichever intent the order held when it was paid (the one it holds now, or one the pay step
replaced since), the relay's expiry sweep leaves its units held, and staff cancel is refused, in
the CLI and the console, until the payment is applied. Everything goes through the real paths:
checkout, the pay step's replacement, localstripe for the money, Stripe's event stored by the
webhook endpoint, the relay's sweep, the staff verbs and the console's forms.
"""
from __future__ import annotations

import pytest
import stripe
from alembic import command
from click.testing import CliRunner
from sqlalchemy import event as sa_event, select, update

from consumers.checkout import attach, replace_payment_intent
from consumers.relay import expire_reservations
from consumers.staff_actions import accept_order
from models.db import transaction
from models.events import EventStatus, InboxEvent, OutboxMessage, Topic
from models.history import StaffAction
from models.migrations import alembic_config
from models.orders import OrderPaymentIntent
from tests.integration.test_admin_pages import EMAIL, flashes, logged_in, page, post
from tests.support import confirm_card, event_for, let_the_hold_run_out
from webhook_app.cli import shop

CARD = "4242424242424242"


def _run(settings, *args):
    return CliRunner().invoke(shop, list(args), env={"DATABASE_URL": settings.database_url,
                                                     "STRIPE_API_BASE": settings.stripe_api_base,
                                                     "LOG_FORMAT": "console", "SHOP_STAFF": None})


def _replaced(sessions, settings, placed) -> str:
    """The pay step gave the order a new intent (Stripe would not confirm the first one again); the new id.
    The first one's cancellation at Stripe is only queued: the buyer can still complete it in another tab."""
    second = replace_payment_intent(sessions, settings, placed["order_id"], placed["payment_intent_id"],
                                    "requires_action")
    assert second != placed["payment_intent_id"]
    return second


def _paid_and_stored(post_event, sessions, placed, intent_id, stored_as="received") -> dict:
    """Money taken on `intent_id` at localstripe, and Stripe's succeeded event stored by the endpoint; no
    worker has applied it (a backlog, a broker outage; `retrying`, `dead`: its handler failed meanwhile)."""
    assert confirm_card(intent_id, CARD) == "succeeded"
    event = event_for("localstripe_payment_intent.succeeded", intent_id=intent_id, order_id=placed["order_id"],
                      amount=placed["total"])
    assert post_event(event).status_code == 200
    if stored_as != "received":
        with transaction(sessions) as session:
            session.execute(update(InboxEvent).where(InboxEvent.event_id == event["id"])
                            .values(status=EventStatus(stored_as)))
    return event


def _cups(client) -> tuple[int, int]:
    body = client.get("/products/CUP-01").get_json()
    return body["on_hand"], body["reserved"]


def _status(client, order_id) -> str:
    return client.get(f"/orders/{order_id}").get_json()["status"]


def _cancels_queued(sessions) -> list[str]:
    with sessions() as session:
        return [m.body.get("payment_intent_id") for m in session.scalars(
            select(OutboxMessage).where(OutboxMessage.topic == Topic.PAYMENT_CANCEL).order_by(OutboxMessage.id))]


def _later_buyer_puts_the_cups_in_a_cart(client):
    cart = client.post("/carts").get_json()
    return client.post(f"/carts/{cart['id']}/items", json={"sku": "CUP-01", "quantity": 3})


# --- the expiry sweep ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stored_as", ["received", "retrying", "dead"])
def test_the_sweep_keeps_the_hold_of_an_order_paid_in_time_on_the_intent_it_held_before(
        client, sessions, settings, checkout, post_event, deliver, stored_as):
    placed = checkout([("CUP-01", 3)])  # the last three cups
    first, order_id = placed["payment_intent_id"], placed["order_id"]
    second = _replaced(sessions, settings, placed)
    _paid_and_stored(post_event, sessions, placed, first, stored_as)  # the other tab completed the first
    let_the_hold_run_out(sessions, order_id)

    assert expire_reservations(sessions) == 0

    assert (_status(client, order_id), _cups(client)) == ("pending_payment", (3, 3))
    assert _cancels_queued(sessions) == [first]  # the replacement's; the intent it holds stays payable
    if stored_as != "received":
        return
    # The payment is applied: on an intent the order no longer holds, so a person decides; the units
    # are still held for it, so nobody else can buy them meanwhile, and accept ships them.
    deliver()
    assert _status(client, order_id) == "needs_review"
    assert _later_buyer_puts_the_cups_in_a_cart(client).get_json()["error"]["code"] == "out_of_stock"
    decision = accept_order(sessions, order_id, actor="hana", note="paid in time in the other tab")
    assert (decision.status_after, _cups(client)) == ("paid", (0, 0))
    assert _cancels_queued(sessions) == [first, second]  # accept stops payments on the one it holds


def test_a_payment_stored_while_the_sweep_looks_keeps_the_hold_it_decides_on_under_the_orders_lock(
        client, sessions, settings, checkout, post_event):
    placed = checkout([("CUP-01", 3)])
    first, order_id = placed["payment_intent_id"], placed["order_id"]
    _replaced(sessions, settings, placed)
    assert confirm_card(first, CARD) == "succeeded"
    let_the_hold_run_out(sessions, order_id)
    event = event_for("localstripe_payment_intent.succeeded", intent_id=first, order_id=order_id,
                      amount=placed["total"])
    stored = []

    def store_after_the_look_up(session, transaction):
        # Stripe's event arrives once the sweep has looked up the lapsed holds, before it locks the
        # order (on SQLite, once the look-up's transaction has ended: it holds the one writer's turn).
        if not stored and transaction.parent is None:
            stored.append(post_event(event).status_code)

    sa_event.listen(sessions, "after_transaction_end", store_after_the_look_up)
    try:
        expired = expire_reservations(sessions)
    finally:
        sa_event.remove(sessions, "after_transaction_end", store_after_the_look_up)

    assert stored == [200]
    assert (expired, _status(client, order_id), _cups(client)) == (0, "pending_payment", (3, 3))


def test_the_sweep_keeps_the_hold_of_an_order_paid_on_an_intent_checkout_created_for_it_that_lost_the_race(
        client, sessions, checkout, post_event):
    """A checkout retried once Stripe had forgotten its idempotency key gets a second intent for the same
    order; the first request attached its own, and the second's cancellation is only queued."""
    placed = checkout([("CUP-01", 3)])
    order_id = placed["order_id"]
    other = stripe.PaymentIntent.create(amount=placed["total"], currency="jpy", metadata={"order_id": order_id},
                                        payment_method_types=["card"])
    assert attach(sessions, order_id, other).payment_intent_id == placed["payment_intent_id"]
    _paid_and_stored(post_event, sessions, placed, other.id)
    let_the_hold_run_out(sessions, order_id)

    assert expire_reservations(sessions) == 0

    assert (_status(client, order_id), _cups(client)) == ("pending_payment", (3, 3))


def test_the_sweeps_look_up_of_stored_payments_is_answered_by_indexes(client, sessions, settings, checkout):
    """It runs every relay loop: per lapsed order, the intents it held (their table's primary key), then
    each one's events (the inbox's object_id index), never a scan of the inbox or of every intent."""
    placed = checkout([("CUP-01", 3)])
    let_the_hold_run_out(sessions, placed["order_id"])
    engine, looked_up = sessions.kw["bind"], []

    def keep(conn, cursor, statement, parameters, context, executemany):
        if not looked_up and "reservations" in statement and "DISTINCT" in statement.upper():
            looked_up.append((statement, parameters))

    sa_event.listen(engine, "before_cursor_execute", keep)
    try:
        expire_reservations(sessions)
    finally:
        sa_event.remove(engine, "before_cursor_execute", keep)
    [(statement, parameters)] = looked_up
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET enable_seqscan = off")  # the tables are all but empty
            plan = " ".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters))
            held = "pk_order_payment_intents"
        else:
            plan = " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                                                          parameters))
            held = "sqlite_autoindex_order_payment_intents_1"
    assert held in plan and "ix_inbox_events_object_id" in plan, plan
    assert "SCAN inbox_events" not in plan and "Seq Scan on inbox_events" not in plan, plan


def test_0013_records_the_intents_orders_held_before_it_and_its_downgrade_drops_them(
        database_url, client, sessions, settings, checkout, post_event):
    """Upgraded while a buyer's order waits with a replaced intent, its old intent is known at once (the
    order's history names it), so the sweep keeps the hold of a payment stored on it."""
    replaced = checkout([("CUP-01", 3)])
    second = _replaced(sessions, settings, replaced)
    plain = checkout([("TEA-01", 1)])
    command.downgrade(alembic_config(database_url), "0012")
    command.upgrade(alembic_config(database_url), "head")

    with sessions() as session:
        held = set(session.execute(select(OrderPaymentIntent.order_id, OrderPaymentIntent.payment_intent_id)))
    assert held == {(replaced["order_id"], replaced["payment_intent_id"]), (replaced["order_id"], second),
                    (plain["order_id"], plain["payment_intent_id"])}
    _paid_and_stored(post_event, sessions, replaced, replaced["payment_intent_id"])
    let_the_hold_run_out(sessions, replaced["order_id"])
    assert expire_reservations(sessions) == 0
    assert (_status(client, replaced["order_id"]), _cups(client)) == ("pending_payment", (3, 3))


# --- staff cancel --------------------------------------------------------------------------------------

@pytest.mark.parametrize("paid_on", ["its own intent", "the intent it held before"])
def test_cancel_is_refused_and_audited_while_a_payment_of_the_order_is_stored_and_not_yet_applied(
        client, sessions, settings, checkout, post_event, deliver, paid_on):
    placed = checkout([("CUP-01", 3)])
    order_id, intent = placed["order_id"], placed["payment_intent_id"]
    held = _replaced(sessions, settings, placed) if paid_on == "the intent it held before" else intent
    event = _paid_and_stored(post_event, sessions, placed, intent)
    cancels_before = _cancels_queued(sessions)

    for refund in ([], ["--refund"]):
        refused = _run(settings, "orders", "cancel", order_id, "--note", "customer phoned to cancel", "--as", "hana",
                       *refund)
        assert refused.exit_code == 1, refused.output
        assert (f"a payment for this order is stored and not yet applied (event {event['id']}, status received): "
                f"retry or replay it first, then decide") in refused.output

    assert (_status(client, order_id), _cups(client)) == ("pending_payment", (3, 3))
    assert _cancels_queued(sessions) == cancels_before  # the intent it holds is not cancelled at Stripe
    with sessions() as session:
        rows = [(a.actor, a.action, a.status_before, a.status_after, a.detail) for a in session.scalars(
            select(StaffAction).where(StaffAction.order_id == order_id).order_by(StaffAction.id))]
    assert len(rows) == 2 and all(row[:4] == ("hana", "cancel", "pending_payment", "pending_payment")
                                  and row[4].startswith("refused: a payment for this order is stored")
                                  and event["id"] in row[4] for row in rows), rows

    deliver()  # the worker catches up: the payment is applied to the units still held for it
    if paid_on == "its own intent":
        assert (_status(client, order_id), _cups(client)) == ("paid", (0, 0))
    else:
        assert (_status(client, order_id), _cups(client)) == ("needs_review", (3, 3))
        assert stripe.PaymentIntent.retrieve(held).status != "succeeded"


def test_the_console_says_a_stored_payment_waits_and_offers_no_cancel_that_would_be_refused(
        client, sessions, checkout, post_event):
    staff = logged_in(client, sessions)
    placed = checkout([("CUP-01", 3)])
    order_id = placed["order_id"]
    event = _paid_and_stored(post_event, sessions, placed, placed["payment_intent_id"], "dead")
    waits = f"a payment for this order is stored and not yet applied (event {event['id']}, status dead)"

    confirm = page(staff, f"/admin/orders/{order_id}/cancel")
    assert waits in confirm and "none was taken" not in confirm
    assert "cannot be cancelled as it is now" in confirm
    assert 'id="decide-cancel"' not in page(staff, f"/admin/orders/{order_id}")
    assert f"/admin/orders/{order_id}/cancel" not in page(staff, "/admin/orders?status=pending_payment")

    response = post(staff, f"/admin/orders/{order_id}/cancel", note="customer asked")
    assert (response.status_code, response.headers["Location"]) == (303, f"/admin/orders/{order_id}")
    assert any(m.startswith("Not done: ") and waits in m for m in flashes(page(staff, f"/admin/orders/{order_id}")))
    assert (_status(client, order_id), _cups(client)) == ("pending_payment", (3, 3))
    with sessions() as session:
        [action] = session.scalars(select(StaffAction).where(StaffAction.action == "cancel")).all()
    assert (action.actor, action.detail.startswith(f"refused: {waits}")) == (EMAIL, True)
