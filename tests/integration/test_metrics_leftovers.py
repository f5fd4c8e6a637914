"""A webhook that fails from a bug (a 500, not bad input) is counted, under its event's type once it was read,
and its series is scraped at 0 before the first one."""
from __future__ import annotations

import json
import time

import pytest

from consumers.handlers import HANDLERS
from tests.integration.test_metrics_review_fixes import _scrape
from tests.support import WEBHOOK_SECRET, signed_headers
from webhook_app import webhooks


def _internal_error(event_type: str) -> str:
    return f'shop_webhooks_received_total{{outcome="rejected",reason="internal_error",type="{event_type}"}}'


def _received(samples: dict[str, float]) -> float:
    return sum(value for name, value in samples.items() if name.startswith("shop_webhooks_received_total{"))


def _post(client, event_id: str):
    payload = json.dumps({"id": event_id, "object": "event", "type": "payment_intent.succeeded",
                          "api_version": "2024-06-20", "created": int(time.time()), "livemode": False,
                          "data": {"object": {"id": f"pi_{event_id}", "object": "payment_intent"}}})
    return client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload, WEBHOOK_SECRET))


def _bug(*_args, **_kwargs):
    raise RuntimeError("a bug in the webhook's code (fault injected by the test)")


def test_an_internal_error_is_scraped_at_zero_before_the_first_one(client):
    status, samples = _scrape(client)
    assert status == 200
    expected = [_internal_error("unverified"), *(_internal_error(event_type) for event_type in HANDLERS)]
    assert "payment_intent.succeeded" in HANDLERS
    assert [name for name in expected if name not in samples] == []


@pytest.mark.parametrize("where", ["before the event is read", "while the event is stored"])
def test_a_webhook_that_fails_from_a_bug_answers_500_and_is_counted_as_an_internal_error(client, monkeypatch,
                                                                                         where):
    if where == "before the event is read":
        monkeypatch.setattr(webhooks, "parse_event_json", _bug)
        counted_as = _internal_error("unverified")
    else:
        # The endpoint's own store (the test client has no store process): the event was read, its type is known.
        endpoint = client.application.extensions["webhook_endpoint"]
        assert endpoint.events_store is endpoint.group_commit
        monkeypatch.setattr(endpoint.group_commit, "store", _bug)
        counted_as = _internal_error("payment_intent.succeeded")
    _, before = _scrape(client)
    answer = _post(client, f"evt_bug_{int(time.time() * 1000)}")
    assert answer.status_code == 500
    assert answer.get_json()["error"]["code"] == "internal_error"
    _, after = _scrape(client)
    assert after[counted_as] - before.get(counted_as, 0) == 1
    assert _received(after) - _received(before) == 1  # counted once, under no other outcome
    monkeypatch.undo()
    # The endpoint works again once the fault is gone: the same kind of request is accepted.
    assert _post(client, f"evt_ok_{int(time.time() * 1000)}").status_code == 200
