"""Declarative base, UTC timestamps and id generation shared by every model."""
from __future__ import annotations

import secrets
from datetime import datetime, timezone

from sqlalchemy import BigInteger, DateTime, Enum, Integer, MetaData, TypeDecorator
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Every integer id, and every column that holds one (inbox_events.id, outbox.inbox_event_id, ...),
# is 64-bit: BIGINT on PostgreSQL (alembic/versions/0009), where INTEGER would stop the inbox and
# the outbox at 2,147,483,647 rows. On SQLite it stays spelled INTEGER: an INTEGER PRIMARY KEY is
# the rowid, already 64-bit and numbered by SQLite, which a BIGINT PRIMARY KEY is not.
ID_TYPE = BigInteger().with_variant(Integer(), "sqlite")

# The largest id any row can have, on both databases. A larger number in a URL, a form, a
# command or a broker message names nothing, and must not reach the database, which refuses it
# (OverflowError from SQLite's driver, "bigint out of range" on PostgreSQL).
LARGEST_ID = 2**63 - 1


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use models.base.utcnow()")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime}


def enum_column(enum_cls, length: int = 16) -> Enum:
    """A status column stored as its value in a VARCHAR (no native enum type to migrate)."""
    return Enum(enum_cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e])
