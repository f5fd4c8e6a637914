"""PostgreSQL: the service's connections commit durably whatever the server's or role's default. With
`synchronous_commit = off` a COMMIT returns before its WAL is on disk, and a crash of the server loses
webhooks already answered 200; the service raises it to `on`, and keeps a durable level an operator chose."""
from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from models.db import make_engine, store_engine_for
from tests.backends import servers_available

if servers_available():
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    @pytest.mark.parametrize("default, kept", [("off", "on"), ("local", "local"), ("remote_write", "remote_write")])
    def test_the_services_connections_commit_durably_whatever_the_databases_default(settings, default, kept):
        url = make_url(settings.database_url)
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{url.database}" SET synchronous_commit = {default}'))
        admin.dispose()
        plain = create_engine(settings.database_url)  # what a connection of no one's gets: the default
        service = make_engine(settings.database_url)
        store = store_engine_for(settings, service)
        try:
            with plain.connect() as conn:
                assert conn.scalar(text("SHOW synchronous_commit")) == default
            for engine in (service, store):
                with engine.connect() as conn:
                    assert conn.scalar(text("SHOW synchronous_commit")) == kept
                    # A transaction after it keeps the setting (it is the session's, not a rolled-back one's).
                    conn.execute(text("SELECT 1"))
                    conn.rollback()
                    assert conn.scalar(text("SHOW synchronous_commit")) == kept
        finally:
            for engine in (plain, service, store):
                engine.dispose()
