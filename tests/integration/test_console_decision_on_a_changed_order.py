"""A decision confirmed in the console is carried out on the order its confirmation page showed, or not at all.

The page says what will happen to the money and the order; its form carries what the page showed (status,
money held, shipment). When the order changed before the button was pressed (a second payment landed, a
colleague decided), the decision is refused, audited as refused, and the answer says what the order is now.
An order that did not change goes through: the page's figures are the ones the check compares.
"""
from __future__ import annotations

import re

import stripe

import consumers.staff_actions as staff_actions
from models.orders import Order
from tests.integration.test_admin_pages import (audit_rows, flagged_order, flashes, logged_in, order_status, page,
                                                staff_client)  # noqa: F401 (a fixture)
from tests.support import confirm_card, event_for

CARD = "4242424242424242"


def confirmation_form(client, path: str) -> tuple[str, dict]:
    """The confirmation page, and its form's hidden fields as the browser holds them (the CSRF token too)."""
    text = page(client, path)
    return text, dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', text))


def confirm(client, path: str, form: dict, **fields):
    """Press the page's button: its hidden fields and what staff filled in."""
    return client.post(path, data={**form, **fields})


def held(sessions, order_id) -> int:
    with sessions() as session:
        return session.get(Order, order_id).money_held


def answer_shown(client, order_id) -> list[str]:
    """The lines the order's page opens with after a decision: what was done, or why not."""
    return [line for line in flashes(page(client, f"/admin/orders/{order_id}"))
            if line.startswith(("Not done", f"Order {order_id}:"))]


def refunded_at_stripe(*intent_ids) -> int:
    return sum(r.amount for intent_id in intent_ids for r in stripe.Refund.list(payment_intent=intent_id).data)


def pay_again(order, post_event, deliver):
    """The customer pays the order's total again on an intent made outside checkout (its metadata names the
    order), and the worker applies it."""
    other = stripe.PaymentIntent.create(amount=order["total"], currency="jpy",
                                        metadata={"order_id": order["order_id"]})
    assert confirm_card(other.id, CARD) == "succeeded"
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=other.id, order_id=order["order_id"],
                         amount=order["total"]))
    deliver()
    return other


def test_a_refund_confirmed_for_one_amount_is_refused_when_a_second_payment_landed_before_the_click(
        client, app, sessions, checkout, post_event, deliver):
    alice = logged_in(app.test_client(), sessions, "alice@example.com")
    order = flagged_order(checkout, post_event, deliver)  # paid 100 JPY less than its total: in review
    oid, first_paid = order["order_id"], order["total"] - 100
    shown, form = confirmation_form(alice, f"/admin/orders/{oid}/refund")
    assert f"Money: {first_paid:,} JPY goes back" in shown
    other = pay_again(order, post_event, deliver)
    now_held = held(sessions, oid)
    assert now_held == first_paid + order["total"]

    answer = confirm(alice, f"/admin/orders/{oid}/refund", form, note="amount mismatch, refund")
    assert (answer.status_code, answer.headers["Location"]) == (303, f"/admin/orders/{oid}")
    assert refunded_at_stripe(order["payment_intent_id"], other.id) == 0  # nothing went back
    status = order_status(sessions, oid)
    said = answer_shown(alice, oid)
    assert said == [f"Not done: order {oid} changed since you looked: it is now {status}, holding {now_held} jpy, "
                    f"no shipment (the page showed needs_review, holding {first_paid} jpy, no shipment); nothing "
                    f"was done: review it again"], said
    [row] = audit_rows(sessions)
    assert (row.actor, row.action, row.status_before, row.status_after) == \
        ("alice@example.com", "refund", status, status)
    assert row.detail.startswith(f"refused: order {oid} changed since you looked")

    # Reviewed again: the page now says what goes back, and that is what goes back.
    shown, form = confirmation_form(alice, f"/admin/orders/{oid}/refund")
    assert f"Money: {now_held:,} JPY goes back" in shown
    confirm(alice, f"/admin/orders/{oid}/refund", form, note="both payments back")
    assert order_status(sessions, oid) == "refunded"
    said = answer_shown(alice, oid)
    assert len(said) == 1 and said[0].startswith(f"Order {oid}: refund done, needs_review → refunded"), said
    assert refunded_at_stripe(other.id) == order["total"]


def test_a_refund_read_before_a_colleague_accepted_the_order_is_refused_and_his_accept_stands(
        client, app, sessions, checkout, post_event, deliver):
    alice = logged_in(app.test_client(), sessions, "alice@example.com")
    bob = logged_in(app.test_client(), sessions, "bob@example.com")
    order = flagged_order(checkout, post_event, deliver)
    oid, paid = order["order_id"], order["total"] - 100
    _, alices_form = confirmation_form(alice, f"/admin/orders/{oid}/refund")
    _, bobs_form = confirmation_form(bob, f"/admin/orders/{oid}/accept")
    confirm(bob, f"/admin/orders/{oid}/accept", bobs_form, note="customer paid the rest by bank transfer")
    assert order_status(sessions, oid) == "paid"

    confirm(alice, f"/admin/orders/{oid}/refund", alices_form, note="amount mismatch, refund")
    assert order_status(sessions, oid) == "paid"
    assert refunded_at_stripe(order["payment_intent_id"]) == 0
    assert client.get(f"/orders/{oid}").get_json()["shipment"]["status"] == "pending"  # Bob's shipment stands
    assert answer_shown(alice, oid) == [
        f"Not done: order {oid} changed since you looked: it is now paid, holding {paid} jpy, shipment pending "
        f"(the page showed needs_review, holding {paid} jpy, no shipment); nothing was done: review it again"]
    assert [(r.actor, r.action, r.status_before, r.status_after, r.detail.startswith("refused: "))
            for r in audit_rows(sessions)] == [("bob@example.com", "accept", "needs_review", "paid", False),
                                               ("alice@example.com", "refund", "paid", "paid", True)]


def test_an_accept_confirmed_for_one_amount_is_refused_when_a_second_payment_landed_before_the_click(
        client, app, sessions, checkout, post_event, deliver):
    alice = logged_in(app.test_client(), sessions, "alice@example.com")
    order = flagged_order(checkout, post_event, deliver)
    oid, first_paid = order["order_id"], order["total"] - 100
    shown, form = confirmation_form(alice, f"/admin/orders/{oid}/accept")
    assert f"Money: the {first_paid:,} JPY taken is kept" in shown
    pay_again(order, post_event, deliver)
    status = order_status(sessions, oid)

    confirm(alice, f"/admin/orders/{oid}/accept", form, note="customer paid the rest by bank transfer")
    assert order_status(sessions, oid) == status
    assert client.get(f"/orders/{oid}").get_json().get("shipment") is None  # nothing fulfilled
    said = answer_shown(alice, oid)
    assert len(said) == 1 and said[0].startswith(f"Not done: order {oid} changed since you looked: it is now "
                                                 f"{status}, holding {held(sessions, oid)} jpy"), said
    assert [(r.action, r.detail.split(":")[0]) for r in audit_rows(sessions)] == [("accept", "refused")]


def test_an_accept_is_refused_when_a_second_payment_lands_between_the_pages_check_and_the_accept(
        client, app, sessions, checkout, post_event, deliver, monkeypatch):
    """The check against the page runs before the decision (refused early, and a refund checks again
    after Stripe's calls); an accept compares again under its own lock of the order, so a payment the
    worker applies in between is not kept unseen."""
    alice = logged_in(app.test_client(), sessions, "alice@example.com")
    order = flagged_order(checkout, post_event, deliver)
    oid, first_paid = order["order_id"], order["total"] - 100
    _, form = confirmation_form(alice, f"/admin/orders/{oid}/accept")
    paid_in_between = []
    cause = staff_actions.caused_by

    def second_payment_after_the_check(reason):
        # Entered once the early check has committed and before the accept's transaction locks the order.
        if reason.endswith(": accept") and not paid_in_between:
            paid_in_between.append(pay_again(order, post_event, deliver))
        return cause(reason)

    monkeypatch.setattr(staff_actions, "caused_by", second_payment_after_the_check)
    confirm(alice, f"/admin/orders/{oid}/accept", form, note="customer paid the rest by bank transfer")

    assert paid_in_between and held(sessions, oid) == first_paid + order["total"]
    status = order_status(sessions, oid)
    assert status == "needs_review"
    assert client.get(f"/orders/{oid}").get_json().get("shipment") is None  # nothing fulfilled
    said = answer_shown(alice, oid)
    assert len(said) == 1 and said[0].startswith(
        f"Not done: order {oid} changed since you looked: it is now {status}, holding "
        f"{first_paid + order['total']} jpy"), said
    assert [(r.action, r.detail.split(":")[0]) for r in audit_rows(sessions)] == [("accept", "refused")]


def test_every_decision_on_an_order_unchanged_since_its_page_goes_through(
        staff_client, client, sessions, checkout, post_event, deliver):
    def decide(order_id, decision, **fields):
        _, form = confirmation_form(staff_client, f"/admin/orders/{order_id}/{decision}")
        assert {"seen_status", "seen_held", "seen_shipment"} <= set(form), form
        answer = confirm(staff_client, f"/admin/orders/{order_id}/{decision}", form, **fields)
        assert (answer.status_code, answer.headers["Location"]) == (303, f"/admin/orders/{order_id}")
        said = answer_shown(staff_client, order_id)
        assert len(said) == 1 and f"{decision} done" in said[0], said

    accepted = flagged_order(checkout, post_event, deliver)
    decide(accepted["order_id"], "accept", note="customer paid the rest by bank transfer")
    decide(accepted["order_id"], "ship", note="Sagawa 1234")
    decide(accepted["order_id"], "refund", note="never arrived")  # shipped: money back, goods gone
    assert order_status(sessions, accepted["order_id"]) == "refunded"

    refunded = flagged_order(checkout, post_event, deliver)
    decide(refunded["order_id"], "refund", note="wrong amount charged")
    cancelled = flagged_order(checkout, post_event, deliver)
    decide(cancelled["order_id"], "cancel", note="customer asked", refund="yes")
    unpaid = checkout([("TEA-01", 1)])
    decide(unpaid["order_id"], "cancel", note="customer asked")
    assert [order_status(sessions, o["order_id"]) for o in (refunded, cancelled, unpaid)] == \
        ["refunded", "refunded", "cancelled"]
    assert [(r.action, r.actor) for r in audit_rows(sessions) if (r.detail or "").startswith("refused")] == []
    assert len(audit_rows(sessions)) == 6


def test_a_form_whose_seen_fields_are_not_what_a_page_writes_changes_nothing_and_says_so(
        staff_client, sessions, checkout, post_event, deliver):
    order = flagged_order(checkout, post_event, deliver)
    oid = order["order_id"]
    _, form = confirmation_form(staff_client, f"/admin/orders/{oid}/refund")
    for field, value in (("seen_held", "1,800 JPY"), ("seen_status", "nonsense"), ("seen_shipment", "lost")):
        answer = confirm(staff_client, f"/admin/orders/{oid}/refund", {**form, field: value}, note="asked")
        assert answer.headers["Location"] == f"/admin/orders/{oid}/refund"
        said = [line for line in flashes(page(staff_client, f"/admin/orders/{oid}/refund"))
                if line.startswith("Not done")]
        assert len(said) == 1 and said[0].startswith(
            f"Not done: the form did not say what its page showed of the order (its {field} is not"), said
    assert order_status(sessions, oid) == "needs_review"
    assert refunded_at_stripe(order["payment_intent_id"]) == 0
    assert audit_rows(sessions) == []

