"""A payment already stored keeps its hold: the expiry sweep never cancels an order whose
succeeded event waits in the inbox (a backlog, a broker outage), with real processes."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from models.events import InboxEvent
from tests.backends import backends
from tests.support import confirm_card

pytestmark = pytest.mark.e2e

TTL_SECONDS = 6


@pytest.fixture(params=backends())
def backend(request):
    return request.param


def test_an_order_paid_in_time_keeps_its_stock_while_its_event_waits_for_a_worker(make_cluster, backend):
    # Web and relay run, no worker: the payment's event is stored and waits in the inbox.
    cluster = make_cluster(backend, workers=0, relays=1, RESERVATION_TTL_SECONDS=TTL_SECONDS)
    try:
        on_hand = cluster.stock("TEA-01")["on_hand"]
        paid = cluster.checkout([("TEA-01", 2)])
        unpaid = cluster.checkout([("TEA-01", 1)])
        assert paid["status"] == unpaid["status"] == 201
        started = time.monotonic()

        assert confirm_card(paid["payment_intent_id"], "4242424242424242") == "succeeded"

        def stored():
            with cluster.sessions() as session:
                return session.scalars(select(InboxEvent).where(
                    InboxEvent.type == "payment_intent.succeeded",
                    InboxEvent.object_id == paid["payment_intent_id"])).one_or_none()

        event = cluster.wait_until(stored, timeout=20, what="localstripe's succeeded event to be stored")
        assert event.status.value == "received"

        # Past the hold and two sweeps (every 5 s): the unpaid order is cancelled, so the sweep ran.
        cluster.wait_for_order(unpaid["order_id"], {"cancelled"}, timeout=TTL_SECONDS + 20)
        time.sleep(max(0.0, TTL_SECONDS + 11 - (time.monotonic() - started)))
        order = cluster.get(f"/orders/{paid['order_id']}")
        assert order["status"] == "pending_payment"
        stock = cluster.stock("TEA-01")
        assert (stock["on_hand"], stock["reserved"]) == (on_hand, 2)

        cluster.start("worker.1")
        cluster.wait_for_order(paid["order_id"], {"paid"}, timeout=30)
        stock = cluster.stock("TEA-01")
        assert (stock["on_hand"], stock["reserved"]) == (on_hand - 2, 0)
    finally:
        cluster.stop_all()
