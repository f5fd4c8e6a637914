"""The migrations build the schema the models describe, on each database, and the later ones go both ways."""
from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.dialects import postgresql

import models  # noqa: F401 - every model's table on Base.metadata
from consumers.handlers import HANDLED_EVENT_TYPES
from models.base import Base
from models.db import make_engine, transaction
from models.events import store_events_pg, store_events_sqlite
from models.migrations import alembic_config, database_revision
from models.staff import add_staff_member
from tests.backends import servers_available
from tests.support import event_for


def _differences(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            # Server defaults too: a column the migrations give a default and the model does not (or the other
            # way) is a difference, as much as a missing column is.
            return compare_metadata(MigrationContext.configure(connection, opts={"compare_server_default": True}),
                                    Base.metadata)
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
    # What the models no longer have is exactly what 0005 had on top (besides 0009's, undone too).
    assert {(diff[0], diff[1].name) for diff in _differences_but_later_revisions(database_url)} == {
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


# 0008: PostgreSQL compresses the inbox's payloads with lz4 (SQLite does not compress rows).
def _payload_compression(url: str) -> str | None:
    """The payload column's compression setting on PostgreSQL ("l": lz4, "": the server's default)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.exec_driver_sql(
                "SELECT attcompression FROM pg_attribute "
                "WHERE attrelid = 'inbox_events'::regclass AND attname = 'payload'").scalar_one()
    finally:
        engine.dispose()


def _store_a_large_event(url: str) -> str:
    """Stores one event as the webhook does, its payload past PostgreSQL's 2 KB threshold (Stripe indents
    its JSON); gives how PostgreSQL compressed the stored payload, or what SQLite stored."""
    event = event_for("payment_intent.succeeded")
    payload = json.dumps(event, indent=2)
    assert len(payload) > 2048
    engine = make_engine(url)
    try:
        raw = engine.raw_connection()
        try:
            store = store_events_pg if engine.dialect.name == "postgresql" else store_events_sqlite
            [stored] = store(raw.dbapi_connection, [(event, payload)], handled_types=HANDLED_EVENT_TYPES)
            assert not stored.duplicate
            cursor = raw.dbapi_connection.cursor()
            if engine.dialect.name == "postgresql":
                cursor.execute("SELECT pg_column_compression(payload) FROM inbox_events WHERE id = %s", (stored.id,))
            else:
                cursor.execute("SELECT payload FROM inbox_events WHERE id = ?", (stored.id,))
            return cursor.fetchone()[0]
        finally:
            raw.close()
    finally:
        engine.dispose()


def test_0008_postgresql_compresses_payloads_with_lz4_and_its_downgrade_gives_it_back_its_default(database_url):
    if not database_url.startswith("postgresql"):
        # Nothing to change on SQLite: the migration goes both ways and a payload is stored as it came.
        command.downgrade(alembic_config(database_url), "0007")
        command.upgrade(alembic_config(database_url), "head")
        assert _differences(database_url) == []
        assert json.loads(_store_a_large_event(database_url))["object"] == "event"
        return
    assert _payload_compression(database_url) == "l"
    assert _store_a_large_event(database_url) == "lz4"

    command.downgrade(alembic_config(database_url), "0007")
    assert _payload_compression(database_url) == ""
    assert _store_a_large_event(database_url) == "pglz"  # PostgreSQL's own default

    command.upgrade(alembic_config(database_url), "head")
    assert _payload_compression(database_url) == "l"
    assert _differences(database_url) == []


def test_0008_waits_for_a_transaction_holding_the_inbox_instead_of_queueing_the_webhook_behind_it(
        database_url, caplog):
    """On PostgreSQL each try waits at most 2 s for its lock (so inserts queued behind it wait no longer),
    then tries again. On SQLite nothing is altered: the migration only waits for its turn, as every writer does."""
    command.downgrade(alembic_config(database_url), "0008")  # 0009 is run with the service stopped
    engine = make_engine(database_url)
    holder = engine.connect()
    if engine.dialect.name == "postgresql":
        holder.exec_driver_sql("LOCK TABLE inbox_events IN ACCESS SHARE MODE")  # as any reader's transaction does
    else:
        holder.exec_driver_sql("SELECT count(*) FROM inbox_events").scalar_one()  # holds the writers' turn
    # At 5 s the first try (2 s) has timed out unless the migration took over 3 s to start.
    released_at: list[float] = []

    def release_the_lock() -> None:
        released_at.append(time.monotonic())  # before the ROLLBACK: the migration may go on the moment it ends
        holder.rollback()

    release = threading.Timer(5.0, release_the_lock)
    release.start()
    try:
        with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
            command.downgrade(alembic_config(database_url), "0007")
        finished_at = time.monotonic()
        release.join(30)
    finally:
        release.cancel()
        holder.close()
        engine.dispose()
    assert released_at and finished_at > released_at[0]  # it waited for the holder
    if database_url.startswith("postgresql"):
        assert "inbox_events is locked by another transaction; trying again (2 of 5)" in caplog.text
        assert _payload_compression(database_url) == ""
    else:
        assert "trying again" not in caplog.text
    command.upgrade(alembic_config(database_url), "head")
    assert _differences(database_url) == []


# 0009: every integer id, the columns holding one and the ids' sequences are 64-bit on PostgreSQL.
ID_COLUMNS = sorted((table.name, column.name) for table in Base.metadata.tables.values() for column in table.c
                    if column.type.compile(dialect=postgresql.dialect()) == "BIGINT")


def _differences_but_later_revisions(url: str) -> list:
    """The differences of a schema migrated down past 0009, but for those of 0009 and later themselves: on
    PostgreSQL the ids' 32-bit INTEGER where the models have BIGINT, the orders' charged back amount, the
    staff logins' session generation, the stock's figure last loaded, the orders' payment intents and the staff
    alerts' retries."""
    def is_0009s(diff) -> bool:
        return isinstance(diff, list) and all(
            change[0] == "modify_type" and (change[2], change[3]) in ID_COLUMNS
            and (str(change[5]), str(change[6])) == ("INTEGER", "BIGINT") for change in diff)

    return [diff for diff in _differences(url)
            if not is_0009s(diff) and not _is_0010s(diff) and not _is_0011s(diff) and not _is_0012s(diff)
            and not _is_0013s(diff) and not _is_0015s(diff) and not _is_0017s(diff)]


def _is_added_column(diff, table: str, column: str) -> bool:
    return isinstance(diff, tuple) and diff[0] == "add_column" and (diff[2], diff[3].name) == (table, column)


def _is_0010s(diff) -> bool:
    return _is_added_column(diff, "orders", "charged_back_amount")


def _is_0011s(diff) -> bool:
    return _is_added_column(diff, "staff_members", "session_generation")


def _is_0012s(diff) -> bool:
    return _is_added_column(diff, "stock", "loaded_stock")


def _is_0013s(diff) -> bool:
    """0013's table, and with it 0014's index on it (a revision before 0013 lacks both)."""
    return isinstance(diff, tuple) and (
        (diff[0] == "add_table" and diff[1].name == "order_payment_intents")
        or (diff[0] == "add_index" and diff[1].table.name == "order_payment_intents"))


def _is_0015s(diff) -> bool:
    """0015's staff alert retry columns and the index of the alerts still to POST."""
    return (any(_is_added_column(diff, "staff_alerts", column) for column in ("next_attempt_at", "attempts"))
            or (isinstance(diff, tuple) and diff[0] == "add_index"
                and diff[1].name == "ix_staff_alerts_next_attempt_at"))


def _is_0017s(diff) -> bool:
    """0017's lease of a mail on its outbox row."""
    return _is_added_column(diff, "outbox", "leased_until")


def test_0010_adds_the_charged_back_amount_as_zero_to_existing_orders_and_its_downgrade_drops_it(
        database_url, checkout):
    placed = checkout([("TEA-01", 1)])
    command.downgrade(alembic_config(database_url), "0009")
    assert [diff for diff in _differences(database_url)
            if not _is_0010s(diff) and not _is_0011s(diff) and not _is_0012s(diff) and not _is_0013s(diff)
            and not _is_0015s(diff) and not _is_0017s(diff)] == []
    assert any(_is_0010s(diff) for diff in _differences(database_url))
    command.upgrade(alembic_config(database_url), "head")
    assert _differences(database_url) == []
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql(
                f"SELECT charged_back_amount FROM orders WHERE id = '{placed['order_id']}'").scalar_one() == 0
    finally:
        engine.dispose()


def test_0011_adds_a_session_generation_of_zero_to_existing_logins_and_its_downgrade_drops_it(
        database_url, sessions):
    with transaction(sessions) as session:
        add_staff_member(session, "alice@example.com", "a long enough password", actor="test setup")
    command.downgrade(alembic_config(database_url), "0010")
    assert [diff for diff in _differences(database_url)
            if not _is_0011s(diff) and not _is_0012s(diff) and not _is_0013s(diff) and not _is_0015s(diff)
            and not _is_0017s(diff)] == []
    assert any(_is_0011s(diff) for diff in _differences(database_url))
    command.upgrade(alembic_config(database_url), "head")
    assert _differences(database_url) == []
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql(
                "SELECT email, session_generation FROM staff_members").all() == [("alice@example.com", 0)]
    finally:
        engine.dispose()


def test_0012_takes_each_skus_on_hand_now_as_the_figure_last_loaded_and_its_downgrade_drops_it(
        database_url, checkout, post_event, deliver):
    placed = checkout([("TEA-01", 2)])  # sold: 38 of the 40 loaded are left
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=placed["payment_intent_id"],
                         order_id=placed["order_id"], amount=placed["total"]))
    deliver()
    checkout([("CUP-01", 1)])  # held
    command.downgrade(alembic_config(database_url), "0011")
    assert [diff for diff in _differences(database_url)
            if not _is_0012s(diff) and not _is_0013s(diff) and not _is_0015s(diff) and not _is_0017s(diff)] == []
    assert any(_is_0012s(diff) for diff in _differences(database_url))
    command.upgrade(alembic_config(database_url), "head")
    assert _differences(database_url) == []
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql(
                "SELECT sku, on_hand, reserved, loaded_stock FROM stock ORDER BY sku").all() == [
                ("CUP-01", 3, 1, 3), ("TEA-01", 38, 0, 38)]
    finally:
        engine.dispose()


def _id_types(url: str) -> dict[str, str]:
    """Each id column's type, and on PostgreSQL each id sequence's type and largest value, as the database says."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name != "postgresql":
                return {f"{table}.{column}": next(row[2] for row in connection.exec_driver_sql(
                    f"PRAGMA table_info({table})") if row[1] == column) for table, column in ID_COLUMNS}
            types = {f"{table}.{column}": connection.exec_driver_sql(
                "SELECT data_type FROM information_schema.columns WHERE table_name = %(table)s "
                "AND column_name = %(column)s", {"table": table, "column": column}).scalar_one()
                for table, column in ID_COLUMNS}
            for table in {table for table, column in ID_COLUMNS if column == "id"}:
                types[f"{table} sequence"] = "{} to {}".format(*connection.exec_driver_sql(
                    "SELECT data_type, max_value FROM pg_sequences "
                    "WHERE format('%%I.%%I', schemaname, sequencename)::regclass "
                    "= pg_get_serial_sequence(%(table)s, 'id')::regclass", {"table": table}).one())
            return types
    finally:
        engine.dispose()


def test_0009_makes_every_id_and_its_sequence_64_bit_on_postgresql_and_its_downgrade_32_bit(database_url):
    assert {"inbox_events.id", "outbox.id", "outbox.inbox_event_id", "event_attempts.inbox_event_id",
            "event_attempts.outbox_id", "staff_alerts.outbox_id"} <= {f"{t}.{c}" for t, c in ID_COLUMNS}
    if not database_url.startswith("postgresql"):
        # SQLite's INTEGER is 64-bit, and an INTEGER PRIMARY KEY is the rowid SQLite numbers: nothing changes.
        assert set(_id_types(database_url).values()) == {"INTEGER"}
        command.downgrade(alembic_config(database_url), "0008")
        assert set(_id_types(database_url).values()) == {"INTEGER"}
        command.upgrade(alembic_config(database_url), "head")
        assert _differences(database_url) == []
        return
    sequences = {f"{table} sequence" for table, column in ID_COLUMNS if column == "id"}
    assert _id_types(database_url) == {**{f"{t}.{c}": "bigint" for t, c in ID_COLUMNS},
                                       **dict.fromkeys(sequences, f"bigint to {2**63 - 1}")}

    command.downgrade(alembic_config(database_url), "0008")
    assert _id_types(database_url) == {**{f"{t}.{c}": "integer" for t, c in ID_COLUMNS},
                                       **dict.fromkeys(sequences, f"integer to {2**31 - 1}")}

    command.upgrade(alembic_config(database_url), "head")
    assert set(_id_types(database_url).values()) == {"bigint", f"bigint to {2**63 - 1}"}
    assert _differences(database_url) == []


# PostgreSQL only: SQLite's ids were always 64-bit (its rowid), so 0009 alters nothing there.
if servers_available():
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_0009_downgrade_refuses_while_an_id_is_past_32_bits_and_changes_nothing(database_url):
        engine = make_engine(database_url)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql("SELECT setval(pg_get_serial_sequence('outbox', 'id'), 3000000000)")
        finally:
            engine.dispose()
        with pytest.raises(RuntimeError, match=r"cannot go back to 32-bit ids, past 2147483647: "
                                               r"sequence public\.outbox_id_seq is at 3000000000\. Nothing was changed"):
            command.downgrade(alembic_config(database_url), "0008")
        # Each revision commits with its version: the later ones' downgrades are done, 0009's is not.
        assert database_revision(database_url) == "0009"
        assert set(_id_types(database_url).values()) == {"bigint", f"bigint to {2**63 - 1}"}
        command.upgrade(alembic_config(database_url), "head")
        assert _differences(database_url) == []

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_0009_fails_saying_so_and_changes_nothing_while_a_table_is_in_use(database_url):
        """It is run with the service stopped: a transaction still holding a table fails it after 5 s, rather
        than leaving it waiting for the lock with every insert queued behind it."""
        command.downgrade(alembic_config(database_url), "0008")
        engine = make_engine(database_url)
        try:
            with engine.connect() as holder:
                holder.exec_driver_sql("LOCK TABLE outbox IN ACCESS SHARE MODE")  # as any reader's transaction does
                with pytest.raises(RuntimeError, match=r"the tables are in use by another transaction \(waited 5s\): "
                                                       "stop web, worker and relay, then run the migration again; "
                                                       "nothing was changed"):
                    command.upgrade(alembic_config(database_url), "head")
                holder.rollback()
        finally:
            engine.dispose()
        assert set(_id_types(database_url).values()) == {"integer", f"integer to {2**31 - 1}"}
        command.upgrade(alembic_config(database_url), "head")
        assert _differences(database_url) == []
