"""Three leftovers on the money path, each through the real paths (checkout, localstripe, the webhook endpoint,
the worker, the relay's sweep, the `shop` staff verbs), on both databases.

- A dispute on an intent the order records (order_payment_intents) but whose payment_intent.succeeded never
  reached the service is about that order: it is flagged once, saying the payment was never received, and
  the money the order holds is left as it is.
- A dispute lost while its payment was set aside (resolved by hand) takes nothing from the order; once staff
  reopen that payment and apply it, the order counts the payment and the lost amount comes off it.
- Migration 0014 indexes order_payment_intents by intent, and the dispute handler's look-up uses it.
- Staff accepting a late payment of an expired order leave alone the cart the sweep reopened for the buyer.
"""
from __future__ import annotations

from alembic import command
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from consumers.checkout import replace_payment_intent
from consumers.relay import expire_reservations
from consumers.staff_actions import accept_order
from models.carts import Cart, CartStatus
from models.db import make_engine
from models.events import EventStatus
from models.migrations import alembic_config
from models.orders import OrderPaymentIntent
from models.refunds import Dispute
from tests.integration.test_dispute_after_resolved_payment import _dead_and_resolved, _dispute_alerts, _run
from tests.integration.test_dispute_before_its_payment import _inbox, _message_of, _on_the_stray_intent
from tests.integration.test_migrations import _differences, _indexes, _is_0015s, _is_0017s
from tests.integration.test_out_of_order_money_events import (  # noqa: F401  (fixtures)
    DISPUTE, _paid_on_a_second_tab)
from tests.integration.test_refunds_and_disputes import (  # noqa: F401  (fixtures)
    alerts, order_row, paid_order)
from tests.support import SHIPPING, confirm_card, event_for, let_the_hold_run_out

CARD = "4242424242424242"


# --- 1. a dispute on a recorded intent whose payment never arrived ---------------------------------------------

def _never_received(intent: str) -> str:
    return (f"no payment on payment intent {intent}, which the order records, has reached the service (its "
            f"payment_intent.succeeded was never received: shop reconcile fetches it), so the money the order "
            f"holds is left as it is")


def test_a_dispute_on_a_recorded_intent_whose_payment_never_arrived_flags_the_order_once(
        client, settings, sessions, checkout, post_event, deliver):
    """It was ignored as no order of ours: a chargeback on our customer's money that no person heard of."""
    placed = checkout()
    first = placed["payment_intent_id"]
    # The pay step gave the order a new intent; the buyer completed the first one in another tab meanwhile.
    second = replace_payment_intent(sessions, settings, placed["order_id"], first, "requires_action")
    assert confirm_card(first, CARD) == "succeeded"  # before its cancellation reached Stripe; its event is lost
    assert confirm_card(second, CARD) == "succeeded"
    assert post_event(event_for("localstripe_payment_intent.succeeded", intent_id=second,
                                order_id=placed["order_id"], amount=placed["total"])).status_code == 200
    deliver()
    assert order_row(sessions, placed).status.value == "paid"
    with sessions() as session:
        assert set(session.scalars(select(OrderPaymentIntent.payment_intent_id).where(
            OrderPaymentIntent.order_id == placed["order_id"]))) == {first, second}

    order = {**placed, "payment_intent_id": second}
    opened = _on_the_stray_intent("created", order, first, "needs_response")
    assert post_event(opened).status_code == 200
    deliver()

    stored = _inbox(sessions, opened)
    assert (stored.status, stored.order_id) == (EventStatus.PROCESSED, placed["order_id"]), stored.outcome
    row = order_row(sessions, placed)
    said = f"dispute {DISPUTE} opened (fraudulent): {placed['total']} jpy contested; {_never_received(first)}"
    assert row.status.value == "needs_review" and row.review_reason == said
    assert (row.paid_amount, row.charged_back_amount, row.money_held) == (placed["total"], 0, placed["total"])
    assert _dispute_alerts(sessions) == [f"Order {placed['order_id']} needs review: {said}"]

    # Stripe delivers the opening again, then decides it: recorded on the order, told once for the opening.
    for event in (opened, _on_the_stray_intent("closed", order, first, "lost")):
        assert post_event(event).status_code == 200
        deliver()
        assert _inbox(sessions, event).status is EventStatus.PROCESSED
    with sessions() as session:
        [dispute] = session.scalars(select(Dispute)).all()
        assert (dispute.order_id, dispute.payment_intent_id, dispute.status) == (placed["order_id"], first, "lost")
    row = order_row(sessions, placed)
    assert (row.charged_back_amount, row.money_held) == (0, placed["total"])  # that payment never counted
    assert len([text for text in _dispute_alerts(sessions) if "opened" in text]) == 1


INTENT_INDEX = "ix_order_payment_intents_payment_intent_id"


def test_0014_indexes_the_recorded_intents_by_intent_and_its_downgrade_drops_the_index(database_url):
    assert INTENT_INDEX in _indexes(database_url, "order_payment_intents")
    command.downgrade(alembic_config(database_url), "0013")
    assert INTENT_INDEX not in _indexes(database_url, "order_payment_intents")
    assert [(diff[0], diff[1].name) for diff in _differences(database_url)
            if not _is_0015s(diff) and not _is_0017s(diff)] == [
        ("add_index", INTENT_INDEX)]
    command.upgrade(alembic_config(database_url), "head")
    assert _differences(database_url) == []


def test_the_look_up_of_the_order_recording_an_intent_uses_the_index(database_url):
    """The dispute handler's look-up (models.orders.order_recording), as it is sent: by the index, not by
    reading every order's intents."""
    engine = make_engine(database_url)
    dialect = postgresql.dialect() if engine.dialect.name == "postgresql" else sqlite.dialect()
    query = str(select(OrderPaymentIntent.order_id).where(OrderPaymentIntent.payment_intent_id == "pi_1")
                .order_by(OrderPaymentIntent.order_id).limit(1)
                .compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql("SET enable_seqscan = off")  # the table is empty
                plan = " ".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {query}"))
            else:
                plan = " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
    finally:
        engine.dispose()
    assert INTENT_INDEX in plan, (query, plan)


# --- 2. a lost dispute, then its payment reopened and applied by staff ----------------------------------------

def _lost_behind_a_resolved_payment(settings, sessions, post_event, deliver, order: dict) -> tuple[str, dict]:
    stray = _paid_on_a_second_tab(order)
    payment = _dead_and_resolved(settings, sessions, post_event, deliver, order, stray)
    for event in (_on_the_stray_intent("created", order, stray, "needs_response"),
                  _on_the_stray_intent("closed", order, stray, "lost")):
        assert post_event(event).status_code == 200
        deliver()
    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.charged_back_amount) == ("needs_review", order["total"], 0)
    reopened = _run(settings, "dlq", "reopen", str(_message_of(sessions, payment).id), "--note",
                    "the second payment was not refunded after all", "--as", "hana")
    assert reopened.exit_code == 0, reopened.output
    return stray, payment


def test_a_payment_staff_reopen_and_replay_after_its_dispute_was_lost_counts_the_chargeback(
        settings, sessions, paid_order, post_event, deliver):
    """The replay counted the second payment and not the chargeback that took it back: the order claimed to
    hold twice its total, of which the card network had given half back to the customer."""
    order = paid_order()
    stray, payment = _lost_behind_a_resolved_payment(settings, sessions, post_event, deliver, order)

    replayed = _run(settings, "events", "replay", payment["id"], "--as", "hana")
    assert replayed.exit_code == 0, replayed.output

    assert _inbox(sessions, payment).status is EventStatus.PROCESSED
    row = order_row(sessions, order)
    assert (row.paid_amount, row.charged_back_amount, row.money_held) == (
        2 * order["total"], order["total"], order["total"])
    # Replayed again, nothing is counted twice.
    again = _run(settings, "events", "replay", payment["id"], "--as", "hana")
    assert again.exit_code == 0, again.output
    row = order_row(sessions, order)
    assert (row.paid_amount, row.charged_back_amount, row.money_held) == (
        2 * order["total"], order["total"], order["total"])


def test_staff_accepting_a_payment_retried_after_its_dispute_was_lost_keep_what_the_order_holds(
        settings, sessions, paid_order, post_event, deliver):
    """Re-driven through the worker instead, the payment is applied there; staff's accept then counted the
    second payment and not the chargeback."""
    order = paid_order()
    stray, payment = _lost_behind_a_resolved_payment(settings, sessions, post_event, deliver, order)
    retried = _run(settings, "dlq", "retry", str(_message_of(sessions, payment).id), "--as", "hana")
    assert retried.exit_code == 0, retried.output
    deliver()
    assert _inbox(sessions, payment).status is EventStatus.PROCESSED
    assert order_row(sessions, order).status.value == "needs_review"

    accepted = _run(settings, "orders", "accept", order["order_id"], "--note", "keep it", "--as", "hana")
    assert accepted.exit_code == 0, accepted.output
    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.charged_back_amount, row.money_held) == (
        "paid", 2 * order["total"], order["total"], order["total"])


# --- 3. staff accept a late payment while the buyer uses the reopened cart ------------------------------------

def _expired_then_paid_late(client, sessions, checkout, post_event, deliver) -> tuple[dict, str]:
    """The order's hold ran out (the sweep cancelled it and reopened its cart), then its payment arrived:
    flagged for a person. Returns the order and its cart's id."""
    placed = checkout([("TEA-01", 2)])
    cart_id = order_row(sessions, placed).cart_id
    let_the_hold_run_out(sessions, placed["order_id"])
    assert expire_reservations(sessions) == 1
    assert client.get(f"/carts/{cart_id}").get_json()["status"] == "open"
    assert confirm_card(placed["payment_intent_id"], CARD) == "succeeded"
    assert post_event(event_for("localstripe_payment_intent.succeeded", intent_id=placed["payment_intent_id"],
                                order_id=placed["order_id"], amount=placed["total"])).status_code == 200
    return placed, cart_id


def _cart(sessions, cart_id: str) -> Cart:
    with sessions() as session:
        return session.get(Cart, cart_id)


def test_accepting_a_late_payment_leaves_the_reopened_cart_the_buyer_fills_again(
        client, sessions, checkout, post_event, deliver):
    placed, cart_id = _expired_then_paid_late(client, sessions, checkout, post_event, deliver)
    added = client.post(f"/carts/{cart_id}/items", json={"sku": "CUP-01", "quantity": 1})  # the buyer is back
    assert added.status_code == 200, added.get_json()
    deliver()
    assert order_row(sessions, placed).status.value == "needs_review"

    decision = accept_order(sessions, placed["order_id"], actor="hana", note="paid in time at the bank")

    assert order_row(sessions, placed).status.value == "paid"
    body = client.get(f"/carts/{cart_id}").get_json()
    assert body.get("status") == "open", body
    assert {item["sku"]: item["quantity"] for item in body["items"]} == {"TEA-01": 2, "CUP-01": 1}
    more = client.post(f"/carts/{cart_id}/items", json={"sku": "CUP-01", "quantity": 1})
    assert more.status_code == 200, more.get_json()
    assert f"cart {cart_id} left to the buyer (open again since the order's hold ran out)" in decision.detail


def test_accepting_a_late_payment_leaves_the_cart_checked_out_again_into_a_new_order(
        client, sessions, checkout, post_event, deliver):
    placed, cart_id = _expired_then_paid_late(client, sessions, checkout, post_event, deliver)
    again = client.post("/checkout", json={"cart_id": cart_id, "email": "buyer@example.com", "shipping": SHIPPING})
    assert again.status_code == 201, again.get_json()
    deliver()
    assert order_row(sessions, placed).status.value == "needs_review"

    accept_order(sessions, placed["order_id"], actor="hana", note="paid in time at the bank")

    cart = _cart(sessions, cart_id)
    assert (cart.status, cart.deleted_at) == (CartStatus.CHECKED_OUT, None)
    # The new checkout is paid as ever, and only then is the cart done with.
    new = again.get_json()
    assert confirm_card(new["payment_intent_id"], CARD) == "succeeded"
    assert post_event(event_for("localstripe_payment_intent.succeeded", intent_id=new["payment_intent_id"],
                                order_id=new["order_id"], amount=new["total"])).status_code == 200
    deliver()
    assert client.get(f"/orders/{new['order_id']}").get_json()["status"] == "paid"
    assert _cart(sessions, cart_id).deleted_at is not None


def test_accepting_a_late_payment_still_closes_a_cart_no_one_reopened(
        client, sessions, checkout, post_event, deliver):
    """The order in review before its hold ran out (paid on another tab's intent): its cart is still its own."""
    placed = checkout([("TEA-01", 2)])
    cart_id = order_row(sessions, placed).cart_id
    stray = _paid_on_a_second_tab(placed)
    assert post_event(event_for("localstripe_payment_intent.succeeded", intent_id=stray,
                                order_id=placed["order_id"], amount=placed["total"])).status_code == 200
    deliver()
    assert order_row(sessions, placed).status.value == "needs_review"

    accept_order(sessions, placed["order_id"], actor="hana", note="keep the second tab's payment")

    assert _cart(sessions, cart_id).deleted_at is not None
