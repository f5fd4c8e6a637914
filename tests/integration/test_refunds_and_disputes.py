"""Refunds and disputes made at Stripe: charge.refunded and charge.dispute.* through the webhook.

localstripe makes real refunds (and charges that list them) but sends none of these events, so
each event is built from the real objects, in the shape of the fixtures Stripe sends, signed
with Stripe's scheme and posted through the webhook, then run by the worker.
"""
from __future__ import annotations

import copy

import pytest
import stripe
from sqlalchemy import select

from consumers.staff_actions import Refused, accept_order, cancel_order, refund_order
from models.db import transaction
from models.events import EventStatus, InboxEvent
from models.history import StaffAlert
from models.orders import Order, get_order, record_refund, return_unshipped_units
from models.refunds import Dispute, Refund, RefundSource, disputes_ruling_out_refund
from tests.integration.test_admin_pages import logged_in, page
from tests.stripe_proxy import HoldingProxy, refunds_listed_as_failed
from tests.support import confirm_card, event_for, stripe_unreachable
from webhook_app.admin.orders import available_decisions


@pytest.fixture
def paid_order(client, checkout, post_event, deliver):
    """A real payment at localstripe, its succeeded event applied: the order is paid, 2 units taken."""
    def make() -> dict:
        order = checkout([("TEA-01", 2)])
        assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
        post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                             order_id=order["order_id"], amount=order["total"]))
        deliver()
        assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
        return order
    return make


@pytest.fixture
def stripe_says(post_event, deliver):
    """POST an event signed with Stripe's scheme and let the worker run it."""
    def send(event: dict) -> dict:
        assert post_event(event).status_code == 200
        deliver()
        return event
    return send


def charge_refunded(charge_id: str) -> dict:
    """charge.refunded as Stripe sends it: the charge, with its refunds listed, as Stripe has it now."""
    event = event_for("charge.refunded")
    event["data"]["object"] = stripe.Charge.retrieve(charge_id).to_dict()
    return event


def charge_refunded_as_now(charge_id: str) -> dict:
    """charge.refunded as Stripe sends it from API version 2022-11-15 on: the charge without its refunds."""
    event = charge_refunded(charge_id)
    event["api_version"] = "2024-06-20"
    del event["data"]["object"]["refunds"]
    return event


def refund_updated(refund_id: str, kind: str = "charge.refund.updated", **changes) -> dict:
    """charge.refund.updated (or refund.updated / refund.failed): the refund as Stripe has it, with `changes`."""
    event = event_for("charge.refunded")
    event["type"] = kind
    event["data"] = {"object": {**stripe.Refund.retrieve(refund_id).to_dict(), **changes}}
    return event


def dispute_event(kind: str, order: dict, charge_id: str, status: str, dispute_id: str = "dp_FromTheCardIssuer1"):
    event = event_for("charge.dispute.created")
    event["type"] = f"charge.dispute.{kind}"
    dispute = copy.deepcopy(event["data"]["object"])
    dispute.update(id=dispute_id, charge=charge_id, payment_intent=order["payment_intent_id"],
                   amount=order["total"], currency=order["currency"], status=status, reason="fraudulent")
    event["data"]["object"] = dispute
    return event


def stock(client) -> tuple[int, int]:
    product = client.get("/products/TEA-01").get_json()
    return product["on_hand"], product["reserved"]


def order_row(sessions, order: dict) -> Order:
    with sessions() as session:
        return session.get(Order, order["order_id"])


def refunds(sessions) -> list[tuple[str, int, RefundSource]]:
    with sessions() as session:
        return [(r.stripe_refund_id, r.amount, r.source)
                for r in session.scalars(select(Refund).order_by(Refund.id))]


def alerts(sessions) -> list[StaffAlert]:
    with sessions() as session:
        return session.scalars(select(StaffAlert).order_by(StaffAlert.id)).all()


# --- charge.refunded ------------------------------------------------------------------------------------------


def test_a_full_refund_at_stripe_refunds_the_order_and_puts_its_unshipped_units_back(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    assert stock(client) == (38, 0)
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"])  # in Stripe's dashboard
    event = stripe_says(charge_refunded(refund.charge))

    body = client.get(f"/orders/{order['order_id']}").get_json()
    assert body["status"] == "refunded"
    assert body["shipment"]["status"] == "cancelled"
    assert stock(client) == (40, 0)
    assert refunds(sessions) == [(refund.id, order["total"], RefundSource.STRIPE)]
    row = order_row(sessions, order)
    assert (row.refunded_amount, row.money_held, row.refund_id) == (order["total"], 0, refund.id)
    with sessions() as session:
        stored = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
        assert (stored.status, stored.order_id) == (EventStatus.PROCESSED, order["order_id"])

    # Stripe's next charge.refunded for the same charge (another event id) records nothing again.
    stripe_says(charge_refunded(refund.charge))
    assert refunds(sessions) == [(refund.id, order["total"], RefundSource.STRIPE)]
    assert stock(client) == (40, 0)


def test_a_partial_refund_at_stripe_is_recorded_and_flags_the_order_then_the_rest_refunds_it(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    first = stripe.Refund.create(payment_intent=order["payment_intent_id"], amount=1000)
    stripe_says(charge_refunded(first.charge))

    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert "partially refunded at Stripe: 1000 of 3100" in body["review_reason"]
    assert stock(client) == (38, 0)  # a person decides whether the goods still ship
    assert order_row(sessions, order).money_held == order["total"] - 1000
    [alert] = alerts(sessions)
    assert alert.order_id == order["order_id"] and alert.url.endswith(f"/admin/orders/{order['order_id']}")

    rest = stripe.Refund.create(payment_intent=order["payment_intent_id"], amount=order["total"] - 1000)
    stripe_says(charge_refunded(rest.charge))
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "refunded"
    assert refunds(sessions) == [(first.id, 1000, RefundSource.STRIPE),
                                 (rest.id, order["total"] - 1000, RefundSource.STRIPE)]
    assert order_row(sessions, order).money_held == 0
    assert stock(client) == (40, 0)


def test_a_refund_staff_made_here_is_recorded_once_and_its_event_changes_nothing(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"])
    with transaction(sessions) as session:  # what the staff refund records
        stored = get_order(session, order["order_id"], for_update=True)
        record_refund(session, stored, stripe_refund_id=refund.id, amount=refund.amount, currency=refund.currency,
                      status=refund.status, source=RefundSource.STAFF, reason="customer asked")
        stored.mark_refunded(refund.id, "customer asked")
        return_unshipped_units(session, stored)
    assert stock(client) == (40, 0)

    stripe_says(charge_refunded(refund.charge))
    assert refunds(sessions) == [(refund.id, order["total"], RefundSource.STAFF)]
    assert stock(client) == (40, 0)
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.refund_reason) == ("refunded", order["total"],
                                                                         "customer asked")


def test_refunds_at_stripe_are_recorded_from_stripes_list_when_the_event_does_not_list_them(
        client, sessions, paid_order, stripe_says):
    """Current API versions send the charge without its refunds: a partial refund recorded nothing,
    raised no flag and no alert ("refunds already recorded"), and the order's money stayed counted."""
    order = paid_order()
    first = stripe.Refund.create(payment_intent=order["payment_intent_id"], amount=1000)
    event = stripe_says(charge_refunded_as_now(first.charge))
    assert "refunds" not in event["data"]["object"]

    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert "partially refunded at Stripe: 1000 of 3100" in body["review_reason"]
    assert refunds(sessions) == [(first.id, 1000, RefundSource.STRIPE)]
    assert order_row(sessions, order).money_held == order["total"] - 1000
    [alert] = alerts(sessions)
    assert alert.order_id == order["order_id"]

    rest = stripe.Refund.create(payment_intent=order["payment_intent_id"], amount=order["total"] - 1000)
    stripe_says(charge_refunded_as_now(rest.charge))
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "refunded"
    assert sorted(refunds(sessions)) == sorted([(first.id, 1000, RefundSource.STRIPE),
                                                (rest.id, order["total"] - 1000, RefundSource.STRIPE)])
    row = order_row(sessions, order)
    assert (row.refunded_amount, row.money_held) == (order["total"], 0)
    assert stock(client) == (40, 0)


def test_a_refund_at_stripe_before_the_payment_is_applied_leaves_the_order_nothing_to_ship(
        client, sessions, settings, checkout, post_event, deliver, stripe_says):
    """The refund's event first, then the payment's: the refund was not recorded, so the order seemed to
    hold the whole payment and staff's accept shipped an order Stripe had refunded in full."""
    order = checkout([("TEA-01", 2)])
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"])
    stripe_says(charge_refunded_as_now(refund.charge))
    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review" and "refunded in full at Stripe" in body["review_reason"]
    assert refunds(sessions) == [(refund.id, order["total"], RefundSource.STRIPE)]

    stripe_says(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                          order_id=order["order_id"], amount=order["total"]))
    row = order_row(sessions, order)
    assert (row.status.value, row.paid_amount, row.money_held) == ("needs_review", order["total"], 0)
    assert f"paid {order['total']} jpy on payment intent" in row.review_reason
    assert len(alerts(sessions)) == 2
    with pytest.raises(Refused, match="holds no money of the customer"):
        accept_order(sessions, order["order_id"], actor="alice@example.com", note="ship it")
    assert client.get(f"/orders/{order['order_id']}").get_json()["shipment"] is None


def test_stripe_unreachable_while_listing_a_charges_refunds_is_retried_then_recorded(
        client, sessions, paid_order, post_event, deliver):
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"], amount=1000)
    post_event(event := charge_refunded_as_now(refund.charge))
    with stripe_unreachable():
        deliver(max_rounds=1)
    with sessions() as session:
        stored = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
    assert stored.status is EventStatus.RETRYING and "PaymentGatewayError" in stored.last_error
    assert refunds(sessions) == []
    deliver()
    assert refunds(sessions) == [(refund.id, 1000, RefundSource.STRIPE)]
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "needs_review"


def test_a_refunded_total_stripes_list_does_not_explain_is_retried_not_taken_as_recorded(
        client, sessions, paid_order, post_event, deliver):
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"], amount=1000)
    event = charge_refunded_as_now(refund.charge)
    event["data"]["object"].update(amount_refunded=order["total"], refunded=True)  # more than Stripe lists
    post_event(event)
    deliver(max_rounds=1)
    with sessions() as session:
        stored = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
    assert stored.status is EventStatus.RETRYING
    assert f"is refunded {order['total']}, but Stripe lists refunds of 1000" in stored.last_error
    assert refunds(sessions) == [] and client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"


def test_a_refund_that_fails_after_the_order_was_refunded_no_longer_counts_and_staff_are_told(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"])
    stripe_says(charge_refunded_as_now(refund.charge))
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "refunded"

    event = stripe_says(refund_updated(refund.id, status="failed", failure_reason="expired_or_canceled_card"))
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("refunded", 0, order["total"])
    with sessions() as session:
        stored = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
        assert session.scalars(select(Refund.status)).all() == ["failed"]
    assert f"refund {refund.id} of {order['total']} jpy failed at Stripe (expired_or_canceled_card)" in stored.outcome
    assert "noted, order already refunded" in stored.outcome
    alert = alerts(sessions)[-1]
    assert alert.order_id == order["order_id"] and "the customer did not get it back" in alert.text

    stripe_says(refund_updated(refund.id, kind="refund.failed", status="failed"))  # the same news again
    assert order_row(sessions, order).money_held == order["total"]
    assert len(alerts(sessions)) == 1


def test_staff_give_back_what_a_failed_refund_did_not_and_a_refunded_order_holding_nothing_is_refused(
        client, sessions, paid_order, stripe_says, localstripe):
    order = paid_order()
    failed = stripe.Refund.create(payment_intent=order["payment_intent_id"])
    stripe_says(charge_refunded_as_now(failed.charge))
    stripe_says(refund_updated(failed.id, status="failed", failure_reason="expired_or_canceled_card"))
    row = order_row(sessions, order)
    assert (row.status.value, row.money_held) == ("refunded", order["total"])
    assert available_decisions(row) == ["refund"]  # the console offers it

    proxy = HoldingProxy(localstripe.port, hold=lambda line: False, rewrite=refunds_listed_as_failed)
    working, stripe.api_base = stripe.api_base, proxy.base  # Stripe lists the refund as failed, as it would
    try:
        decision = refund_order(sessions, order["order_id"], actor="alice", reason="the first refund bounced")
    finally:
        stripe.api_base = working
        proxy.close()
    given = [r for r in stripe.Refund.list(payment_intent=order["payment_intent_id"]).data if r.id != failed.id]
    assert [(r.amount, r.metadata["order_id"]) for r in given] == [(order["total"], order["order_id"])]
    assert decision.status_before == decision.status_after == "refunded"
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("refunded", order["total"], 0)
    assert refunds(sessions)[-1] == (given[0].id, order["total"], RefundSource.STAFF)
    assert available_decisions(row) == []

    with pytest.raises(Refused, match=f"order {order['order_id']} is already refunded"):
        refund_order(sessions, order["order_id"], actor="alice", reason="once more")
    assert len(stripe.Refund.list(payment_intent=order["payment_intent_id"]).data) == 2


def test_a_partial_refund_that_fails_is_added_to_the_reason_the_order_is_in_review(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    part = stripe.Refund.create(payment_intent=order["payment_intent_id"], amount=1000)
    stripe_says(charge_refunded_as_now(part.charge))
    assert order_row(sessions, order).money_held == order["total"] - 1000
    stripe_says(refund_updated(part.id, kind="refund.updated", status="canceled"))
    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert "partially refunded at Stripe: 1000 of 3100" in body["review_reason"]
    assert f"then: refund {part.id} of 1000 jpy canceled at Stripe" in body["review_reason"]
    assert order_row(sessions, order).money_held == order["total"]


def test_refund_updates_that_change_nothing_the_service_counts_are_recorded_quietly(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"], amount=1000)
    # Before its charge.refunded: not counted here (charge.refunded decides whether the order is flagged).
    early = stripe_says(refund_updated(refund.id, status="succeeded"))
    failed_early = stripe_says(refund_updated(refund.id, status="failed", id="re_FailedBeforeCounted01"))
    odd = stripe_says(refund_updated(refund.id, status="x" * 100))
    with sessions() as session:
        outcomes = {e["id"]: session.scalars(select(InboxEvent.outcome).where(InboxEvent.event_id == e["id"])).one()
                    for e in (early, failed_early, odd)}
        assert session.scalars(select(Refund.stripe_refund_id)).all() == ["re_FailedBeforeCounted01"]
    assert "recorded from charge.refunded" in outcomes[early["id"]]
    assert "failed at Stripe; it was never counted" in outcomes[failed_early["id"]]
    assert "no refund status the service knows" in outcomes[odd["id"]]
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount) == ("paid", 0)
    assert alerts(sessions) == []


def test_refunds_and_disputes_of_a_stray_intent_that_paid_the_order_are_the_orders(
        client, sessions, paid_order, stripe_says):
    """A second checkout tab's intent paid the order too: its refund and its dispute were ignored as
    "no order of ours", though its money was counted on the order."""
    order = paid_order()
    stray = stripe.PaymentIntent.create(amount=order["total"], currency="jpy",
                                        metadata={"order_id": order["order_id"]})
    assert confirm_card(stray.id, "4242424242424242") == "succeeded"
    stripe_says(event_for("localstripe_payment_intent.succeeded", intent_id=stray.id, order_id=order["order_id"],
                          amount=order["total"]))
    assert order_row(sessions, order).money_held == 2 * order["total"]

    refund = stripe.Refund.create(payment_intent=stray.id)  # in Stripe's dashboard
    stripe_says(charge_refunded_as_now(refund.charge))
    row = order_row(sessions, order)
    assert (row.status.value, row.money_held) == ("needs_review", order["total"])  # its own payment stands
    assert f"refunded in full at Stripe ({order['total']} jpy); the order still holds {order['total']} jpy" \
        in row.review_reason
    assert refunds(sessions) == [(refund.id, order["total"], RefundSource.STRIPE)]

    stripe_says(dispute_event("created", {**order, "payment_intent_id": stray.id}, refund.charge, "needs_response"))
    with sessions() as session:
        assert session.scalars(select(Dispute.order_id)).all() == [order["order_id"]]
    assert "dispute dp_FromTheCardIssuer1" in alerts(sessions)[-1].text


def test_a_refund_of_a_charge_that_is_not_ours_is_ignored(client, sessions, stripe_says):
    event = stripe_says(event_for("charge.refunded"))
    with sessions() as session:
        stored = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
    assert stored.status is EventStatus.IGNORED and "no order of ours" in stored.outcome
    assert refunds(sessions) == []


# --- disputes -------------------------------------------------------------------------------------------------


def test_a_dispute_flags_the_order_alerts_staff_and_its_closing_is_recorded_with_the_outcome(
        client, sessions, paid_order, stripe_says):
    order = paid_order()
    charge_id = stripe.PaymentIntent.retrieve(order["payment_intent_id"]).to_dict()["latest_charge"]
    charge_id = charge_id["id"] if isinstance(charge_id, dict) else charge_id
    stripe_says(dispute_event("created", order, charge_id, "needs_response"))
    stripe_says(dispute_event("created", order, charge_id, "needs_response"))  # Stripe's own duplicate

    body = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert body["status"] == "needs_review"
    assert "dispute dp_FromTheCardIssuer1 opened (fraudulent)" in body["review_reason"]
    with sessions() as session:
        [dispute] = session.scalars(select(Dispute)).all()
    assert (dispute.order_id, dispute.charge_id, dispute.amount, dispute.status, dispute.closed_at) == (
        order["order_id"], charge_id, order["total"], "needs_response", None)
    [opened] = alerts(sessions)
    assert "dispute dp_FromTheCardIssuer1" in opened.text

    stripe_says(dispute_event("updated", order, charge_id, "under_review"))
    stripe_says(dispute_event("closed", order, charge_id, "lost"))
    with sessions() as session:
        [dispute] = session.scalars(select(Dispute)).all()
    assert dispute.status == "lost" and dispute.closed_at is not None
    closed = alerts(sessions)[-1]
    assert (closed.order_id, len(alerts(sessions))) == (order["order_id"], 2)
    assert "closed: lost" in closed.text
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "needs_review"


def test_staff_give_back_only_what_a_partial_refund_at_stripe_left(client, sessions, paid_order, stripe_says):
    """The refund asked Stripe for no amount, and localstripe refunded the whole charge again: 4,100
    given back of 3,100 paid. The service now asks for what is left, as it counted it."""
    order = paid_order()
    first = stripe.Refund.create(payment_intent=order["payment_intent_id"], amount=1000)  # in the dashboard
    stripe_says(charge_refunded(first.charge))
    refund_order(sessions, order["order_id"], actor="alice", reason="the rest of it")
    amounts = sorted(r.amount for r in stripe.Refund.list(payment_intent=order["payment_intent_id"]).data)
    assert amounts == sorted([1000, order["total"] - 1000])
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount, row.money_held) == ("refunded", order["total"], 0)


def _charge_of(order: dict) -> str:
    charge = stripe.PaymentIntent.retrieve(order["payment_intent_id"]).to_dict()["latest_charge"]
    return charge["id"] if isinstance(charge, dict) else charge


@pytest.mark.parametrize("status, said", [("needs_response", "Stripe does not refund a disputed payment"),
                                          ("under_review", "Stripe does not refund a disputed payment"),
                                          ("lost", "a refund would pay it twice")])
def test_a_refund_while_the_payment_is_disputed_or_its_dispute_lost_is_refused_and_not_offered(
        client, sessions, paid_order, stripe_says, status, said):
    """The refund went to Stripe: the customer would get the money twice (the chargeback and the
    refund), or real Stripe refused it and staff were told to try again later."""
    order = paid_order()
    stripe_says(dispute_event("created", order, _charge_of(order), "needs_response"))
    if status != "needs_response":
        stripe_says(dispute_event("closed" if status == "lost" else "updated", order, _charge_of(order), status))
    with pytest.raises(Refused, match=said):
        refund_order(sessions, order["order_id"], actor="alice", reason="disputed anyway")
    assert stripe.Refund.list(payment_intent=order["payment_intent_id"]).data == []
    row = order_row(sessions, order)
    assert (row.status.value, row.refunded_amount) == ("needs_review", 0)
    with sessions() as session:
        assert "refund" not in available_decisions(row, disputes_ruling_out_refund(session, [row.id]).get(row.id))
        assert ("accept" in available_decisions(row, None)) is (status != "lost")  # lost: nothing left to keep
    shown = page(logged_in(client, sessions), f"/admin/orders/{order['order_id']}/refund")  # the console says why
    assert "cannot be refunded as it is now" in shown and said in shown


def test_a_refund_after_a_dispute_was_won_goes_ahead(client, sessions, paid_order, stripe_says):
    order = paid_order()
    stripe_says(dispute_event("created", order, _charge_of(order), "needs_response"))
    stripe_says(dispute_event("closed", order, _charge_of(order), "won"))
    refund_order(sessions, order["order_id"], actor="alice", reason="returned the goods after all")
    assert [r.amount for r in stripe.Refund.list(payment_intent=order["payment_intent_id"]).data] == [order["total"]]
    assert order_row(sessions, order).status.value == "refunded"


def test_a_lost_dispute_is_money_gone_so_the_order_can_be_cancelled_but_not_refunded_or_kept(
        client, sessions, paid_order, stripe_says):
    """The order went on holding a lost dispute's money: its goods, never shipped, could be neither
    cancelled (it held money) nor refunded (the customer had it back), only kept and shipped."""
    order = paid_order()
    stripe_says(dispute_event("created", order, _charge_of(order), "needs_response"))
    stripe_says(dispute_event("closed", order, _charge_of(order), "lost"))
    stripe_says(dispute_event("closed", order, _charge_of(order), "lost"))  # Stripe's own duplicate
    row = order_row(sessions, order)
    assert (row.paid_amount, row.refunded_amount, row.charged_back_amount, row.money_held) == (
        order["total"], 0, order["total"], 0)
    assert "the order now holds 0 jpy: nothing to refund or keep, cancel it" in alerts(sessions)[-1].text
    with pytest.raises(Refused, match="holds no money"):
        accept_order(sessions, order["order_id"], actor="alice", note="ship it anyway")
    assert available_decisions(row) == ["cancel", "ship"]  # ship: if its goods had left, say so before cancelling
    shown = page(logged_in(client, sessions), f"/admin/orders/{order['order_id']}")
    assert "Charged back" in shown and "(a dispute lost)" in shown

    cancel_order(sessions, order["order_id"], actor="alice", note="chargeback lost; goods stay")
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "cancelled"
    assert stock(client) == (40, 0)


def test_a_dispute_on_a_refunded_order_is_noted_and_alerted(client, sessions, paid_order, stripe_says):
    order = paid_order()
    refund = stripe.Refund.create(payment_intent=order["payment_intent_id"])
    stripe_says(charge_refunded(refund.charge))
    event = stripe_says(dispute_event("created", order, refund.charge, "needs_response"))
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "refunded"
    with sessions() as session:
        stored = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event["id"])).one()
        assert session.scalars(select(Dispute.order_id)).all() == [order["order_id"]]
    assert "noted, order already refunded" in stored.outcome
    assert "dispute" in alerts(sessions)[-1].text
