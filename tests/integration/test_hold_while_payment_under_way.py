"""A payment the pay step saw Stripe take keeps its order's stock until Stripe's event is stored.

The expiry sweep keeps a hold only for a payment whose event is stored. The pay step confirms the card on
the server and hears `succeeded` (or `processing`, or 3-D Secure to finish) at once, seconds before the
event: a hold that ran out in between was cancelled, its units sold to the next buyer, and the first buyer
charged for them. Now such an order's hold lasts PAYMENT_UNDER_WAY_HOLD more from Stripe's answer; and a
confirmation that could still be waiting for Stripe when the hold runs out is refused before Stripe is asked.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
import stripe

import consumers.relay as relay
from consumers.checkout import PAYMENT_UNDER_WAY_HOLD, CheckoutCancelled, confirm_payment
from consumers.payments import create_card_payment_method
from models.base import utcnow
from models.orders import Order
from tests.support import event_for, hold_ends_in

VISA = "4242424242424242"


def held_until(sessions, order_id: str):
    with sessions() as session:
        order = session.get(Order, order_id)
        return [order.reserved_until] + [r.expires_at for r in order.reservations]


def test_a_payment_stripe_took_keeps_the_hold_past_its_time_until_its_event_is_stored(
        client, sessions, settings, checkout, post_event, deliver, monkeypatch):
    first = checkout([("CUP-01", 3)], email="first@example.com")  # every CUP-01 on hand
    hold_ends_in(sessions, first["order_id"], 15)  # Pay pressed in the hold's last seconds

    intent = confirm_payment(sessions, settings, first["order_id"], create_card_payment_method(VISA))
    assert intent.status == "succeeded"
    kept = held_until(sessions, first["order_id"])
    assert all(abs((moment.replace(tzinfo=None) - (utcnow() + PAYMENT_UNDER_WAY_HOLD).replace(tzinfo=None))
                   .total_seconds()) < 30 for moment in kept), kept

    # A minute later (the hold's first time long gone), Stripe's event still on its way: the sweep keeps it.
    later = utcnow() + timedelta(minutes=1)
    monkeypatch.setattr(relay, "utcnow", lambda: later)
    assert relay.expire_reservations(sessions) == 0
    assert client.get("/products/CUP-01").get_json()["reserved"] == 3
    second = client.post("/carts").get_json()["id"]
    taken = client.post(f"/carts/{second}/items", json={"sku": "CUP-01", "quantity": 1})  # the next buyer
    assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "out_of_stock", taken.get_json()

    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=first["payment_intent_id"],
                         order_id=first["order_id"], amount=first["total"]))
    deliver()
    assert client.get(f"/orders/{first['order_id']}").get_json()["status"] == "paid"
    on_hand, reserved = (client.get("/products/CUP-01").get_json()[k] for k in ("on_hand", "reserved"))
    assert (on_hand, reserved) == (0, 0)


def test_a_declined_card_does_not_lengthen_the_hold(client, sessions, settings, checkout):
    placed = checkout([("CUP-01", 1)])
    hold_ends_in(sessions, placed["order_id"], 60)
    before = held_until(sessions, placed["order_id"])
    with pytest.raises(Exception, match="declined"):
        confirm_payment(sessions, settings, placed["order_id"], create_card_payment_method("4000000000000341"))
    assert held_until(sessions, placed["order_id"]) == before


def test_pay_within_the_confirmations_deadline_of_the_holds_end_is_refused_before_stripe_is_asked(
        client, sessions, settings, checkout):
    placed = checkout([("CUP-01", 1)])
    hold_ends_in(sessions, placed["order_id"], settings.stripe_deadline_seconds / 2)
    with pytest.raises(CheckoutCancelled, match="no longer holds its stock"):
        confirm_payment(sessions, settings, placed["order_id"], create_card_payment_method(VISA))
    assert stripe.PaymentIntent.retrieve(placed["payment_intent_id"]).status == "requires_payment_method"


def test_a_database_that_refuses_the_longer_hold_still_gives_the_buyer_stripes_answer(
        client, sessions, settings, checkout, database_url):
    """The card is charged whatever the database does next: the pay step answers Stripe's `succeeded`, and
    the hold not kept is logged (a hold that then runs out before the event is what the late event flags)."""
    from sqlalchemy import text

    from tests.support import rendered_logs

    placed = checkout([("CUP-01", 1)])
    hold_ends_in(sessions, placed["order_id"], 60)  # shorter than the hold a payment under way is given
    engine = sessions.kw["bind"]
    with engine.begin() as connection:  # fault injection: every later change to a hold is refused
        if database_url.startswith("sqlite"):
            connection.execute(text("CREATE TRIGGER refuse_holds BEFORE UPDATE ON reservations "
                                    "BEGIN SELECT RAISE(ABORT, 'holds refused'); END"))
        else:
            connection.execute(text("CREATE FUNCTION refuse_holds() RETURNS trigger AS $$ BEGIN "
                                    "RAISE EXCEPTION 'holds refused'; END $$ LANGUAGE plpgsql"))
            connection.execute(text("CREATE TRIGGER refuse_holds BEFORE UPDATE ON reservations FOR EACH ROW "
                                    "EXECUTE FUNCTION refuse_holds()"))
    with rendered_logs() as lines:
        intent = confirm_payment(sessions, settings, placed["order_id"], create_card_payment_method(VISA))
    assert intent.status == "succeeded"
    assert any("hold_not_kept_payment_under_way" in line and "holds refused" in line for line in lines), lines
