"""Settings read from the environment: defaults that depend on the database; FORWARDED_ALLOW_IPS as gunicorn reads it."""
from __future__ import annotations

import os

import pytest

from models.settings import FORWARDED_ALLOW_IPS_DEFAULT, Settings


@pytest.mark.parametrize(("database_url", "expected"), [
    ("postgresql+psycopg://shop@db/shop", 100),   # a batch's round trips are most of its cost
    ("sqlite:///instance/shop.db", 20),          # a batch holds the one writer the webhook waits for
])
def test_a_workers_batch_defaults_to_what_suits_its_database(database_url, expected):
    assert Settings.from_env({"DATABASE_URL": database_url}).worker_batch == expected


def test_worker_batch_from_the_environment_wins_on_either_database():
    for url in ("postgresql+psycopg://shop@db/shop", "sqlite:///instance/shop.db"):
        assert Settings.from_env({"DATABASE_URL": url, "WORKER_BATCH": "3"}).worker_batch == 3
        assert Settings.from_env({"DATABASE_URL": url, "WORKER_BATCH": "0"}).worker_batch == 1


@pytest.mark.parametrize(("database_url", "expected"), [
    ("postgresql+psycopg://shop@db/shop", 0.05),  # bursts of a fifth of a second queued behind each other
    ("sqlite:///instance/shop.db", 0.2),          # every poll takes the one writer's turn
])
def test_the_relays_pause_defaults_to_what_suits_its_database_and_the_environment_wins(database_url, expected):
    assert Settings.from_env({"DATABASE_URL": database_url}).relay_interval_seconds == expected
    assert Settings.from_env({"DATABASE_URL": database_url, "RELAY_INTERVAL_SECONDS": "1.5"}).relay_interval_seconds == 1.5


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, ("127.0.0.1", "::1")),                   # gunicorn's default: a proxy on this host
    ({"FORWARDED_ALLOW_IPS": ""}, ()),            # set but empty: gunicorn trusts no proxy
    ({"FORWARDED_ALLOW_IPS": "10.0.0.2"}, ("10.0.0.2",)),
    ({"FORWARDED_ALLOW_IPS": " 10.0.0.2 ,10.1.0.0/16,,2001:db8::/32,"}, ("10.0.0.2", "10.1.0.0/16", "2001:db8::/32")),
    ({"FORWARDED_ALLOW_IPS": "*"}, ("*",)),
])
def test_forwarded_allow_ips_is_read_as_gunicorn_reads_it(environ, expected):
    from gunicorn.config import ForwardedAllowIPS, validate_string_to_addr_list

    assert Settings.from_env(environ).forwarded_allow_ips == expected
    # The same list gunicorn trusts X-Forwarded-Proto from, its default included.
    raw = environ.get("FORWARDED_ALLOW_IPS", FORWARDED_ALLOW_IPS_DEFAULT)
    assert tuple(validate_string_to_addr_list(raw)) == expected
    if "FORWARDED_ALLOW_IPS" not in os.environ:  # gunicorn reads its default from this process's environment
        assert ForwardedAllowIPS.default == FORWARDED_ALLOW_IPS_DEFAULT


@pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.1/8", "10.0.0.2, ,10.0.0.3", "10.0.0.2;10.0.0.3"])
def test_a_forwarded_allow_ips_gunicorn_would_refuse_stops_the_process_naming_it(value):
    from gunicorn.config import validate_string_to_addr_list

    with pytest.raises(ValueError):
        validate_string_to_addr_list(value)  # refused by gunicorn itself too
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({"FORWARDED_ALLOW_IPS": value})
    assert str(stopped.value.code).startswith("FORWARDED_ALLOW_IPS must be * or comma-separated addresses")
    assert repr(value) in str(stopped.value.code)
