"""A worker's batch keeps its RabbitMQ connection while it makes the calls that follow its commit.

RabbitMQ closes a connection it has heard nothing from for about three heartbeat intervals (90 s at the
service's 30 s) and hands its unacked messages to another worker: a batch whose mails, Stripe calls,
alerts and messages run alone took that long lost its connection, and the other worker sent the same
mails again. The batch now sends its heartbeats between those calls (`consumers.worker._still_connected`).
Here the heartbeat is 2 s and a slow SMTP server makes the batch's mails last 8 s; the same batch without
the heartbeats loses the connection."""
from __future__ import annotations

import dataclasses
import os
from functools import partial

import pytest
from kombu import Connection

from consumers.processing import process_batch
from consumers.relay import publish_due
from consumers.worker import _still_connected
from models.db import transaction
from models.events import OutboxStatus, Topic, enqueue
from tests.backends import servers_available
from tests.integration.test_mail_batch_deadline import (  # noqa: F401 - slow_smtp: a fixture
    SEND_SECONDS, Publisher, mail_rows, slow_smtp)

HEARTBEAT = 2      # RabbitMQ closes the connection after about 7 s of silence
MAILS = 16         # 8 s of mails at SEND_SECONDS each, within the batch's deadline (half of 30 s)
assert MAILS * SEND_SECONDS > 3.5 * HEARTBEAT + 0.5


def _alive(conn: Connection) -> bool:
    """Whether RabbitMQ still answers on this connection (opening a channel is a round trip)."""
    try:
        conn.connection.channel().close()
    except Exception:  # noqa: BLE001 - reset, closed, or forced by the broker: gone either way
        return False
    return True


if servers_available():
    @pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the broker is what is tested
    @pytest.mark.parametrize("heartbeats", [True, False], ids=["with-heartbeats", "without"])
    def test_a_batch_longer_than_three_heartbeats_keeps_its_connection_only_with_them(
            settings, sessions, slow_smtp, heartbeats):
        mailing = dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{slow_smtp.port}", redelivery_seconds=30)
        with transaction(sessions) as session:
            for n in range(MAILS):
                enqueue(session, Topic.MAIL, {"kind": "shipped", "order_id": f"ord_{n}", "to": f"buyer{n}@example.jp",
                                              "subject": "Your order has shipped", "body": "On its way."})
        assert publish_due(sessions, Publisher(), mailing) == MAILS
        ids = [row.id for row in mail_rows(sessions)]

        with Connection(os.environ["TEST_AMQP_URL"], heartbeat=HEARTBEAT) as conn:
            conn.ensure_connection(max_retries=3)
            assert _alive(conn)
            if heartbeats:
                results = process_batch(sessions, mailing, ids, partial(_still_connected, conn))
            else:  # what a worker's batch did before
                results = process_batch(sessions, mailing, ids)
            assert {result.outcome for result in results.values()} == {"done"}
            assert len(slow_smtp.messages) == MAILS and {m.status for m in mail_rows(sessions)} == {OutboxStatus.DONE}
            assert _alive(conn) is heartbeats
