"""What an SMTP server's answers mean for a mail. A refusal is an answer, not an unreachable
server; a server that takes the whole mail and answers its end late has it (waiting for that answer
longer than for a command, and never retrying one whose answer did not come); every mail carries a Date
and a Message-ID its retries share; and a mail being sent has its lease, so the relay publishes no copy
of it for another worker to send."""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from consumers import mail
from consumers.processing import process_batch, process_message, start_copy
from consumers.relay import publish_due
from models.base import utcnow
from models.events import OutboxMessage, OutboxStatus, Topic
from models.history import StaffAlert
from tests.integration.test_mail import Mailbox
from tests.integration.test_mail_batch_deadline import (Publisher, buyer, mail_rows, paid_events_handed_to_a_worker,
                                                         recipients)
from tests.support import event_for


def _mailing(settings, box, **changes):
    return dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{box.port}", **changes)


def _one_mail(sessions) -> OutboxMessage:
    [row] = mail_rows(sessions)
    return row


def _paid_order_mailed(checkout, post_event, email: str) -> dict:
    order = checkout([("TEA-01", 1)], email=email)
    assert post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                                order_id=order["order_id"], amount=order["total"])).status_code == 200
    return order


class RefusesBuyerZero(Mailbox):
    """Takes every mail but buyer0's, whose mailbox it says does not exist (550)."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address == buyer(0):
            return "550 5.1.1 Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"


class AnswersTheEndLate(Mailbox):
    """Keeps the mail (queued for delivery), then answers its final "." `seconds` later (a content scan,
    an fsync, a post-queue hook)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    async def handle_DATA(self, server, session, envelope):
        answer = await super().handle_DATA(server, session, envelope)
        await asyncio.sleep(self.seconds)
        return answer


class AnswersCommandsLate(Mailbox):
    """Answers RCPT `seconds` late: a session slower than the mail's time, before the mail was sent."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await asyncio.sleep(self.seconds)
        envelope.rcpt_tos.append(address)
        return "250 OK"


class RefusesTheFirstEndTo(Mailbox):
    """Answers the end of the first mail to `address` 451 (try again later), having read it; takes the rest."""

    def __init__(self, address: str):
        super().__init__()
        self.address, self.seen = address, []

    async def handle_DATA(self, server, session, envelope):
        await super().handle_DATA(server, session, envelope)
        self.seen.append(self.messages.pop())
        if self.seen[-1][0] == [self.address] and [to for to, _ in self.seen].count([self.address]) == 1:
            return "451 4.3.0 Temporary failure, try again"
        self.messages.append(self.seen[-1])
        return "250 OK"


class HoldsTheFirstSession(Mailbox):
    """Holds the first session at its RCPT until `release` is set (a server slow in mid-session);
    later sessions are answered at once."""

    def __init__(self):
        super().__init__()
        self.reached, self.release, self.sessions = threading.Event(), threading.Event(), 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.sessions += 1
        if self.sessions == 1:
            self.reached.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def serve():
    boxes = []

    def start(box):
        box.start()
        boxes.append(box)
        return box

    yield start
    for box in boxes:
        box.stop()


def test_a_refused_recipient_is_retried_on_its_own_and_the_batchs_other_mails_still_go_out(
        client, checkout, post_event, sessions, settings, serve):
    box = serve(RefusesBuyerZero())
    mailing = _mailing(settings, box, worker_batch=20)
    ids = paid_events_handed_to_a_worker(checkout, post_event, sessions, 3)

    results = process_batch(sessions, mailing, ids)

    assert {results[i].outcome for i in ids} == {"done"}
    # The server answered: the batch's other buyers get their mails in this run, not after the relay's wait.
    assert recipients(box) == [buyer(1), buyer(2)]
    refused, *sent = sorted(mail_rows(sessions), key=lambda row: row.id)
    assert [row.status for row in sent] == [OutboxStatus.DONE] * 2
    assert (refused.status, refused.attempts) == (OutboxStatus.PENDING, 1)
    first_line = refused.last_error.splitlines()[0]
    assert "550" in first_line and "User unknown" in first_line, first_line
    assert "no session" not in refused.last_error and buyer(0) not in refused.last_error


def test_a_mail_whose_end_the_server_answers_after_a_commands_timeout_is_sent_once(
        client, checkout, post_event, sessions, settings, serve, monkeypatch):
    """Scaled down: commands get 1 s, the server answers the mail's end after 2 s (in production 10 s and
    anything up to the mail's time)."""
    monkeypatch.setattr(mail, "SMTP_TIMEOUT_SECONDS", 1.0)
    box = serve(AnswersTheEndLate(2.0))
    from tests.conftest import deliver_with

    _paid_order_mailed(checkout, post_event, "hanako@example.jp")
    deliver_with(_mailing(settings, box), sessions)
    time.sleep(0.5)  # any copy still in the server's hands

    assert recipients(box) == ["hanako@example.jp"]
    row = _one_mail(sessions)
    assert (row.status, row.attempts, row.last_error) == (OutboxStatus.DONE, 0, None)


def test_a_mail_whose_end_the_server_never_answers_in_time_is_a_dead_letter_not_sent_again(
        client, checkout, post_event, sessions, settings, serve, monkeypatch):
    """The server has the whole mail and may deliver it: a retry could mail the buyer again. Scaled down: a
    redelivery wait of 4 s gives the session 3 s; the server answers the end after 5 s."""
    monkeypatch.setattr(mail, "SMTP_TIMEOUT_SECONDS", 1.0)
    box = serve(AnswersTheEndLate(5.0))
    from tests.conftest import deliver_with

    order = _paid_order_mailed(checkout, post_event, "hanako@example.jp")
    deliver_with(_mailing(settings, box, redelivery_seconds=4.0), sessions)
    time.sleep(0.5)

    assert recipients(box) == ["hanako@example.jp"]
    row = _one_mail(sessions)
    assert (row.status, row.attempts) == (OutboxStatus.DEAD, 1)
    first_line = row.last_error.splitlines()[0]
    assert "MailOutcomeUnknown" in first_line and "may have taken it" in first_line, first_line
    assert f"Message-ID mail.{row.id}.confirmation.{order['order_id']}" in first_line
    with sessions() as session:
        [alert] = session.scalars(select(StaffAlert).where(StaffAlert.outbox_id == row.id)).all()
    assert "not retried (the mail may have gone out)" in alert.text and "may have taken it" in alert.text


def test_a_session_too_slow_to_reach_the_mails_end_in_its_time_is_retried(
        client, checkout, post_event, sessions, settings, serve):
    """Before the final "." nothing was delivered: giving up then is safe, and the mail is retried."""
    box = serve(AnswersCommandsLate(3.0))
    _paid_order_mailed(checkout, post_event, "hanako@example.jp")
    with sessions() as session:
        event_message = session.scalars(select(OutboxMessage.id)
                                        .where(OutboxMessage.topic == Topic.STRIPE_EVENT)).one()

    assert process_message(sessions, _mailing(settings, box, redelivery_seconds=2.0), event_message).outcome == "done"

    assert box.messages == []
    row = _one_mail(sessions)
    assert (row.status, row.attempts) == (OutboxStatus.PENDING, 1)
    assert "too slow" in row.last_error.splitlines()[0]


def test_an_order_mail_has_a_date_and_a_message_id_its_retry_keeps(
        client, checkout, post_event, sessions, settings, serve):
    box = serve(RefusesTheFirstEndTo("taro@example.jp"))
    from tests.conftest import deliver_with

    first = _paid_order_mailed(checkout, post_event, "hanako@example.jp")
    second = _paid_order_mailed(checkout, post_event, "taro@example.jp")
    deliver_with(_mailing(settings, box, mail_from="Tea Shop <orders@shop.example>"), sessions)

    assert [to for to, _ in box.seen] == [["hanako@example.jp"], ["taro@example.jp"], ["taro@example.jp"]]
    assert all(mail["Date"] and mail["Date"].endswith("+0000") for _, mail in box.seen)
    (_, hanakos), (_, refused), (_, retried) = box.seen
    # The retry is the same mail to the buyer's mailbox: one Message-ID, at MAIL_FROM's domain.
    assert refused["Message-ID"] and retried["Message-ID"] == refused["Message-ID"]
    assert refused["Message-ID"].endswith("@shop.example>")
    assert hanakos["Message-ID"] != refused["Message-ID"]
    assert first["order_id"] in hanakos["Message-ID"] and second["order_id"] in refused["Message-ID"]


@pytest.mark.parametrize("worker", ["alone", "batch"])
def test_a_mail_still_being_sent_when_its_first_lease_ends_is_not_published_again(
        worker, client, checkout, post_event, sessions, settings, serve):
    """A "payment failed" mail published by the relay reaches a worker late, when most of its redelivery
    wait is over, and the server holds its session past that wait. The worker extended the mail's lease
    before sending it: the relay publishes no copy, and the buyer gets one mail, not two.
    Scaled down: a redelivery wait of 6 s."""
    box = serve(HoldsTheFirstSession())
    mailing = _mailing(settings, box, redelivery_seconds=6.0)
    order = checkout([("TEA-01", 1)], email="hanako@example.jp")
    assert post_event(event_for("localstripe_payment_intent.payment_failed", intent_id=order["payment_intent_id"],
                                order_id=order["order_id"])).status_code == 200
    with sessions() as session:
        event_message = session.scalars(select(OutboxMessage.id)
                                        .where(OutboxMessage.topic == Topic.STRIPE_EVENT)).one()
    assert process_message(sessions, mailing, event_message).outcome == "done"
    publisher = Publisher()
    assert publish_due(sessions, publisher, mailing) == 1  # the mail, on the broker
    [body] = publisher.sent
    first_lease_ends = _one_mail(sessions).available_at
    while utcnow() < first_lease_ends - timedelta(seconds=mailing.redelivery_seconds * 0.3):
        time.sleep(0.05)  # the worker takes it late

    run = (lambda: process_message(sessions, mailing, body["outbox_id"])) if worker == "alone" else (
        lambda: process_batch(sessions, mailing, [body["outbox_id"]]))
    sender = threading.Thread(target=run)
    sender.start()
    try:
        assert box.reached.wait(10)
        while utcnow() < first_lease_ends + timedelta(seconds=0.5):
            time.sleep(0.05)
        # The relay, and a worker running whatever copy it publishes.
        publish_due(sessions, publisher, mailing)
        for copy in publisher.sent[1:]:
            if not start_copy(sessions, mailing, copy["outbox_id"]):
                process_message(sessions, mailing, copy["outbox_id"])
    finally:
        box.release.set()
        sender.join()

    assert publisher.sent[1:] == []
    assert recipients(box) == ["hanako@example.jp"]
    assert _one_mail(sessions).status is OutboxStatus.DONE

