"""The series the documented alerts read with increase() are scraped at 0 from a fresh start: a series first seen at 1
gives increase() 0, so the first dead letter or the first ignored payment after a start would never fire. Checked
as deployed: a fresh web process and a worker of their own, counting into one multiprocess folder."""
from __future__ import annotations

import subprocess
import sys
import time

from sqlalchemy import select, text

from consumers.handlers import HANDLERS
from models.events import OutboxMessage, OutboxStatus, Topic
from tests.integration.test_event_metrics import ROOT, _succeeded
from tests.support import BIN, WEBHOOK_SECRET, env_for

OUTCOMES = ("processed", "ignored", "retry", "dead")


def _environment(settings, tmp_path, folder) -> dict:
    return env_for(tmp_path, DATABASE_URL=settings.database_url, BROKER_URL=f"filesystem://{tmp_path / 'broker'}",
                   STRIPE_API_BASE=settings.stripe_api_base, STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET,
                   PROMETHEUS_MULTIPROC_DIR=folder, MAX_ATTEMPTS=1, PYTHONPATH=ROOT)


def _fresh_web_scrape(env: dict, workdir) -> dict[str, float]:
    """GET /metrics of a web process started for it (its first scrape), as Prometheus reads it."""
    code = ("import sys; from webhook_app import create_app; answer = create_app().test_client().get('/metrics'); "
            "assert answer.status_code == 200, answer.status_code; sys.stdout.write(answer.get_data(as_text=True))")
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    samples = {}
    for line in done.stdout.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def _dead(topic: str) -> str:
    return f'shop_dead_letters_total{{topic="{topic}"}}'


def _runs(event_type: str, outcome: str) -> str:
    return f'shop_events_processed_total{{outcome="{outcome}",type="{event_type}"}}'


def test_a_fresh_service_scrapes_dead_letters_retries_and_handler_runs_at_zero_and_the_first_dead_letter_at_one(
        settings, sessions, client, checkout, post_event, tmp_path):
    env = _environment(settings, tmp_path, tmp_path / "metrics")
    fresh = _fresh_web_scrape(env, tmp_path)

    expected = {_dead(topic.value): 0.0 for topic in Topic}
    expected.update({f'shop_retries_total{{topic="{topic.value}"}}': 0.0 for topic in Topic})
    expected.update({_runs(event_type, outcome): 0.0 for event_type in HANDLERS for outcome in OUTCOMES})
    for event_type in HANDLERS:
        expected[f'shop_event_processing_seconds_count{{type="{event_type}"}}'] = 0.0
        expected[f'shop_event_lag_seconds_count{{type="{event_type}"}}'] = 0.0
    assert {"stripe_event", "mail", "payment_cancel"} <= {topic.value for topic in Topic}
    assert "payment_intent.succeeded" in HANDLERS
    assert {name: fresh.get(name) for name in expected} == expected

    # The first dead letter, by a relay and a worker of their own: the handler's table is gone, and MAX_ATTEMPTS is 1.
    event = _succeeded(checkout([("TEA-01", 1)]))
    with sessions.kw["bind"].begin() as conn:
        conn.execute(text("ALTER TABLE shipments RENAME TO shipments_away"))
    processes = []
    try:
        assert post_event(event).status_code == 200
        for verb in ("relay", "worker"):
            processes.append(subprocess.Popen([str(BIN / "shop"), verb], cwd=tmp_path, env=env,
                                              stdout=open(tmp_path / f"{verb}.log", "wb"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while True:
            with sessions() as session:
                statuses = session.scalars(select(OutboxMessage.status).where(
                    OutboxMessage.topic == Topic.STRIPE_EVENT)).all()
            if statuses == [OutboxStatus.DEAD]:
                break
            assert time.monotonic() < deadline, (statuses, (tmp_path / "worker.log").read_text()[-2000:])
            time.sleep(0.2)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        with sessions.kw["bind"].begin() as conn:
            conn.execute(text("ALTER TABLE shipments_away RENAME TO shipments"))

    after = _fresh_web_scrape(env, tmp_path)
    assert after[_dead("stripe_event")] == 1
    assert after[_runs("payment_intent.succeeded", "dead")] == 1
    assert [after[_dead(topic)] for topic in ("mail", "payment_cancel")] == [0, 0]
    assert after[_runs("payment_intent.succeeded", "ignored")] == 0
