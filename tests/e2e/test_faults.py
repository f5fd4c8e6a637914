"""The fault matrix: real processes under kills, duplicates, contention and bursts; nothing lost or doubled."""
from __future__ import annotations

import concurrent.futures
import random
import signal
import time

import pytest
from sqlalchemy import func, select, text

from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus
from models.orders import Order, Shipment
from tests.backends import SERVERS, backends
from tests.support import event_for

pytestmark = pytest.mark.e2e


@pytest.fixture(params=backends())
def backend(request):
    return request.param


def _succeeded(order: dict) -> dict:
    return event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=order["total"])


def _failed(order: dict) -> dict:
    return event_for("localstripe_payment_intent.payment_failed", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=order["total"])


def _assert_paid_exactly_once(cluster, orders, sku, on_hand_before, quantity):
    for order in orders:
        assert cluster.get(f"/orders/{order['order_id']}")["status"] == "paid"
    stock = cluster.stock(sku)
    assert stock["on_hand"] == on_hand_before - quantity * len(orders)
    assert stock["reserved"] == 0
    ids = [o["order_id"] for o in orders]
    with cluster.sessions() as session:
        shipments = session.scalar(select(func.count()).select_from(Shipment).where(Shipment.order_id.in_(ids)))
    assert shipments == len(orders)


def _wait_until_all_paid_exactly_once(cluster, orders, on_hand_before, timeout):
    """Each order (one TEA-01 each) ends paid, and the stock moved once per order."""
    for order in orders:
        cluster.wait_for_order(order["order_id"], {"paid"}, timeout=timeout)
    _wait_all_done(cluster)
    _assert_paid_exactly_once(cluster, orders, "TEA-01", on_hand_before, 1)


def _wait_all_done(cluster, timeout=90):
    def settled():
        with cluster.sessions() as session:
            open_rows = session.scalar(select(func.count()).select_from(OutboxMessage).where(
                OutboxMessage.status.not_in([OutboxStatus.DONE, OutboxStatus.DEAD])))
        return open_rows == 0
    cluster.wait_until(settled, timeout=timeout, what="every outbox message to be done")


def test_worker_killed_mid_event_pays_every_order_exactly_once(make_cluster, backend):
    cluster = make_cluster(backend, workers=1, relays=1)
    on_hand = cluster.stock("TEA-01")["on_hand"]
    orders = [cluster.checkout([("TEA-01", 1)]) for _ in range(8)]
    cluster.stop("worker.1")
    for order in orders:
        assert cluster.post_event(_succeeded(order)).status_code == 200
    cluster.wait_until(lambda: _count_outbox(cluster, OutboxStatus.PENDING) == 0, what="the relay to publish")

    # Hold the stock row (PostgreSQL) or the database's write lock (SQLite): the worker takes a
    # message and is stuck inside its handler's transaction. SIGKILL it there, then release.
    blocker = cluster.engine.connect()
    if backend == SERVERS:
        blocker.execute(text("SELECT 1 FROM stock WHERE sku = 'TEA-01' FOR UPDATE"))
    else:
        blocker.exec_driver_sql("SELECT 1")  # the engine's begin hook took SQLite's write lock
    cluster.start("worker.2")
    time.sleep(2.0)
    cluster.stop("worker.2", signal.SIGKILL)
    blocker.rollback()
    blocker.close()
    assert all(cluster.get(f"/orders/{o['order_id']}")["status"] == "pending_payment" for o in orders)

    # Kill and restart workers at random while the rest is processed.
    rng = random.Random(7)
    for round_ in range(4):
        cluster.start(f"worker.r{round_}")
        time.sleep(rng.uniform(0.1, 0.6))
        cluster.stop(f"worker.r{round_}", signal.SIGKILL)
    cluster.start("worker.final")

    _wait_until_all_paid_exactly_once(cluster, orders, on_hand, timeout=90)
    cluster.stop_all()


def _count_outbox(cluster, status) -> int:
    with cluster.sessions() as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == status))


def test_every_event_five_times_shuffled_across_three_workers_matches_one_clean_delivery(make_cluster, backend):
    cluster = make_cluster(backend, workers=3, relays=2)
    on_hand = cluster.stock("TEA-01")["on_hand"]
    orders = [cluster.checkout([("TEA-01", 2)]) for _ in range(6)]
    declined = cluster.checkout([("TEA-01", 1)])
    events = [e for order in orders for e in (_failed(order), _succeeded(order))] + [_failed(declined)]
    deliveries = [e for e in events for _ in range(5)]
    random.Random(11).shuffle(deliveries)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(cluster.post_event, deliveries))
    assert all(r.status_code == 200 for r in responses)
    assert sum(not r.json()["duplicate"] for r in responses) == len(events)

    for order in orders:
        cluster.wait_for_order(order["order_id"], {"paid"})
    cluster.wait_for_order(declined["order_id"], {"payment_failed"})
    _wait_all_done(cluster)
    stock = cluster.stock("TEA-01")
    assert stock["on_hand"] == on_hand - 2 * len(orders)
    assert stock["reserved"] == 1  # the declined order's units stay held until the reservation expires
    with cluster.sessions() as session:
        assert session.scalar(select(func.count()).select_from(InboxEvent)) == len(events)
        assert session.scalar(select(func.count()).select_from(Shipment)) == len(orders)
    cluster.stop_all()


def test_fifty_concurrent_checkouts_for_the_last_ten_units(make_cluster, backend):
    cluster = make_cluster(backend, workers=1, relays=1, WEB_CONCURRENCY=4)
    assert cluster.stock("CUP-01")["available"] == 3
    cluster.shop("catalog", "load", str(_catalog_with_cups(cluster, 10)))
    assert cluster.stock("CUP-01")["available"] == 10

    carts = [cluster.cart([("CUP-01", 1)]) for _ in range(50)]
    with concurrent.futures.ThreadPoolExecutor(25) as pool:
        results = list(pool.map(cluster.checkout_cart, carts))
    statuses = sorted(r["status"] for r in results)
    assert statuses.count(201) == 10
    assert statuses.count(409) == 40
    assert all(r["error"]["code"] == "out_of_stock" and "CUP-01" in r["error"]["message"]
               for r in results if r["status"] == 409)
    stock = cluster.stock("CUP-01")
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (10, 10, 0)
    with cluster.sessions() as session:
        held = session.execute(text(
            "SELECT COALESCE(SUM(quantity), 0) FROM reservations WHERE sku = 'CUP-01' AND status = 'active'"
        )).scalar_one()
        orders = session.scalar(select(func.count()).select_from(Order))
    assert held == 10
    assert orders == 10
    cluster.stop_all()


def _catalog_with_cups(cluster, cups: int):
    import json

    from tests.support import CATALOG

    catalog = json.loads(json.dumps(CATALOG))
    next(p for p in catalog["products"] if p["sku"] == "CUP-01")["stock"] = cups
    path = cluster.workdir / "catalog-cups.json"
    path.write_text(json.dumps(catalog))
    return path


def test_burst_of_two_thousand_events_is_processed_once_each(make_cluster, backend):
    cluster = make_cluster(backend, workers=2, relays=1, WEB_CONCURRENCY=4)
    on_hand = cluster.stock("TEA-01")["on_hand"]
    orders = [cluster.checkout([("TEA-01", 1)]) for _ in range(20)]
    events = [_succeeded(o) for o in orders]
    # The rest are for PaymentIntents of no order of ours, as `stripe trigger` sends.
    events += [event_for("payment_intent.succeeded") for _ in range(2000 - len(events))]
    random.Random(3).shuffle(events)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda e: cluster.post_event(e).status_code, events))
    assert codes == [200] * 2000

    _wait_all_done(cluster, timeout=240)
    with cluster.sessions() as session:
        rows = session.execute(select(InboxEvent.status, InboxEvent.attempts)).all()
    assert len(rows) == 2000
    assert all(attempts == 1 for _, attempts in rows), "an event was handled more than once"
    assert sum(status is EventStatus.PROCESSED for status, _ in rows) == 20
    assert sum(status is EventStatus.IGNORED for status, _ in rows) == 1980
    _assert_paid_exactly_once(cluster, orders, "TEA-01", on_hand, 1)
    cluster.stop_all()


def test_sigterm_stops_a_worker_after_its_current_message_and_loses_none(make_cluster, backend):
    cluster = make_cluster(backend, workers=1, relays=1)
    on_hand = cluster.stock("TEA-01")["on_hand"]
    orders = [cluster.checkout([("TEA-01", 1)]) for _ in range(30)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        assert all(r.status_code == 200 for r in pool.map(cluster.post_event, map(_succeeded, orders)))
    cluster.wait_until(lambda: any(cluster.get(f"/orders/{o['order_id']}")["status"] == "paid" for o in orders),
                       what="the worker to start on the burst")

    assert cluster.stop("worker.1", signal.SIGTERM) == 0
    assert "worker_stopped" in cluster.log_of("worker.1")
    # Every order is either wholly paid (with its shipment) or wholly untouched (still reserved).
    with cluster.sessions() as session:
        for order in session.scalars(select(Order)).all():
            if order.status.value == "paid":
                assert order.shipment is not None
            else:
                assert order.status.value == "pending_payment" and order.shipment is None
                assert all(r.status.value == "active" for r in order.reservations)

    cluster.start("worker.2")
    _wait_until_all_paid_exactly_once(cluster, orders, on_hand, timeout=60)
    cluster.stop_all()


def test_a_failing_handler_is_retried_dead_lettered_alerted_and_replayable(make_cluster, backend, tmp_path):
    from tests.e2e.alerts import AlertInbox

    with AlertInbox() as alerts:
        cluster = make_cluster(backend, workers=1, relays=1, MAX_ATTEMPTS=3, RETRY_BASE_SECONDS=0.2,
                               STAFF_ALERT_URL=alerts.url)
        order = cluster.checkout([("TEA-01", 1)])
        with cluster.engine.begin() as conn:  # a fault the handler cannot get past: its table is gone
            conn.execute(text("ALTER TABLE shipments RENAME TO shipments_away"))
        event = _succeeded(order)
        assert cluster.post_event(event).status_code == 200

        shown = cluster.wait_until(
            lambda: (lambda r: r if '"dead"' in r.stdout else None)(cluster.shop("events", "show", event["id"])),
            what="the event to be dead-lettered")
        assert '"attempts": 3' in shown.stdout and "shipments" in shown.stdout
        with cluster.sessions() as session:
            status = session.scalar(select(Order.status).where(Order.id == order["order_id"]))
        assert status.value == "pending_payment"
        alert = alerts.wait_for("dead-lettered")
        assert "after 3 attempts" in alert["text"]
        if backend == SERVERS:
            assert _dead_letter_queue_depth() == 1

        with cluster.engine.begin() as conn:
            conn.execute(text("ALTER TABLE shipments_away RENAME TO shipments"))
        replay = cluster.shop("events", "replay", event["id"])
        assert "processed (order paid)" in replay.stdout
        assert cluster.get(f"/orders/{order['order_id']}")["status"] == "paid"
        cluster.stop_all()


def _dead_letter_queue_depth() -> int:
    import os

    from consumers.broker import DEAD_LETTER_QUEUE, connect
    from models.settings import Settings

    with connect(Settings(broker_url=os.environ["TEST_AMQP_URL"])) as conn:
        return DEAD_LETTER_QUEUE(conn.default_channel).queue_declare(passive=True).message_count
