"""On SQLite the webhook's stores take turns within a process; a request that gets no turn in time is a 503."""
from __future__ import annotations

import json

from sqlalchemy import func, select

from models.events import InboxEvent
from tests.support import assert_error, event_for, signed_headers
from webhook_app import webhooks


def test_a_store_that_gets_no_turn_in_time_answers_503_and_the_retry_is_stored(client, sessions, settings,
                                                                                monkeypatch):
    monkeypatch.setattr(webhooks, "_SQLITE_WRITER_TIMEOUT", 0.05)
    payload = json.dumps(event_for("localstripe_payment_intent.succeeded"))
    event_id = json.loads(payload)["id"]

    def post():
        return client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload))

    def stored() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(InboxEvent).where(InboxEvent.event_id == event_id))

    with webhooks._SQLITE_WRITER:  # another thread of this process is storing an event
        while_busy = post()
    if settings.database_url.startswith("sqlite"):
        # Nothing stored, so Stripe's retry (a 5xx makes it deliver again) is the first copy.
        assert_error(while_busy, 503, "storage_unavailable")
        assert stored() == 0
        retry = post()
        assert retry.status_code == 200 and retry.get_json() == {"received": True, "duplicate": False}
    else:
        # PostgreSQL has row locks, not one write lock: its stores never wait on this one.
        assert while_busy.status_code == 200 and while_busy.get_json()["duplicate"] is False
    assert stored() == 1
