"""A refund from the console asks Stripe on a web request, so it takes one of the process's Stripe call
slots like the shop's calls (docs/deploy.md, "Web server"): with every slot held by requests waiting on
a slow Stripe, staff's refund is not sent to Stripe and says so; once a slot is free it goes through."""
from __future__ import annotations

import threading

import stripe

from consumers.checkout import stripe_call_slots
from tests.integration.test_admin_pages import flagged_order, logged_in, order_status
from tests.integration.test_console_decision_on_a_changed_order import (answer_shown, confirm, confirmation_form,
                                                                        refunded_at_stripe)


class HeldSlot:
    """Another request of the same web process, waiting on Stripe in one of its slots until released."""

    def __init__(self, limit: int):
        self.taken, self.released = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, args=(limit,), daemon=True)
        self.thread.start()
        assert self.taken.wait(5)

    def _hold(self, limit: int) -> None:
        with stripe_call_slots(limit).call():
            self.taken.set()
            self.released.wait(30)

    def release(self) -> None:
        self.released.set()
        self.thread.join(5)


def test_a_console_refund_with_every_stripe_slot_held_asks_stripe_nothing_and_goes_through_once_one_is_free(
        make_client, sessions, checkout, post_event, deliver):
    staff = logged_in(make_client(stripe_max_concurrent_calls=1), sessions, "alice@example.com")
    order = flagged_order(checkout, post_event, deliver)
    oid = order["order_id"]
    _, form = confirmation_form(staff, f"/admin/orders/{oid}/refund")

    slot = HeldSlot(limit=1)
    try:
        answer = confirm(staff, f"/admin/orders/{oid}/refund", form, note="customer asked")
        assert (answer.status_code, answer.headers["Location"]) == (303, f"/admin/orders/{oid}")
        said = answer_shown(staff, oid)
        assert len(said) == 1 and said[0].startswith(
            "Not done: this server is already waiting on Stripe for as many calls as it allows "
            "(STRIPE_MAX_CONCURRENT_CALLS=1)"), said
        assert refunded_at_stripe(order["payment_intent_id"]) == 0
        assert order_status(sessions, oid) == "needs_review"
    finally:
        slot.release()

    _, form = confirmation_form(staff, f"/admin/orders/{oid}/refund")
    confirm(staff, f"/admin/orders/{oid}/refund", form, note="customer asked")
    assert order_status(sessions, oid) == "refunded"
    charged = stripe.PaymentIntent.retrieve(order["payment_intent_id"]).amount
    assert charged > 0 and refunded_at_stripe(order["payment_intent_id"]) == charged


def test_a_console_cancel_with_refund_with_every_stripe_slot_held_changes_nothing(
        make_client, sessions, checkout, post_event, deliver):
    staff = logged_in(make_client(stripe_max_concurrent_calls=1), sessions, "alice@example.com")
    order = flagged_order(checkout, post_event, deliver)
    oid = order["order_id"]
    _, form = confirmation_form(staff, f"/admin/orders/{oid}/cancel")

    slot = HeldSlot(limit=1)
    try:
        confirm(staff, f"/admin/orders/{oid}/cancel", form, note="out of stock", refund="yes")
        said = answer_shown(staff, oid)
        assert len(said) == 1 and said[0].startswith("Not done: this server is already waiting on Stripe"), said
        assert refunded_at_stripe(order["payment_intent_id"]) == 0
        assert order_status(sessions, oid) == "needs_review"
    finally:
        slot.release()
