"""A staff replay whose handler needs one of Stripe's records asks Stripe with no transaction open, as the
worker does: on SQLite its transaction is the database's one write lock, so a replay waiting on a slow
Stripe inside it made every webhook wait too, and answer 503 after its 10 s."""
from __future__ import annotations

import dataclasses
import threading

from consumers.payments import configure_stripe
from consumers.staff_actions import ReplayFailed, replay_event
from tests.stripe_proxy import BlackHole
from tests.support import confirm_card, event_for, use_stripe


def test_a_replay_waiting_for_stripe_leaves_the_webhook_storing_events(settings, sessions, client, checkout,
                                                                        post_event, deliver):
    order = checkout([("TEA-01", 1)])
    intent = order["payment_intent_id"]
    assert confirm_card(intent, "4242424242424242") == "succeeded"
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=intent, order_id=order["order_id"],
                         amount=order["total"]))
    deliver()
    # charge.refunded as Stripe sends it from API 2022-11-15 on, without its refunds: the handler lists them
    # at Stripe. Stored and not run yet (a dead letter after a Stripe outage, say).
    refunded = event_for("charge.refunded")
    refunded["data"]["object"].update(payment_intent=intent, amount=order["total"], amount_refunded=order["total"],
                                      currency="jpy")
    refunded["data"]["object"].pop("refunds", None)
    refunded["api_version"] = "2024-06-20"
    assert post_event(refunded).status_code == 200

    hole = BlackHole()  # a Stripe that takes the request and never answers
    configure_stripe(dataclasses.replace(settings, stripe_api_base=hole.base))
    outcome: dict = {}

    def replay():
        try:
            outcome["done"] = replay_event(sessions, settings, refunded["id"], actor="alice")
        except ReplayFailed as exc:
            outcome["failed"] = exc

    staff = threading.Thread(target=replay)
    staff.start()
    try:
        hole.wait_for_requests(1)  # the replay waits on Stripe now
        answer = post_event(event_for("payment_intent.payment_failed"))  # Stripe delivers another event meanwhile
    finally:
        hole.cut()
        staff.join(60)
        hole.close()
        use_stripe(settings.stripe_api_base)
    assert answer.status_code == 200, answer.get_json()
    assert not staff.is_alive()
    assert set(outcome) == {"failed"}, outcome  # Stripe never answered: the replay failed, and says so
