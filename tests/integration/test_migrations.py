"""The migrations build the schema the models describe, on each database, and 0006 goes both ways."""
from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import models  # noqa: F401 - every model's table on Base.metadata
from models.base import Base
from models.db import make_engine
from models.migrations import alembic_config


def _differences(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()


def _indexes(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {index["name"] for index in inspect(engine).get_indexes(table)}
    finally:
        engine.dispose()


def test_the_migrated_schema_is_the_models_schema(database_url):
    assert _differences(database_url) == []


def test_0006_drops_the_three_unneeded_indexes_and_its_downgrade_puts_them_back(database_url):
    dropped = {"outbox": {"ix_outbox_available_at", "ix_outbox_topic"}, "inbox_events": {"ix_inbox_events_type"}}
    for table, names in dropped.items():
        assert not names & _indexes(database_url, table)
    assert "ix_outbox_status_available_at" in _indexes(database_url, "outbox")  # what the relay's poll uses

    command.downgrade(alembic_config(database_url), "0005")
    for table, names in dropped.items():
        assert names <= _indexes(database_url, table)
    # What the models no longer have is exactly what 0005 had on top.
    assert {(diff[0], diff[1].name) for diff in _differences(database_url)} == {
        ("remove_index", name) for names in dropped.values() for name in names}

    command.upgrade(alembic_config(database_url), "head")
    assert _differences(database_url) == []
