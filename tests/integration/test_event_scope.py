"""Which events may change an order: only this account's, in its key's mode, about an intent
the order holds or Stripe confirms; and what every handler run leaves behind (attempts,
causes, alerts)."""
from __future__ import annotations

import dataclasses

import pytest
import stripe
from sqlalchemy import select, text, update

from models.db import transaction
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus
from models.history import AttemptOutcome, EventAttempt, OrderStatusChange, StaffAlert
from models.orders import Order
from tests.conftest import deliver_with
from tests.e2e.alerts import AlertInbox
from tests.support import confirm_card, event_for, free_port, stripe_unreachable

SUCCEEDED = "localstripe_payment_intent.succeeded"


def succeeded(order: dict, **changes) -> dict:
    return event_for(SUCCEEDED, intent_id=changes.pop("intent_id", order["payment_intent_id"]),
                     order_id=order["order_id"], amount=changes.pop("amount", order["total"]), **changes)


def status_of(client, order: dict) -> str:
    return client.get(f"/orders/{order['order_id']}").get_json()["status"]


def inbox_row(sessions, event_id: str) -> InboxEvent:
    with sessions() as session:
        return session.scalars(select(InboxEvent).where(InboxEvent.event_id == event_id)).one()


def alerts(sessions) -> list[StaffAlert]:
    with sessions() as session:
        return session.scalars(select(StaffAlert).order_by(StaffAlert.id)).all()


def forget_intent(sessions, order: dict) -> None:
    """The order as checkout leaves it when Stripe created the intent but the answer was lost."""
    with transaction(sessions) as session:
        session.execute(update(Order).where(Order.id == order["order_id"]).values(payment_intent_id=None))


# --- one table of handlers ------------------------------------------------------------------------------------


def test_the_handled_event_types_are_the_handler_table_and_each_is_queued_for_a_worker(post_event, sessions):
    from consumers.handlers import HANDLED_EVENT_TYPES, HANDLERS

    assert HANDLED_EVENT_TYPES == frozenset(HANDLERS)
    assert {"payment_intent.succeeded", "charge.refunded", "charge.dispute.created",
            "charge.dispute.closed"} <= HANDLED_EVENT_TYPES
    event = {**event_for("charge.refunded"), "type": "charge.dispute.closed"}
    post_event(event)
    assert inbox_row(sessions, event["id"]).status is EventStatus.RECEIVED


# --- defect 4: events that are not this account's ------------------------------------------------------------


@pytest.mark.parametrize("foreign, said", [
    pytest.param({"livemode": True}, "live-mode event", id="live-event-test-key"),
    pytest.param({"account": "acct_1ConnectedShop"}, "not a Connect platform", id="connect-account"),
])
def test_an_event_not_of_this_account_is_ignored_with_its_reason_and_alerted_and_changes_no_order(
        client, sessions, checkout, post_event, deliver, foreign, said):
    order = checkout([("TEA-01", 2)])
    event = {**succeeded(order), **foreign}
    post_event(event)
    deliver()
    assert status_of(client, order) == "pending_payment"
    product = client.get("/products/TEA-01").get_json()
    assert (product["on_hand"], product["reserved"]) == (40, 2)
    row = inbox_row(sessions, event["id"])
    assert row.status is EventStatus.IGNORED
    assert said in row.outcome
    assert row.order_id == order["order_id"]
    [alert] = alerts(sessions)
    assert (alert.order_id, alert.event_id) == (order["order_id"], event["id"])
    assert alert.url.endswith(f"/admin/orders/{order['order_id']}")


def test_a_test_mode_event_is_ignored_when_the_key_is_live(client, settings, sessions, checkout, post_event):
    order = checkout([("TEA-01", 2)])
    event = succeeded(order)  # livemode false, as stripe listen forwards it
    post_event(event)
    deliver_with(dataclasses.replace(settings, stripe_api_key="sk_live_shop"), sessions)
    assert status_of(client, order) == "pending_payment"
    row = inbox_row(sessions, event["id"])
    assert row.status is EventStatus.IGNORED and "test-mode event" in row.outcome


def test_an_order_found_by_metadata_alone_is_paid_once_stripe_confirms_the_intent(
        client, sessions, checkout, post_event, deliver):
    order = checkout([("TEA-01", 2)])
    forget_intent(sessions, order)
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    post_event(succeeded(order))
    deliver()
    assert status_of(client, order) == "paid"
    with sessions() as session:
        stored = session.get(Order, order["order_id"])
        assert (stored.payment_intent_id, stored.paid_amount) == (order["payment_intent_id"], order["total"])


@pytest.mark.parametrize("forgery", ["unknown_intent", "other_amount"])
def test_an_order_found_by_metadata_alone_is_not_paid_when_stripe_does_not_confirm_the_intent(
        client, sessions, checkout, post_event, deliver, forgery):
    order = checkout([("TEA-01", 2)])
    forget_intent(sessions, order)
    if forgery == "unknown_intent":
        event = succeeded(order, intent_id="pi_NotOneOfStripes0001")
    else:  # Stripe's intent is for the order's total; the event claims another amount
        event = succeeded(order, amount=order["total"] - 100)
    post_event(event)
    deliver()
    assert status_of(client, order) == "pending_payment"
    product = client.get("/products/TEA-01").get_json()
    assert (product["on_hand"], product["reserved"]) == (40, 2)
    row = inbox_row(sessions, event["id"])
    assert row.status is EventStatus.IGNORED
    assert "Stripe" in row.outcome
    [alert] = alerts(sessions)
    assert alert.order_id == order["order_id"]


def test_stripe_unreachable_while_confirming_an_intent_is_retried_not_applied(
        client, sessions, settings, checkout, post_event, deliver):
    order = checkout([("TEA-01", 2)])
    forget_intent(sessions, order)
    post_event(event := succeeded(order))
    with stripe_unreachable():
        deliver(max_rounds=1)
    row = inbox_row(sessions, event["id"])
    assert row.status is EventStatus.RETRYING
    assert "PaymentGatewayError" in row.last_error
    assert status_of(client, order) == "pending_payment"
    deliver()
    assert status_of(client, order) == "paid"
    with sessions() as session:
        runs = session.scalars(select(EventAttempt.outcome).where(EventAttempt.inbox_event_id == row.id)
                               .order_by(EventAttempt.id)).all()
    assert runs == [AttemptOutcome.FAILED, AttemptOutcome.PROCESSED]


# --- defect 5: money taken on an intent the order does not hold ---------------------------------------------------


def test_money_taken_on_an_intent_the_order_does_not_hold_flags_the_order_and_alerts(
        client, sessions, checkout, post_event, deliver):
    order = checkout([("TEA-01", 2)])
    event = succeeded(order, intent_id="pi_SecondTabPaidToo0001")
    post_event(event)
    deliver()
    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert "pi_SecondTabPaidToo0001" in body["review_reason"]
    row = inbox_row(sessions, event["id"])
    assert (row.status, row.order_id) == (EventStatus.PROCESSED, order["order_id"])
    [alert] = alerts(sessions)
    assert alert.order_id == order["order_id"] and "pi_SecondTabPaidToo0001" in alert.text
    with sessions() as session:
        assert session.get(Order, order["order_id"]).paid_amount == order["total"]


def test_money_taken_on_another_intent_of_a_paid_order_is_counted_and_alerted(
        client, sessions, checkout, post_event, deliver):
    order = checkout([("TEA-01", 2)])
    post_event(succeeded(order))
    deliver()
    post_event(event := succeeded(order, intent_id="pi_SecondTabPaidToo0002"))
    deliver()
    assert status_of(client, order) == "needs_review"  # paid twice: a person refunds one
    with sessions() as session:
        assert session.get(Order, order["order_id"]).money_held == 2 * order["total"]
    assert "flagged for review" in inbox_row(sessions, event["id"]).outcome


def test_the_orders_own_payment_after_a_stray_intents_is_counted_alerted_and_added_to_the_reason(
        client, sessions, checkout, post_event, deliver):
    """Paid on a stray intent first (flagged), then on the intent the order holds: the second payment
    was counted with no alert ("order already flagged for review"), and the review said only the first."""
    order = checkout([("TEA-01", 2)])
    post_event(succeeded(order, intent_id="pi_StrayTabPaidFirst001"))
    deliver()
    assert status_of(client, order) == "needs_review"
    post_event(event := succeeded(order))
    deliver()
    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert "pi_StrayTabPaidFirst001" in body["review_reason"]
    assert f"paid {order['total']} jpy on payment intent {order['payment_intent_id']} while the order is " \
           "needs_review" in body["review_reason"]
    assert "noted, order already needs_review" in inbox_row(sessions, event["id"]).outcome
    stray, own = alerts(sessions)
    assert "pi_StrayTabPaidFirst001" in stray.text and order["payment_intent_id"] in own.text
    with sessions() as session:
        assert session.get(Order, order["order_id"]).money_held == 2 * order["total"]

    post_event(succeeded(order))  # the same payment, sent again: counted once, no new alert
    deliver()
    assert len(alerts(sessions)) == 2
    with sessions() as session:
        assert session.get(Order, order["order_id"]).money_held == 2 * order["total"]


# --- attempts, causes and alerts ----------------------------------------------------------------------------------


def test_every_handler_run_is_an_attempt_row_and_each_status_change_names_its_event(
        client, sessions, checkout, post_event, deliver):
    order = checkout([("TEA-01", 2)], email="hanako@example.com")
    event = succeeded(order)
    post_event(event)
    with sessions() as session:
        session.execute(text("ALTER TABLE shipments RENAME TO shipments_away"))
        session.commit()
    try:
        deliver(max_rounds=1)
    finally:
        with sessions() as session:
            session.execute(text("ALTER TABLE shipments_away RENAME TO shipments"))
            session.commit()
    deliver()
    assert status_of(client, order) == "paid"
    row = inbox_row(sessions, event["id"])
    with sessions() as session:
        attempts = session.scalars(select(EventAttempt).where(EventAttempt.inbox_event_id == row.id)
                                   .order_by(EventAttempt.id)).all()
        changes = session.scalars(select(OrderStatusChange).where(OrderStatusChange.order_id == order["order_id"])
                                  .order_by(OrderStatusChange.id)).all()
    assert [(a.runner, a.outcome) for a in attempts] == [("worker", AttemptOutcome.FAILED),
                                                         ("worker", AttemptOutcome.PROCESSED)]
    failed_run = attempts[0]
    assert "shipments" in failed_run.error and "Traceback" in failed_run.traceback
    assert "hanako@example.com" not in failed_run.traceback + failed_run.error
    assert attempts[1].reason == "order paid" and attempts[1].order_id == order["order_id"]
    assert (changes[-1].to_status, changes[-1].cause) == ("paid", f"event {event['id']}")


def test_an_alert_is_a_row_with_the_orders_link_marked_delivered_once_posted(
        client, settings, sessions, checkout, post_event):
    order = checkout([("TEA-01", 2)], email="hanako@example.com")
    post_event(succeeded(order, amount=order["total"] + 1))
    with AlertInbox() as inbox:
        deliver_with(dataclasses.replace(settings, staff_alert_url=inbox.url, admin_base_url="https://shop.test"),
                     sessions)
        posted = inbox.wait_for("needs review")
    [alert] = alerts(sessions)
    url = f"https://shop.test/admin/orders/{order['order_id']}"
    assert (alert.order_id, alert.url, alert.delivered) == (order["order_id"], url, True)
    assert url in posted["text"] and posted["url"] == url
    assert "amount mismatch" in alert.text
    for said in (alert.text, posted["text"]):
        assert "hanako" not in said and "Yamada" not in said and "Sapporo" not in said


def test_an_alert_that_cannot_be_posted_stays_recorded_undelivered(client, settings, sessions, checkout, post_event):
    order = checkout([("TEA-01", 2)])
    post_event(succeeded(order, amount=order["total"] + 1))
    deliver_with(dataclasses.replace(settings, staff_alert_url=f"http://127.0.0.1:{free_port()}/down"), sessions)
    assert status_of(client, order) == "needs_review"
    [alert] = alerts(sessions)
    assert (alert.order_id, alert.delivered) == (order["order_id"], False)
    with sessions() as session:
        assert session.scalars(select(OutboxMessage.status)).all() == [OutboxStatus.DONE]
