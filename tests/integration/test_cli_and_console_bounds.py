"""Input past what the CLI and the console can act on: blank notes, ids past the database's 64-bit
id columns and numbers past its 32-bit amount columns, dates past the calendar, a webhook URL that
is not one, a file that is not an event. Each gets one clear answer (a usage error, an unknown id, a 404 or a 422) and
changes nothing; a blank note stored before it was refused never breaks an order's story.

Data comes through the real paths (checkout, signed webhooks, the worker, localstripe), the CLI
through click's runner and the console through Flask's test client, as the other suites do.
"""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from consumers.staff_actions import resolve_dead_letter
from models.events import EventStatus, OutboxMessage, OutboxStatus
from models.history import StaffAction
from models.staff import ADD_LOGIN
from tests.integration.test_admin_pages import (
    dead_letter,
    flashes,
    logged_in,
    order_status,
    post,
)
from tests.support import WEBHOOK_SECRET, free_port, stripe_fixture
from webhook_app.cli import shop

HUGE = "99999999999999999999"      # far past 64 bits
PAST_ID = str(2**63)               # one past LARGEST_ID: OverflowError on SQLite, "bigint out of range" on PostgreSQL


@pytest.fixture
def run(settings):
    """`shop ARGS…` in this process, with the environment a deployment would give it."""
    env = {"DATABASE_URL": settings.database_url, "BROKER_URL": settings.broker_url,
           "STRIPE_API_BASE": settings.stripe_api_base, "STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
           "LOG_FORMAT": "console", "SHOP_STAFF": "tester"}

    def invoke(*args, **more_env):
        return CliRunner().invoke(shop, [str(a) for a in args], env={**env, **more_env})

    return invoke


@pytest.fixture
def staff_client(client, sessions):
    return logged_in(client, sessions)


def _audit(sessions) -> list[tuple]:
    with sessions() as session:
        # The staff login the fixture added is audited too; these tests are about decisions.
        return [(a.action, a.target, a.note, a.detail) for a in session.scalars(
            select(StaffAction).where(StaffAction.action != ADD_LOGIN).order_by(StaffAction.id))]


def _status(sessions, message_id: int) -> OutboxStatus:
    with sessions() as session:
        return session.get(OutboxMessage, message_id).status


# --- blank notes ------------------------------------------------------------------------------------

BLANK_NOTE_VERBS = [
    pytest.param(("dlq", "resolve", "{message}", "--note", "   "), "--note", id="dlq-resolve"),
    pytest.param(("dlq", "reopen", "{message}", "--note", "\t"), "--note", id="dlq-reopen"),
    pytest.param(("dlq", "retry", "{message}", "--note", " "), "--note", id="dlq-retry"),
    pytest.param(("events", "replay", "{event}", "--note", "  "), "--note", id="events-replay"),
    pytest.param(("orders", "accept", "{order}", "--note", " \n "), "--note", id="orders-accept"),
    pytest.param(("orders", "cancel", "{order}", "--note", "", "--refund"), "--note", id="orders-cancel"),
    pytest.param(("orders", "refund", "{order}", "--reason", "   "), "--reason", id="orders-refund"),
]


@pytest.mark.parametrize("args, option", BLANK_NOTE_VERBS)
def test_every_cli_note_and_reason_refuses_a_blank_value_and_changes_nothing(
        run, settings, sessions, checkout, post_event, deliver, args, option):
    order, event, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    before = _audit(sessions)
    filled = [a.format(message=message_id, event=event["id"], order=order["order_id"]) for a in args]

    result = run(*filled)

    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}': must not be blank" in result.output
    assert _audit(sessions) == before  # not even a refusal is audited: nothing was asked
    assert _status(sessions, message_id) is OutboxStatus.DEAD
    assert order_status(sessions, order["order_id"]) == "pending_payment"


def test_a_note_is_stored_without_its_surrounding_blanks(run, settings, sessions, checkout, post_event, deliver):
    _, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    result = run("dlq", "resolve", message_id, "--note", "  shipped by hand \n")
    assert result.exit_code == 0, result.output
    with sessions() as session:
        assert session.get(OutboxMessage, message_id).resolution_note == "shipped by hand"


def test_a_blank_note_stored_before_it_was_refused_never_breaks_the_story(
        run, staff_client, settings, sessions, checkout, post_event, deliver):
    order, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    # What `shop dlq resolve ID --note "   "` stored before the CLI refused blank notes.
    resolve_dead_letter(sessions, message_id, actor="tester", note="   \n  ")

    shown = run("orders", "show", order["order_id"])
    assert shown.exit_code == 0, shown.output
    assert f"order {order['order_id']}" in shown.output
    assert re.search(r"staff tester: resolve dead letter \d+", shown.output), shown.output
    page = staff_client.get(f"/admin/orders/{order['order_id']}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "staff tester: resolve dead letter" in page.get_data(as_text=True)


# --- ids past the outbox's id column ------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["show", "retry"])
@pytest.mark.parametrize("message_id", [HUGE, PAST_ID])
def test_cli_dead_letter_id_past_the_column_is_an_unknown_id(run, verb, message_id):
    result = run("dlq", verb, message_id)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"Error: no dead letter {message_id}"
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an exception out of the command


def test_cli_retry_of_a_real_and_an_impossible_id_re_drives_neither(run, settings, sessions, checkout, post_event,
                                                                      deliver):
    _, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    before = _audit(sessions)
    result = run("dlq", "retry", message_id, HUGE)
    assert result.exit_code == 2, result.output
    assert f"no dead letter {HUGE}" in result.output and "queued again" not in result.output
    assert _status(sessions, message_id) is OutboxStatus.DEAD
    assert _audit(sessions) == before


@pytest.mark.parametrize("limit", ["-1", "0", HUGE])
def test_events_list_limit_out_of_range_is_a_usage_error(run, checkout, post_event, limit):
    result = run("events", "list", "--limit", limit)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--limit'" in result.output


def test_events_list_help_names_every_status(run):
    result = run("events", "list", "--help")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    for status in EventStatus:
        assert status.value in flat, status


@pytest.mark.parametrize("path", [f"/admin/dead-letters/{HUGE}", f"/admin/dead-letters/{PAST_ID}"])
def test_console_dead_letter_id_past_the_column_is_the_consoles_404(staff_client, path):
    response = staff_client.get(path)
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "There is nothing at this address" in response.get_data(as_text=True)


@pytest.mark.parametrize("decision, form", [("retry", {}), ("resolve", {"note": "by hand"}),
                                            ("reopen", {"note": "again"})])
def test_console_decision_on_an_impossible_id_is_404_and_changes_nothing(staff_client, sessions, decision, form):
    before = _audit(sessions)
    response = post(staff_client, f"/admin/dead-letters/{HUGE}/{decision}", **form)
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "There is nothing at this address" in response.get_data(as_text=True)
    assert _audit(sessions) == before


def test_console_impossible_id_still_asks_a_logged_out_visitor_to_log_in(client):
    response = client.get(f"/admin/dead-letters/{HUGE}")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


def test_bulk_retry_with_a_real_and_an_impossible_id_retries_the_real_one_and_names_the_other(
        staff_client, settings, sessions, checkout, post_event, deliver):
    _, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    done = post(staff_client, "/admin/dead-letters/bulk-retry", id=[str(message_id), HUGE, "abc"], note="restored")
    assert done.status_code == 303, done.get_data(as_text=True)
    messages = flashes(staff_client.get("/admin/dead-letters").get_data(as_text=True))
    assert any(f"1 dead letter queued again: {message_id}." in m for m in messages), messages
    assert any(m.startswith("Not retried:") and f"{HUGE} (no dead letter {HUGE})" in m and "abc" in m
               for m in messages), messages
    assert _status(sessions, message_id) is OutboxStatus.PENDING
    assert [(a[0], a[1]) for a in _audit(sessions)] == [("retry", f"dead letter {message_id}")]


def test_bulk_retry_of_only_impossible_ids_does_nothing_and_says_so(staff_client, sessions):
    done = post(staff_client, "/admin/dead-letters/bulk-retry", id=[HUGE, PAST_ID])
    assert done.status_code == 303
    messages = flashes(staff_client.get("/admin/dead-letters").get_data(as_text=True))
    assert any(f"Not retried: {PAST_ID} (no dead letter {PAST_ID}); {HUGE}" in m for m in messages), messages
    assert not any("queued again" in m for m in messages)
    assert _audit(sessions) == []


# --- paging and dates past the calendar ----------------------------------------------------------------

@pytest.mark.parametrize("page, listed", [(HUGE, False), (PAST_ID, False), ("-3", True)])
def test_a_page_past_any_end_is_an_empty_page_and_before_the_first_is_the_first(
        staff_client, settings, sessions, checkout, post_event, deliver, page, listed):
    order, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    for path, row in ((f"/admin/dead-letters?page={page}", f'data-id="{message_id}"'),
                      (f"/admin/orders?page={page}", f'href="/admin/orders/{order["order_id"]}"'),
                      (f"/admin/orders?status=pending_payment&page={page}",
                       f'href="/admin/orders/{order["order_id"]}"')):
        response = staff_client.get(path)
        assert response.status_code == 200 and response.mimetype == "text/html", (path, response.status_code)
        assert (row in response.get_data(as_text=True)) is listed, path


@pytest.mark.parametrize("since, says", [
    ("999999999d", "reaches back before the calendar starts"),
    (f"{HUGE}d", "reaches back before the calendar starts"),
    ("9999-12-31T23:59:59-10:00", "is not a date the calendar holds in UTC"),
    ("0001-01-01T00:00:00+09:00", "is not a date the calendar holds in UTC"),
])
def test_since_past_the_calendar_is_a_422_filter_error(staff_client, since, says):
    response = staff_client.get("/admin/dead-letters", query_string={"since": since})
    assert response.status_code == 422 and response.mimetype == "text/html"
    assert says in response.get_data(as_text=True)
    preview = staff_client.get("/admin/dead-letters/bulk-retry", query_string={"since": since})
    assert preview.status_code == 303
    assert any(says in m for m in flashes(staff_client.get(preview.headers["Location"]).get_data(as_text=True)))


def test_since_with_an_offset_still_filters(staff_client, settings, sessions, checkout, post_event, deliver):
    _, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    listed = staff_client.get("/admin/dead-letters", query_string={"since": "2000-01-01T09:00:00+09:00"})
    assert listed.status_code == 200 and f'data-id="{message_id}"' in listed.get_data(as_text=True)
    later = staff_client.get("/admin/dead-letters", query_string={"since": "9999-12-30T23:00:00-10:00"})
    assert later.status_code == 200 and f'data-id="{message_id}"' not in later.get_data(as_text=True)


# --- events send, db upgrade, catalog load ---------------------------------------------------------------

@pytest.fixture
def event_file(tmp_path):
    path = tmp_path / "event.json"
    path.write_text(json.dumps(stripe_fixture("payment_intent.succeeded")))
    return path


def test_events_send_with_nothing_listening_is_one_line_and_exit_1(run, event_file):
    url = f"http://127.0.0.1:{free_port()}/webhooks/stripe"
    result = run("events", "send", event_file, "--url", url)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"Error: could not reach {url}: Connection refused"


@pytest.mark.parametrize("url", ["notaurl", "ftp://127.0.0.1/webhooks/stripe", "http://", "http://127.0.0.1:99999/"])
def test_events_send_to_a_url_that_is_not_one_is_a_usage_error(run, event_file, url):
    result = run("events", "send", event_file, "--url", url)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--url'" in result.output and repr(url) in result.output


@pytest.mark.parametrize("body", ["[]", '"evt_1"', "3"])
@pytest.mark.parametrize("fresh", [["--fresh-id"], []])
def test_events_send_of_a_file_that_is_not_a_json_object_is_a_usage_error(run, tmp_path, body, fresh):
    path = tmp_path / "list.json"
    path.write_text(body)
    url = f"http://127.0.0.1:{free_port()}/webhooks/stripe"  # never reached
    result = run("events", "send", path, "--url", url, *fresh)
    assert result.exit_code == 2, result.output
    assert f"{path} is not a JSON object" in result.output and "could not reach" not in result.output


def test_db_upgrade_to_an_unknown_revision_is_a_usage_error_and_changes_nothing(run, settings):
    def version():
        engine = create_engine(settings.database_url)
        try:
            with engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        finally:
            engine.dispose()

    before = version()
    result = run("db", "upgrade", "--revision", "nope")
    assert result.exit_code == 2, result.output
    assert "Invalid value for --revision: Can't locate revision identified by 'nope'" in result.output
    assert version() == before


@pytest.mark.parametrize("field, value", [("stock", 10**20), ("stock", 2**31), ("unit_amount", 2**31),
                                          ("weight_grams", 10**20)])
def test_catalog_load_of_a_number_past_the_column_is_exit_2_naming_the_field_and_loads_nothing(
        run, client, tmp_path, field, value):
    product = {"sku": "BIG-01", "name": "Big", "unit_amount": 100, "stock": 1, "weight_grams": 1, field: value}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"currency": "jpy", "products": [product]}))
    result = run("catalog", "load", path)
    assert result.exit_code == 2, result.output  # bad usage: the file is not a catalog
    assert f"products[0].{field} must be an integer from 0 to 2147483647" in result.output
    assert client.get("/products/BIG-01").status_code == 404


def test_catalog_load_of_the_largest_stock_the_column_holds_works(run, client, tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"currency": "jpy", "products": [
        {"sku": "BIG-01", "name": "Big", "unit_amount": 100, "stock": 2**31 - 1}]}))
    result = run("catalog", "load", path)
    assert result.exit_code == 0, result.output
    assert client.get("/products/BIG-01").get_json()["on_hand"] == 2**31 - 1
