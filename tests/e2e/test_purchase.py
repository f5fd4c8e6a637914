"""End to end with real processes: gunicorn, worker, relay, and localstripe sending its own signed webhooks."""
import concurrent.futures
import json
import time

import pytest
import requests
import stripe
from sqlalchemy import func, select

from models.events import InboxEvent
from tests.support import confirm_card, event_for

pytestmark = pytest.mark.e2e


def _event_of(payment_intent_id: str, event_type: str) -> dict:
    """The event localstripe itself created (and sent) for this PaymentIntent."""
    for event in stripe.Event.list(limit=100).auto_paging_iter():
        if event.type == event_type and event.data.object.id == payment_intent_id:
            return event.to_dict_recursive() if hasattr(event, "to_dict_recursive") else event.to_dict()
    raise AssertionError(f"localstripe has no {event_type} for {payment_intent_id}")


def test_successful_purchase_ends_paid_with_stock_decremented_once(cluster):
    before = cluster.stock("TEA-01")
    order = cluster.checkout([("TEA-01", 2)])
    assert order["status"] == 201
    assert cluster.stock("TEA-01")["reserved"] == before["reserved"] + 2

    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    paid = cluster.wait_for_order(order["order_id"], {"paid"})

    after = cluster.stock("TEA-01")
    assert after["on_hand"] == before["on_hand"] - 2
    assert after["reserved"] == before["reserved"]
    assert paid["shipment"]["status"] == "pending"
    assert paid["shipment"]["fee"] == order["shipping_fee"]

    # The worker process counted it; the web process serves every process's counters.
    metrics = requests.get(f"{cluster.base}/metrics", timeout=10).text
    processed = [line for line in metrics.splitlines() if line.startswith(
        'shop_events_processed_total{outcome="processed",type="payment_intent.succeeded"}')]
    assert processed and float(processed[0].rsplit(" ", 1)[1]) >= 1, metrics


def test_declined_card_ends_payment_failed_with_stock_still_reserved(cluster):
    before = cluster.stock("TEA-01")
    order = cluster.checkout([("TEA-01", 1)])
    assert confirm_card(order["payment_intent_id"], "4000000000000341").startswith("declined")

    cluster.wait_for_order(order["order_id"], {"payment_failed"})
    failed = cluster.get(f"/orders/{order['order_id']}?token={order['access_token']}")  # the decline is the buyer's
    assert failed["failure_code"] == "card_declined"
    after = cluster.stock("TEA-01")
    assert after["on_hand"] == before["on_hand"]
    assert after["reserved"] == before["reserved"] + 1

    # The customer tries another card and Stripe reports the same PaymentIntent succeeded
    # (localstripe cannot re-confirm a declined intent, so the event is posted as Stripe signs it).
    retry = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"], amount=order["total"])
    assert cluster.post_event(retry).status_code == 200
    cluster.wait_for_order(order["order_id"], {"paid"})
    final = cluster.stock("TEA-01")
    assert (final["on_hand"], final["reserved"]) == (before["on_hand"] - 1, before["reserved"])


def test_same_event_posted_five_times_decrements_once(cluster):
    before = cluster.stock("TEA-01")
    order = cluster.checkout([("TEA-01", 3)])
    confirm_card(order["payment_intent_id"], "4242424242424242")
    event = _event_of(order["payment_intent_id"], "payment_intent.succeeded")

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(lambda _: cluster.post_event(event), range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert sum(not r.json()["duplicate"] for r in responses) <= 1

    cluster.wait_for_order(order["order_id"], {"paid"})
    cluster.wait_until(lambda: cluster.shop("events", "show", event["id"]).stdout.count('"processed"'),
                       what="the event to be processed")
    after = cluster.stock("TEA-01")
    assert after["on_hand"] == before["on_hand"] - 3
    assert after["reserved"] == before["reserved"]
    with cluster.sessions() as session:
        stored = session.scalar(select(func.count()).select_from(InboxEvent).where(InboxEvent.event_id == event["id"]))
    assert stored == 1


def test_succeeded_then_stale_payment_failed_stays_paid(cluster):
    order = cluster.checkout([("TEA-01", 1)])
    confirm_card(order["payment_intent_id"], "4242424242424242")
    cluster.wait_for_order(order["order_id"], {"paid"})
    stock = cluster.stock("TEA-01")

    stale = event_for("localstripe_payment_intent.payment_failed", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"], amount=order["total"])
    assert cluster.post_event(stale).json() == {"received": True, "duplicate": False}
    shown = cluster.wait_until(
        lambda: (lambda r: r if '"processed"' in r.stdout else None)(cluster.shop("events", "show", stale["id"])),
        what="the stale failure to be processed")
    assert "stale failure ignored" in shown.stdout
    assert cluster.get(f"/orders/{order['order_id']}")["status"] == "paid"
    assert cluster.stock("TEA-01") == stock


def test_a_webhook_request_is_one_log_line_under_gunicorn_other_requests_keep_the_access_line(cluster):
    event = event_for("localstripe_payment_intent.succeeded")
    assert cluster.post_event(event).status_code == 200
    assert requests.get(f"{cluster.base}/healthz", timeout=10).status_code == 200
    time.sleep(0.5)  # gunicorn writes the access line after the answer
    lines = [json.loads(line) for line in cluster.log_of("web").splitlines() if line.startswith("{")]
    about_event = [line for line in lines if line.get("event_id") == event["id"]]
    assert [line["event"] for line in about_event] == ["webhook_received"]
    assert about_event[0]["http_status"] == 200 and about_event[0]["path"] == "/webhooks/stripe"
    request_id = about_event[0]["request_id"]
    assert not [line for line in lines if line.get("event") == "http_request" and line.get("request_id") == request_id]
    assert [line for line in lines if line.get("event") == "http_request" and line.get("path") == "/healthz"]
