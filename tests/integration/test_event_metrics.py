"""shop_events_processed_total counts every handler run, staff replays included, and agrees with the
retry and dead-letter counters however a message failed; a `shop` command counts into the shared folder."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import select

from consumers.processing import start_copy
from models.db import transaction
from models.events import OutboxMessage, OutboxStatus
from tests.integration.test_health_and_cli import _samples
from tests.integration.test_staff_cli import _dead_letter, _run
from tests.support import event_for

ROOT = Path(__file__).resolve().parents[2]
PROCESSED = 'shop_events_processed_total{outcome="processed",type="payment_intent.succeeded"}'
DEAD = 'shop_events_processed_total{outcome="dead",type="payment_intent.succeeded"}'
RETRY = 'shop_events_processed_total{outcome="retry",type="payment_intent.succeeded"}'
DEAD_LETTERS = 'shop_dead_letters_total{topic="stripe_event"}'
RETRIES = 'shop_retries_total{topic="stripe_event"}'
LAG = 'shop_event_lag_seconds_count{type="payment_intent.succeeded"}'


def _succeeded(order: dict) -> dict:
    return event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=order["total"])


def _growth(before: dict, after: dict, *names: str) -> list[float]:
    return [after.get(name, 0.0) - before.get(name, 0.0) for name in names]


def test_a_staff_replay_counts_as_a_handler_run_and_a_redrive_counts_once_through_the_worker(
        settings, sessions, client, checkout, post_event, deliver):
    _, event, _ = _dead_letter(settings, sessions, client, checkout, post_event, deliver)
    before = _samples(client)
    replayed = _run(settings, "events", "replay", event["id"])
    assert replayed.exit_code == 0 and "processed (order paid)" in replayed.output
    after = _samples(client)
    # Counted as the handler run it is, and not in the lag: a person ran it days after Stripe made it, maybe.
    assert _growth(before, after, PROCESSED, LAG) == [1, 0]

    # Replayed again: already processed, the handler does not run, nothing is counted.
    assert _run(settings, "events", "replay", event["id"]).exit_code == 0
    assert _growth(after, _samples(client), PROCESSED) == [0]

    # The console's retry and `shop dlq retry` re-drive: the worker runs it, and counts it once.
    _, _, message_id = _dead_letter(settings, sessions, client, checkout, post_event, deliver)
    before = _samples(client)
    assert _run(settings, "dlq", "retry", str(message_id)).exit_code == 0
    deliver()
    assert _growth(before, _samples(client), PROCESSED) == [1]


def test_a_message_that_keeps_killing_its_worker_is_dead_in_events_processed_as_in_dead_letters(
        settings, sessions, client, checkout, post_event):
    capped = dataclasses.replace(settings, max_deliveries=2)
    post_event(_succeeded(checkout([("TEA-01", 1)])))
    with transaction(sessions) as session:
        [message] = session.scalars(select(OutboxMessage)).all()
        message.mark_published(capped.redelivery_seconds)
    before = _samples(client)
    assert start_copy(sessions, capped, message.id) is False
    assert start_copy(sessions, capped, message.id) is True  # MAX_DELIVERIES copies started: a dead letter
    with sessions() as session:
        assert session.get(OutboxMessage, message.id).status is OutboxStatus.DEAD
    assert _growth(before, _samples(client), DEAD_LETTERS, DEAD) == [1, 1]


def test_failed_attempts_count_alike_in_events_processed_and_in_retries_and_dead_letters(
        settings, sessions, client, checkout, post_event, deliver):
    before = _samples(client)
    _dead_letter(settings, sessions, client, checkout, post_event, deliver)
    retried, dead, retries, dead_letters = _growth(before, _samples(client), RETRY, DEAD, RETRIES, DEAD_LETTERS)
    assert (retried, dead) == (retries, dead_letters) == (settings.max_attempts - 1, 1)


def _shop(settings, workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`shop ARGS…` as its own short-lived process, from the code under test."""
    return subprocess.run(
        [sys.executable, "-c", "from webhook_app.cli import shop; shop()", *args], cwd=workdir,
        capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "DATABASE_URL": settings.database_url,
             "STRIPE_API_BASE": settings.stripe_api_base, "LOG_FORMAT": "console", **env})


def _folder_samples(folder: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_a_replay_from_the_command_line_counts_into_the_shared_folder_after_the_command_exits(
        settings, client, checkout, post_event, tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    event = _succeeded(checkout([("TEA-01", 1)]))
    post_event(event)
    replayed = _shop(settings, tmp_path, "events", "replay", event["id"], PROMETHEUS_MULTIPROC_DIR=str(folder))
    assert replayed.returncode == 0, replayed.stderr
    # What the web process's /metrics reads from the folder once the command is gone.
    assert _folder_samples(folder)[PROCESSED] == 1


def test_a_replay_from_the_command_line_runs_and_counts_where_the_shared_folder_is_missing(
        settings, client, checkout, post_event, tmp_path):
    # A one-off container has the deployment's environment, not the folder its processes made.
    folder = tmp_path / "not-made-yet" / "metrics"
    event = _succeeded(checkout([("TEA-01", 1)]))
    post_event(event)
    replayed = _shop(settings, tmp_path, "events", "replay", event["id"], PROMETHEUS_MULTIPROC_DIR=str(folder))
    assert replayed.returncode == 0, replayed.stderr
    assert "processed (order paid)" in replayed.stdout
    assert client.get(f"/orders/{event['data']['object']['metadata']['order_id']}").get_json()["status"] == "paid"
    assert _folder_samples(folder)[PROCESSED] == 1
