"""A lost dispute is counted where its payment is applied, and never takes more than the order holds.

- A dispute lost on the intent an order holds, whose payment was never applied (dead-lettered and waiting, or
  resolved by hand by staff), takes nothing from the order: `money_held` never goes below zero.
- When staff reopen such a payment and `shop dlq retry` it, the worker that applies it counts the chargeback
  at once: the order page and `shop orders show` never show money the card network took back.
- An ordinary payment (the worker's batch, or one by one) does not look disputes up: not one statement more.

Real worker, localstripe, the webhook endpoint and the `shop` verbs, on both databases.
"""
from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus
from tests.conftest import deliver_with
from tests.integration.test_dispute_after_resolved_payment import NOTE, _dispute_alerts, _run
from tests.integration.test_dispute_before_its_payment import _inbox
from tests.integration.test_money_path_leftovers import _lost_behind_a_resolved_payment
from tests.integration.test_out_of_order_money_events import (  # noqa: F401  (fixtures)
    DISPUTE, _charge_of)
from tests.integration.test_refunds_and_disputes import (  # noqa: F401  (fixtures)
    alerts, dispute_event, order_row, paid_order)
from tests.support import confirm_card, event_for

CARD = "4242424242424242"


def _message_id(sessions, event: dict) -> int:
    with sessions() as session:
        return session.scalars(select(OutboxMessage.id).join(InboxEvent, OutboxMessage.inbox_event_id == InboxEvent.id)
                               .where(InboxEvent.event_id == event["id"])).one()


def _paid_and_dead_lettered(settings, sessions, checkout, post_event, deliver) -> tuple[dict, dict]:
    """Paid at localstripe on the intent the order holds; its succeeded event dead-lettered (the handler's
    table away for every attempt): the order holds the intent and counted nothing on it."""
    order = checkout([("TEA-01", 2)])
    assert confirm_card(order["payment_intent_id"], CARD) == "succeeded"
    payment = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                        order_id=order["order_id"], amount=order["total"])
    with sessions.kw["bind"].begin() as conn:
        conn.execute(text("ALTER TABLE shipments RENAME TO shipments_away"))
    try:
        assert post_event(payment).status_code == 200
        for _ in range(settings.max_attempts):
            deliver(max_rounds=1)
    finally:
        with sessions.kw["bind"].begin() as conn:
            conn.execute(text("ALTER TABLE shipments_away RENAME TO shipments"))
    assert _inbox(sessions, payment).status is EventStatus.DEAD
    row = order_row(sessions, order)
    assert (row.status.value, row.payment_intent_id, row.paid_amount) == (
        "pending_payment", order["payment_intent_id"], 0)
    return order, payment


def _lost_on_the_held_intent(sessions, post_event, deliver, order: dict) -> None:
    charge = _charge_of(order)
    for kind, status in (("created", "needs_response"), ("closed", "lost")):
        event = dispute_event(kind, order, charge, status)
        assert post_event(event).status_code == 200
        deliver()
        assert _inbox(sessions, event).status is EventStatus.PROCESSED, _inbox(sessions, event).outcome


# --- a dispute lost on the held intent whose payment was never applied --------------------------------------

@pytest.mark.parametrize("payment_is", ["resolved by hand", "dead-lettered"])
def test_a_dispute_lost_on_the_held_intent_whose_payment_was_never_applied_takes_nothing_from_the_order(
        settings, sessions, checkout, post_event, deliver, payment_is):
    """The held intent was counted whatever became of its payment: the order held less than nothing."""
    order, payment = _paid_and_dead_lettered(settings, sessions, checkout, post_event, deliver)
    if payment_is == "resolved by hand":
        resolved = _run(settings, "dlq", "resolve", str(_message_id(sessions, payment)), "--note", NOTE,
                        "--as", "hana")
        assert resolved.exit_code == 0, resolved.output
        why = (f"the payment on payment intent {order['payment_intent_id']} (event {payment['id']}) was resolved "
               f"by hand and never applied to this order (resolved by staff: {NOTE})")
    else:
        why = (f"the payment on payment intent {order['payment_intent_id']} (event {payment['id']}, status dead) "
               f"is stored but not yet applied to this order")

    _lost_on_the_held_intent(sessions, post_event, deliver, order)

    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.charged_back_amount, row.money_held) == ("needs_review", 0, 0, 0)
    said = (f"dispute {DISPUTE} opened (fraudulent): {order['total']} jpy contested; {why}, so the money the "
            f"order holds is left as it is")
    assert row.review_reason == said
    assert _dispute_alerts(sessions)[0] == f"Order {order['order_id']} needs review: {said}"
    shown = _run(settings, "orders", "show", order["order_id"])
    assert shown.exit_code == 0, shown.output
    assert "paid 0, refunded 0\n" in shown.output and "charged back" not in shown.output


# --- the worker applying a reopened payment counts its lost dispute at once ----------------------------------

def _retry(settings, sessions, deliver, payment: dict) -> None:
    retried = _run(settings, "dlq", "retry", str(_message_id(sessions, payment)), "--as", "hana")
    assert retried.exit_code == 0, retried.output
    deliver()
    assert _inbox(sessions, payment).status is EventStatus.PROCESSED


def _shows_charged_back(settings, order: dict, paid: int) -> None:
    shown = _run(settings, "orders", "show", order["order_id"])
    assert shown.exit_code == 0, shown.output
    assert (f"paid {paid}, refunded 0, charged back {order['total']} (a dispute lost)" in shown.output), shown.output


def test_the_worker_applying_a_reopened_second_tab_payment_counts_its_lost_dispute_at_once(
        settings, sessions, paid_order, post_event, deliver):
    """Counted only at staff's next replay, accept or cancel: meanwhile the order claimed twice its total."""
    order = paid_order()
    _, payment = _lost_behind_a_resolved_payment(settings, sessions, post_event, deliver, order)

    _retry(settings, sessions, deliver, payment)

    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.charged_back_amount, row.money_held) == (
        "needs_review", 2 * order["total"], order["total"], order["total"])
    _shows_charged_back(settings, order, 2 * order["total"])
    # Staff's accept settles again from the rows: nothing is counted twice.
    accepted = _run(settings, "orders", "accept", order["order_id"], "--note", "keep it", "--as", "hana")
    assert accepted.exit_code == 0, accepted.output
    row = order_row(sessions, order)
    assert (row.status.value, row.charged_back_amount, row.money_held) == ("paid", order["total"], order["total"])


def test_the_worker_applying_the_held_intents_reopened_payment_counts_its_lost_dispute_at_once(
        settings, sessions, checkout, post_event, deliver):
    order, payment = _paid_and_dead_lettered(settings, sessions, checkout, post_event, deliver)
    resolved = _run(settings, "dlq", "resolve", str(_message_id(sessions, payment)), "--note", NOTE, "--as", "hana")
    assert resolved.exit_code == 0, resolved.output
    _lost_on_the_held_intent(sessions, post_event, deliver, order)
    assert (order_row(sessions, order).charged_back_amount, order_row(sessions, order).money_held) == (0, 0)
    reopened = _run(settings, "dlq", "reopen", str(_message_id(sessions, payment)), "--note",
                    "the payment was not refunded after all", "--as", "hana")
    assert reopened.exit_code == 0, reopened.output

    _retry(settings, sessions, deliver, payment)

    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.charged_back_amount, row.money_held) == (
        "needs_review", order["total"], order["total"], 0)
    _shows_charged_back(settings, order, order["total"])
    # Nothing left to keep: accept refuses, cancel puts the units back.
    accepted = _run(settings, "orders", "accept", order["order_id"], "--note", "keep it", "--as", "hana")
    assert accepted.exit_code == 1 and "holds no money of the customer" in accepted.output, accepted.output
    cancelled = _run(settings, "orders", "cancel", order["order_id"], "--note", "charged back", "--as", "hana")
    assert cancelled.exit_code == 0, cancelled.output
    assert order_row(sessions, order).charged_back_amount == order["total"]


def test_a_dead_lettered_held_payment_retried_after_its_dispute_was_lost_counts_it_at_once(
        settings, sessions, checkout, post_event, deliver):
    """The dispute arrived while the payment was dead-lettered (not resolved): retried, the worker counts both."""
    order, payment = _paid_and_dead_lettered(settings, sessions, checkout, post_event, deliver)
    _lost_on_the_held_intent(sessions, post_event, deliver, order)
    assert order_row(sessions, order).money_held == 0

    _retry(settings, sessions, deliver, payment)

    row = order_row(sessions, order)
    assert (row.paid_amount, row.charged_back_amount, row.money_held) == (order["total"], order["total"], 0)


# --- the ordinary payment pays nothing for it -----------------------------------------------------------------

ORDERS = 6


@pytest.mark.parametrize("path", ["batch", "one by one"])
def test_ordinary_payments_make_no_statement_about_disputes(settings, sessions, checkout, post_event, path):
    """Counted with a before_cursor_execute listener around the worker's delivery of ORDERS ordinary payments,
    through the worker's batch and one message at a time (WORKER_BATCH=1, the handler's own path)."""
    run_with = settings if path == "batch" else dataclasses.replace(settings, worker_batch=1)
    orders = [checkout([("TEA-01", 1)]) for _ in range(ORDERS)]
    for order in orders:
        assert confirm_card(order["payment_intent_id"], CARD) == "succeeded"
        assert post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                                    order_id=order["order_id"], amount=order["total"])).status_code == 200
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa_event.listen(Engine, "before_cursor_execute", count)
    try:
        deliver_with(run_with, sessions)
    finally:
        sa_event.remove(Engine, "before_cursor_execute", count)

    with sessions() as session:
        assert {order_row(sessions, order).status.value for order in orders} == {"paid"}
        assert set(session.scalars(select(OutboxMessage.status))) == {OutboxStatus.DONE}
    about_disputes = [s for s in statements if "disputes" in s]
    assert about_disputes == []
