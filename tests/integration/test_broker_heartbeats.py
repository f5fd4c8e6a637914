"""An idle worker or relay keeps its RabbitMQ connection: it sends heartbeats and reads the broker's.

py-amqp does neither by itself. Without them RabbitMQ closes a connection that said nothing for
two heartbeat intervals ("missed heartbeats from client"), and the process finds out only when
it next uses it. Here the interval is one second instead of the service's 30, so that a few
seconds of nothing to do are several intervals.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest
from kombu import Connection
from sqlalchemy import select

from consumers.broker import ConfirmedPublisher, connect, declare_topology
from consumers.relay import Relay, publish_due
from consumers.worker import Worker
from models.events import OutboxMessage, OutboxStatus
from models.orders import Order, OrderStatus
from tests.backends import purge_rabbitmq, servers_available
from tests.support import event_for

# RabbitMQ then sends a heartbeat every half second: more often than the worker's wait for a
# message used to last (1 s), which py-amqp's drain read through without ever returning.
HEARTBEAT_SECONDS = 1
IDLE_SECONDS = 6  # six heartbeat intervals


def _succeeded(order: dict) -> dict:
    return event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=order["total"])


def _wait(predicate, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def rabbitmq_settings(settings):
    purge_rabbitmq()
    yield dataclasses.replace(settings, broker_url=os.environ["TEST_AMQP_URL"])
    purge_rabbitmq()


def _serve_idle(process, amqp_url: str):
    """Start `process.serve` on a connection with a short heartbeat and leave it idle; the thread."""
    conn = Connection(amqp_url, heartbeat=HEARTBEAT_SECONDS)
    conn.ensure_connection(max_retries=3)
    declare_topology(conn)
    loop = threading.Thread(target=process.serve, args=(conn,), daemon=True)
    loop.start()
    time.sleep(IDLE_SECONDS)
    return conn, loop


# Only where the run has RabbitMQ (the summary says NOT RUN otherwise; CI always has it).
if servers_available():
    def test_an_idle_worker_keeps_its_connection_and_then_runs_what_comes(
            rabbitmq_settings, sessions, checkout, post_event):
        worker = Worker(rabbitmq_settings)
        conn, loop = _serve_idle(worker, rabbitmq_settings.broker_url)
        try:
            assert loop.is_alive(), "the worker's loop ended: RabbitMQ closed its idle connection"
            order = checkout([("TEA-01", 1)])
            assert post_event(_succeeded(order)).status_code == 200
            with connect(rabbitmq_settings) as other:
                assert publish_due(sessions, ConfirmedPublisher(other), rabbitmq_settings) == 1

            def paid() -> bool:
                with sessions() as session:
                    return session.scalar(select(Order.status).where(Order.id == order["order_id"])) is OrderStatus.PAID

            assert _wait(paid), "the worker did not pay the order after being idle"
        finally:
            worker.stopping = True
            loop.join(10)
            conn.release()
            worker.engine.dispose()
        assert not loop.is_alive()


    def test_an_idle_relay_keeps_its_connection_and_then_publishes_what_comes(
            rabbitmq_settings, sessions, checkout, post_event):
        relay = Relay(rabbitmq_settings)
        conn, loop = _serve_idle(relay, rabbitmq_settings.broker_url)
        try:
            assert loop.is_alive(), "the relay's loop ended: RabbitMQ closed its idle connection"
            order = checkout([("TEA-01", 1)])
            assert post_event(_succeeded(order)).status_code == 200

            def published() -> bool:
                with sessions() as session:
                    return session.scalar(select(OutboxMessage.status)) is OutboxStatus.PUBLISHED

            assert _wait(published), "the relay did not publish the event after being idle"
        finally:
            relay.stopping = True
            loop.join(10)
            conn.release()
            relay.engine.dispose()
        assert not loop.is_alive()
