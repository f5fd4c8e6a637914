"""The `shop` CLI as the Contract has it: a database never migrated (or a mistyped SQLite path) is one
line saying to run `shop db upgrade` and leaves no file behind; a catalog file that does not parse
or is not a catalog is bad usage (exit 2) like `shop events send`'s; Stripe URLs that are not URLs
stop every verb at start; a cancel refused for a paid order does not point at accept, which only an
order in review takes; `--help` and docs/operations.md say what the code does."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from models.events import EventStatus
from models.migrations import upgrade
from tests.backends import create_postgres_database, drop_postgres_database
from tests.integration.test_admin_pages import flagged_order, logged_in, page
from tests.support import WEBHOOK_SECRET, confirm_card, event_for
from webhook_app.cli import shop

ROOT = Path(__file__).resolve().parents[2]
SHOP = Path(sys.executable).parent / "shop"

# Verbs that read or write the service's tables, one of each group (and a staff decision).
VERBS = [("events", "list"), ("events", "show", "evt_x"), ("dlq", "list"), ("orders", "review"),
         ("orders", "show", "ord_x"), ("orders", "cancel", "ord_x", "--note", "asked"), ("staff", "list")]


def _invoke(*args, **env):
    return CliRunner().invoke(shop, [str(a) for a in args],
                              env={"LOG_FORMAT": "console", "SHOP_STAFF": "tester", **env})


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# --- a database with no tables, or no database file ------------------------------------------------------

@pytest.fixture
def unmigrated_url(database_url, tmp_path):
    """A database the service can reach that holds none of its tables: an SQLite file created and
    never upgraded, or a new PostgreSQL database."""
    if database_url.startswith("sqlite"):
        sqlite3.connect(tmp_path / "empty.db").close()
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_a_verb_on_a_database_never_migrated_says_run_db_upgrade_in_one_line_and_exits_1(unmigrated_url, verb):
    result = _invoke(*verb, DATABASE_URL=unmigrated_url)
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    [line] = _error_lines(result.output)
    assert re.fullmatch(r"Error: the database at DATABASE_URL has no table \w+: it is not migrated, or not the "
                        r"service's database: run `shop db upgrade` \(or correct DATABASE_URL\)", line), line


def test_the_shop_command_on_a_database_never_migrated_prints_one_line_and_works_once_upgraded(
        unmigrated_url, tmp_path):
    env = {**os.environ, "DATABASE_URL": unmigrated_url, "LOG_FORMAT": "console"}
    done = subprocess.run([str(SHOP), "events", "list"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: the database at DATABASE_URL has no table inbox_events: it is not migrated"), line
    upgrade(unmigrated_url)  # what the line says to do
    again = _invoke("events", "list", DATABASE_URL=unmigrated_url)
    assert again.exit_code == 0 and again.output.strip() == "no events", again.output


@pytest.mark.parametrize("verb", [*VERBS, ("reconcile",), ("catalog", "load", "{catalog}")], ids=" ".join)
def test_a_verb_on_a_sqlite_path_with_no_database_says_so_and_makes_no_file(tmp_path, verb):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"currency": "jpy", "products": [
        {"sku": "TEA-01", "name": "Tea", "unit_amount": 1200, "stock": 4}]}))
    path = tmp_path / "tpyo.db"  # its folder exists: connecting would make an empty database there
    result = _invoke(*(str(a).format(catalog=catalog) for a in verb), DATABASE_URL=f"sqlite:///{path}")
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    [line] = _error_lines(result.output)
    assert line == f"Error: no database file at {path}: run `shop db upgrade` (or correct DATABASE_URL)", line
    assert not path.exists() and not Path(f"{path}-writer").exists()


def test_db_upgrade_still_makes_the_sqlite_database_and_every_verb_then_works(tmp_path):
    path = tmp_path / "fresh" / "shop.db"
    path.parent.mkdir()
    url = f"sqlite:///{path}"
    assert _invoke("db", "upgrade", DATABASE_URL=url).exit_code == 0
    assert path.exists()
    listed = _invoke("dlq", "list", DATABASE_URL=url)
    assert listed.exit_code == 0 and listed.output.strip() == "no dead letters", listed.output


# --- Stripe settings that cannot work ---------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [("STRIPE_API_BASE", "127.0.0.1:8420"), ("STRIPE_API_BASE", "notaurl"),
                                         ("STRIPE_API_BASE", "http://"), ("STRIPE_JS_URL", "js.stripe.com/v3/"),
                                         ("STRIPE_WEBHOOK_SECRETS", "sk_test_51AbCdEfGh")])
def test_a_stripe_setting_that_cannot_work_stops_a_verb_at_start_naming_it(settings, name, value):
    result = _invoke("events", "list", DATABASE_URL=settings.database_url, **{name: value})
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    [line] = _error_lines(result.output)
    assert line.startswith(f"{name} must be "), line
    assert "AbCdEfGh" not in line


# --- catalog files: bad usage, not a failed load -----------------------------------------------------------

@pytest.mark.parametrize("name, text, said", [
    ("bad.json", "{", "bad.json is not valid JSON: "),
    ("bad.yaml", "products: [unclosed\n  - sku: {", "bad.yaml is not valid YAML: "),
    ("shape.json", json.dumps({"currency": "jpy", "products": {"sku": "TEA-01"}}), "shape.json: products must be a list"),
    ("latin1.json", "\udcff", "latin1.json: 'utf-8' codec can't decode"),
])
def test_a_catalog_file_that_does_not_parse_or_is_not_a_catalog_is_exit_2_naming_it_once(
        settings, client, tmp_path, name, text, said):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = client.get("/products").get_json()
    result = _invoke("catalog", "load", path, DATABASE_URL=settings.database_url)
    assert result.exit_code == 2, result.output
    [line] = [line for line in _error_lines(result.output) if line.startswith("Error:")]
    assert said in line and line.count(name) == 1, line
    assert client.get("/products").get_json() == before  # nothing loaded
    # The same file is exit 2 from `shop events send` too: one contract for a file that is not what it should be.
    if name == "bad.json":
        sent = _invoke("events", "send", path, "--url", "http://127.0.0.1:9/webhooks/stripe",
                       DATABASE_URL=settings.database_url, STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET)
        assert sent.exit_code == result.exit_code == 2, sent.output


def test_a_catalog_load_the_stock_refuses_is_still_exit_1(settings, client, checkout, tmp_path):
    checkout([("TEA-01", 2)])
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"currency": "jpy", "products": [
        {"sku": "TEA-01", "name": "Hokkaido black tea", "unit_amount": 1200, "stock": 1}]}))
    result = _invoke("catalog", "load", path, DATABASE_URL=settings.database_url)
    assert result.exit_code == 1, result.output
    assert "TEA-01" in result.output and "reserved" in result.output


# --- cancel refused for money held: what applies to the order as it is -----------------------------------

def _paid_order(checkout, post_event, deliver) -> dict:
    order = checkout([("TEA-01", 1)])
    confirm_card(order["payment_intent_id"], "4242424242424242")
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver()
    return order


def test_cancelling_a_paid_order_is_refused_without_pointing_at_accept(settings, client, checkout, post_event,
                                                                        deliver):
    order = _paid_order(checkout, post_event, deliver)
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "paid"
    env = {"DATABASE_URL": settings.database_url, "STRIPE_API_BASE": settings.stripe_api_base}
    refused = _invoke("orders", "cancel", order["order_id"], "--note", "asked", **env)
    assert refused.exit_code == 1, refused.output
    [line] = [line for line in _error_lines(refused.output) if line.startswith("Error:")]
    assert "cancel --refund gives it back; left as it is, the paid order keeps it and ships" in line, line
    assert "accept" not in line, line
    # What the hint would have sent staff to is refused indeed.
    accepted = _invoke("orders", "accept", order["order_id"], "--note", "keep it", **env)
    assert accepted.exit_code == 1 and "only an order in review can be accepted" in accepted.output


def test_cancelling_an_order_in_review_holding_money_still_points_at_accept(settings, client, checkout, post_event,
                                                                            deliver):
    order = flagged_order(checkout, post_event, deliver)
    refused = _invoke("orders", "cancel", order["order_id"], "--note", "asked", DATABASE_URL=settings.database_url,
                      STRIPE_API_BASE=settings.stripe_api_base)
    assert refused.exit_code == 1, refused.output
    assert "cancel --refund gives it back; accept keeps it and ships" in refused.output, refused.output


def test_the_consoles_cancel_page_offers_accept_only_for_an_order_in_review(client, sessions, checkout, post_event,
                                                                          deliver):
    staff = logged_in(client, sessions)
    paid = _paid_order(checkout, post_event, deliver)
    text = page(staff, f"/admin/orders/{paid['order_id']}/cancel")
    assert "to keep the money, leave the order as it is: it ships." in text
    assert "accept instead" not in text
    flagged = flagged_order(checkout, post_event, deliver)
    assert "to keep the money, accept instead." in page(staff, f"/admin/orders/{flagged['order_id']}/cancel")


# --- what --help and the operator's guide say --------------------------------------------------------------

def test_relay_help_says_it_posts_failed_staff_alerts_again():
    result = CliRunner().invoke(shop, ["relay", "--help"])
    assert result.exit_code == 0
    said = " ".join(result.output.split())
    assert "POST again staff alerts whose POST to STAFF_ALERT_URL failed" in said, said


def test_operations_guide_lists_every_status_events_list_takes():
    guide = (ROOT / "docs" / "operations.md").read_text()
    [listed] = re.findall(r"shop events list \[--status ([a-z|]+)\]", guide)
    assert listed.split("|") == [status.value for status in EventStatus]
    help_text = " ".join(CliRunner().invoke(shop, ["events", "list", "--help"]).output.split())
    assert all(status.value in help_text for status in EventStatus)
