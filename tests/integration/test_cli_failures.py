"""The staff CLI when things fail: a replay whose run raises, a database that cannot be reached, and
several dead letters of which some are refused. One clear line and the right exit code, never a
traceback, and every staff decision (a refusal or a failure too) in the audit trail."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from consumers.payments import configure_stripe
from models.events import InboxEvent, OutboxMessage, OutboxStatus
from models.history import AttemptOutcome, EventAttempt, StaffAction
from models.staff import ADD_LOGIN
from tests.integration.test_admin_pages import dead_letter
from tests.support import WEBHOOK_SECRET, event_for, free_port
from webhook_app.cli import shop


def _env(settings, **more) -> dict:
    return {"DATABASE_URL": settings.database_url, "STRIPE_API_BASE": settings.stripe_api_base,
            "STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET, "LOG_FORMAT": "console", "SHOP_STAFF": "tester", **more}


def _run(settings, *args, **env):
    return CliRunner().invoke(shop, [str(arg) for arg in args], env=_env(settings, **env))


def _error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("Error:")]


def _id_lines(output: str) -> list[str]:
    """The verb's own lines, one per dead letter ("N: …"), without the service's log lines."""
    return [line for line in output.splitlines() if re.match(r"\d+: ", line)]


def _audit(sessions) -> list[StaffAction]:
    with sessions() as session:
        return list(session.scalars(select(StaffAction).where(StaffAction.action != ADD_LOGIN)
                                    .order_by(StaffAction.id)))


def _runs(sessions, event_id: str) -> list[EventAttempt]:
    with sessions() as session:
        return list(session.scalars(select(EventAttempt).join(InboxEvent, EventAttempt.inbox_event_id == InboxEvent.id)
                                    .where(InboxEvent.event_id == event_id).order_by(EventAttempt.id)))


def _status(sessions, message_id: int) -> OutboxStatus:
    with sessions() as session:
        return session.get(OutboxMessage, message_id).status


# --- a replay whose run raises ------------------------------------------------------------------------------

def test_a_replay_whose_handler_fails_says_so_in_one_line_and_keeps_the_run_and_the_decision(
        settings, sessions, checkout, post_event, deliver):
    order, event, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    runs_before, audit_before = len(_runs(sessions, event["id"])), len(_audit(sessions))
    with sessions.kw["bind"].begin() as conn:  # the handler's table is still away: not a rule, a fault
        conn.execute(text("ALTER TABLE shipments RENAME TO shipments_away"))
    try:
        replayed = _run(settings, "events", "replay", event["id"], "--note", "table is back?")
    finally:
        with sessions.kw["bind"].begin() as conn:
            conn.execute(text("ALTER TABLE shipments_away RENAME TO shipments"))

    assert isinstance(replayed.exception, SystemExit), replayed.exception  # not an exception out of the command
    assert replayed.exit_code == 1, replayed.output
    [line] = _error_lines(replayed.output)  # beside the service's log lines, on a terminal too
    assert line.startswith(f"Error: {event['id']}: replay failed, nothing was applied: ") and "shipments" in line
    assert f"kept as a failed attempt with its traceback: shop events show {event['id']}" in line
    assert f"shop orders show {order['order_id']}" in line

    runs = _runs(sessions, event["id"])
    assert len(runs) == runs_before + 1
    assert (runs[-1].runner, runs[-1].outcome, runs[-1].order_id) == (
        "replay by tester", AttemptOutcome.FAILED, order["order_id"])
    assert "shipments" in runs[-1].error and "Traceback" in runs[-1].traceback
    [audited] = _audit(sessions)[audit_before:]
    assert (audited.actor, audited.action, audited.target, audited.note) == (
        "tester", "replay", f"event {event['id']}", "table is back?")
    assert audited.detail.startswith("failed: ") and audited.order_id == order["order_id"]
    assert _status(sessions, message_id) is OutboxStatus.DEAD  # nothing applied, nothing closed

    shown = _run(settings, "events", "show", event["id"])  # where the line sends staff
    assert shown.exit_code == 0, shown.output
    last = json.loads(shown.output)["runs"][-1]
    assert (last["runner"], last["outcome"]) == ("replay by tester", "failed")
    assert "shipments" in last["error"] and "Traceback" in last["traceback"]

    again = _run(settings, "events", "replay", event["id"])  # the table is back: the replay now pays the order
    assert again.exit_code == 0 and "processed (order paid)" in again.output, again.output


def test_a_replay_stripe_cannot_answer_during_the_handler_is_kept_as_a_run_and_audited(
        settings, sessions, checkout, post_event):
    """A payment on a second tab's intent asks Stripe for that intent's refunds; Stripe is down. The run
    used to be re-raised as it was: no attempt row, and no audit row of the decision staff took."""
    order = checkout([("TEA-01", 1)])
    other = "pi_secondtab" + order["order_id"][-8:]
    event = event_for("localstripe_payment_intent.succeeded", intent_id=other, order_id=order["order_id"],
                      amount=order["total"])
    assert post_event(event).status_code == 200
    audit_before = len(_audit(sessions))
    try:
        replayed = _run(settings, "events", "replay", event["id"], "--note", "try again",
                        STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}")
    finally:
        configure_stripe(settings)  # the CLI set the process's Stripe address: give the other tests theirs
    assert isinstance(replayed.exception, SystemExit) and replayed.exit_code == 1, replayed.output
    [run] = _runs(sessions, event["id"])
    assert (run.runner, run.outcome) == ("replay by tester", AttemptOutcome.FAILED)
    assert run.error.startswith("PaymentGatewayError")
    [audited] = _audit(sessions)[audit_before:]
    assert (audited.action, audited.target, audited.note) == ("replay", f"event {event['id']}", "try again")
    assert audited.detail.startswith("failed at Stripe: "), audited.detail
    [line] = _error_lines(replayed.output)
    assert f"{event['id']}: replay failed, nothing was applied: PaymentGatewayError" in line, line
    with sessions() as session:  # not applied: it waits for the worker (or another replay) as before
        assert session.scalars(select(InboxEvent.status).where(InboxEvent.event_id == event["id"])).one().value \
            == "received"


def test_a_replay_of_a_resolved_event_is_refused_and_audited_once(settings, sessions, checkout, post_event, deliver):
    _, event, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    assert _run(settings, "dlq", "resolve", message_id, "--note", "shipped by hand").exit_code == 0
    audit_before, runs_before = len(_audit(sessions)), len(_runs(sessions, event["id"]))
    replayed = _run(settings, "events", "replay", event["id"])
    assert replayed.exit_code == 1 and "reopen it first" in replayed.output, replayed.output
    [audited] = _audit(sessions)[audit_before:]
    assert audited.detail.startswith("refused: ")
    assert len(_runs(sessions, event["id"])) == runs_before  # nothing ran


# --- a database that cannot be reached ----------------------------------------------------------------------

CLOSED = free_port()
SECRET = "pw-s3cret-never-shown"
UNREACHABLE = [
    pytest.param(f"postgresql+psycopg://shop:{SECRET}@127.0.0.1:{CLOSED}/shop?connect_timeout=2",
                 "Connection refused", id="postgresql-closed-port"),
    pytest.param("sqlite:///{folder}", "unable to open database file", id="sqlite-file-is-a-folder"),
]
STAFF_VERBS = [("dlq", "list"), ("dlq", "show", "1"), ("dlq", "retry", "1", "2"),
               ("dlq", "resolve", "1", "--note", "n"), ("dlq", "reopen", "1", "--note", "n"),
               ("events", "list"), ("events", "show", "evt_x"), ("events", "replay", "evt_x"),
               ("orders", "review"), ("orders", "show", "ord_x"), ("orders", "accept", "ord_x", "--note", "n"),
               ("orders", "cancel", "ord_x", "--note", "n"), ("orders", "refund", "ord_x", "--reason", "r"),
               ("orders", "ship", "ord_x", "--note", "n"), ("staff", "list"), ("staff", "disable", "a@example.com")]


@pytest.mark.parametrize("database_url, reason", UNREACHABLE)
def test_every_staff_verb_with_the_database_unreachable_says_so_in_one_line_and_exits_1(database_url, reason,
                                                                                      tmp_path):
    env = {"DATABASE_URL": database_url.format(folder=tmp_path), "LOG_FORMAT": "console", "SHOP_STAFF": "tester"}
    for args in STAFF_VERBS:
        result = CliRunner().invoke(shop, list(args), env=env)
        assert isinstance(result.exception, SystemExit), (args, result.exception)
        assert result.exit_code == 1, (args, result.output)
        [line] = _error_lines(result.output)
        assert line.startswith("Error: database unavailable: OperationalError: ") and reason in line, (args, line)
        assert SECRET not in line


@pytest.mark.parametrize("database_url, reason", UNREACHABLE)
def test_the_shop_command_with_the_database_unreachable_prints_no_traceback(database_url, reason, tmp_path):
    """The console script itself (what staff type), not only the click group."""
    shop_bin = os.path.join(os.path.dirname(sys.executable), "shop")
    env = {**os.environ, "DATABASE_URL": database_url.format(folder=tmp_path), "LOG_FORMAT": "console",
           "SHOP_STAFF": "tester"}
    done = subprocess.run([shop_bin, "dlq", "list"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: database unavailable: ") and reason in line, done.stderr
    assert SECRET not in done.stderr


def test_a_statement_the_database_refuses_is_not_called_unavailable(tmp_path):
    """A reachable database without the schema (never migrated): not an outage, but one line saying what
    to run (tests/integration/test_cli_contract_fixes.py has the rest)."""
    sqlite3.connect(tmp_path / "empty.db").close()
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = CliRunner().invoke(shop, ["dlq", "list"], env={"DATABASE_URL": url, "LOG_FORMAT": "console"})
    assert result.exit_code == 1
    [line] = _error_lines(result.output)
    assert "has no table outbox" in line and "run `shop db upgrade`" in line, line
    assert "database unavailable" not in result.output


# --- several dead letters, some refused ---------------------------------------------------------------------

def test_dlq_retry_tries_every_id_and_says_which_were_refused(settings, sessions, checkout, post_event, deliver):
    _, _, first = dead_letter(settings, sessions, checkout, post_event, deliver)
    _, _, second = dead_letter(settings, sessions, checkout, post_event, deliver)
    _, _, third = dead_letter(settings, sessions, checkout, post_event, deliver)
    assert _run(settings, "dlq", "resolve", second, "--note", "done by hand").exit_code == 0
    audit_before = len(_audit(sessions))

    retried = _run(settings, "dlq", "retry", first, second, third)
    assert retried.exit_code == 1, retried.output
    assert _id_lines(retried.output) == [
        f"{first}: queued again",
        f"{second}: not retried (message {second} is resolved, not a dead letter)",
        f"{third}: queued again"]
    assert [_status(sessions, m) for m in (first, second, third)] == [
        OutboxStatus.PENDING, OutboxStatus.RESOLVED, OutboxStatus.PENDING]
    audited = _audit(sessions)[audit_before:]
    assert [(row.action, row.target, row.detail.split(":")[0]) for row in audited] == [
        ("retry", f"dead letter {first}", "message is pending"),
        ("retry", f"dead letter {second}", "refused"),
        ("retry", f"dead letter {third}", "message is pending")]

    all_fine = _run(settings, "dlq", "retry", first)  # a single refused id: the same line, exit 1
    assert all_fine.exit_code == 1
    assert _id_lines(all_fine.output) == [f"{first}: not retried (message {first} is pending, not a dead letter)"]


def test_dlq_retry_with_an_id_no_message_has_touches_none(settings, sessions, checkout, post_event, deliver):
    _, _, first = dead_letter(settings, sessions, checkout, post_event, deliver)
    audit_before = len(_audit(sessions))
    retried = _run(settings, "dlq", "retry", first, 987654)
    assert retried.exit_code == 2, retried.output
    assert _status(sessions, first) is OutboxStatus.DEAD
    assert len(_audit(sessions)) == audit_before
    assert _error_lines(retried.output) == ["Error: no dead letter 987654; nothing was done to the others"]
    assert _id_lines(retried.output) == []


def test_dlq_resolve_and_reopen_refused_say_so_in_their_line(settings, sessions, checkout, post_event, deliver):
    _, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    reopened = _run(settings, "dlq", "reopen", message_id, "--note", "why not")
    assert reopened.exit_code == 1
    assert _id_lines(reopened.output) == [f"{message_id}: not reopened (message {message_id} is dead, "
                                          f"not a resolved dead letter)"]
    assert _id_lines(_run(settings, "dlq", "resolve", message_id, "--note", "by hand").output) == [
        f"{message_id}: resolved"]
    resolved = _run(settings, "dlq", "resolve", message_id, "--note", "again")
    assert resolved.exit_code == 1
    assert _id_lines(resolved.output) == [
        f"{message_id}: not resolved (message {message_id} is resolved, not a dead letter)"]
