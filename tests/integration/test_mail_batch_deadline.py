"""A worker's mails after its commit go out one by one, each marked done once sent, and stop at a
deadline under the redelivery wait: a slow SMTP server and a large batch never let the relay
publish a copy of a mail still waiting to be sent, so no buyer is mailed twice."""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest
from sqlalchemy import select

from consumers.processing import process_batch, process_message, start_copy
from consumers.relay import publish_due
from models.db import transaction
from models.events import OutboxMessage, OutboxStatus, Topic
from tests.integration.test_mail import Mailbox
from tests.support import confirm_card, event_for

BUYERS = 7
SEND_SECONDS = 0.5   # the SMTP server's time to take each mail: 3.5 s for the batch's seven
REDELIVERY = 3.0     # so the first mails are overdue while the last are still being sent


class SlowMailbox(Mailbox):
    """A working SMTP server that takes SEND_SECONDS to accept each message (a remote relay)."""

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(SEND_SECONDS)
        return await super().handle_DATA(server, session, envelope)


class Publisher:
    """The relay's publisher, keeping what it would put on the broker."""

    def __init__(self):
        self.sent = []

    def publish(self, body, queue):
        self.sent.append(body)

    def confirm(self):
        pass


@pytest.fixture
def slow_smtp():
    mailbox = SlowMailbox()
    mailbox.start()
    yield mailbox
    mailbox.stop()


@pytest.fixture
def slow_mailing(settings, slow_smtp):
    return dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{slow_smtp.port}",
                               redelivery_seconds=REDELIVERY, worker_batch=20)


def buyer(i: int) -> str:
    return f"buyer{i}@example.jp"


def mail_rows(sessions) -> list[OutboxMessage]:
    with sessions() as session:
        return session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL)).all()


def run_batch_while_relay_polls(sessions, settings, ids: list[int]) -> dict:
    """Worker A runs `ids` as one batch; meanwhile the relay polls every 0.1 s and worker B runs
    each message it publishes (a copy as `Worker.on_message` does), until A is finished and every
    mail is done."""
    results: dict = {}
    worker_a = threading.Thread(target=lambda: results.update(process_batch(sessions, settings, ids)))
    worker_a.start()
    publisher, taken = Publisher(), 0
    give_up = time.monotonic() + 30
    try:
        while worker_a.is_alive() or any(row.status is not OutboxStatus.DONE for row in mail_rows(sessions)):
            assert time.monotonic() < give_up, [(row.id, row.status) for row in mail_rows(sessions)]
            publish_due(sessions, publisher, settings)
            for body in publisher.sent[taken:]:
                if not (body.get("copy") and start_copy(sessions, settings, body["outbox_id"])):
                    process_message(sessions, settings, body["outbox_id"])
            taken = len(publisher.sent)
            time.sleep(0.1)
    finally:
        worker_a.join()
    return results


def paid_events_handed_to_a_worker(checkout, post_event, sessions, orders: int) -> list[int]:
    """`orders` orders paid at Stripe, their succeeded events stored and published to a worker (who will
    run them as one batch): the events' outbox ids."""
    for i in range(orders):
        order = checkout([("TEA-01", 1)], email=buyer(i))
        assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
        assert post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                                    order_id=order["order_id"], amount=order["total"])).status_code == 200
    with transaction(sessions) as session:
        events = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.STRIPE_EVENT)
                                 .order_by(OutboxMessage.id)).all()
        for row in events:
            row.mark_published(60)  # on the broker, handed to the worker
        return [row.id for row in events]


def recipients(mailbox) -> list[str]:
    return sorted(to for tos, _ in mailbox.messages for to in tos)


def test_a_batch_whose_confirmations_outlast_the_redelivery_wait_mails_each_buyer_once(
        client, checkout, post_event, sessions, slow_mailing, slow_smtp):
    """Seven orders paid in one batch; their confirmations take 3.5 s to send, the redelivery wait
    is 3 s. Worker A sends those it can before half the wait, marking each done at once; the relay
    publishes the rest when their wait is over, and worker B sends them: every buyer gets one."""
    ids = paid_events_handed_to_a_worker(checkout, post_event, sessions, BUYERS)

    results = run_batch_while_relay_polls(sessions, slow_mailing, ids)

    assert {results[i].outcome for i in ids} == {"done"}
    assert recipients(slow_smtp) == sorted(buyer(i) for i in range(BUYERS))
    assert {row.status for row in mail_rows(sessions)} == {OutboxStatus.DONE}


def test_a_batch_of_declined_card_mails_outlasting_the_redelivery_wait_mails_each_buyer_once(
        client, checkout, post_event, sessions, slow_mailing, slow_smtp):
    """Seven "payment failed" mails, published by the relay and taken by worker A as one batch
    (`_finish_outside`): the same deadline, and each marked done once sent."""
    for i in range(BUYERS):
        order = checkout([("TEA-01", 1)], email=buyer(i))
        assert post_event(event_for("localstripe_payment_intent.payment_failed", intent_id=order["payment_intent_id"],
                                    order_id=order["order_id"])).status_code == 200
    with sessions() as session:
        events = session.scalars(select(OutboxMessage.id).where(OutboxMessage.topic == Topic.STRIPE_EVENT)).all()
    for outbox_id in events:
        assert process_message(sessions, slow_mailing, outbox_id).outcome == "done"
    publisher = Publisher()
    publish_due(sessions, publisher, slow_mailing)  # the relay publishes the mails: worker A takes them
    ids = [body["outbox_id"] for body in publisher.sent]
    assert sorted(ids) == sorted(row.id for row in mail_rows(sessions)) and len(ids) == BUYERS

    results = run_batch_while_relay_polls(sessions, slow_mailing, ids)

    # Worker A sent what it could before its deadline (half the wait) and left the rest for the relay.
    assert {results[i].outcome for i in ids} == {"done", "skipped"}
    assert recipients(slow_smtp) == sorted(buyer(i) for i in range(BUYERS))
    assert all("did not go through" in mail["Subject"] for _, mail in slow_smtp.messages)
    assert {row.status for row in mail_rows(sessions)} == {OutboxStatus.DONE}
