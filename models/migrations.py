"""Run the Alembic migrations from code (`shop db upgrade`, tests), wherever the process starts, and say
where they left the database."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"


class UnknownDatabaseRevision(Exception):
    """The database is at a revision none of this release's migrations make: a newer release migrated it
    (this code was rolled back since), and nothing here can move it, up or down."""

    def __init__(self, revision: str):
        super().__init__(revision)
        self.revision = revision


@dataclass(frozen=True)
class Upgrade:
    """Where `upgrade` left the database. A revision of None is an empty database (no migration run yet)."""
    asked: str          # as asked: "head", "0003"
    target: str | None  # the revision that names (None for a relative one, such as "+1")
    before: str | None
    after: str | None

    @property
    def moved(self) -> bool:
        return self.before != self.after


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def database_revision(database_url: str) -> str | None:
    """The revision the database is at, or None when it has none yet."""
    from models.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
    finally:
        engine.dispose()
    return heads[0] if heads else None  # one line of revisions: never two heads


def upgrade(database_url: str, revision: str = "head") -> Upgrade:
    """Migrate to `revision`; one the database is already at or past is left as it is (upgrade never goes
    down). Raises UnknownDatabaseRevision for a database a newer release migrated, and alembic's
    CommandError for a `revision` no migration here names."""
    config = alembic_config(database_url)
    script = ScriptDirectory.from_config(config)
    before = database_revision(database_url)
    if before is not None:
        try:
            script.get_revision(before)
        except CommandError:
            raise UnknownDatabaseRevision(before) from None
    try:
        target = script.get_revision(revision)
    except CommandError:
        target = None  # a relative revision ("+1"), or none: command.upgrade tells which
    command.upgrade(config, revision)
    return Upgrade(asked=revision, target=target.revision if target is not None else None,
                   before=before, after=database_revision(database_url))
