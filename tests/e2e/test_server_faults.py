"""Faults of the production servers: RabbitMQ or PostgreSQL stopped under load, then back."""
from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests

from tests.backends import SERVERS, servers_available
from tests.support import event_for

pytestmark = pytest.mark.e2e

# These need servers this test process can stop and start; .ci/run provides them.
SERVER_BACKENDS = [SERVERS] if servers_available() and os.environ.get("SHOP_CI_RABBITMQ_CTL") else []


def _ctl(kind: str, action: str) -> None:
    subprocess.run([os.environ[f"SHOP_CI_{kind}_CTL"], action], check=True, timeout=180,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _readyz(cluster) -> tuple[int, dict]:
    response = requests.get(f"{cluster.base}/readyz", timeout=15)
    return response.status_code, response.json()


def _succeeded(order: dict) -> dict:
    return event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=order["total"])


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_rabbitmq_down_for_thirty_seconds_loses_no_webhook(make_cluster, backend):
    cluster = make_cluster(backend, workers=2, relays=1)
    on_hand = cluster.stock("TEA-01")["on_hand"]
    orders = [cluster.checkout([("TEA-01", 1)]) for _ in range(10)]
    workers = {name: proc for name, proc in cluster.procs.items() if name.startswith("worker")}

    _ctl("RABBITMQ", "stop")
    try:
        down_since = time.monotonic()
        status, body = _readyz(cluster)
        assert status == 503 and body["checks"]["database"] == "ok"
        assert body["checks"]["broker"].startswith("unavailable")
        for order in orders:  # webhooks keep arriving for the whole outage
            assert cluster.post_event(_succeeded(order)).json() == {"received": True, "duplicate": False}
            time.sleep(2.5)
        time.sleep(max(0.0, 30 - (time.monotonic() - down_since)))
        assert all(cluster.get(f"/orders/{o['order_id']}")["status"] == "pending_payment" for o in orders)
    finally:
        _ctl("RABBITMQ", "start")

    for order in orders:
        cluster.wait_for_order(order["order_id"], {"paid"}, timeout=90)
    assert cluster.stock("TEA-01")["on_hand"] == on_hand - len(orders)
    assert cluster.wait_until(lambda: _readyz(cluster)[0] == 200, what="/readyz to recover")
    # The same worker processes reconnected; none had to be restarted.
    assert all(proc.poll() is None for proc in workers.values())
    cluster.stop_all()


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_postgresql_down_answers_503_and_stores_nothing_half(make_cluster, backend):
    cluster = make_cluster(backend, workers=1, relays=1)
    order = cluster.checkout([("TEA-01", 1)])
    event = _succeeded(order)

    _ctl("POSTGRES", "stop")
    try:
        response = cluster.post_event(event)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "storage_unavailable"
        status, body = _readyz(cluster)
        assert status == 503 and body["checks"]["database"].startswith("unavailable")
    finally:
        _ctl("POSTGRES", "start")

    # Stripe retries: the event was not stored, so this delivery is the first one.
    cluster.wait_until(lambda: _readyz(cluster)[0] == 200, what="/readyz to recover")
    assert cluster.post_event(event).json() == {"received": True, "duplicate": False}
    cluster.wait_for_order(order["order_id"], {"paid"}, timeout=60)
    cluster.stop_all()
