"""Migrating a database that holds orders: a revision that copies a table (SQLite's batch mode) keeps the
rows that refer to it, and one that would leave a row referring to nothing is not applied."""
from __future__ import annotations

import subprocess
from datetime import datetime, timezone

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text

from models.db import make_engine
from models.migrations import alembic_config
from tests.integration.test_migrations import _differences
from tests.support import BIN, env_for

# The newest revision of this release: where every upgrade below must end.
HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


def _one(url: str, query: str):
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.exec_driver_sql(query).all()
    finally:
        engine.dispose()


def _delete(url: str, statement: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _place_an_order_at_0003(url: str, *, line_order_id: str = "ord_1") -> None:
    """An order with its line as the code of 0003 stored it (that code is gone: rows by hand). On SQLite
    the line may refer to an order that is not there (a database whose keys were never checked)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
            with connection.begin():
                connection.execute(text("INSERT INTO carts (id, status, created_at) "
                                        "VALUES ('cart_1', 'checked_out', :now)"), {"now": NOW})
                connection.execute(text(
                    "INSERT INTO products (sku, name, unit_amount, currency, weight_grams, created_at, updated_at) "
                    "VALUES ('TEA-01', 'Tea', 1200, 'jpy', 250, :now, :now)"), {"now": NOW})
                connection.execute(text(
                    "INSERT INTO orders (id, cart_id, email, status, currency, subtotal, shipping_fee, total, "
                    "ship_name, ship_postal_code, ship_prefecture, ship_address, payment_intent_id, reserved_until, "
                    "payment_attempts, created_at, updated_at) VALUES ('ord_1', 'cart_1', 'a@example.com', 'paid', "
                    "'jpy', 1200, 900, 2100, 'A', '100-0001', 'Tokyo', 'x', 'pi_1', :now, 0, :now, :now)"),
                    {"now": NOW})
                connection.execute(text("INSERT INTO order_lines (order_id, sku, name, quantity, unit_amount) "
                                        "VALUES (:order_id, 'TEA-01', 'Tea', 1, 1200)"), {"order_id": line_order_id})
    finally:
        engine.dispose()


def test_an_order_placed_before_0004_is_kept_with_its_line_when_the_database_is_upgraded(database_url):
    command.downgrade(alembic_config(database_url), "0003")
    _place_an_order_at_0003(database_url)

    command.upgrade(alembic_config(database_url), "head")

    assert _one(database_url, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert _one(database_url, "SELECT id, paid_amount, refunded_amount, access_token IS NOT NULL FROM orders") == [
        ("ord_1", 2100, 0, True)]
    assert _one(database_url, "SELECT order_id, sku, quantity FROM order_lines") == [("ord_1", "TEA-01", 1)]
    assert _differences(database_url) == []
    if database_url.startswith("sqlite"):
        assert _one(database_url, "PRAGMA foreign_key_check") == []
        assert _one(database_url, "PRAGMA foreign_keys") == [(1,)]  # a new connection checks keys again


def test_an_order_placed_now_is_kept_when_the_database_goes_back_before_0004_and_up_again(database_url, checkout):
    placed = checkout([("TEA-01", 2)])

    command.downgrade(alembic_config(database_url), "0003")
    assert _one(database_url, "SELECT order_id, quantity FROM order_lines") == [(placed["order_id"], 2)]
    command.upgrade(alembic_config(database_url), "head")

    assert _one(database_url, "SELECT id FROM orders") == [(placed["order_id"],)]
    assert _one(database_url, "SELECT order_id, quantity FROM order_lines") == [(placed["order_id"], 2)]
    assert _differences(database_url) == []


BROKEN = ("revision 0004 was not applied: the database would hold rows that refer to rows it does not have "
          "(order_lines row 1 -> orders), so it stays where it was before that revision. Repair or delete those "
          "rows, then run the migration again")


# SQLite only: PostgreSQL never lets a row refer to a row that is not there, so it cannot hold one to find.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_revision_that_would_leave_a_line_of_no_order_is_not_applied_and_says_which_row(database_url, tmp_path):
    command.downgrade(alembic_config(database_url), "0003")
    _place_an_order_at_0003(database_url, line_order_id="ord_gone")

    with pytest.raises(SystemExit) as stopped:
        command.upgrade(alembic_config(database_url), "head")
    assert str(stopped.value.code) == BROKEN
    assert _one(database_url, "SELECT version_num FROM alembic_version") == [("0003",)]
    assert "paid_amount" not in {row[1] for row in _one(database_url, "PRAGMA table_info(orders)")}
    # What the release step shows: that one line, no traceback.
    upgraded = subprocess.run([str(BIN / "shop"), "db", "upgrade"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env=env_for(tmp_path, DATABASE_URL=database_url,
                                                      BROKER_URL=f"filesystem://{tmp_path}/broker"))
    assert (upgraded.returncode, upgraded.stderr) == (1, BROKEN + "\n")

    _delete(database_url, "DELETE FROM order_lines WHERE order_id = 'ord_gone'")
    command.upgrade(alembic_config(database_url), "head")  # repaired: it goes through
    assert _one(database_url, "SELECT version_num FROM alembic_version") == [(HEAD,)]
