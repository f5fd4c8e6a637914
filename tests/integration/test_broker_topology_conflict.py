"""RabbitMQ already has one of the service's queues with other arguments (an operator made it a quorum
queue): every declaration is refused (PRECONDITION_FAILED), and nothing is published or delivered on any
queue until an operator acts. The worker and the relay say so as an error naming the queue and what to
do, and wait 30 s between tries, instead of a warning every second that reads like a broker restart."""
from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest
from kombu import Connection

from consumers.relay import Relay
from consumers.worker import Worker
from tests.backends import purge_rabbitmq, servers_available
from tests.support import rendered_logs

if servers_available():
    @pytest.fixture
    def quorum_stripe_event_queue():
        purge_rabbitmq()
        with Connection(os.environ["TEST_AMQP_URL"]) as conn:
            channel = conn.default_channel
            channel.exchange_declare("shop.dlx", "direct", durable=True)
            channel.queue_declare("shop.stripe_event", durable=True, auto_delete=False,
                                  arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": "shop.dlx",
                                             "x-dead-letter-routing-key": "dead"})
        yield
        purge_rabbitmq()

    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the broker is what is tested
    @pytest.mark.parametrize("kind", [Worker, Relay], ids=["worker", "relay"])
    def test_a_queue_declared_with_other_arguments_is_an_error_that_says_what_to_do(
            settings, quorum_stripe_event_queue, kind):
        process = kind(dataclasses.replace(settings, broker_url=os.environ["TEST_AMQP_URL"]))
        threading.Timer(3.0, process.stop).start()
        with rendered_logs() as lines:
            began = time.monotonic()
            process.run()
            took = time.monotonic() - began
        conflicts = [line for line in lines if "broker_topology_conflict" in line]
        assert len(conflicts) == 1, lines  # one try, then a 30 s wait (cut short by the stop)
        assert "error" in conflicts[0] and "shop.stripe_event" in conflicts[0] and "x-queue-type" in conflicts[0]
        assert "RabbitMQ topology" in conflicts[0] and "every 30 s" in conflicts[0]
        assert not [line for line in lines if f"{process.name}_paused" in line]
        assert took < 10  # the wait looks at the stop flag
