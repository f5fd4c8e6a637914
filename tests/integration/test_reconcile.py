"""`shop reconcile` stores the events Stripe has that never reached the webhook, once."""
from __future__ import annotations

import dataclasses
import time

import pytest
import stripe
from click.testing import CliRunner
from sqlalchemy import func, select

from consumers.reconcile import parse_span
from models.events import InboxEvent
from tests.support import confirm_card, free_port, use_stripe
from webhook_app.cli import shop


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
