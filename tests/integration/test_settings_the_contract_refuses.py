"""Settings a deployment can get wrong that the processes used to start with: a Stripe secret in the
publishable key (written into every buyer's pay step), another kind of key in STRIPE_API_KEY, a broker or a
database that lives inside one process (a paid order stored and never processed). Each stops the process at
start with one line naming the variable. And what the embedded default answers before anything else ran:
/readyz of a web process started before any worker or relay, `make run` with STRIPE_API_KEY set but empty.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.settings import Settings
from tests.integration.test_cli_and_console_bounds import run  # noqa: F401 - the `shop ARGS…` fixture
from tests.integration.test_refused_settings_and_catalogs import assert_stopped_at_start
from tests.support import BIN, WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value, said", [
    ("sk_live_51SECRETsecret", "(it starts 'sk_live_': a secret API key)"),
    ("rk_test_4eC39Hq", "(it starts 'rk_test_': a restricted API key)"),
    ("whsec_other", "(it starts 'whsec_': a webhook signing secret)"),
    (WEBHOOK_SECRET, "(it is one of STRIPE_WEBHOOK_SECRETS)"),
])
def test_a_stripe_secret_in_the_publishable_key_stops_the_process(run, value, said):
    line = assert_stopped_at_start(run("db", "upgrade", STRIPE_PUBLISHABLE_KEY=value))
    assert line.endswith("STRIPE_PUBLISHABLE_KEY must be the shop's publishable key (pk_test_… / pk_live_…), "
                         f"which every buyer's pay step shows {said}"), line


@pytest.mark.parametrize("value, said", [("pk_live_abc", "(it starts 'pk_live_': a publishable key)"),
                                         ("whsec_abc", "(it starts 'whsec_': a webhook signing secret)")])
def test_another_kind_of_key_in_the_api_key_stops_the_process(run, value, said):
    line = assert_stopped_at_start(run("db", "upgrade", STRIPE_API_KEY=value))
    assert line.endswith("STRIPE_API_KEY must be the shop's secret API key (sk_test_… / sk_live_…, or a "
                         f"restricted rk_… key) {said}"), line


@pytest.mark.parametrize("api_key, publishable_key", [("sk_live_51Abc", "pk_live_51Abc"), ("rk_live_51Abc", None),
                                                      ("sk_test_local", "pk_test_local"), ("anything", "local")])
def test_the_keys_stripe_gives_and_the_local_ones_are_taken(api_key, publishable_key):
    env = {"STRIPE_API_KEY": api_key, "STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET}
    if publishable_key is not None:
        env["STRIPE_PUBLISHABLE_KEY"] = publishable_key
    settings = Settings.from_env(env)
    assert (settings.stripe_api_key, settings.stripe_publishable_key) == (api_key, publishable_key or "pk_test_local")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:shop?mode=memory&uri=true"])
def test_an_in_memory_sqlite_database_stops_the_process(run, url):
    line = assert_stopped_at_start(run("db", "upgrade", DATABASE_URL=url))
    assert f"DATABASE_URL must name a database every process shares: {url!r} is an in-memory SQLite" in line, line


@pytest.mark.parametrize("verb", ["worker", "relay"])
def test_a_broker_inside_one_process_stops_the_worker_and_the_relay(settings, tmp_path, verb):
    # A process of its own, with a time limit: one that starts with it runs until stopped.
    env = {**os.environ, "DATABASE_URL": settings.database_url, "BROKER_URL": "memory://localhost/shop",
           "LOG_FORMAT": "console"}
    started = subprocess.run([str(BIN / "shop"), verb], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
    assert started.returncode == 1, started.stderr
    assert "Traceback" not in started.stderr
    assert ("BROKER_URL must be a broker every process shares: memory:// lives inside one process, so no worker "
            "would get what the relay publishes") in started.stderr, started.stderr


def test_a_broker_inside_one_process_stops_gunicorn(settings, tmp_path):
    env = {**os.environ, "DATABASE_URL": settings.database_url, "BROKER_URL": "memory://",
           "GUNICORN_BIND": "127.0.0.1:0", "WEB_CONCURRENCY": "1", "SECRET_KEY": "k" * 32}
    started = subprocess.run([str(Path(sys.executable).with_name("gunicorn")), "webhook_app:create_app()"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 1, started.stderr
    assert "BROKER_URL must be a broker every process shares: memory:// lives inside one process" in started.stderr


def test_a_verb_that_needs_no_broker_still_runs_with_one(run):
    result = run("db", "upgrade", BROKER_URL="memory://localhost/shop")
    assert result.exit_code == 0, result.output


def test_readyz_of_a_web_process_started_before_any_worker_or_relay_on_the_embedded_broker(tmp_path, settings):
    from webhook_app import create_app

    folder = tmp_path / "broker"
    app = create_app(dataclasses.replace(settings, broker_url=f"filesystem://{folder}"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["checks"]["broker"] == "ok", response.get_json()
    assert (folder / "queue").is_dir()


def test_make_run_with_an_empty_api_key_starts_localstripe_as_the_processes_use_it(monkeypatch):
    from webhook_app import devserver

    monkeypatch.delenv("STRIPE_API_BASE", raising=False)
    monkeypatch.setenv("STRIPE_API_KEY", "")
    assert devserver._uses_localstripe()
    assert Settings.from_env({"STRIPE_API_KEY": ""}).stripe_api_key == "sk_test_local"
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_51Real")
    assert not devserver._uses_localstripe()


def test_a_catalog_named_in_capitals_with_a_json_error_says_json(run, tmp_path):
    bad = tmp_path / "catalog.JSON"
    bad.write_text('{"products": [,]}')
    result = run("catalog", "load", str(bad))
    assert result.exit_code != 0, result.output
    assert "is not valid JSON" in result.output and "YAML" not in result.output, result.output
