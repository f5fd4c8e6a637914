"""A dispute on a second tab's intent whose payment staff resolved by hand instead of retrying it.

The payment's `succeeded` was dead-lettered (Stripe unreachable) and closed by staff with a note: it is never
applied, so no order holds the intent or counted money on it. The intent is still recorded as the order's
(order_payment_intents: linked when the worker first handled the payment), so a dispute on it flags that
order and alerts staff once, saying the payment itself was resolved by hand and not applied; a lost dispute
takes nothing from the money the order holds, which never counted that payment. Real worker, localstripe,
the webhook endpoint and the `shop dlq` verbs, on both databases.
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from models.events import EventStatus
from models.refunds import Dispute
from tests.integration.test_dispute_before_its_payment import FIRST_SEEN, _inbox, _message_of, _on_the_stray_intent
from tests.integration.test_out_of_order_money_events import (  # noqa: F401  (fixtures)
    DISPUTE, _paid_on_a_second_tab, _stray_succeeded)
from tests.integration.test_refunds_and_disputes import (  # noqa: F401  (fixtures)
    alerts, order_row, paid_order)
from tests.support import stripe_unreachable
from webhook_app.cli import shop

NOTE = "customer paid twice by mistake, refunded by hand in Stripe's dashboard"


def _run(settings, *args):
    return CliRunner().invoke(shop, list(args), env={"DATABASE_URL": settings.database_url,
                                                     "STRIPE_API_BASE": settings.stripe_api_base,
                                                     "LOG_FORMAT": "console"})


def _dispute_alerts(sessions) -> list[str]:
    return [alert.text for alert in alerts(sessions) if DISPUTE in alert.text]


def _set_aside(stray: str, payment: dict) -> str:
    return (f"the payment on payment intent {stray} (event {payment['id']}) was resolved by hand and never applied "
            f"to this order (resolved by staff: {NOTE}), so the money the order holds is left as it is")


def _dead_and_resolved(settings, sessions, post_event, deliver, order: dict, stray: str,
                       dispute: dict | None = None) -> dict:
    """The stray payment is dead-lettered while Stripe is unreachable (a dispute posted meanwhile waits
    behind it, retrying), then staff resolve it with a note instead of retrying it."""
    payment = _stray_succeeded(order, stray)
    assert post_event(payment).status_code == 200
    with stripe_unreachable():  # linking the intent asks Stripe for its refunds
        deliver(max_rounds=1)
        assert _inbox(sessions, payment).status is EventStatus.RETRYING
        if dispute is not None:
            assert post_event(dispute).status_code == 200
        deliver(max_rounds=1)
        deliver(max_rounds=1)
    assert _inbox(sessions, payment).status is EventStatus.DEAD
    resolved = _run(settings, "dlq", "resolve", str(_message_of(sessions, payment).id), "--note", NOTE, "--as", "hana")
    assert resolved.exit_code == 0, resolved.output
    assert _inbox(sessions, payment).status is EventStatus.RESOLVED
    return payment


def test_a_dispute_waiting_behind_a_payment_staff_resolve_flags_the_order_and_says_the_payment_was_not_applied(
        settings, sessions, paid_order, post_event, deliver):
    """At its next retry the dispute was ignored as no order of ours: staff never heard of the chargeback."""
    order = paid_order()
    stray = _paid_on_a_second_tab(order)
    dispute = _on_the_stray_intent("created", order, stray, "needs_response")
    payment = _dead_and_resolved(settings, sessions, post_event, deliver, order, stray, dispute)
    waiting = _inbox(sessions, dispute)
    assert waiting.status is EventStatus.RETRYING and "stored but not yet applied" in waiting.last_error

    deliver()  # the dispute's next retry

    stored = _inbox(sessions, dispute)
    assert (stored.status, stored.order_id) == (EventStatus.PROCESSED, order["order_id"]), stored.outcome
    row = order_row(sessions, order)
    opened = f"dispute {DISPUTE} opened (fraudulent): {order['total']} jpy contested"
    assert row.status.value == "needs_review"
    assert f"{opened}; {_set_aside(stray, payment)}" in row.review_reason
    assert (row.paid_amount, row.money_held) == (order["total"], order["total"])  # the stray payment never counted
    [told] = _dispute_alerts(sessions)
    assert told == f"Order {order['order_id']} needs review: {opened}; {_set_aside(stray, payment)}"
    with sessions() as session:
        [recorded] = session.scalars(select(Dispute)).all()
        assert (recorded.order_id, recorded.payment_intent_id, recorded.status) == (
            order["order_id"], stray, "needs_response")

    # Stripe delivers the opening again: told once.
    assert post_event(dispute).status_code == 200
    assert post_event(_on_the_stray_intent("created", order, stray, "needs_response")).status_code == 200
    deliver()
    assert len(_dispute_alerts(sessions)) == 1


@pytest.mark.parametrize("kind, status, opened", FIRST_SEEN, ids=[kind for kind, _, _ in FIRST_SEEN])
def test_a_dispute_arriving_after_its_payment_was_resolved_by_hand_flags_the_order_at_once(
        settings, sessions, paid_order, post_event, deliver, kind, status, opened):
    order = paid_order()
    stray = _paid_on_a_second_tab(order)
    payment = _dead_and_resolved(settings, sessions, post_event, deliver, order, stray)
    dispute = _on_the_stray_intent(kind, order, stray, status)
    assert post_event(dispute).status_code == 200
    deliver()

    stored = _inbox(sessions, dispute)
    assert (stored.status, stored.attempts) == (EventStatus.PROCESSED, 1), stored.outcome
    row = order_row(sessions, order)
    said = f"dispute {DISPUTE} {opened.format(total=order['total'])}; {_set_aside(stray, payment)}"
    assert row.status.value == "needs_review" and said in row.review_reason
    # Lost or not, the order still holds what it was paid on its own intent: the stray payment never counted.
    assert (row.paid_amount, row.charged_back_amount, row.money_held) == (order["total"], 0, order["total"])
    [told] = _dispute_alerts(sessions)
    assert told == f"Order {order['order_id']} needs review: {said}"


def test_a_resolved_payments_dispute_is_followed_to_its_closing_and_the_order_keeps_its_money(
        settings, sessions, paid_order, post_event, deliver):
    order = paid_order()
    stray = _paid_on_a_second_tab(order)
    payment = _dead_and_resolved(settings, sessions, post_event, deliver, order, stray)
    for event in (_on_the_stray_intent("created", order, stray, "needs_response"),
                  _on_the_stray_intent("updated", order, stray, "under_review"),
                  _on_the_stray_intent("closed", order, stray, "lost")):
        assert post_event(event).status_code == 200
        deliver()
        assert _inbox(sessions, event).status is EventStatus.PROCESSED

    with sessions() as session:
        [recorded] = session.scalars(select(Dispute)).all()
        assert (recorded.order_id, recorded.status) == (order["order_id"], "lost")
        assert recorded.closed_at is not None
    row = order_row(sessions, order)
    assert (row.status.value, row.charged_back_amount, row.money_held) == ("needs_review", 0, order["total"])
    opening, closing = _dispute_alerts(sessions)
    assert "opened (fraudulent)" in opening
    assert closing == (f"Order {order['order_id']}: dispute {DISPUTE} closed: lost ({order['total']} jpy); "
                       f"{_set_aside(stray, payment)}")
