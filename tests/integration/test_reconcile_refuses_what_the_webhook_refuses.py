"""`shop reconcile` stores an event from Stripe's list only if the webhook would have stored it, on every backend."""
from __future__ import annotations

import json
import subprocess
import time

import stripe
from sqlalchemy import select

from models.events import InboxEvent
from tests.integration.test_reconcile import SHOP, _created_event, _plan, own_stripe  # noqa: F401
from tests.support import assert_error, env_for

# Plan ids chosen by hand (Stripe and localstripe take any): the webhook refuses each event that carries one.
# PostgreSQL refused only the first two when reconcile stored them, SQLite none.
REFUSED_OBJECT_IDS = {
    "over 255 characters": "plan_" + "x" * 300,
    "a NUL": "plan_tea\x00club",
    "a non-ASCII character": "plan_th\u00e9",
    "a space": "plan_tea club",
}
WEBHOOKS_REASON = "the event's data.object.id is not a Stripe id"


def test_an_event_the_webhook_refuses_is_named_with_its_reason_and_stored_on_no_backend(
        post_event, own_stripe, sessions, tmp_path):  # noqa: F811
    """Each event whose object id the webhook answers 400 `not_an_event` is left out on SQLite and PostgreSQL
    alike, named with the webhook's own message; the events after them are stored, and the exit status is 1."""
    # own_stripe is set up after the app (post_event's), which points the SDK at the shared localstripe.
    assert stripe.api_base == own_stripe.stripe_api_base
    refused_plans = [_plan(plan_id) for plan_id in REFUSED_OBJECT_IDS.values()]
    time.sleep(1.1)  # the later event a second later: reconcile stores them oldest first
    later = _plan()
    refused = [_created_event(plan.id) for plan in refused_plans]
    at_stripe = {event.id: event.to_dict(for_json=True) for event in stripe.Event.list(limit=100).auto_paging_iter()}

    done = subprocess.run([str(SHOP), "reconcile", "--since", "1h"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL,
                          env=env_for(tmp_path, DATABASE_URL=own_stripe.database_url,
                                      STRIPE_API_BASE=own_stripe.stripe_api_base, LOG_FORMAT="console"))
    with sessions() as session:
        stored = set(session.scalars(select(InboxEvent.event_id)))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, (done.stdout, done.stderr[-800:])
    assert _created_event(later.id) in stored  # the run went on past the refused ones
    assert not set(refused) & stored
    assert stored == set(at_stripe) - set(refused)  # the plans' products' events, and the later plan's
    assert done.stdout == (f"{len(at_stripe)} events at Stripe since 1h ago, {len(stored)} were missing and are now "
                           f"stored; {len(refused)} more could not be stored:\n"), done.stdout
    named = [line for line in done.stderr.splitlines() if line.startswith("not stored: ")]
    assert sorted(named) == sorted(f"not stored: {event_id} (plan.created): {WEBHOOKS_REASON}"
                                   for event_id in refused), done.stderr
    for event_id in refused:
        [logged] = [line for line in done.stderr.splitlines() if "event_not_reconciled" in line and event_id in line]
        assert WEBHOOKS_REASON in logged
    assert "x" * 255 not in done.stdout + done.stderr  # neither the refused value nor a payload is repeated

    # The same events, delivered to the webhook: the same refusal, in the same words.
    for event_id in refused:
        error = assert_error(post_event(json.dumps(at_stripe[event_id])), 400, "not_an_event")
        assert error["message"] == WEBHOOKS_REASON
    with sessions() as session:
        assert set(session.scalars(select(InboxEvent.event_id))) == stored
