"""Settings read from the environment: defaults that depend on the database."""
from __future__ import annotations

import pytest

from models.settings import Settings


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
