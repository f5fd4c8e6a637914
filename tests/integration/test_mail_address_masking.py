"""An address the checkout accepts, which the SMTP server refuses and quotes back, is masked in the stored
error and the log lines however it is written: a quoted local part, a domain literal, a `'` or `}` in it."""
from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import select

from models.events import OutboxMessage, Topic
from tests.conftest import deliver_with
from tests.integration.test_mail import RefusingMailbox
from tests.support import event_for, rendered_logs


@pytest.mark.parametrize("email", ['"hanako.y"@example.jp', "hanako@[192.0.2.7]", "o'brien@example.jp",
                                   "taro}@example.jp"])
def test_a_refused_address_is_masked_in_last_error_and_logs(client, checkout, post_event, sessions, settings, email):
    box = RefusingMailbox()
    box.start()
    try:
        order = checkout([("TEA-01", 1)], email=email)  # the checkout takes it: 201
        post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                             order_id=order["order_id"], amount=order["total"]))
        with rendered_logs() as lines:
            deliver_with(dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{box.port}",
                                             retry_base_seconds=60), sessions, max_rounds=2)
    finally:
        box.stop()
    with sessions() as session:
        last_error = session.scalars(select(OutboxMessage.last_error).where(OutboxMessage.topic == Topic.MAIL)).one()
    assert "<email>" in last_error  # the refusal is still said, with the address masked
    local = email.split("@")[0].strip('"')
    for text in (last_error, *lines):
        assert local not in text and email.split("@")[1] not in text, text[:300]
