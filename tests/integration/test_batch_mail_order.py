"""A worker batch claims its mails after its events: a "payment failed" mail queued after a payment's
event is dropped once that payment is applied, in a batch as one message at a time, and never
reaches a buyer whose payment was taken."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from consumers.handlers import HANDLERS
from consumers.processing import process_batch, process_message
from models.events import InboxEvent, OutboxMessage, OutboxStatus, Topic
from models.orders import Order, OrderStatus
from tests.integration.test_mail import mailing_settings, smtp  # noqa: F401 - fixtures: a real SMTP server
from tests.support import event_for

SUCCEEDED = "payment_intent.succeeded"


def succeeded(order: dict, amount_off: int = 0) -> dict:
    return event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=order["total"] - amount_off)


def message_of(sessions, event: dict) -> int:
    """The outbox id of a stored event's message."""
    with sessions() as session:
        inbox_id = session.scalars(select(InboxEvent.id).where(InboxEvent.event_id == event["id"])).one()
        return session.scalars(select(OutboxMessage.id).where(OutboxMessage.inbox_event_id == inbox_id)).one()


def declined_then_paid(settings, sessions, checkout, post_event, amount_off=0) -> tuple[dict, int, int]:
    """A declined card and then the buyer's payment, both stored; the decline handled first, so its
    "payment failed" mail is queued after the payment's event. (order, payment's id, mail's id)"""
    order = checkout(email="hanako@example.jp")
    declined = event_for("localstripe_payment_intent.payment_failed", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"])
    paid = succeeded(order, amount_off)
    assert post_event(declined).status_code == 200
    assert post_event(paid).status_code == 200
    assert process_message(sessions, settings, message_of(sessions, declined)).outcome == "done"
    with sessions() as session:
        [mail] = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL)).all()
        assert mail.body["kind"] == "payment_failed"
    payment = message_of(sessions, paid)
    assert payment < mail.id
    return order, payment, mail.id


def declined_mails(smtp) -> list[str]:  # noqa: F811 - the fixture's mailbox
    return [m["Subject"] for _, m in smtp.messages if "did not go through" in m["Subject"]]


def assert_mail_dropped(sessions, mail_id: int) -> None:
    with sessions() as session:
        assert session.get(OutboxMessage, mail_id).status is OutboxStatus.DONE


@pytest.mark.parametrize("how", ["one_at_a_time", "in_a_batch"])
def test_no_declined_mail_once_a_payment_queued_before_it_is_applied(
        sessions, checkout, post_event, smtp, mailing_settings, how):  # noqa: F811
    # Paid another amount than the order's total: a review case, run one by one in a batch.
    order, payment, mail = declined_then_paid(mailing_settings, sessions, checkout, post_event, amount_off=100)
    if how == "one_at_a_time":
        for outbox_id in (payment, mail):  # outbox id order, as a single worker takes them
            assert process_message(sessions, mailing_settings, outbox_id).outcome == "done"
    else:
        results = process_batch(sessions, mailing_settings, [payment, mail])
        assert {results[payment].outcome, results[mail].outcome} == {"done"}
    with sessions() as session:
        status = session.get(Order, order["order_id"]).status
    assert status is OrderStatus.NEEDS_REVIEW
    assert declined_mails(smtp) == [], f"a declined-card mail reached a buyer whose payment was taken ({status.value})"
    assert_mail_dropped(sessions, mail)


def test_no_declined_mail_when_the_batch_pays_the_order_one_by_one_after_its_payments_rolled_back(
        sessions, checkout, post_event, smtp, mailing_settings, monkeypatch):  # noqa: F811
    order, payment, mail = declined_then_paid(mailing_settings, sessions, checkout, post_event)
    # Another order's payment, queued after the mail, whose handler fails: the batch's ordinary
    # payments are rolled back together and run one by one.
    other = checkout([("CUP-01", 1)])
    other_paid = succeeded(other)
    assert post_event(other_paid).status_code == 200
    failing = message_of(sessions, other_paid)
    assert failing > mail
    real_handler = HANDLERS[SUCCEEDED]

    def fails_for_the_other_order(session, event, context):
        outcome = real_handler(session, event, context)
        if outcome.order_id == other["order_id"]:
            raise RuntimeError("the warehouse system refused the shipment")
        return outcome

    monkeypatch.setitem(HANDLERS, SUCCEEDED, fails_for_the_other_order)
    results = process_batch(sessions, mailing_settings, [payment, mail, failing])
    assert [results[i].outcome for i in (payment, mail, failing)] == ["done", "done", "retry"]
    with sessions() as session:
        assert session.get(Order, order["order_id"]).status is OrderStatus.PAID
    assert declined_mails(smtp) == [], "a declined-card mail reached a buyer whose payment was taken"
    assert_mail_dropped(sessions, mail)


def test_a_mail_queued_after_a_message_run_alone_waits_for_it(
        sessions, checkout, post_event, smtp, mailing_settings):  # noqa: F811
    order, payment, mail = declined_then_paid(mailing_settings, sessions, checkout, post_event)
    with sessions() as session, session.begin():
        # As if the checkout's answer from Stripe had been lost: the order is found by the intent's
        # metadata, confirmed with Stripe's API after the batch's commit (StripeRecordNeeded).
        session.get(Order, order["order_id"]).payment_intent_id = None
    results = process_batch(sessions, mailing_settings, [payment, mail])
    assert [results[i].outcome for i in (payment, mail)] == ["done", "done"]
    with sessions() as session:
        assert session.get(Order, order["order_id"]).status is OrderStatus.PAID
    assert declined_mails(smtp) == [], "a declined-card mail reached a buyer whose payment was taken"
    assert_mail_dropped(sessions, mail)
