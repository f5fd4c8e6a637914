"""Declarative base, UTC timestamps and id generation shared by every model."""
from __future__ import annotations

import secrets
from datetime import datetime, timezone

from sqlalchemy import DateTime, Enum, MetaData, TypeDecorator
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The tables' integer ids are 32-bit INTEGER columns (alembic/versions/0001 and 0004; SERIAL on
# PostgreSQL): no row has a larger id and no table holds more rows. A larger number in a URL, a
# form, a command or a broker message names nothing, and must not reach the database, which
# refuses it (OverflowError on SQLite past 64 bits, "integer out of range" on PostgreSQL past 32).
LARGEST_ID = 2**31 - 1


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
