"""A dispute or refund on a stray intent (a second checkout tab's) handled in the very moment another worker commits
that intent's payment: between the handler's two look-ups, the order paid on the intent (none yet) and the payment
waiting on it (none any more).

PostgreSQL reads each statement of a READ COMMITTED transaction as of its own start, so the second look-up saw the
payment applied though the first did not see it linked: the dispute was taken for one on money never received (or
ignored as no order of ours), though the payment was counted on the order. The handler now looks for the order once
more, as a refund's already did (a regression test for that). SQLite takes its write lock before the first look-up,
so the moment does not exist there: PostgreSQL only. The moment is made to happen, not hoped for: the first time the
handler's thread sends `models.orders.payment_unapplied_on`'s statement, the payment is applied to completion on
another worker's connection before the statement runs.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import stripe
from sqlalchemy import event

from consumers.processing import process_message
from models.db import make_engine, make_session_factory
from models.events import EventStatus
from tests.backends import servers_available
from tests.integration.test_dispute_before_its_payment import (
    FIRST_SEEN, _assert_flagged_for_both, _inbox, _message_of, _on_the_stray_intent, _opened_alerts)
from tests.integration.test_out_of_order_money_events import _paid_on_a_second_tab, _stray_succeeded
from tests.integration.test_refund_while_its_payment_is_applied import _assert_refund_counted_once
from tests.integration.test_refunds_and_disputes import (  # noqa: F401  (fixtures)
    alerts, charge_refunded, order_row, paid_order)
from tests.stripe_proxy import HoldingProxy, the_first
from tests.support import use_stripe

# `models.orders.payment_unapplied_on`'s statement, as SQLAlchemy sends it to PostgreSQL.
_WAITING_PAYMENT = ("SELECT inbox_events.event_id, inbox_events.status \nFROM inbox_events \n"
                    "WHERE inbox_events.object_id")


@contextmanager
def _payment_committed_before_it_is_looked_for(sessions, intent_id: str, commit_payment: Callable[[], None]
                                               ) -> Iterator[list[str]]:
    """While open: the first time this thread asks the database (through `sessions`' engine) for a payment on
    `intent_id` waiting to be applied, `commit_payment()` runs first, and returns once another worker committed
    that payment. Yields the statements it ran before (one, once the window was taken)."""
    engine = sessions.kw["bind"]
    handler = threading.get_ident()
    taken: list[str] = []

    def before_cursor_execute(conn, cursor, statement, parameters, context, executemany):
        if taken or threading.get_ident() != handler or not statement.startswith(_WAITING_PAYMENT):
            return
        if intent_id not in (parameters.values() if isinstance(parameters, dict) else parameters):
            return
        taken.append(statement)
        commit_payment()

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield taken
    finally:
        event.remove(engine, "before_cursor_execute", before_cursor_execute)


class _AnotherWorker:
    """A worker with a database connection of its own (its own engine: the listener never sees it), running the
    payment's message in a thread of its own, as a second `shop worker` process would."""

    def __init__(self, settings, outbox_id: int):
        self.engine = make_engine(settings.database_url)
        self.result: dict = {}
        self.thread = threading.Thread(target=lambda: self.result.update(
            result=process_message(make_session_factory(self.engine), settings, outbox_id)))

    def finished(self) -> None:
        self.thread.join(60)

    def assert_done(self) -> None:
        assert not self.thread.is_alive() and self.result["result"].outcome == "done", self.result

    def close(self) -> None:
        if self.thread.ident is not None:  # started
            self.thread.join(60)
        self.engine.dispose()


if servers_available():
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    @pytest.mark.parametrize("kind, status, opened", FIRST_SEEN, ids=[kind for kind, _, _ in FIRST_SEEN])
    def test_a_stray_dispute_run_while_another_worker_commits_its_payment_counts_against_the_order(
            settings, sessions, paid_order, post_event, kind, status, opened):
        """The dispute was said to be on money never received (the order holds the payment) or ignored: a lost
        one's chargeback told staff the money the order holds was left as it is, though it was counted."""
        order = paid_order()
        stray = _paid_on_a_second_tab(order)
        payment = _stray_succeeded(order, stray)
        dispute = _on_the_stray_intent(kind, order, stray, status)
        assert post_event(payment).status_code == 200
        assert post_event(dispute).status_code == 200

        worker_a = _AnotherWorker(settings, _message_of(sessions, payment).id)
        try:
            def commit_payment() -> None:
                worker_a.thread.start()
                worker_a.finished()

            with _payment_committed_before_it_is_looked_for(sessions, stray, commit_payment) as taken:
                result = process_message(sessions, settings, _message_of(sessions, dispute).id)  # worker B
        finally:
            worker_a.close()
        assert len(taken) == 1  # the payment was committed between B's two look-ups
        worker_a.assert_done()
        assert result.outcome == "done", result
        assert _inbox(sessions, payment).status is EventStatus.PROCESSED
        stored = _inbox(sessions, dispute)
        assert (stored.status, stored.order_id) == (EventStatus.PROCESSED, order["order_id"])

        # As if the payment had been applied first: the dispute is the order's, and so is its money.
        _assert_flagged_for_both(sessions, order, stray, opened, status)
        [told] = _opened_alerts(sessions, order)
        assert "left as it is" not in told and "never received" not in told, told
        row = order_row(sessions, order)
        taken_back = order["total"] if status == "lost" else 0
        assert (row.paid_amount, row.charged_back_amount, row.money_held) == (
            2 * order["total"], taken_back, 2 * order["total"] - taken_back)
        if status == "lost":
            assert f"{order['total']} jpy taken back; the order now holds {order['total']} jpy" in told

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_stray_refund_run_while_another_worker_commits_its_payment_is_counted_once(
            client, settings, sessions, paid_order, post_event, localstripe):
        """Worker A read Stripe's list of the intent's refunds before the refund was made, and commits the payment
        while worker B runs the refund's charge.refunded: B alone can count the refund (cab8fa9's look-up again)."""
        order = paid_order()
        stray = _paid_on_a_second_tab(order)
        payment = _stray_succeeded(order, stray)
        assert post_event(payment).status_code == 200

        # Stripe answers A's list of the intent's refunds at once; the answer is held on its way back.
        proxy = HoldingProxy(localstripe.port, hold=the_first("GET /v1/refunds"))
        sdk_client = stripe.default_http_client
        stripe.default_http_client = stripe.new_default_http_client(timeout=60)
        use_stripe(proxy.base)
        worker_a = _AnotherWorker(settings, _message_of(sessions, payment).id)
        try:
            worker_a.thread.start()
            proxy.wait_for_answers(1, timeout=30)
            refund = stripe.Refund.create(payment_intent=stray)  # in Stripe's dashboard
            refunded = charge_refunded(refund.charge)
            assert post_event(refunded).status_code == 200

            def commit_payment() -> None:
                proxy.release()
                worker_a.finished()

            with _payment_committed_before_it_is_looked_for(sessions, stray, commit_payment) as taken:
                result = process_message(sessions, settings, _message_of(sessions, refunded).id)  # worker B
        finally:
            proxy.release()
            worker_a.close()
            stripe.default_http_client = sdk_client
            use_stripe(localstripe.base)
            proxy.close()
        assert len(taken) == 1  # the payment was committed between B's two look-ups
        worker_a.assert_done()
        assert result.outcome == "done", result
        assert _inbox(sessions, payment).status is EventStatus.PROCESSED
        stored = _inbox(sessions, refunded)
        assert (stored.status, stored.order_id) == (EventStatus.PROCESSED, order["order_id"])
        _assert_refund_counted_once(sessions, order, refund)
        [told] = [alert.text for alert in alerts(sessions) if f"charge {refund.charge} refunded in full" in alert.text]
        assert told.startswith(f"Order {order['order_id']} needs review")
