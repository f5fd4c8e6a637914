"""GET /metrics while the database is down still serves the counters that explain the outage; a webhook whose
store failed is in the ingest latency; an existing multiprocess folder that cannot be written is a fallback,
not a crash; every rejection reason is scraped at 0 before its first one."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from consumers.handlers import HANDLERS
from tests.integration.test_event_metrics import ROOT, _shop, _succeeded
from tests.support import WEBHOOK_SECRET, signed_headers

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/nodb"
DATABASE_GAUGES = ("shop_outbox_backlog", "shop_outbox_overdue_seconds", "shop_outbox_oldest_age_seconds",
                   "shop_inbox_events_open", "shop_orders_needing_review", "shop_staff_alerts_undelivered")


def _scrape(client) -> tuple[int, dict[str, float]]:
    response = client.get("/metrics")
    samples = {}
    if response.status_code == 200:
        assert response.mimetype == "text/plain"
        for line in response.get_data(as_text=True).splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
    return response.status_code, samples


def _post(client, event_id: str):
    payload = json.dumps({"id": event_id, "object": "event", "type": "payment_intent.succeeded",
                          "api_version": "2024-06-20", "created": int(time.time()), "livemode": False,
                          "data": {"object": {"id": f"pi_{event_id}", "object": "payment_intent"}}})
    return client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload, WEBHOOK_SECRET))


def _unavailable(event_type: str = "payment_intent.succeeded") -> str:
    return f'shop_webhooks_received_total{{outcome="rejected",reason="storage_unavailable",type="{event_type}"}}'


def test_metrics_serve_the_counters_and_say_the_database_is_down_while_it_is(client, make_client):
    down = make_client(database_url=UNREACHABLE)
    status, before = _scrape(down)
    assert status == 200, "the counters that explain an outage are not scrapeable during it"
    assert _post(down, "evt_metrics_down").status_code == 503
    status, after = _scrape(down)
    assert status == 200
    assert after[_unavailable()] - before.get(_unavailable(), 0) == 1
    assert after["shop_metrics_database_up"] == 0
    # The gauges it could not read are left out, not shown as a made-up 0.
    assert not [name for name in after if name.startswith(DATABASE_GAUGES)]

    status, up = _scrape(client)  # the same process, its database answering
    assert status == 200 and up["shop_metrics_database_up"] == 1
    assert up['shop_inbox_events_open{status="received"}'] == 0
    assert up[_unavailable()] == after[_unavailable()]


def test_every_rejection_reason_is_scraped_at_zero_before_its_first_one(client):
    """So that increase() over the first rejection ever (a secret rotated at Stripe, the first outage) is not 0."""
    status, samples = _scrape(client)
    assert status == 200
    expected = [f'shop_webhooks_received_total{{outcome="rejected",reason="{reason}",type="unverified"}}'
                for reason in ("missing_signature", "invalid_signature", "invalid_payload", "not_an_event",
                               "payload_too_large", "webhook_not_configured")]
    expected += [_unavailable(event_type) for event_type in HANDLERS]
    assert "payment_intent.succeeded" in HANDLERS
    assert [name for name in expected if name not in samples] == []


def test_a_webhook_whose_store_hung_then_failed_is_in_the_ingest_latency(client, make_client):
    """The ingest histogram is what the "p99 over 1 s" alert reads: the slowest requests are those whose
    database hangs, and they end 503."""
    silent = socket.socket()  # a database host that takes the connection and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        port = silent.getsockname()[1]
        slow = make_client(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/nodb?connect_timeout=1")
        _, before = _scrape(client)
        started = time.monotonic()
        answer = _post(slow, "evt_metrics_slow")
        took = time.monotonic() - started
    finally:
        silent.close()
    _, after = _scrape(client)
    assert answer.status_code == 503 and took >= 0.9, (answer.status_code, took)
    assert after["shop_webhook_ingest_seconds_count"] - before["shop_webhook_ingest_seconds_count"] == 1
    assert after["shop_webhook_ingest_seconds_sum"] - before["shop_webhook_ingest_seconds_sum"] >= 0.9
    assert after['shop_webhook_ingest_seconds_bucket{le="0.5"}'] == before['shop_webhook_ingest_seconds_bucket{le="0.5"}']


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder that exists and takes no new file, as root too: immutable (chattr +i) for root, else read-only."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
    try:
        with pytest.raises(OSError):
            (folder / "probe").write_bytes(b"")
        yield folder
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o700)


def test_a_replay_runs_and_counts_in_memory_where_the_shared_folder_cannot_be_written(
        settings, client, checkout, post_event, tmp_path, unwritable_folder):
    event = _succeeded(checkout([("TEA-01", 1)]))
    assert post_event(event).status_code == 200
    replayed = _shop(settings, tmp_path, "events", "replay", event["id"],
                     PROMETHEUS_MULTIPROC_DIR=str(unwritable_folder), LOG_FORMAT="json")
    assert replayed.returncode == 0, replayed.stderr[-1500:]
    assert "Traceback" not in replayed.stderr, replayed.stderr[-1500:]
    assert "processed (order paid)" in replayed.stdout
    # Logged at import, before the command configures logging: still on stderr, in LOG_FORMAT, like every
    # other line of the command (not on stdout, in structlog's default format).
    assert "metrics_folder_unusable" not in replayed.stdout, replayed.stdout[-1500:]
    _assert_folder_logged_once_as_json(replayed.stderr, unwritable_folder)
    assert client.get(f"/orders/{event['data']['object']['metadata']['order_id']}").get_json()["status"] == "paid"
    assert list(unwritable_folder.iterdir()) == []


def _assert_folder_logged_once_as_json(stderr: str, folder) -> None:
    """metrics_folder_unusable once on stderr, as a JSON line of the configured renderer (level, UTC timestamp),
    and every other line of the process JSON too."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # a non-JSON line fails here
    said = [line for line in lines if line["event"] == "metrics_folder_unusable"]
    assert len(said) == 1, stderr[-1500:]
    assert said[0]["level"] == "warning" and said[0]["folder"] == str(folder), said
    assert said[0]["timestamp"].endswith("Z"), said


@pytest.mark.parametrize("kind", ["worker", "web"])
def test_a_long_running_process_logs_the_unusable_folder_in_the_configured_format_on_stderr(
        settings, tmp_path, unwritable_folder, kind):
    """The worker imports the metrics before it configures logging; the web's create_app after."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "DATABASE_URL": settings.database_url,
           "BROKER_URL": f"filesystem://{tmp_path / 'broker'}", "STRIPE_API_BASE": settings.stripe_api_base,
           "LOG_FORMAT": "json",
           "PROMETHEUS_MULTIPROC_DIR": str(unwritable_folder)}
    code = {"worker": "from webhook_app.cli import shop; shop(['worker'])",
            "web": "from webhook_app import create_app; create_app()"}[kind]
    process = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    started = []
    try:
        if kind == "worker":  # it runs until stopped: read its start, then stop it
            for line in process.stderr:
                started.append(line)
                if "worker_connected" in line or "Traceback" in line:
                    break
            process.terminate()
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = "".join(started) + stderr
    assert "metrics_folder_unusable" not in stdout, stdout[-1500:]
    _assert_folder_logged_once_as_json(stderr, unwritable_folder)
