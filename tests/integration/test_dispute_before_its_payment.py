"""A dispute on a stray intent (a second checkout tab's) handled before that intent's payment is applied.

The dispute finds no order holding the intent, and no payment on it counted for one yet: the payment's
`succeeded` is stored but waits (not yet run, retrying, or dead-lettered behind an outage). The dispute
is retried after it, not dropped as no order of ours, so staff hear of the chargeback once the payment
is applied; a dispute on an intent nobody knows is still ignored.
"""
from __future__ import annotations

import pytest
import stripe
from click.testing import CliRunner
from sqlalchemy import select

from consumers.processing import process_message
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus
from models.refunds import Dispute
from tests.integration.test_out_of_order_money_events import (  # noqa: F401  (fixtures)
    DISPUTE, _charge_of, _paid_on_a_second_tab, _stray_succeeded)
from tests.integration.test_refunds_and_disputes import (  # noqa: F401  (fixtures)
    alerts, dispute_event, order_row, paid_order)
from tests.support import confirm_card, stripe_unreachable
from webhook_app.cli import shop

# Each kind of a dispute's event may be the first one handled (Stripe does not deliver them in order).
FIRST_SEEN = [("created", "needs_response", "opened (fraudulent): {total} jpy contested"),
              ("updated", "under_review", "opened (fraudulent): {total} jpy contested"),
              ("closed", "lost", "opened (fraudulent) and already closed: lost, {total} jpy taken back")]


def _on_the_stray_intent(kind: str, order: dict, stray: str, status: str) -> dict:
    return dispute_event(kind, {**order, "payment_intent_id": stray}, _charge_of({"payment_intent_id": stray}),
                         status)


def _inbox(sessions, event: dict) -> InboxEvent:
    with sessions() as session:
        return session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()


def _message_of(sessions, event: dict) -> OutboxMessage:
    with sessions() as session:
        return session.scalars(select(OutboxMessage).join(InboxEvent, InboxEvent.id == OutboxMessage.inbox_event_id)
                               .where(InboxEvent.event_id == event["id"])).one()


def _opened_alerts(sessions, order: dict) -> list[str]:
    return [alert.text for alert in alerts(sessions)
            if alert.text.startswith(f"Order {order['order_id']} needs review: dispute {DISPUTE} opened")]


def _dead_letter_alerts(sessions, message_id: int) -> list[str]:
    return [alert.text for alert in alerts(sessions)
            if alert.text.startswith(f"Message {message_id} was dead-lettered")]


def _run(settings, *args):
    return CliRunner().invoke(shop, list(args), env={"DATABASE_URL": settings.database_url,
                                                     "STRIPE_API_BASE": settings.stripe_api_base,
                                                     "LOG_FORMAT": "console"})


def _waiting(stray: str, payment: dict, status: str) -> str:
    """Why the dispute's handler failed, as the worker records it."""
    return (f"dispute {DISPUTE} is on payment intent {stray} whose payment (event {payment['id']}, status {status}) "
            f"is stored but not yet applied: retried after it")


def _assert_flagged_for_both(sessions, order: dict, stray: str, opened: str, status: str) -> None:
    row = order_row(sessions, order)
    assert row.status.value == "needs_review"
    assert f"paid {order['total']} jpy on payment intent {stray}, but the order holds" in row.review_reason
    assert f"dispute {DISPUTE} {opened.format(total=order['total'])}" in row.review_reason
    assert row.paid_amount == 2 * order["total"]
    [told] = _opened_alerts(sessions, order)
    assert opened.format(total=order["total"]) in told
    with sessions() as session:
        [dispute] = session.scalars(select(Dispute)).all()
        assert (dispute.stripe_dispute_id, dispute.order_id, dispute.payment_intent_id, dispute.amount,
                dispute.status) == (DISPUTE, order["order_id"], stray, order["total"], status)


@pytest.mark.parametrize("kind, status, opened", FIRST_SEEN, ids=[kind for kind, _, _ in FIRST_SEEN])
def test_a_dispute_handled_while_its_stray_payment_is_not_yet_run_is_retried_and_alerted_once_it_is(
        settings, sessions, paid_order, post_event, deliver, kind, status, opened):
    """The dispute was ignored as no order of ours, and the chargeback never reached staff."""
    order = paid_order()
    stray = _paid_on_a_second_tab(order)
    payment = _stray_succeeded(order, stray)
    dispute = _on_the_stray_intent(kind, order, stray, status)
    assert post_event(payment).status_code == 200
    assert post_event(dispute).status_code == 200

    # A worker takes the dispute's message before anyone takes the payment's (two workers, one slow).
    result = process_message(sessions, settings, _message_of(sessions, dispute).id)
    assert result.outcome == "retry" and _waiting(stray, payment, "received") in result.detail
    stored = _inbox(sessions, dispute)
    assert stored.status is EventStatus.RETRYING
    assert _waiting(stray, payment, "received") in stored.last_error
    assert _inbox(sessions, payment).status is EventStatus.RECEIVED
    assert order_row(sessions, order).status.value == "paid"  # nothing applied yet

    deliver()  # the payment, then the dispute's retry
    assert _inbox(sessions, payment).status is EventStatus.PROCESSED
    stored = _inbox(sessions, dispute)
    assert (stored.status, stored.order_id) == (EventStatus.PROCESSED, order["order_id"])
    _assert_flagged_for_both(sessions, order, stray, opened, status)


def test_a_dispute_behind_its_dead_lettered_payment_is_dead_lettered_too_and_settled_by_retrying_both(
        settings, sessions, paid_order, post_event, deliver):
    """Stripe unreachable: the stray payment was retried and dead-lettered; its dispute was dropped meanwhile."""
    order = paid_order()
    stray = _paid_on_a_second_tab(order)
    payment = _stray_succeeded(order, stray)
    dispute = _on_the_stray_intent("created", order, stray, "needs_response")
    assert post_event(payment).status_code == 200
    with stripe_unreachable():  # linking the intent asks Stripe for its refunds
        deliver(max_rounds=1)
        assert _inbox(sessions, payment).status is EventStatus.RETRYING
        assert post_event(dispute).status_code == 200
        deliver(max_rounds=1)  # both fail: the payment for Stripe, the dispute for the payment
        stored = _inbox(sessions, dispute)
        assert stored.status is EventStatus.RETRYING
        assert _waiting(stray, payment, "retrying") in stored.last_error
        deliver()
    assert _inbox(sessions, payment).status is EventStatus.DEAD

    deliver()  # the dispute's attempts run out behind the dead payment
    stored = _inbox(sessions, dispute)
    assert (stored.status, stored.attempts) == (EventStatus.DEAD, settings.max_attempts)
    assert _waiting(stray, payment, "dead") in stored.last_error
    payment_message, dispute_message = _message_of(sessions, payment), _message_of(sessions, dispute)
    assert (payment_message.status, dispute_message.status) == (OutboxStatus.DEAD, OutboxStatus.DEAD)
    [dead] = _dead_letter_alerts(sessions, dispute_message.id)  # visible to staff, with why
    assert f"dispute {DISPUTE} is on payment intent {stray}" in dead
    assert order_row(sessions, order).status.value == "paid" and _opened_alerts(sessions, order) == []

    retried = _run(settings, "dlq", "retry", str(payment_message.id), str(dispute_message.id), "--as", "alice")
    assert retried.exit_code == 0, retried.output
    deliver()
    assert _inbox(sessions, payment).status is EventStatus.PROCESSED
    assert (_inbox(sessions, dispute).status, _inbox(sessions, dispute).order_id) == (
        EventStatus.PROCESSED, order["order_id"])
    _assert_flagged_for_both(sessions, order, stray, FIRST_SEEN[0][2], "needs_response")
    assert _run(settings, "dlq", "list").output.strip() == "no dead letters"

    # The dispute's next event finds the order through the applied payment, and staff were told of it once.
    assert post_event(_on_the_stray_intent("updated", order, stray, "under_review")).status_code == 200
    deliver()
    assert len(_opened_alerts(sessions, order)) == 1
    with sessions() as session:
        assert session.scalars(select(Dispute.status)).all() == ["under_review"]


def test_a_dispute_on_an_intent_nobody_knows_is_still_ignored_at_once(settings, sessions, paid_order, post_event,
                                                                      deliver):
    """No order holds the intent and no payment on it was stored: not ours, nothing to wait for."""
    order = paid_order()
    foreign = stripe.PaymentIntent.create(amount=order["total"], currency="jpy")
    assert confirm_card(foreign.id, "4242424242424242") == "succeeded"
    dispute = _on_the_stray_intent("created", order, foreign.id, "needs_response")
    assert post_event(dispute).status_code == 200
    deliver()

    stored = _inbox(sessions, dispute)
    assert (stored.status, stored.attempts) == (EventStatus.IGNORED, 1)
    assert stored.outcome == f"no order of ours for dispute {DISPUTE}"
    assert order_row(sessions, order).status.value == "paid"
    with sessions() as session:
        assert session.scalars(select(Dispute)).all() == []
