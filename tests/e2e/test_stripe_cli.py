"""The official Stripe CLI against localstripe and the running service (real processes).

`.ci/run` installs the CLI with npm into .tooling/; where npm is missing this module is not run
(and says so), in CI (SHOP_REQUIRE_SERVERS=1) its absence fails.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import stripe

from tests.backends import servers_required

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STRIPE_CLI = Path(os.environ.get("SHOP_STRIPE_CLI") or ROOT / ".tooling" / "node_modules" / ".bin" / "stripe")
PAY_CHECKOUT = ROOT / "stripe" / "fixtures" / "pay_checkout.json"
# The CLI wants a key of 12+ characters; localstripe accepts any.
CLI_KEY = "sk_test_local_stripe_cli"


@pytest.fixture(scope="module")
def stripe_cli() -> Path:
    if not os.access(STRIPE_CLI, os.X_OK):
        reason = (f"NOT RUN: the Stripe CLI is not installed at {STRIPE_CLI} "
                  f"(`npm install --prefix .tooling @stripe/cli@1.52.0`; .ci/run does it)")
        if servers_required():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return STRIPE_CLI


def run_cli(stripe_cli: Path, localstripe, *args: str, **env) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(stripe_cli), *args, "--api-key", CLI_KEY, "--api-base", localstripe.base],
        env={**os.environ, "STRIPE_CLI_TELEMETRY_OPTOUT": "1", **env},
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"stripe {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def succeeded_events() -> dict[str, dict]:
    """localstripe's payment_intent.succeeded events, by id."""
    return {event.id: event.to_dict() for event in stripe.Event.list(limit=100).auto_paging_iter()
            if event.type == "payment_intent.succeeded"}


def stored_event(cluster, event_id: str) -> dict | None:
    result = cluster.shop("events", "show", event_id, check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_stripe_trigger_event_is_stored_and_ignored_as_belonging_to_no_order(cluster, localstripe, stripe_cli):
    before = set(succeeded_events())
    run_cli(stripe_cli, localstripe, "trigger", "payment_intent.succeeded",
            "--remove", "payment_intent:description", "--remove", "payment_intent:shipping")
    (event_id,) = set(succeeded_events()) - before
    stored = cluster.wait_until(
        lambda: (lambda e: e if e and e["status"] == "ignored" else None)(stored_event(cluster, event_id)),
        what=f"{event_id} to be stored and ignored")
    assert stored["type"] == "payment_intent.succeeded"
    assert stored["order_id"] is None


def test_stripe_fixtures_pays_a_real_checkout(cluster, localstripe, stripe_cli):
    before = cluster.stock("TEA-01")
    order = cluster.checkout([("TEA-01", 1)])
    assert order["status"] == 201, order
    result = run_cli(stripe_cli, localstripe, "fixtures", str(PAY_CHECKOUT),
                     PAYMENT_INTENT_ID=order["payment_intent_id"])
    assert "Running fixture for: payment" in result.stdout
    paid = cluster.wait_for_order(order["order_id"], {"paid"})
    assert paid["shipment"]["status"] == "pending"
    assert cluster.stock("TEA-01")["on_hand"] == before["on_hand"] - 1


def test_stripe_fixtures_with_the_declining_card_docs_name_declines_and_the_order_stays_unpaid(
        cluster, localstripe, stripe_cli):
    """docs/stripe-cli.md's offline "declined card": localstripe declines pm_card_chargeCustomerFail on
    confirmation (its pm_card_visa_chargeDeclined only once attached to a customer, which the fixture is not)."""
    order = cluster.checkout([("TEA-01", 1)])
    assert order["status"] == 201, order
    result = subprocess.run(
        [str(stripe_cli), "fixtures", str(PAY_CHECKOUT), "--api-key", CLI_KEY, "--api-base", localstripe.base],
        env={**os.environ, "STRIPE_CLI_TELEMETRY_OPTOUT": "1", "PAYMENT_INTENT_ID": order["payment_intent_id"],
             "PAYMENT_METHOD": "pm_card_chargeCustomerFail"},
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode != 0 and "402" in result.stdout + result.stderr, result.stdout + result.stderr
    assert stripe.PaymentIntent.retrieve(order["payment_intent_id"]).status == "requires_payment_method"
    assert cluster.wait_for_order(order["order_id"], {"pending_payment", "payment_failed"})["status"] != "paid"
