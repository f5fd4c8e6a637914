"""Customer e-mail goes through a real SMTP server (aiosmtpd) once the order's transaction commits."""
from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from models.base import utcnow
from models.events import OutboxMessage, OutboxStatus, Topic
from tests.support import SHIPPING, event_for, free_port, rendered_logs


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
    assert f"Total: {order['total']:,} JPY" in mail.get_payload()


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
    with sessions.begin() as session:  # its retry is due (not slept for: a loaded machine can stall a round)
        session.execute(update(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL)
                        .values(available_at=utcnow() - timedelta(seconds=1)))
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


# --- no customer address, name, postal address or mail body in a log line or an error column ------------------


def _customer_data(email: str) -> list[str]:
    return [email, SHIPPING["name"], SHIPPING["address"], SHIPPING["postal_code"]]


def test_without_smtp_the_mail_is_logged_by_order_kind_and_subject_never_by_address_or_body(
        client, checkout, post_event, sessions, deliver):
    order = checkout([("TEA-01", 1)], email="hanako@example.jp")
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    with rendered_logs() as lines:
        deliver()
    [logged] = [line for line in lines if "mail_logged" in line]
    assert order["order_id"] in logged and "confirmation" in logged
    assert f"Thank you for your order {order['order_id']}" in logged
    # Not logged at all, rather than masked by the redaction net: "<email>" would mean it was passed in.
    assert "<email>" not in logged
    for secret in _customer_data("hanako@example.jp"):
        assert secret not in "\n".join(lines)


class RefusingMailbox(Mailbox):
    """An SMTP server that refuses every recipient, quoting the address as real servers do."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"


def test_a_refused_recipient_reaches_last_error_the_log_and_the_alert_without_the_address(
        client, checkout, post_event, sessions, settings):
    from tests.conftest import deliver_with

    refusing = RefusingMailbox()
    refusing.start()
    try:
        order = checkout([("TEA-01", 1)], email="no.such.user+shop@example.jp")
        post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                             order_id=order["order_id"], amount=order["total"]))
        with rendered_logs() as lines:
            deliver_with(dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{refusing.port}"), sessions)
    finally:
        refusing.stop()

    with sessions() as session:
        mail = session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL)).one()
        assert mail.status is OutboxStatus.DEAD and mail.attempts == settings.max_attempts
        last_error = mail.last_error
    # Staff still see what happened: the SMTP error and its code, traceback included.
    assert "SMTPRecipientsRefused" in last_error and "550" in last_error and "Traceback" in last_error
    assert "dead-lettered" in "\n".join(lines)  # the staff alert, written to the log without STAFF_ALERT_URL
    for text in (last_error, *lines):
        assert "no.such.user" not in text and "example.jp" not in text, text


def test_any_log_line_quoting_an_address_or_a_url_password_is_masked_whoever_logs_it(capsys):
    """The last line of defence in configure_logging, for structlog and standard-library records alike."""
    import logging

    import structlog

    from models.logs import configure_logging

    configure_logging("json")  # writes to the stderr capsys holds now
    structlog.get_logger("anywhere").error(
        "smtp_failed", error="SMTPRecipientsRefused: {'taro@example.jp': (550, b'<taro@example.jp>')}",
        detail={"to": ["jiro@example.jp"]})
    try:
        raise ConnectionError("amqp://guest:pa55word@rabbit.internal:5672// refused; notify hanako@example.jp")
    except ConnectionError:
        logging.getLogger("kombu.connection").error("connection failed for %s", "saburo@example.jp", exc_info=True)
    logged = capsys.readouterr().err
    assert "smtp_failed" in logged and "connection failed" in logged and "ConnectionError" in logged
    for secret in ("taro@", "jiro@", "hanako@", "saburo@", "pa55word"):
        assert secret not in logged, logged
    assert "<email>" in logged and "amqp://<credentials>@rabbit.internal" in logged


def paid_order_message(checkout, post_event, sessions) -> tuple[dict, int]:
    order = checkout([("TEA-01", 1)], email="jiro@example.jp")
    event = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"], amount=order["total"])
    assert post_event(event).status_code == 200
    with sessions() as session:
        return order, session.scalars(select(OutboxMessage.id).where(OutboxMessage.topic == Topic.STRIPE_EVENT)).one()


def mail_row(sessions) -> OutboxMessage:
    with sessions() as session:
        return session.scalars(select(OutboxMessage).where(OutboxMessage.topic == Topic.MAIL)).one()


@pytest.mark.parametrize("run", ["alone", "batch"])
def test_the_worker_that_pays_an_order_sends_its_confirmation_right_after_its_commit(
        checkout, post_event, sessions, smtp, mailing_settings, run):
    """No relay and no broker between the commit and the mail: the worker sends it at once."""
    import consumers.processing as processing

    _, outbox_id = paid_order_message(checkout, post_event, sessions)
    if run == "alone":
        assert processing.process_message(sessions, mailing_settings, outbox_id).outcome == "done"
    else:
        assert processing.process_batch(sessions, mailing_settings, [outbox_id])[outbox_id].outcome == "done"
    assert [to for to, _ in smtp.messages] == [["jiro@example.jp"]]
    assert mail_row(sessions).status is OutboxStatus.DONE


def test_a_confirmation_its_worker_never_sent_is_published_by_the_relay_after_the_redelivery_wait(
        checkout, post_event, sessions, smtp, mailing_settings, monkeypatch):
    """The worker died between its commit and the send: the mail waits as published to it, and
    the relay publishes it once the redelivery wait is over, like any message a worker never finished."""
    import consumers.processing as processing
    from tests.conftest import deliver_with

    _, outbox_id = paid_order_message(checkout, post_event, sessions)
    settings = dataclasses.replace(mailing_settings, redelivery_seconds=1.0)
    with monkeypatch.context() as patched:
        patched.setattr(processing, "_send_committed_mails", lambda *_: None)  # dies before sending
        assert processing.process_message(sessions, settings, outbox_id).outcome == "done"
    waiting = mail_row(sessions)
    assert waiting.status is OutboxStatus.PUBLISHED and smtp.messages == []
    deliver_with(settings, sessions, max_rounds=2)
    assert smtp.messages == [] and mail_row(sessions).status is OutboxStatus.PUBLISHED  # not before the wait
    time.sleep(1.2)
    deliver_with(settings, sessions)
    assert [to for to, _ in smtp.messages] == [["jiro@example.jp"]]
    assert mail_row(sessions).status is OutboxStatus.DONE
