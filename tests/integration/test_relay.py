"""The relay claims due outbox rows and commits, then publishes them; a failed publication is undone."""
from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from kombu.exceptions import ChannelError
from kombu.transport.virtual import BrokerState
from sqlalchemy import select

import models.db
from consumers import file_transport
from consumers.broker import ConfirmedPublisher, connect
from consumers.relay import publish_due
from models.db import transaction
from models.events import OutboxMessage, OutboxStatus, Topic
from tests.support import event_for


def succeeded(order: dict) -> dict:
    return event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=order["total"])


def event_rows(sessions) -> list[OutboxMessage]:
    with sessions() as session:
        return session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.STRIPE_EVENT)
                               .order_by(OutboxMessage.id)).all()


class HookedPublisher(ConfirmedPublisher):
    """The relay's real publisher on the embedded transport, running `before` ahead of each message."""

    def __init__(self, connection, before):
        super().__init__(connection)
        self.before = before

    def publish(self, body, queue):
        self.before(body["outbox_id"])
        super().publish(body, queue)


@pytest.fixture
def file_broker(settings, tmp_path, monkeypatch):
    # kombu keeps the file transport's bindings for the whole process, as if it had one broker
    # folder, and does not write them to another: start this folder's afresh.
    monkeypatch.setattr(file_transport.Transport, "global_state", BrokerState())
    return dataclasses.replace(settings, broker_url=f"filesystem://{tmp_path / 'broker'}")


def test_the_relay_commits_its_claim_before_it_writes_a_message_so_it_holds_no_lock_meanwhile(
        sessions, file_broker, checkout, post_event, monkeypatch):
    # On SQLite a claim still open would hold the one writer's turn: give up on it at once.
    monkeypatch.setattr(models.db, "TURN_TIMEOUT_SECONDS", 0.5)
    for order in (checkout([("TEA-01", 1)]), checkout([("CUP-01", 1)])):
        assert post_event(succeeded(order)).status_code == 200
    seen = []

    def as_a_worker_would(outbox_id):
        # Another transaction locks the row (as a worker does), without waiting for anyone.
        with transaction(sessions) as session:
            row = session.get(OutboxMessage, outbox_id, with_for_update={"nowait": True})
            seen.append((row.status, row.deliveries))

    with connect(file_broker) as conn:
        assert publish_due(sessions, HookedPublisher(conn, as_a_worker_would), file_broker) == 2
    assert seen == [(OutboxStatus.PUBLISHED, 1)] * 2
    wait = timedelta(seconds=file_broker.redelivery_seconds)
    assert [(row.status, row.deliveries, row.available_at - row.published_at) for row in event_rows(sessions)] == [
        (OutboxStatus.PUBLISHED, 1, wait)] * 2


def test_a_publication_that_fails_puts_back_what_no_worker_finished_and_the_next_poll_publishes_it(
        sessions, file_broker, checkout, post_event):
    for order in (checkout([("TEA-01", 1)]), checkout([("CUP-01", 1)])):
        assert post_event(succeeded(order)).status_code == 200
    first, second = event_rows(sessions)
    queue_dir = file_broker.broker_folder / "queue"

    def second_fails(outbox_id):
        if outbox_id == first.id:
            return
        # The first message reached the broker and a worker finished it already.
        with transaction(sessions) as session:
            session.get(OutboxMessage, first.id).mark_done()
        # The broker's folder is gone: writing the second message fails.
        queue_dir.rename(queue_dir.with_name("away"))
        queue_dir.write_text("not a folder")

    with connect(file_broker) as conn:
        with pytest.raises(ChannelError, match="Cannot add file"):
            publish_due(sessions, HookedPublisher(conn, second_fails), file_broker)
    done, back = event_rows(sessions)
    assert (done.status, done.deliveries) == (OutboxStatus.DONE, 1)
    assert (back.status, back.deliveries, back.published_at, back.available_at) == (
        OutboxStatus.PENDING, 0, None, second.available_at)

    queue_dir.unlink()
    queue_dir.with_name("away").rename(queue_dir)
    with connect(file_broker) as conn:
        assert publish_due(sessions, ConfirmedPublisher(conn), file_broker) == 1
    assert [(row.status, row.deliveries) for row in event_rows(sessions)] == [
        (OutboxStatus.DONE, 1), (OutboxStatus.PUBLISHED, 1)]
