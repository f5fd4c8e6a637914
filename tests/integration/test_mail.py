"""Customer e-mail goes through a real SMTP server (aiosmtpd) once the order's transaction commits."""
from __future__ import annotations

import dataclasses
import time
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from models.events import OutboxMessage, OutboxStatus, Topic
from tests.support import event_for, free_port


class Mailbox:
    """An aiosmtpd handler that keeps what it receives; `server` can be stopped and started again."""

    def __init__(self):
        self.messages = []
        self.port = free_port()
        self.server = None

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"

    def start(self):
        self.server = Controller(self, hostname="127.0.0.1", port=self.port)
        self.server.start()

    def stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def smtp():
    mailbox = Mailbox()
    mailbox.start()
    yield mailbox
    mailbox.stop()


@pytest.fixture
def mailing_settings(settings, smtp):
    return dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{smtp.port}", retry_base_seconds=0.5)


def test_paid_order_sends_one_confirmation_mail_over_smtp(client, checkout, post_event, sessions, smtp,
                                                          mailing_settings):
    from tests.conftest import deliver_with

    mailbox = smtp
    order = checkout([("TEA-01", 1)], email="hanako@example.jp")
    event = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"], amount=order["total"])
    post_event(event)
    post_event(event)
    deliver_with(mailing_settings, sessions)

    assert len(mailbox.messages) == 1
    recipients, mail = mailbox.messages[0]
    assert recipients == ["hanako@example.jp"]
    assert order["order_id"] in mail["Subject"]
    assert f"Total: {order['total']}" in mail.get_payload()


def test_smtp_down_retries_the_mail_and_sends_it_when_back(client, checkout, post_event, sessions, smtp,
                                                           mailing_settings):
    from tests.conftest import deliver_with

    mailbox = smtp
    order = checkout([("TEA-01", 1)], email="taro@example.jp")
    mailbox.stop()
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver_with(mailing_settings, sessions, max_rounds=2)
    with sessions() as session:
        mail = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL)).one()
        assert mail.status is OutboxStatus.PENDING and mail.attempts >= 1
        assert "Connection refused" in mail.last_error or "Errno" in mail.last_error

    mailbox.start()
    time.sleep(0.6)  # the retry is scheduled retry_base_seconds after the failure
    deliver_with(mailing_settings, sessions)
    assert [rcpt for rcpt, _ in mailbox.messages] == [["taro@example.jp"]]
    with sessions() as session:
        assert session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL)).one().status \
            is OutboxStatus.DONE


def test_declined_then_paid_sends_only_the_confirmation(client, checkout, post_event, sessions, smtp,
                                                       mailing_settings):
    from tests.conftest import deliver_with

    order = checkout([("TEA-01", 1)], email="jiro@example.jp")
    for name in ("localstripe_payment_intent.payment_failed", "localstripe_payment_intent.succeeded"):
        post_event(event_for(name, intent_id=order["payment_intent_id"], order_id=order["order_id"],
                             amount=order["total"]))
    deliver_with(mailing_settings, sessions)

    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
    subjects = [mail["Subject"] for _, mail in smtp.messages]
    assert subjects == [f"Thank you for your order {order['order_id']}"]
