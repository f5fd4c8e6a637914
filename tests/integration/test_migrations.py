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


# 0007: what a stored event leaves NULL is indexed only where it is set.
SET_ONLY_INDEXES = {"ix_inbox_events_order_id": "order_id", "ix_inbox_events_processed_at": "processed_at",
                    "ix_outbox_order_id": "order_id"}


def _index_definition(url: str, name: str) -> str:
    """The index's definition as the database keeps it, without brackets (PostgreSQL adds them)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                found = connection.exec_driver_sql("SELECT indexdef FROM pg_indexes WHERE indexname = %(name)s",
                                                   {"name": name})
            else:
                found = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?",
                                                   (name,))
            return found.scalar_one().replace("(", "").replace(")", "")
    finally:
        engine.dispose()


def _where_set(url: str) -> dict[str, bool]:
    return {name: _index_definition(url, name).endswith(f"WHERE {column} IS NOT NULL")
            for name, column in SET_ONLY_INDEXES.items()}


def test_0007_indexes_order_and_processed_time_only_where_set_and_its_downgrade_indexes_every_row(database_url):
    assert _where_set(database_url) == dict.fromkeys(SET_ONLY_INDEXES, True)

    command.downgrade(alembic_config(database_url), "0006")
    assert _where_set(database_url) == dict.fromkeys(SET_ONLY_INDEXES, False)

    command.upgrade(alembic_config(database_url), "head")
    assert _where_set(database_url) == dict.fromkeys(SET_ONLY_INDEXES, True)
    assert _differences(database_url) == []


def test_the_look_ups_by_order_and_processed_time_use_the_partial_indexes(database_url):
    """Each query asks for a value, which implies the column is set: the planner must still pick the index
    (a console page or the worker's look-up would otherwise read every row of a large inbox)."""
    looks_up = {"ix_inbox_events_order_id": "SELECT id FROM inbox_events WHERE order_id = 'ord_1'",
                "ix_inbox_events_processed_at": "SELECT id FROM inbox_events WHERE processed_at >= '2026-11-27'",
                "ix_outbox_order_id": "SELECT id FROM outbox WHERE order_id = 'ord_1'"}
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            for index, query in looks_up.items():
                if engine.dialect.name == "postgresql":
                    connection.exec_driver_sql("SET enable_seqscan = off")  # the tables are empty
                    plan = " ".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {query}"))
                else:
                    plan = " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
                assert index in plan, (query, plan)
    finally:
        engine.dispose()
