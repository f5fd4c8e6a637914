"""`shop orders show`: the whole story of one order, oldest first, built once as data."""
from __future__ import annotations

from click.testing import CliRunner

from consumers.order_story import order_story
from tests.support import SHIPPING, confirm_card, event_for
from webhook_app.cli import shop


def _run(settings, *args):
    return CliRunner().invoke(shop, list(args), env={"DATABASE_URL": settings.database_url,
                                                     "STRIPE_API_BASE": settings.stripe_api_base,
                                                     "LOG_FORMAT": "console"})


def _story_of_a_declined_then_paid_then_refunded_order(settings, client, checkout, post_event, deliver):
    order = checkout([("TEA-01", 2)], email="story.buyer@example.com")
    post_event(event_for("localstripe_payment_intent.payment_failed", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver()
    confirm_card(order["payment_intent_id"], "4242424242424242")
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver()
    refunded = _run(settings, "orders", "refund", order["order_id"], "--reason", "wrong colour", "--as", "alice")
    assert refunded.exit_code == 0, refunded.output
    return order


def test_orders_show_tells_the_whole_story_oldest_first(settings, sessions, client, checkout, post_event, deliver):
    order = _story_of_a_declined_then_paid_then_refunded_order(settings, client, checkout, post_event, deliver)

    shown = _run(settings, "orders", "show", order["order_id"])
    assert shown.exit_code == 0, shown.output
    text = shown.output

    def at(fragment: str) -> int:
        assert fragment in text, fragment
        return text.index(fragment)

    assert at(f"order {order['order_id']}  refunded") == 0
    assert at("2 x TEA-01 Hokkaido black tea") < at("2 x TEA-01 returned")  # lines, then reservations
    story = [at("checkout: 2 units reserved"),
             at("stripe event payment_intent.payment_failed"),
             at("status pending_payment -> payment_failed"),
             at("stripe event payment_intent.succeeded"),
             at("status payment_failed -> paid"),
             at("status paid -> refunded")]
    assert story == sorted(story)
    assert at("status paid -> refunded") < at("cause: staff alice: refund")
    # A mail is queued in the same transaction as the status change it tells of.
    assert at("stripe event payment_intent.payment_failed") < at("mail payment_failed queued") \
        < at("stripe event payment_intent.succeeded") < at("mail confirmation queued")
    assert at("staff alice: refund order") > at("status payment_failed -> paid")
    assert at("refund re_") > at("status payment_failed -> paid") and "reason: wrong colour" in text
    assert "note: wrong colour" in text

    # The customer's details once, in the header; never the client secret.
    assert text.count("story.buyer@example.com") == 1 and text.index("story.buyer@example.com") < at("lines:")
    assert text.count(SHIPPING["address"]) == 1 and text.count(SHIPPING["name"]) == 1
    assert order["client_secret"] not in text and "_secret_" not in text


def test_the_story_is_data_the_console_can_render_too(settings, sessions, client, checkout, post_event, deliver):
    order = _story_of_a_declined_then_paid_then_refunded_order(settings, client, checkout, post_event, deliver)
    with sessions() as session:
        story = order_story(session, order["order_id"])
    assert (story.status, story.total, story.paid_amount, story.refunded_amount) == (
        "refunded", order["total"], order["total"], order["total"])
    assert story.customer["email"] == "story.buyer@example.com"
    times = [entry.at for entry in story.entries]
    assert times == sorted(times)
    assert {"checkout", "event", "status", "mail", "refund", "staff"} <= {entry.kind for entry in story.entries}
    # Only the header carries the customer: no entry mentions the address or the e-mail.
    for entry in story.entries:
        for line in (entry.summary, *entry.details):
            assert "story.buyer" not in line and SHIPPING["address"] not in line


def test_orders_show_of_an_unknown_order_exits_2(settings):
    assert _run(settings, "orders", "show", "ord_nope").exit_code == 2


def test_every_status_change_names_its_cause(settings, sessions, client, checkout, post_event, deliver):
    from sqlalchemy import select

    from models.history import OrderStatusChange

    order = checkout([("TEA-01", 1)])
    event = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"], amount=order["total"])
    post_event(event)
    deliver()
    with sessions() as session:
        changes = session.scalars(select(OrderStatusChange).where(OrderStatusChange.order_id == order["order_id"])
                                  .order_by(OrderStatusChange.id)).all()
        assert [(c.from_status, c.to_status, c.cause) for c in changes] == [
            (None, "pending_payment", "checkout"),
            ("pending_payment", "paid", f"event {event['id']}"),
        ]
