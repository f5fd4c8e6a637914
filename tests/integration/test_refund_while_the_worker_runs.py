"""A staff refund spans calls to Stripe made with no transaction open; the worker goes on meanwhile. What
the worker does in that time must not make the refund's record wrong, nor lose it:

* a second payment the worker counts while Stripe makes the refund (a second checkout tab) is not
  refunded by it, so the order is not marked refunded: it stays in review, saying so;
* a refund.failed the worker handles meanwhile (no money went back on it) leaves the order in review, not
  refunded, and a charge.refunded it handles first leaves the refund staff's, with their reason;
* on PostgreSQL, the refund's last transaction (the order's row, then its stock) can deadlock with a
  worker's batch (one order's stock, then another order's row); the money already went back at Stripe,
  so that transaction is run again rather than lost.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
import stripe
from sqlalchemy import select, text

import consumers.processing as processing
from consumers.staff_actions import RefundPartlyDone, refund_order
from models.events import InboxEvent, OutboxMessage
from models.history import StaffAction
from models.orders import Order, OrderStatus
from models.refunds import Refund
from tests.backends import wait_until_waiting_for_a_lock
from tests.integration.test_refunds_and_disputes import charge_refunded_as_now, refund_updated
from tests.stripe_proxy import HoldingProxy, the_first
from tests.support import confirm_card, event_for, use_stripe

CARD = "4242424242424242"


def paid_order(client, checkout, post_event, deliver) -> dict:
    order = checkout([("TEA-01", 1)])
    assert confirm_card(order["payment_intent_id"], CARD) == "succeeded"
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver()
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
    return order


def staff_refund_in_a_thread(sessions, order_id: str, result: dict) -> threading.Thread:
    def run():
        try:
            result["decision"] = refund_order(sessions, order_id, actor="alice", reason="customer asked")
        except Exception as exc:  # noqa: BLE001 - the test reads what happened
            result["error"] = exc

    return threading.Thread(target=run)


@contextmanager
def while_stripe_answers_the_refund(localstripe, sessions, order_id: str, result: dict):
    """Staff refund the order in a thread; Stripe makes the first refund and its answer is held until the
    block ends (what the block does happens while staff wait for it). Then staff's refund finishes."""
    proxy = HoldingProxy(localstripe.port, hold=the_first("POST /v1/refunds"))
    staff = staff_refund_in_a_thread(sessions, order_id, result)
    sdk_client = stripe.default_http_client
    stripe.default_http_client = stripe.new_default_http_client(timeout=60)  # Stripe's answer is held a while
    use_stripe(proxy.base)
    try:
        staff.start()
        proxy.wait_for_answers(1, timeout=30)   # the refund is made at Stripe; its answer held
        yield
    finally:
        proxy.release()
        staff.join(60)
        stripe.default_http_client = sdk_client
        use_stripe(localstripe.base)
        proxy.close()
    assert not staff.is_alive()


def test_a_payment_counted_while_stripe_makes_the_refund_keeps_the_order_in_review_not_refunded(
        client, sessions, checkout, post_event, deliver, localstripe):
    order = paid_order(client, checkout, post_event, deliver)
    oid = order["order_id"]
    # The buyer also paid on a second tab's intent (made with the order's metadata); its event not yet here.
    stray = stripe.PaymentIntent.create(amount=order["total"], currency="jpy", metadata={"order_id": oid})
    assert confirm_card(stray.id, CARD) == "succeeded"

    result: dict = {}
    with while_stripe_answers_the_refund(localstripe, sessions, oid, result):
        # Meanwhile the second tab's payment arrives, and the worker counts it.
        post_event(event_for("localstripe_payment_intent.succeeded", intent_id=stray.id, order_id=oid,
                             amount=order["total"]))
        deliver()

    assert isinstance(result.get("error"), RefundPartlyDone), result
    with sessions() as session:
        stored = session.get(Order, oid)
        assert stored.status is OrderStatus.NEEDS_REVIEW
        assert stored.money_held == order["total"]  # the second payment, not refunded
        assert f"a payment on payment intent {stray.id} was counted while the refund was made" in stored.review_reason
        [audit] = session.scalars(select(StaffAction).where(StaffAction.action == "refund")).all()
        assert audit.detail.startswith("partly done: refund ") and audit.status_after == "needs_review"
    assert [r.amount for r in stripe.Refund.list(payment_intent=stray.id).data] == []

    # Staff refund again: the rest goes back, and now the order is refunded.
    decision = refund_order(sessions, oid, actor="alice", reason="both payments back")
    assert decision.status_after == "refunded"
    assert sum(r.amount for r in stripe.Refund.list(payment_intent=stray.id).data) == order["total"]


def refunded_while_the_worker_handles(client, sessions, checkout, post_event, deliver, localstripe, event_of,
                                      then=lambda order: None) -> tuple[dict, object, dict]:
    """A paid order that staff refund; while Stripe's answer to them is held, Stripe's event about the refund
    (`event_of(refund)`) reaches the worker, and `then` looks at the order. The order, the refund, and
    what staff's refund_order gave (`decision` or `error`)."""
    order = paid_order(client, checkout, post_event, deliver)
    result: dict = {}
    with while_stripe_answers_the_refund(localstripe, sessions, order["order_id"], result):
        [made] = stripe.Refund.list(payment_intent=order["payment_intent_id"]).data
        post_event(event_of(made))
        deliver()
        then(order)
    return order, made, result


def test_a_refund_that_fails_at_stripe_while_staff_wait_for_its_answer_leaves_the_order_in_review(
        client, sessions, checkout, post_event, deliver, localstripe):
    # The card's account is closed: Stripe's refund.failed reaches the worker before its answer to staff.
    order, made, result = refunded_while_the_worker_handles(
        client, sessions, checkout, post_event, deliver, localstripe,
        lambda refund: refund_updated(refund.id, kind="refund.failed", status="failed",
                                      failure_reason="expired_or_canceled_card"))
    oid = order["order_id"]

    assert isinstance(result.get("error"), RefundPartlyDone), result
    with sessions() as session:
        stored = session.get(Order, oid)
        assert (stored.status, stored.money_held) == (OrderStatus.NEEDS_REVIEW, order["total"])
        assert f"refund {made.id} failed at Stripe: {order['total']} jpy did not go back" in stored.review_reason
        [row] = session.scalars(select(Refund)).all()
        assert (row.status, row.source.value, row.reason) == ("failed", "staff", "customer asked")
        [audit] = session.scalars(select(StaffAction).where(StaffAction.action == "refund")).all()
        assert (audit.status_before, audit.status_after) == ("paid", "needs_review")
        assert audit.detail.startswith("partly done: ")
    assert client.get(f"/orders/{oid}").get_json()["shipment"]["status"] == "pending"  # its units stay held


def test_a_refund_whose_charge_refunded_the_worker_handles_first_stays_staffs_with_their_reason(
        client, sessions, checkout, post_event, deliver, localstripe):
    def refunded_by_the_worker(order):
        assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "refunded"

    # Stripe's charge.refunded, before its answer to staff.
    order, made, result = refunded_while_the_worker_handles(
        client, sessions, checkout, post_event, deliver, localstripe,
        lambda refund: charge_refunded_as_now(refund.charge), then=refunded_by_the_worker)
    oid = order["order_id"]

    decision = result["decision"]
    assert (decision.status_before, decision.status_after) == ("paid", "refunded")
    with sessions() as session:
        stored = session.get(Order, oid)
        assert (stored.refunded_amount, stored.refund_id, stored.refund_reason) == \
            (order["total"], made.id, "customer asked")
        [row] = session.scalars(select(Refund)).all()
        assert (row.stripe_refund_id, row.source.value, row.reason) == (made.id, "staff", "customer asked")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_refund_whose_record_deadlocks_with_a_worker_batch_is_recorded_all_the_same(
        client, sessions, checkout, post_event, deliver, monkeypatch):
    paid = paid_order(client, checkout, post_event, deliver)
    other = checkout([("TEA-01", 1)])  # another buyer's order holding TEA-01, whose intent is then canceled

    # One batch: the other order's cancellation (it releases TEA-01: its stock row locked), then a late
    # decline of the paid order (its order row locked).
    post_event(event_for("payment_intent.canceled", intent_id=other["payment_intent_id"], order_id=other["order_id"]))
    post_event(event_for("payment_intent.payment_failed", intent_id=paid["payment_intent_id"],
                         order_id=paid["order_id"]))
    with sessions() as session:
        decline = session.scalars(select(OutboxMessage.id).join(InboxEvent, OutboxMessage.inbox_event_id == InboxEvent.id)
                                  .where(InboxEvent.type == "payment_intent.payment_failed")).one()
    engine = sessions.kw["bind"]
    result: dict = {}
    staff: list[threading.Thread] = []
    claim = processing._claim

    def claim_after_staff_waits(session, settings, outbox_id, handled, fetched):
        # A pause only, to force the interleaving: the batch has run the cancellation (TEA-01's row
        # locked); before the decline's message, staff's refund runs and waits for TEA-01's row while it
        # holds the paid order's. Then the batch goes on as it would, to the paid order's row.
        if outbox_id == decline and not staff:
            staff.append(staff_refund_in_a_thread(sessions, paid["order_id"], result))
            staff[0].start()
            wait_until_waiting_for_a_lock(engine, thread=staff[0])
        return claim(session, settings, outbox_id, handled, fetched)

    monkeypatch.setattr(processing, "_claim", claim_after_staff_waits)
    deliver()
    staff[0].join(60)

    assert "error" not in result, result
    refunded = [r.amount for r in stripe.Refund.list(payment_intent=paid["payment_intent_id"]).data]
    assert refunded == [paid["total"]]
    with sessions() as session:
        assert session.get(Order, paid["order_id"]).status is OrderStatus.REFUNDED
        [row] = session.scalars(select(Refund).where(Refund.order_id == paid["order_id"])).all()
        assert row.amount == paid["total"]
        [audit] = session.scalars(select(StaffAction).where(StaffAction.action == "refund")).all()
        assert (audit.actor, audit.status_after) == ("alice", "refunded")


def a_real_deadlock(engine) -> Exception:
    """Two transactions locking two stock rows in opposite orders: the error PostgreSQL gives the one it aborts."""
    barrier, errors = threading.Barrier(2), []

    def lock(first: str, second: str):
        try:
            with engine.begin() as connection:
                connection.execute(text("SELECT 1 FROM stock WHERE sku = :sku FOR UPDATE"), {"sku": first})
                barrier.wait(10)
                connection.execute(text("SELECT 1 FROM stock WHERE sku = :sku FOR UPDATE"), {"sku": second})
        except Exception as exc:  # noqa: BLE001 - the one PostgreSQL chose
            errors.append(exc)

    sides = [threading.Thread(target=lock, args=pair) for pair in (("TEA-01", "CUP-01"), ("CUP-01", "TEA-01"))]
    for side in sides:
        side.start()
    for side in sides:
        side.join(30)
    [error] = errors
    return error


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_decision_postgresql_aborts_for_a_deadlock_is_run_again_or_said_plainly(sessions, client):
    import click

    from models.db import DECISION_ABORTED, aborted_by_a_conflict, retrying_conflicts
    from webhook_app.cli import _staff_call

    deadlock = a_real_deadlock(sessions.kw["bind"])
    assert aborted_by_a_conflict(deadlock), deadlock
    runs = []

    def aborted_once():
        runs.append(1)
        if len(runs) == 1:
            raise deadlock
        return "recorded"

    assert retrying_conflicts(aborted_once) == "recorded" and len(runs) == 2
    # A staff decision from the CLI that PostgreSQL aborted: one line saying so, not a traceback.
    with pytest.raises(click.ClickException) as said:
        _staff_call(lambda: (_ for _ in ()).throw(deadlock))
    assert said.value.message == DECISION_ABORTED
