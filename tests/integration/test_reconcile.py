"""`shop reconcile` stores the events Stripe has that never reached the webhook, once."""
from __future__ import annotations

import dataclasses
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import stripe
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from consumers.reconcile import parse_span
from models.events import InboxEvent
from tests.backends import create_postgres_database, drop_postgres_database
from tests.support import LocalStripe, confirm_card, free_port, use_stripe
from webhook_app.cli import shop

SHOP = Path(sys.executable).parent / "shop"


def _run(settings, *args):
    return CliRunner().invoke(shop, ["reconcile", *args], env={
        "DATABASE_URL": settings.database_url, "STRIPE_API_BASE": settings.stripe_api_base, "LOG_FORMAT": "console"})


def test_a_payment_whose_webhook_never_arrived_is_found_stored_once_and_pays_the_order(settings, sessions, client,
                                                                                        checkout, deliver):
    order = checkout([("TEA-01", 1)])
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    # No webhook reached this service (none is registered for it): only Stripe's event list knows.

    first = _run(settings, "--since", "1h")
    assert first.exit_code == 0, first.output
    with sessions() as session:
        ours = session.scalars(select(InboxEvent).where(InboxEvent.object_id == order["payment_intent_id"],
                                                        InboxEvent.type == "payment_intent.succeeded")).one()
        stored = session.scalar(select(func.count()).select_from(InboxEvent))
    assert f"{stored} were missing" in first.output

    again = _run(settings, "--since", "1h")
    assert again.exit_code == 0 and "0 were missing" in again.output
    deliver()
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
    with sessions() as session:
        assert session.get(InboxEvent, ours.id).status.value == "processed"


def test_an_event_of_a_billing_object_with_decimal_strings_does_not_stop_reconcile(settings, sessions, checkout):
    """A Billing object (a plan, a price, an invoice line) carries decimal strings (`unit_amount_decimal`):
    its event, of a type this service does not handle, is stored like any other, and so is every later one."""
    plan = stripe.Plan.create(currency="jpy", interval="month", product={"name": "Tea club"},
                              billing_scheme="tiered", tiers_mode="volume",
                              tiers=[{"up_to": "inf", "unit_amount": 1200, "unit_amount_decimal": "1200"}])
    time.sleep(1.1)  # the payment's events a second later: reconcile stores them oldest first
    order = checkout([("TEA-01", 1)])
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"

    result = _run(settings, "--since", "1h")
    assert result.exit_code == 0, (result.output, result.exception)
    with sessions() as session:
        stored = session.scalars(select(InboxEvent).where(InboxEvent.type == "plan.created",
                                                          InboxEvent.object_id == plan.id)).one()
        assert stored.status.value == "ignored" and '"unit_amount_decimal": "1200"' in stored.payload
        assert session.scalars(select(InboxEvent).where(InboxEvent.object_id == order["payment_intent_id"],
                                                        InboxEvent.type == "payment_intent.succeeded")).one()


@pytest.mark.parametrize("text, seconds", [("3d", 259200), ("12h", 43200), ("30m", 1800), ("90s", 90)])
def test_spans_are_read_as_seconds(text, seconds):
    assert parse_span(text) == seconds


@pytest.mark.parametrize("text", ["3", "0d", "1w", "-1d", "d3", ""])
def test_a_bad_span_is_bad_usage(settings, text):
    result = _run(settings, "--since", text)
    assert result.exit_code == 2 and "--since" in result.output


def test_stripe_unreachable_is_a_failed_operation_with_a_message(settings):
    closed = dataclasses.replace(settings, stripe_api_base=f"http://127.0.0.1:{free_port()}")
    try:
        result = _run(closed, "--since", "1h")
    finally:
        use_stripe(settings.stripe_api_base)  # the CLI pointed the SDK at the closed port
    assert result.exit_code == 1 and "could not list events at Stripe" in result.output


@pytest.fixture
def own_stripe(settings, tmp_path):
    """A localstripe of this test's own: events that no database can hold stay out of the shared one's list,
    which the other tests reconcile."""
    workdir = tmp_path / "own-localstripe"
    workdir.mkdir()
    server = LocalStripe(workdir)
    use_stripe(server.base)
    yield dataclasses.replace(settings, stripe_api_base=server.base)
    server.stop()
    use_stripe(settings.stripe_api_base)


def _plan(plan_id: str | None = None) -> stripe.Plan:
    """A plan: its id is the one chosen by whoever makes it (Stripe and localstripe take any), else Stripe's own."""
    return stripe.Plan.create(**({"id": plan_id} if plan_id else {}), currency="jpy", amount=1200,
                              interval="month", product={"name": "Tea club"})


def _created_event(object_id: str) -> str:
    [event] = [event for event in stripe.Event.list(limit=100).auto_paging_iter()
               if event.type == "plan.created" and event.data.object.id == object_id]
    return event.id


def test_a_database_that_takes_no_writes_stops_the_run_at_once_with_one_line(own_stripe, sessions):
    """Every event would fail alike (PostgreSQL set read-only, as a demoted primary is; SQLite's write lock
    held by another process past the busy timeout, which the service's SQLite takes for its first read, the
    inbox look-up): the first failure stops the run, said in one line."""
    _plan(), _plan()
    events = len(stripe.Event.list(limit=100).data)  # all missing: the inbox is empty
    url = make_url(own_stripe.database_url)
    if url.get_backend_name() == "sqlite":
        locker = sqlite3.connect(url.database, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        release = locker.close
        reason, stopped = "database is locked", "stopped before storing any event"
    else:
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{url.database}" SET default_transaction_read_only = on'))
        release = admin.dispose
        reason = "cannot execute INSERT in a read-only transaction"
        stopped = f"stopped after storing 0 of {events} missing events"
    try:
        result = _run(own_stripe, "--since", "1h")
    finally:
        release()

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert events > 1 and len(errors) == 1 and reason in errors[0], result.output
    assert stopped in errors[0] and "running it again is safe" in errors[0]
    assert "not stored: " not in result.output and "event_not_reconciled" not in result.output
    assert "Traceback" not in result.output
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(InboxEvent)) == 0


def test_a_database_that_cannot_be_reached_is_one_line(own_stripe, tmp_path):
    _plan()
    url = make_url(own_stripe.database_url)
    down = (url.set(port=free_port()).render_as_string(hide_password=False) if url.get_backend_name() == "postgresql"
            else f"sqlite:///{tmp_path / 'no-such-folder' / 'shop.db'}")
    result = _run(dataclasses.replace(own_stripe, database_url=down), "--since", "1h")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    [error] = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert "Traceback" not in result.output
    assert ("database unavailable: " in error if url.get_backend_name() == "postgresql"
            else "no-such-folder" in error)


def test_a_database_never_migrated_is_one_line_saying_what_to_run(own_stripe, tmp_path):
    _plan()
    if own_stripe.database_url.startswith("sqlite"):
        sqlite3.connect(tmp_path / "empty.db").close()
        empty = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        empty = create_postgres_database()
    try:
        result = _run(dataclasses.replace(own_stripe, database_url=empty), "--since", "1h")
    finally:
        if not empty.startswith("sqlite"):
            drop_postgres_database(empty)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    [error] = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert "has no table inbox_events" in error and "run `shop db upgrade`" in error
