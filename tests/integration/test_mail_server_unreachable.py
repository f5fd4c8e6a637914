"""The SMTP session's two ends that are not the mail: a server that answers QUIT oddly after taking the
mail has still taken it (sending it again would mail the buyer twice), and a server that does not
answer at all holds one mail of a batch, not each of them in turn."""
from __future__ import annotations

import dataclasses
import socket
import threading

import pytest
from sqlalchemy import select

from consumers import mail
from consumers.mail import send_mail
from consumers.processing import process_batch, process_message
from models.events import OutboxMessage, OutboxStatus, Topic
from models.settings import Settings
from tests.integration.test_mail import Mailbox
from tests.integration.test_mail_batch_deadline import (buyer, mail_rows, paid_events_handed_to_a_worker,
                                                         recipients)
from tests.support import confirm_card, event_for

MESSAGE = {"kind": "confirmation", "order_id": "ord_1", "to": "taro@example.jp", "subject": "Thank you",
           "body": "It will be shipped to ...", "my_page_path": "/orders/ord_1?token=t"}


class OddQuitMailbox(Mailbox):
    """Takes every mail, then answers QUIT with 421 instead of 221 (a relay shutting down, a proxy)."""

    async def handle_QUIT(self, server, session, envelope):
        return "421 Service closing transmission channel"


class SilentServer:
    """An SMTP server that accepts connections and never says a word (a host dropping packets after
    the handshake, a stuck relay): each session waits for its greeting until the timeout."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self):
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def odd_quit():
    box = OddQuitMailbox()
    box.start()
    yield box
    box.stop()


@pytest.fixture
def silent_smtp(monkeypatch):
    monkeypatch.setattr(mail, "SMTP_TIMEOUT_SECONDS", 0.5)
    server = SilentServer()
    yield server
    server.close()


def test_a_mail_the_server_took_is_sent_once_though_it_answers_quit_with_other_than_221(odd_quit):
    settings = Settings.from_env({"SMTP_URL": f"smtp://127.0.0.1:{odd_quit.port}", "MAIL_FROM": "shop@shop.test",
                                  "ADMIN_BASE_URL": "https://shop.test"})
    send_mail(settings, MESSAGE)  # no MailNotSent: the server had answered 250 to the mail's DATA
    assert recipients(odd_quit) == ["taro@example.jp"]


def test_a_confirmation_whose_quit_is_answered_421_is_done_not_retried(
        client, checkout, post_event, sessions, settings, odd_quit):
    mailing = dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{odd_quit.port}")
    order = checkout([("TEA-01", 1)], email=buyer(0))
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    assert post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                                order_id=order["order_id"], amount=order["total"])).status_code == 200
    with sessions() as session:
        event_message = session.scalars(select(OutboxMessage.id).where(OutboxMessage.topic == Topic.STRIPE_EVENT)).one()
    assert process_message(sessions, mailing, event_message).outcome == "done"

    assert recipients(odd_quit) == [buyer(0)]
    [row] = mail_rows(sessions)
    assert (row.status, row.attempts, row.last_error) == (OutboxStatus.DONE, 0, None)


def test_a_batch_whose_smtp_server_does_not_answer_waits_for_one_mail_and_leaves_the_rest_for_the_relay(
        client, checkout, post_event, sessions, settings, silent_smtp):
    mailing = dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{silent_smtp.port}", worker_batch=20)
    ids = paid_events_handed_to_a_worker(checkout, post_event, sessions, 3)

    results = process_batch(sessions, mailing, ids)

    assert {results[i].outcome for i in ids} == {"done"}  # the orders are paid whatever the mail server does
    assert len(silent_smtp.connections) == 1
    rows = sorted(mail_rows(sessions), key=lambda row: row.id)
    assert len(rows) == 3
    # The first mail waited for the server and is retried; the others were not tried, and stay on the
    # broker for the relay to publish again once their redelivery wait is over.
    assert (rows[0].status, rows[0].attempts) == (OutboxStatus.PENDING, 1)  # its retry, after the backoff
    assert "no session with the SMTP server" in rows[0].last_error
    assert [row.status for row in rows[1:]] == [OutboxStatus.PUBLISHED] * 2
    assert all(row.attempts == 0 for row in rows[1:])
