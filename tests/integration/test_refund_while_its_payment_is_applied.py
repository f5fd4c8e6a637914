"""A refund of a stray intent (a second checkout tab's) whose event is handled while that intent's payment is
stored but not yet applied: waiting, being applied by another worker right now, or dead-lettered.

Only the payment's succeeded event links the stray intent to the order, so the refund finds no order yet; and the
worker applying the payment may have read Stripe's list of the intent's refunds before the refund was made. The
refund's event used to be ignored as "no order of ours": the refund was counted nowhere and the order showed money
Stripe had given back. It is retried after the payment, as a dispute's is (review L); a refund on an intent that
no payment of ours was applied for is still ignored at once.
"""
from __future__ import annotations

import threading

import pytest
import stripe
from click.testing import CliRunner
from sqlalchemy import select

from consumers.processing import process_message
from models.events import EventStatus, OutboxStatus
from models.refunds import Refund, RefundSource
from tests.integration.test_dispute_before_its_payment import _inbox, _message_of
from tests.integration.test_out_of_order_money_events import _paid_on_a_second_tab, _stray_succeeded
from tests.integration.test_refunds_and_disputes import (  # noqa: F401  (fixtures)
    alerts, charge_refunded, charge_refunded_as_now, order_row, paid_order, refund_updated, refunds)
from tests.stripe_proxy import HoldingProxy, the_first
from tests.support import confirm_card, event_for, stripe_unreachable, use_stripe
from webhook_app.cli import shop


def _waiting(what: str, stray: str, payment: dict, status: str) -> str:
    """Why the refund's handler failed, as the worker records it."""
    return (f"{what} is on payment intent {stray} whose payment (event {payment['id']}, status {status}) is stored "
            f"but not yet applied: retried after it")


def _run(settings, *args):
    return CliRunner().invoke(shop, list(args), env={"DATABASE_URL": settings.database_url,
                                                     "STRIPE_API_BASE": settings.stripe_api_base,
                                                     "LOG_FORMAT": "console"})


def _assert_refund_counted_once(sessions, order: dict, refund) -> None:
    """Both payments counted, the stray one's refund too: the order holds its own payment, and is in review."""
    assert refunds(sessions) == [(refund.id, order["total"], RefundSource.STRIPE)]
    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.refunded_amount, row.money_held) == (
        "needs_review", 2 * order["total"], order["total"], order["total"])
    assert f"refunded in full at Stripe ({order['total']} jpy); the order still holds {order['total']} jpy" \
        in row.review_reason
    assert len(stripe.Refund.list(payment_intent=refund.payment_intent).data) == 1  # the service refunded nothing


@pytest.mark.parametrize("event_of", [charge_refunded, charge_refunded_as_now],
                         ids=["refunds listed", "refunds not listed"])
def test_a_stray_refund_run_while_another_worker_applies_its_payment_is_retried_and_counted_once(
        client, sessions, settings, paid_order, post_event, deliver, localstripe, event_of):
    """Worker A applies the stray payment and has Stripe's refund list (none yet); staff refund the intent in
    Stripe's dashboard and worker B runs its charge.refunded before A commits: B found no order and ignored it."""
    order = paid_order()
    stray = _paid_on_a_second_tab(order)
    payment = _stray_succeeded(order, stray)
    assert post_event(payment).status_code == 200
    payment_message = _message_of(sessions, payment).id

    # Stripe answers A's list of the intent's refunds at once; the answer is held on its way back.
    proxy = HoldingProxy(localstripe.port, hold=the_first("GET /v1/refunds"))
    sdk_client = stripe.default_http_client
    stripe.default_http_client = stripe.new_default_http_client(timeout=60)
    use_stripe(proxy.base)
    applied: dict = {}
    worker_a = threading.Thread(
        target=lambda: applied.update(result=process_message(sessions, settings, payment_message)))
    try:
        worker_a.start()
        proxy.wait_for_answers(1, timeout=30)
        refund = stripe.Refund.create(payment_intent=stray)  # in Stripe's dashboard
        refunded = event_of(refund.charge)
        assert post_event(refunded).status_code == 200
        result = process_message(sessions, settings, _message_of(sessions, refunded).id)  # worker B
        assert result.outcome == "retry", result
        assert _waiting(f"charge {refund.charge}", stray, payment, "received") in result.detail
    finally:
        proxy.release()
        worker_a.join(60)
        stripe.default_http_client = sdk_client
        use_stripe(localstripe.base)
        proxy.close()
    assert not worker_a.is_alive() and applied["result"].outcome == "done", applied
    assert _inbox(sessions, payment).status is EventStatus.PROCESSED
    assert refunds(sessions) == []  # A's list was read before the refund was made
    assert _inbox(sessions, refunded).status is EventStatus.RETRYING

    deliver()  # B's retry finds the order through the applied payment
    stored = _inbox(sessions, refunded)
    assert (stored.status, stored.order_id) == (EventStatus.PROCESSED, order["order_id"])
    _assert_refund_counted_once(sessions, order, refund)
    [told] = [alert.text for alert in alerts(sessions) if f"charge {refund.charge} refunded in full" in alert.text]
    assert told.startswith(f"Order {order['order_id']} needs review")


@pytest.mark.parametrize("kind", ["charge.refund.updated", "refund.updated", "refund.failed"])
def test_a_stray_refunds_failure_handled_before_its_payment_is_applied_is_retried_and_counted(
        client, sessions, settings, paid_order, post_event, deliver, kind):
    """The refund's failure was ignored (no order yet); the payment then counted the refund from Stripe's list,
    made before it failed: the order showed the money given back, though the customer never got it."""
    order = paid_order()
    stray = _paid_on_a_second_tab(order)
    refund = stripe.Refund.create(payment_intent=stray)
    payment = _stray_succeeded(order, stray)
    failed = refund_updated(refund.id, kind, status="failed", failure_reason="lost_or_stolen_card")
    assert post_event(payment).status_code == 200
    assert post_event(failed).status_code == 200

    # A worker takes the refund's message before anyone takes the payment's (two workers, one slow).
    result = process_message(sessions, settings, _message_of(sessions, failed).id)
    assert result.outcome == "retry", result
    assert _waiting(f"refund {refund.id}", stray, payment, "received") in result.detail
    assert _inbox(sessions, failed).status is EventStatus.RETRYING

    deliver()  # the payment (counting the refund from Stripe's list), then the failure's retry
    assert _inbox(sessions, payment).status is EventStatus.PROCESSED
    stored = _inbox(sessions, failed)
    assert (stored.status, stored.order_id) == (EventStatus.PROCESSED, order["order_id"])
    with sessions() as session:
        assert session.scalars(select(Refund.status)).all() == ["failed"]
    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.refunded_amount, row.money_held) == (
        "needs_review", 2 * order["total"], 0, 2 * order["total"])
    assert f"refund {refund.id} of {order['total']} jpy failed at Stripe (lost_or_stolen_card)" in row.review_reason


def test_a_stray_refund_behind_its_dead_lettered_payment_is_dead_lettered_too_and_counted_by_retrying_both(
        client, sessions, settings, paid_order, post_event, deliver):
    """Not retried for ever, nor silently: its attempts run out, and staff are alerted with why."""
    order = paid_order()
    stray = _paid_on_a_second_tab(order)
    refund = stripe.Refund.create(payment_intent=stray)
    payment, refunded = _stray_succeeded(order, stray), charge_refunded(refund.charge)
    assert post_event(payment).status_code == 200
    assert post_event(refunded).status_code == 200
    with stripe_unreachable():  # linking the intent asks Stripe for its refunds
        deliver()
    assert _inbox(sessions, payment).status is EventStatus.DEAD
    stored = _inbox(sessions, refunded)
    assert (stored.status, stored.attempts) == (EventStatus.DEAD, settings.max_attempts)
    assert _waiting(f"charge {refund.charge}", stray, payment, "dead") in stored.last_error
    payment_message, refund_message = _message_of(sessions, payment), _message_of(sessions, refunded)
    assert (payment_message.status, refund_message.status) == (OutboxStatus.DEAD, OutboxStatus.DEAD)
    [dead] = [alert.text for alert in alerts(sessions)
              if alert.text.startswith(f"Message {refund_message.id} was dead-lettered")]
    assert f"charge {refund.charge} is on payment intent {stray}" in dead
    assert refunds(sessions) == [] and order_row(sessions, order).money_held == order["total"]

    retried = _run(settings, "dlq", "retry", str(payment_message.id), str(refund_message.id), "--as", "alice")
    assert retried.exit_code == 0, retried.output
    deliver()
    assert _inbox(sessions, payment).status is EventStatus.PROCESSED
    stored = _inbox(sessions, refunded)
    assert (stored.status, stored.order_id) == (EventStatus.PROCESSED, order["order_id"])
    _assert_refund_counted_once(sessions, order, refund)
    assert _run(settings, "dlq", "list").output.strip() == "no dead letters"


@pytest.mark.parametrize("payment", ["none stored", "ignored", "resolved by staff"])
def test_a_refund_on_an_intent_no_payment_of_ours_was_applied_on_is_still_ignored_at_once(
        client, sessions, settings, paid_order, post_event, deliver, payment):
    """Nothing to wait for: no payment on the intent was stored, or its payment was closed without being applied
    (its handler ignored it: not ours; or staff resolved its dead letter by hand)."""
    order = paid_order()
    if payment == "none stored":
        intent = stripe.PaymentIntent.create(amount=order["total"], currency="jpy")
        assert confirm_card(intent.id, "4242424242424242") == "succeeded"
    else:
        intent = stripe.PaymentIntent.create(amount=order["total"], currency="jpy",
                                             metadata={"order_id": order["order_id"]})
        assert confirm_card(intent.id, "4242424242424242") == "succeeded"
        named = order["order_id"] if payment == "resolved by staff" else "ord_NotOneOfOurs"
        succeeded = event_for("localstripe_payment_intent.succeeded", intent_id=intent.id, order_id=named,
                              amount=order["total"])
        assert post_event(succeeded).status_code == 200
        if payment == "ignored":
            deliver()
            assert _inbox(sessions, succeeded).status is EventStatus.IGNORED
        else:
            with stripe_unreachable():
                deliver()
            assert _inbox(sessions, succeeded).status is EventStatus.DEAD
            resolved = _run(settings, "dlq", "resolve", str(_message_of(sessions, succeeded).id),
                            "--note", "refunded by hand", "--as", "alice")
            assert resolved.exit_code == 0, resolved.output
            assert _inbox(sessions, succeeded).status is EventStatus.RESOLVED

    refund = stripe.Refund.create(payment_intent=intent.id)
    refunded = charge_refunded(refund.charge)
    assert post_event(refunded).status_code == 200
    deliver()

    stored = _inbox(sessions, refunded)
    assert (stored.status, stored.attempts) == (EventStatus.IGNORED, 1)
    assert stored.outcome == f"no order of ours for charge {refund.charge} (payment intent {intent.id})"
    assert refunds(sessions) == []
    row = order_row(sessions, order)
    assert (row.status.value, row.money_held) == ("paid", order["total"])
