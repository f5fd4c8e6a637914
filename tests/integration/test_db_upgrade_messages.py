"""What `shop db upgrade` says is what happened to the database: where it is now, and when nothing
was done, why (already there, already past it, or migrated by a release newer than this code)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from models.migrations import alembic_config
from tests.backends import create_postgres_database, drop_postgres_database, servers_available
from webhook_app.cli import shop


def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


@pytest.fixture(params=["sqlite", "postgresql"] if servers_available() else ["sqlite"])
def empty_database_url(request, tmp_path):
    """A database no migration has run on yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


def upgrade(database_url: str, *args: str):
    env = {"DATABASE_URL": database_url, "BROKER_URL": "memory://localhost/db-upgrade", "LOG_FORMAT": "console"}
    return CliRunner().invoke(shop, ["db", "upgrade", *args], env=env)


def versions(database_url: str) -> list[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    finally:
        engine.dispose()


def set_version(database_url: str, revision: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :revision"), {"revision": revision})
    finally:
        engine.dispose()


def test_each_upgrade_names_the_revision_it_left_the_database_at(empty_database_url):
    first = upgrade(empty_database_url, "--revision", "0003")
    assert (first.exit_code, first.output) == (0, "database migrated to 0003, from an empty database\n")
    assert versions(empty_database_url) == ["0003"]

    second = upgrade(empty_database_url)
    assert (second.exit_code, second.output) == (0, f"database migrated to head ({head()}), from 0003\n")

    again = upgrade(empty_database_url)
    assert (again.exit_code, again.output) == (0, f"database already at head ({head()}); nothing done\n")
    assert versions(empty_database_url) == [head()]


def test_upgrade_to_a_revision_the_database_is_past_says_so_and_never_that_it_migrated_there(database_url):
    result = upgrade(database_url, "--revision", "0003")
    assert result.exit_code == 0, result.output
    assert result.output == (f"database already past 0003 (at {head()}); nothing done: `shop db upgrade` never goes "
                             f"back to an older revision\n")
    assert versions(database_url) == [head()]


@pytest.mark.parametrize("args", [(), ("--revision", "head")])
def test_a_database_a_newer_release_migrated_is_named_as_such_and_not_blamed_on_the_revision_option(
        database_url, args):
    set_version(database_url, "0999")  # what a newer release's migration leaves, after the code was rolled back
    result = upgrade(database_url, *args)
    assert result.exit_code == 1, result.output
    assert result.output == ("Error: the database is at revision 0999, which this release does not know: a newer "
                             "release migrated it. Deploy that release (or a newer one) again, or restore the "
                             "database from before its migration; nothing done\n")
    assert versions(database_url) == ["0999"]


def test_a_revision_no_migration_names_is_still_blamed_on_the_revision_option(database_url):
    result = upgrade(database_url, "--revision", "nope")
    assert result.exit_code == 2, result.output
    assert "Invalid value for --revision: Can't locate revision identified by 'nope'" in result.output
    assert versions(database_url) == [head()]
