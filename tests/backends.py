"""Which databases and brokers this test run has, and fresh, isolated copies of them.

The embedded default (SQLite + the file transport) is always tested. PostgreSQL and RabbitMQ
are tested when TEST_POSTGRES_URL and TEST_AMQP_URL are set (`.ci/run` starts both); in CI
(SHOP_REQUIRE_SERVERS=1) their absence fails the run instead of quietly testing less.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

EMBEDDED = "sqlite+filesystem"
SERVERS = "postgresql+rabbitmq"


def servers_available() -> bool:
    return bool(os.environ.get("TEST_POSTGRES_URL") and os.environ.get("TEST_AMQP_URL"))


def servers_required() -> bool:
    return os.environ.get("SHOP_REQUIRE_SERVERS") == "1"


def backends() -> list[str]:
    return [EMBEDDED, SERVERS] if servers_available() else [EMBEDDED]


def _admin_engine():
    url = make_url(os.environ["TEST_POSTGRES_URL"]).set(database="postgres")
    return create_engine(url, isolation_level="AUTOCOMMIT")


def create_postgres_database(template: str | None = None) -> str:
    """A new empty database (or a copy of `template`), returned as a SQLAlchemy URL."""
    name = f"shop_{secrets.token_hex(6)}"
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    engine.dispose()
    return make_url(os.environ["TEST_POSTGRES_URL"]).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def purge_rabbitmq() -> None:
    """Delete the service's queues and exchanges, so one test's messages never reach the next
    test's workers, and each cluster has to declare its topology itself, as in production."""
    from consumers.broker import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, EXCHANGE, QUEUES, connect
    from models.settings import Settings

    with connect(Settings(broker_url=os.environ["TEST_AMQP_URL"])) as conn:
        channel = conn.default_channel
        for queue in (*QUEUES.values(), DEAD_LETTER_QUEUE):
            channel.queue_delete(queue.name)
        for exchange in (EXCHANGE, DEAD_LETTER_EXCHANGE):
            channel.exchange_delete(exchange.name)


def wait_until_waiting_for_a_lock(engine: Engine, proc: subprocess.Popen | None = None,
                                  thread: threading.Thread | None = None) -> None:
    """Until a connection to the engine's PostgreSQL database waits for a row lock (what the other
    side holds). Each look is its own transaction: PostgreSQL keeps one snapshot of
    pg_stat_activity a transaction, so looking again inside one would never see the wait begin."""
    deadline = time.monotonic() + 30
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar_one()
            connection.rollback()
            if waiting:
                return
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"finished without waiting: {proc.communicate()}")
            if thread is not None and not thread.is_alive():
                raise AssertionError("finished without waiting")
            time.sleep(0.02)
    raise AssertionError("nothing waited for a lock within 30 s")
