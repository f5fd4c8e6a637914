"""Every setting read from the environment has the values it may take: one out of range stops the
process at start (SystemExit) with one line naming the variable, its range and what it got."""
from __future__ import annotations

import pytest

from models.settings import RANGES, Settings, hide_password


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default SQLite folder and the local secret key land here
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}", "SECRET_KEY": "k"}


def refusal(env: dict) -> str:
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env(env)
    return str(stopped.value.code)


@pytest.mark.parametrize("name, value, expected", [
    ("RESERVATION_TTL_SECONDS", "99999999999999", "an integer from 1 to 604800"),  # a checkout's datetime overflowed
    ("RESERVATION_TTL_SECONDS", "0", "an integer from 1 to 604800"),               # every hold already expired
    ("RESERVATION_TTL_SECONDS", "-60", "an integer from 1 to 604800"),
    ("RESERVATION_TTL_SECONDS", "1.5", "an integer from 1 to 604800"),
    ("STRIPE_MAX_CONCURRENT_CALLS", "0", "an integer from 1 to 1000"),             # no checkout ever got a turn
    ("STRIPE_MAX_CONCURRENT_CALLS", "-1", "an integer from 1 to 1000"),
    ("WEBHOOK_MAX_BYTES", "-1", "an integer from 1024 to 16777216"),               # every signed event was a 413
    ("WEBHOOK_MAX_BYTES", "100", "an integer from 1024 to 16777216"),
    ("MAX_ATTEMPTS", "0", "an integer from 1 to 100"),
    ("MAX_DELIVERIES", "1", "an integer from 2 to 100"),                          # dead before its first run
    ("WORKER_PREFETCH", "65536", "an integer from 1 to 65535"),                   # past AMQP's 16-bit prefetch count
    ("WORKER_BATCH", "-3", "an integer from 0 to 1000"),
    ("DB_POOL_SIZE", "0", "an integer from 1 to 1000"),                            # SQLAlchemy: 0 is no limit at all
    ("DB_MAX_OVERFLOW", "-1", "an integer from 0 to 1000"),                        # SQLAlchemy: -1 is no limit at all
    ("STRIPE_DEADLINE_SECONDS", "nan", "a number from 1 to 60"),                   # every checkout was a 502
    ("STRIPE_DEADLINE_SECONDS", "inf", "a number from 1 to 60"),
    ("STRIPE_DEADLINE_SECONDS", "-1", "a number from 1 to 60"),
    ("RETRY_BASE_SECONDS", "inf", "a number from 0 to 3600"),
    ("RETRY_BASE_SECONDS", "-2", "a number from 0 to 3600"),
    ("REDELIVERY_SECONDS", "0", "a number from 1 to 86400"),
    ("RELAY_INTERVAL_SECONDS", "0", "a number from 0.01 to 60"),
    ("RELAY_INTERVAL_SECONDS", "soon", "a number from 0.01 to 60"),
])
def test_a_number_setting_out_of_its_range_stops_the_process_naming_it_and_the_range(env, name, value, expected):
    assert refusal({**env, name: value}) == f"{name} must be {expected}, got {value!r}"


@pytest.mark.parametrize("name", sorted(RANGES))
def test_each_number_setting_takes_both_ends_of_its_range(env, name):
    for bound in RANGES[name]:
        Settings.from_env({**env, name: str(bound)})


def test_the_defaults_and_the_values_the_end_to_end_clusters_use_are_in_range(env):
    defaults = Settings.from_env({**env, "LOG_FORMAT": "json"})
    assert defaults == Settings(database_url=env["DATABASE_URL"], secret_key="k", log_format="json")
    # tests/e2e: a 6 s hold, a 4 s deadline, fast retries and redeliveries.
    cluster = Settings.from_env({**env, "RESERVATION_TTL_SECONDS": "6", "STRIPE_DEADLINE_SECONDS": "4",
                                 "REDELIVERY_SECONDS": "3", "RETRY_BASE_SECONDS": "0.2", "MAX_ATTEMPTS": "3"})
    assert (cluster.reservation_ttl_seconds, cluster.stripe_deadline_seconds, cluster.redelivery_seconds,
            cluster.retry_base_seconds, cluster.max_attempts) == (6, 4.0, 3.0, 0.2, 3)


@pytest.mark.parametrize("value", ["xml", "JSON", "text"])
def test_a_log_format_other_than_json_or_console_stops_the_process(env, value):
    assert refusal({**env, "LOG_FORMAT": value}) == f"LOG_FORMAT must be one of json, console, got {value!r}"


@pytest.mark.parametrize("value", ["json", "console"])
def test_log_format_takes_json_and_console(env, value):
    assert Settings.from_env({**env, "LOG_FORMAT": value}).log_format == value


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://shop:s3cret@db/shop", "postgresql+psycopg://shop:***@db/shop"),
    ("amqp://shop:p@ss/w@mq:5672/shop", "amqp://shop:***@mq:5672/shop"),
    ("sqlite:///instance/shop.db", "sqlite:///instance/shop.db"),
    ("garbage", "garbage"),
])
def test_a_url_in_a_message_never_shows_its_password(url, shown):
    assert hide_password(url) == shown
