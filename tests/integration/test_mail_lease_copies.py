"""A mail one worker is sending under its lease is not sent by another worker running a copy of it (review L,
defect 1). The relay publishes a copy of a mail whose redelivery wait passed before any worker took it (a
backlog): the worker that takes the original and the one that takes the copy both ran it, and the buyer got
the mail twice. The lease is written on the row now (`leased_until`): whichever worker leases the mail first
sends it, and the other acknowledges its message without sending. A holder that dies leaves the mail to the
relay's next copy once the lease is over; a holder whose send fails gives the lease up, so the retry goes
out when due.

Real SQLite and PostgreSQL, the run's broker (RabbitMQ with PostgreSQL), an aiosmtpd server."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import select

from consumers.broker import QUEUES, ConfirmedPublisher, connect, declare_topology
from consumers.processing import process_batch, process_message, start_copy
from consumers.relay import publish_due
from consumers.worker import Worker
from models.events import OutboxMessage, OutboxStatus, Topic
from tests.integration.test_mail_batch_deadline import Publisher, mail_rows, recipients
from tests.integration.test_mail_refusals_slow_servers_and_leases import (  # noqa: F401 - serve: a fixture
    HoldsTheFirstSession, RefusesTheFirstEndTo, serve)
from tests.support import event_for

BUYER = "hanako@example.jp"


def _mailing(settings, database_url: str, box, **changes):
    """The suite's settings sending to `box`, on the run's broker: RabbitMQ beside PostgreSQL, kombu's
    in-memory transport beside SQLite. A redelivery wait of 30 s: a lease outlasts anything here."""
    broker = os.environ["TEST_AMQP_URL"] if database_url.startswith("postgresql") else settings.broker_url
    return dataclasses.replace(settings, broker_url=broker, smtp_url=f"smtp://127.0.0.1:{box.port}",
                               redelivery_seconds=30.0, **changes)


def _payment_failed_mail_queued(checkout, post_event, sessions, settings) -> int:
    """A buyer's card is declined: the worker runs the event, which queues the "payment failed" mail."""
    order = checkout([("TEA-01", 1)], email=BUYER)
    assert post_event(event_for("localstripe_payment_intent.payment_failed", intent_id=order["payment_intent_id"],
                                order_id=order["order_id"])).status_code == 200
    with sessions() as session:
        event_message = session.scalars(select(OutboxMessage.id)
                                        .where(OutboxMessage.topic == Topic.STRIPE_EVENT)).one()
    assert process_message(sessions, settings, event_message).outcome == "done"
    [row] = mail_rows(sessions)
    return row.id


def _relay_until_published(sessions, publisher, settings) -> None:
    """The relay polls until it publishes the mail (its wait is over)."""
    for _ in range(600):
        if publish_due(sessions, publisher, settings) == 1:
            return
        time.sleep(0.05)
    raise AssertionError("the relay published nothing in 30 s")


def _take(worker: Worker, message) -> None:
    """As `shop worker` runs a message it is handed: a copy alone, others as a batch (WORKER_BATCH above 1)."""
    if worker.settings.worker_batch > 1:
        worker.collect(message.decode(), message)
        worker.run_pending()
    else:
        worker.on_message(message.decode(), message)


def _row(sessions, outbox_id: int) -> OutboxMessage:
    with sessions() as session:
        return session.get(OutboxMessage, outbox_id)


@pytest.mark.parametrize("first", ["original", "copy"])
@pytest.mark.parametrize("mode", ["batch", "alone"])
def test_a_mail_another_worker_is_sending_is_not_sent_by_the_worker_with_its_copy_which_acks_it(
        mode, first, client, checkout, post_event, sessions, settings, serve, database_url):
    """The relay publishes the mail, and a copy once its wait is over (a backlog: the relay's wait scaled
    down to 0.5 s). Worker A takes one of the two (the original in a batch or alone, or the copy), leases the
    mail and starts sending it; the server holds that session. Worker B then takes the other: it must not
    send the mail, and acknowledges its message."""
    box = serve(HoldsTheFirstSession())
    mailing = _mailing(settings, database_url, box, worker_batch=10 if mode == "batch" else 1)
    outbox_id = _payment_failed_mail_queued(checkout, post_event, sessions, mailing)
    workers = [Worker(mailing), Worker(mailing)]
    try:
        with connect(mailing) as conn:
            declare_topology(conn)
            queue = QUEUES[Topic.MAIL](conn.default_channel)
            queue.purge()
            publisher, backlog = ConfirmedPublisher(conn), dataclasses.replace(mailing, redelivery_seconds=0.5)
            _relay_until_published(sessions, publisher, backlog)   # the mail
            _relay_until_published(sessions, publisher, backlog)   # its copy, nobody having taken the mail
            original, copy = queue.get(no_ack=False), queue.get(no_ack=False)
            assert original.decode().get("copy") is None and copy.decode()["copy"] is True
            assert queue.get(no_ack=False) is None
            taken_first, taken_second = (original, copy) if first == "original" else (copy, original)

            a = threading.Thread(target=_take, args=(workers[0], taken_first))
            a.start()
            try:
                assert box.reached.wait(10)  # A's SMTP session is under way: A holds the mail's lease
                _take(workers[1], taken_second)
                assert taken_second._state == "ACK"  # B's message is done with, not rejected nor left
                assert box.sessions == 1, "worker B sent the mail worker A is sending"
            finally:
                box.release.set()
                a.join(30)
            assert not a.is_alive()
            assert taken_first._state == "ACK"
    finally:
        for worker in workers:
            worker.engine.dispose()

    assert recipients(box) == [BUYER]
    row = _row(sessions, outbox_id)
    assert row.status is OutboxStatus.DONE


_DIES_WHILE_SENDING = """
import sys
from consumers.processing import process_message
from models.db import make_engine, make_session_factory
from tests.support import settings_for
import dataclasses
settings = dataclasses.replace(settings_for(sys.argv[1], broker_url="memory://", stripe_api_base="http://127.0.0.1:9"),
                               smtp_url=sys.argv[2], redelivery_seconds=float(sys.argv[3]))
process_message(make_session_factory(make_engine(sys.argv[1])), settings, int(sys.argv[4]))
"""


def test_a_mail_whose_worker_died_while_sending_it_is_sent_by_the_relays_copy_once_the_lease_is_over(
        client, checkout, post_event, sessions, settings, serve, database_url):
    """Worker A leases the mail and dies (SIGKILL) in the middle of its SMTP session. The lease is not held
    for ever: once it is over the relay publishes the mail again, and the worker running that copy sends it.
    A's lease scaled down to 3 s."""
    box = serve(HoldsTheFirstSession())
    mailing = _mailing(settings, database_url, box)
    outbox_id = _payment_failed_mail_queued(checkout, post_event, sessions, mailing)
    publisher = Publisher()
    assert publish_due(sessions, publisher, mailing) == 1
    a = subprocess.Popen([sys.executable, "-c", _DIES_WHILE_SENDING, database_url, mailing.smtp_url, "3",
                          str(outbox_id)], cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert box.reached.wait(30)
        leased = _row(sessions, outbox_id)
        assert leased.status is OutboxStatus.PUBLISHED and leased.leased_until == leased.available_at
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(30)
        box.release.set()

    _relay_until_published(sessions, publisher, mailing)  # the lease is over: the relay's copy
    copy = publisher.sent[-1]
    assert copy["outbox_id"] == outbox_id and copy["copy"] is True
    assert not start_copy(sessions, mailing, outbox_id)
    assert process_message(sessions, mailing, outbox_id).outcome == "done"

    assert recipients(box) == [BUYER]
    assert _row(sessions, outbox_id).status is OutboxStatus.DONE


@pytest.mark.parametrize("mode", ["batch", "alone"])
def test_a_mail_the_server_refused_gives_up_its_lease_and_its_retry_goes_out_when_due(
        mode, client, checkout, post_event, sessions, settings, serve, database_url):
    """The server answers the mail's end 451 (try again later): the worker records the failure, and its lease
    with it, so the retry (due at once: the suite has no back-off) is sent by the next worker that takes it,
    not left until a redelivery wait is over."""
    box = serve(RefusesTheFirstEndTo(BUYER))
    mailing = _mailing(settings, database_url, box)
    outbox_id = _payment_failed_mail_queued(checkout, post_event, sessions, mailing)
    publisher = Publisher()
    run = (lambda: process_batch(sessions, mailing, [outbox_id])[outbox_id]) if mode == "batch" else (
        lambda: process_message(sessions, mailing, outbox_id))

    assert publish_due(sessions, publisher, mailing) == 1
    assert run().outcome == "retry"
    refused = _row(sessions, outbox_id)
    assert (refused.status, refused.attempts, refused.leased_until) == (OutboxStatus.PENDING, 1, None)

    assert publish_due(sessions, publisher, mailing) == 1  # the retry, due
    assert run().outcome == "done"
    assert [to for to, _ in box.seen] == [[BUYER], [BUYER]]
    assert recipients(box) == [BUYER]
    assert _row(sessions, outbox_id).status is OutboxStatus.DONE
