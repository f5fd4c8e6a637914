"""Disputes, refunds and reconciled events in whatever order Stripe delivers them.

Stripe does not guarantee the order webhooks arrive in, and its event list is newest first. Each
test handles a money event before the one it follows (or after the one it precedes) and checks
that the order is flagged once, staff are told once and every amount is counted once.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit
from urllib.request import Request, urlopen

import pytest
import stripe
from click.testing import CliRunner
from sqlalchemy import select

from consumers.staff_actions import replay_event
from models.events import EventStatus, InboxEvent, OutboxMessage
from models.refunds import Dispute, Refund, RefundSource
from tests.integration.test_refunds_and_disputes import (  # noqa: F401  (fixtures)
    alerts, charge_refunded, charge_refunded_as_now, dispute_event, order_row, paid_order, refund_updated, refunds,
    stock, stripe_says)
from tests.support import confirm_card, event_for, use_stripe
from webhook_app.cli import shop

DISPUTE = "dp_FromTheCardIssuer1"


def _charge_of(order: dict) -> str:
    charge = stripe.PaymentIntent.retrieve(order["payment_intent_id"]).to_dict()["latest_charge"]
    return charge["id"] if isinstance(charge, dict) else charge


def _dispute(sessions) -> Dispute:
    with sessions() as session:
        [dispute] = session.scalars(select(Dispute)).all()
        return dispute


def _dispute_alerts(sessions) -> list[str]:
    return [alert.text for alert in alerts(sessions) if DISPUTE in alert.text]


# --- disputes -------------------------------------------------------------------------------------------------


def test_a_dispute_update_handled_before_its_opening_flags_the_order_and_alerts_staff_once(
        client, sessions, paid_order, stripe_says):
    """The update recorded the dispute without flagging or alerting; the late created then found it recorded."""
    order = paid_order()
    charge_id = _charge_of(order)
    stripe_says(dispute_event("updated", order, charge_id, "under_review"))  # evidence submitted

    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert f"dispute {DISPUTE} opened (fraudulent): {order['total']} jpy contested" in body["review_reason"]
    [alert] = _dispute_alerts(sessions)
    assert f"Order {order['order_id']} needs review" in alert

    stripe_says(dispute_event("created", order, charge_id, "needs_response"))  # the opening, delivered late
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "needs_review"
    assert len(_dispute_alerts(sessions)) == 1
    dispute = _dispute(sessions)
    assert (dispute.order_id, dispute.charge_id, dispute.amount, dispute.status, dispute.closed_at) == (
        order["order_id"], charge_id, order["total"], "under_review", None)


def test_a_lost_dispute_whose_closing_is_handled_before_its_opening_flags_the_order_once(
        client, sessions, paid_order, stripe_says):
    """The closing recorded the dispute lost and only alerted its outcome: the order stayed paid."""
    order = paid_order()
    charge_id = _charge_of(order)
    created = dispute_event("created", order, charge_id, "needs_response")
    closed = dispute_event("closed", order, charge_id, "lost")
    closed["created"] = created["created"] + 600
    stripe_says(closed)
    stripe_says(created)

    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert (f"dispute {DISPUTE} opened (fraudulent) and already closed: lost, {order['total']} jpy taken back"
            in body["review_reason"])
    [alert] = _dispute_alerts(sessions)
    assert f"Order {order['order_id']} needs review" in alert and "lost" in alert
    dispute = _dispute(sessions)
    assert (dispute.amount, dispute.status) == (order["total"], "lost") and dispute.closed_at is not None
    row = order_row(sessions, order)
    assert (row.paid_amount, row.refunded_amount) == (order["total"], 0)


def test_a_won_dispute_whose_closing_is_handled_first_alerts_staff_and_leaves_the_order_paid(
        client, sessions, paid_order, stripe_says):
    """Won before the service saw it opened: staff hear of it, but the money was kept, so nothing to review."""
    order = paid_order()
    charge_id = _charge_of(order)
    created = dispute_event("created", order, charge_id, "needs_response")
    closed = dispute_event("closed", order, charge_id, "won")
    closed["created"] = created["created"] + 600
    stripe_says(closed)
    stripe_says(created)

    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
    [alert] = _dispute_alerts(sessions)
    assert f"dispute {DISPUTE} opened (fraudulent) and already closed: won" in alert
    assert "needs no review" in alert
    dispute = _dispute(sessions)
    assert dispute.status == "won" and dispute.closed_at is not None


def test_a_stale_dispute_update_after_its_closing_keeps_the_outcome(client, sessions, paid_order, stripe_says):
    """An update sent before the closing and delivered after it set the lost dispute back to under_review."""
    order = paid_order()
    charge_id = _charge_of(order)
    stripe_says(dispute_event("created", order, charge_id, "needs_response"))
    updated = dispute_event("updated", order, charge_id, "under_review")
    closed = dispute_event("closed", order, charge_id, "lost")
    updated["created"] = closed["created"] - 600
    stripe_says(closed)
    closed_at = _dispute(sessions).closed_at
    stripe_says(updated)

    dispute = _dispute(sessions)
    assert (dispute.status, dispute.closed_at) == ("lost", closed_at) and closed_at is not None
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "needs_review"
    opened, closing = _dispute_alerts(sessions)
    assert "opened (fraudulent)" in opened and "closed: lost" in closing


# --- refunds --------------------------------------------------------------------------------------------------


def test_a_refund_update_older_than_its_failure_is_ignored_so_the_failure_is_counted_once(
        client, sessions, paid_order, stripe_says):
    """A stale succeeded un-failed the refund, and the next failure event subtracted it again (-3100 refunded)."""
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"])  # in Stripe's dashboard
    stripe_says(charge_refunded(refund.charge))
    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.refunded_amount) == ("refunded", order["total"], order["total"])

    failed = refund_updated(refund.id, "refund.failed", status="failed", failure_reason="lost_or_stolen_card")
    stale = refund_updated(refund.id, "charge.refund.updated", status="succeeded")
    stale["created"] = failed["created"] - 600  # sent before the failure, delivered after it
    failed_again = refund_updated(refund.id, "refund.updated", status="failed", failure_reason="lost_or_stolen_card")
    stripe_says(failed)
    stripe_says(stale)
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("refunded", 0, order["total"])
    stripe_says(failed_again)  # the same failure, as Stripe's other event type for it

    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.refunded_amount, row.money_held) == (
        "refunded", order["total"], 0, order["total"])
    with sessions() as session:
        assert session.scalars(select(Refund.status)).all() == ["failed"]
    [told] = [alert.text for alert in alerts(sessions) if "the customer did not get it back" in alert.text]
    assert f"refund {refund.id} of {order['total']} jpy failed at Stripe (lost_or_stolen_card)" in told


def _paid_on_a_second_tab(order: dict) -> str:
    """The customer pays the order again on another checkout tab's intent (one the order does not hold)."""
    stray = stripe.PaymentIntent.create(amount=order["total"], currency="jpy",
                                        metadata={"order_id": order["order_id"]})
    assert confirm_card(stray.id, "4242424242424242") == "succeeded"
    return stray.id


def _stray_succeeded(order: dict, stray: str) -> dict:
    return event_for("localstripe_payment_intent.succeeded", intent_id=stray, order_id=order["order_id"],
                     amount=order["total"])


def _stray_refund_event(kind: str, refund) -> dict:
    if kind == "charge.refunded":
        return charge_refunded(refund.charge)
    if kind == "charge.refunded without its refunds":
        return charge_refunded_as_now(refund.charge)
    return refund_updated(refund.id, kind, status="succeeded")


def _inbox(sessions, event: dict) -> InboxEvent:
    with sessions() as session:
        return session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()


@pytest.mark.parametrize("early", ["charge.refunded", "charge.refunded without its refunds", "charge.refund.updated",
                                   "refund.updated"])
def test_a_stray_intents_refund_handled_before_its_payment_is_counted_when_the_payment_links_the_intent(
        client, sessions, settings, paid_order, stripe_says, early):
    """The refund's event found no order of ours (the stray intent was not linked yet) and was dropped; then the
    payment counted the intent's whole amount, so the order held 2 x 3100 though 3100 of it was given back."""
    order = paid_order()
    stray = _paid_on_a_second_tab(order)
    refund = stripe.Refund.create(payment_intent=stray)  # in Stripe's dashboard
    first = stripe_says(_stray_refund_event(early, refund))
    assert _inbox(sessions, first).status is EventStatus.IGNORED  # nothing links the intent to the order yet
    assert order_row(sessions, order).money_held == order["total"]

    stripe_says(_stray_succeeded(order, stray))
    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.refunded_amount, row.money_held) == (
        "needs_review", 2 * order["total"], order["total"], order["total"])
    assert f"paid {order['total']} jpy on payment intent {stray}" in row.review_reason
    assert f"refunded in full at Stripe ({order['total']} jpy); the order still holds {order['total']} jpy" \
        in row.review_reason
    assert refunds(sessions) == [(refund.id, order["total"], RefundSource.STRIPE)]
    [told] = [alert.text for alert in alerts(sessions) if stray in alert.text]
    assert f"Order {order['order_id']} needs review" in told and "refunded in full at Stripe" in told
    assert stripe.Refund.list(payment_intent=stray).data[0].id == refund.id  # nothing refunded by the service
    assert len(stripe.Refund.list(payment_intent=stray).data) == 1

    # Stripe's next delivery of the refund's events, and staff replaying the one that was ignored: counted once.
    stripe_says(charge_refunded_as_now(refund.charge))
    stripe_says(refund_updated(refund.id, "refund.updated", status="succeeded"))
    replay_event(sessions, settings, first["id"], actor="alice")
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("needs_review", order["total"], order["total"])
    assert refunds(sessions) == [(refund.id, order["total"], RefundSource.STRIPE)]
    assert _inbox(sessions, first).status is EventStatus.PROCESSED


@pytest.mark.parametrize("refund_first", [False, True], ids=["payment-then-refund", "refund-then-payment"])
def test_an_order_paid_only_on_a_stray_intent_refunded_in_full_ends_the_same_whichever_event_comes_first(
        client, sessions, checkout, stripe_says, refund_first):
    """Refund first: the order stayed in review holding 3100 that Stripe had given back, its units held."""
    order = checkout([("TEA-01", 2)])
    stray = _paid_on_a_second_tab(order)
    refund = stripe.Refund.create(payment_intent=stray)  # in Stripe's dashboard
    events = [_stray_succeeded(order, stray), charge_refunded_as_now(refund.charge)]
    for event in reversed(events) if refund_first else events:
        stripe_says(event)

    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.refunded_amount, row.money_held) == (
        "refunded", order["total"], order["total"], 0)
    assert refunds(sessions) == [(refund.id, order["total"], RefundSource.STRIPE)]
    assert stock(client) == (40, 0)  # its hold went back on the shelf
    assert len([alert for alert in alerts(sessions) if alert.order_id == order["order_id"]]) == 1
    assert len(stripe.Refund.list(payment_intent=stray).data) == 1


# --- reconcile ------------------------------------------------------------------------------------------------


class StripesEventList:
    """`GET /v1/events` as Stripe answers it, in front of localstripe (which lists oldest first):
    newest first, each page after the previous page's last event (`starting_after`), pages of at
    most `page_size` so that a listing takes several. The events are localstripe's own."""

    def __init__(self, upstream: str, page_size: int = 2):
        self.upstream, self.page_size, self.pages = upstream, page_size, 0
        self._listing: list[dict] = []
        listing = self

        class Answer(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlsplit(self.path)
                if url.path != "/v1/events":
                    self.send_error(404)
                    return
                body = json.dumps(listing.page(dict(parse_qsl(url.query)))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.base = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def page(self, query: dict) -> dict:
        self.pages += 1
        start = 0
        if "starting_after" in query:
            start = 1 + [event["id"] for event in self._listing].index(query["starting_after"])
        else:  # a new listing: what localstripe holds now, newest first
            self._listing = sorted(self._upstream_events(query.get("created[gte]")),
                                   key=lambda event: (event["created"], event["id"]), reverse=True)
        end = start + min(int(query.get("limit", 10)), self.page_size)
        return {"object": "list", "url": "/v1/events", "has_more": end < len(self._listing),
                "data": self._listing[start:end]}

    def _upstream_events(self, created_gte: str | None) -> list[dict]:
        events, after = [], None
        while True:
            params = {"limit": 100, **({"created[gte]": created_gte} if created_gte else {}),
                      **({"starting_after": after} if after else {})}
            request = Request(f"{self.upstream}/v1/events?{urlencode(params)}",
                              headers={"Authorization": "Bearer sk_test_local"})
            with urlopen(request, timeout=10) as answer:
                page = json.load(answer)
            events += page["data"]
            if not page["has_more"] or not page["data"]:
                return events
            after = page["data"][-1]["id"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_reconcile_queues_missed_events_oldest_first_when_stripe_lists_them_newest_first(
        settings, sessions, client, checkout, deliver):
    """Reconcile stored events in the list's order: at Stripe, newest first, each payment's later events first."""
    earlier = checkout([("TEA-01", 1)])
    assert confirm_card(earlier["payment_intent_id"], "4242424242424242") == "succeeded"
    time.sleep(1.1)  # Stripe's `created` counts seconds: the next payment's event is a second newer
    later = checkout([("TEA-01", 1)])
    assert confirm_card(later["payment_intent_id"], "4242424242424242") == "succeeded"
    # No webhook reached this service: only Stripe's event list knows of either payment.

    stripes_list = StripesEventList(settings.stripe_api_base)
    try:
        result = CliRunner().invoke(shop, ["reconcile", "--since", "10m"], env={
            "DATABASE_URL": settings.database_url, "STRIPE_API_BASE": stripes_list.base, "LOG_FORMAT": "console"})
    finally:
        stripes_list.close()
        use_stripe(settings.stripe_api_base)  # the CLI pointed the SDK at the listing
    assert result.exit_code == 0, result.output
    assert stripes_list.pages > 1

    with sessions() as session:
        stored = [(json.loads(event.payload)["created"], event.event_id, event.object_id, event.id)
                  for event in session.scalars(select(InboxEvent).order_by(InboxEvent.id))]
        queued = session.scalars(select(OutboxMessage.inbox_event_id).order_by(OutboxMessage.id)).all()
    assert f"{len(stored)} were missing" in result.output
    assert [event[:2] for event in stored] == sorted(event[:2] for event in stored)  # oldest first
    assert queued == sorted(queued)  # and queued for the worker in that order
    ours = [object_id for _created, _id, object_id, _row in stored
            if object_id in (earlier["payment_intent_id"], later["payment_intent_id"])]
    assert ours == [earlier["payment_intent_id"], later["payment_intent_id"]]

    deliver()
    for order in (earlier, later):
        assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
