"""The event inbox (every Stripe event, stored once) and the outbox (every message still to deliver).

The outbox is also the retry schedule: a message that failed waits in it with its attempt
count, next attempt time and last error, on every broker, so staff can see it and a broker
restart cannot lose it.
"""
from __future__ import annotations

import contextlib
import enum
import json
import re
from datetime import datetime, timedelta

from typing import NamedTuple

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, bindparam, insert, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from models.base import ID_TYPE, Base, enum_column, utcnow
from models.errors import Conflict


# The event that says money was taken: the handlers apply it, the relay and the refunds' order
# look-up search the inbox for it (here, so that all three name it without importing each other).
PAYMENT_SUCCEEDED = "payment_intent.succeeded"


class EventStatus(str, enum.Enum):
    RECEIVED = "received"      # stored, waiting for a worker
    PROCESSED = "processed"    # its handler ran and committed
    IGNORED = "ignored"        # a type we do not handle, or no order of ours
    RETRYING = "retrying"      # its handler failed; the next attempt is scheduled
    DEAD = "dead"              # dead-lettered after the last attempt: a person must look
    RESOLVED = "resolved"      # a person closed its dead letter with a note


def index_where_set(name: str, column: str) -> Index:
    """An index of the rows where `column` is set (partial). A stored event leaves the column NULL,
    so storing it writes nothing to this index; every query of the column asks for a value
    (`= :order_id`, `>= :since`), which implies it is set, so the index still answers them."""
    is_set = text(f"{column} IS NOT NULL")
    return Index(name, column, sqlite_where=is_set, postgresql_where=is_set)


class InboxEvent(Base):
    __tablename__ = "inbox_events"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    api_version: Mapped[str | None] = mapped_column(String(40), default=None)
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[str] = mapped_column(Text)  # PostgreSQL compresses it with lz4 (migration 0008)
    object_id: Mapped[str | None] = mapped_column(String(255), index=True, default=None)
    status: Mapped[EventStatus] = mapped_column(enum_column(EventStatus), default=EventStatus.RECEIVED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    outcome: Mapped[str | None] = mapped_column(Text, default=None)
    order_id: Mapped[str | None] = mapped_column(String(40), default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    processed_at: Mapped[datetime | None] = mapped_column(default=None)

    # Set by the worker, not by the webhook's store (docs/benchmarks.md).
    __table_args__ = (index_where_set("ix_inbox_events_order_id", "order_id"),
                      index_where_set("ix_inbox_events_processed_at", "processed_at"))

    @property
    def data(self) -> dict:
        return json.loads(self.payload)

    def to_dict(self) -> dict:
        return {
            "event_id": self.event_id,
            "type": self.type,
            "status": self.status.value,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "outcome": self.outcome,
            "order_id": self.order_id,
            "object_id": self.object_id,
            "received_at": self.received_at.isoformat(),
            "processed_at": self.processed_at.isoformat() if self.processed_at else None,
        }


class OutboxStatus(str, enum.Enum):
    PENDING = "pending"        # to publish when available_at is due
    PUBLISHED = "published"    # on the broker; re-published if not done by available_at
    DONE = "done"              # a consumer committed its effect
    DEAD = "dead"              # out of attempts: a dead letter, until staff retry or resolve it
    RESOLVED = "resolved"      # a dead letter staff closed with a note


class Topic(str, enum.Enum):
    STRIPE_EVENT = "stripe_event"
    MAIL = "mail"
    PAYMENT_CANCEL = "payment_cancel"  # cancel an expired order's PaymentIntent at Stripe


class OutboxMessage(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    topic: Mapped[Topic] = mapped_column(enum_column(Topic))
    payload: Mapped[str] = mapped_column(Text)
    inbox_event_id: Mapped[int | None] = mapped_column(ID_TYPE, ForeignKey("inbox_events.id"), index=True, default=None)
    order_id: Mapped[str | None] = mapped_column(String(40), default=None)  # mails, Stripe calls
    status: Mapped[OutboxStatus] = mapped_column(enum_column(OutboxStatus), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)      # failed handler runs
    deliveries: Mapped[int] = mapped_column(Integer, default=0)    # times put on the broker
    # Copies of it (a re-publication or a broker's redelivery) a worker began to run; the first
    # delivery is not counted (see `start_copy`).
    starts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A mail's lease: until then the worker that took it is sending it, and no other worker sends it, a
    # copy the relay published before included (`consumers.processing._extend_lease`). Mails over SMTP only.
    leased_until: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    done_at: Mapped[datetime | None] = mapped_column(default=None)
    resolution_note: Mapped[str | None] = mapped_column(Text, default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)

    inbox_event: Mapped[InboxEvent | None] = relationship()

    # The relay's poll: what is pending or published and due, without scanning finished rows. A
    # Stripe event's message has no order_id.
    __table_args__ = (Index("ix_outbox_status_available_at", "status", "available_at"),
                      index_where_set("ix_outbox_order_id", "order_id"))

    @property
    def body(self) -> dict:
        return json.loads(self.payload)

    def schedule_retry(self, error: str, *, max_attempts: int, base_seconds: float) -> bool:
        """Record a failed attempt; True if another is scheduled, False if this one was the last."""
        self.attempts += 1
        self.last_error = error
        if self.attempts >= max_attempts:
            self.status = OutboxStatus.DEAD
            return False
        self.status = OutboxStatus.PENDING
        self.available_at = utcnow() + timedelta(seconds=retry_delay(self.attempts, base_seconds))
        return True

    def mark_published(self, redelivery_seconds: float) -> None:
        """On the broker now; if no consumer finishes it in time, the relay publishes it again.

        That covers a broker that loses an unacknowledged message (the file transport when a
        worker is killed). The wait doubles with each delivery so a stopped worker pool does
        not fill the queue with copies; a redelivery is not a failed attempt.
        """
        self.deliveries += 1
        self.status = OutboxStatus.PUBLISHED
        self.published_at = utcnow()
        wait = redelivery_seconds * (2 ** min(self.deliveries - 1, 5))
        self.available_at = self.published_at + timedelta(seconds=wait)

    def mark_done(self) -> None:
        self.status = OutboxStatus.DONE
        self.done_at = utcnow()

    def is_to_handle(self) -> bool:
        """A consumer acts on a message only while it is live: not finished, not closed by staff,
        and not a copy that arrived before its scheduled retry is due."""
        if self.status is OutboxStatus.PUBLISHED:
            return True
        return self.status is OutboxStatus.PENDING and self.available_at <= utcnow()

    def start_copy(self, max_deliveries: int) -> bool:
        """A worker is about to run a copy of this live message; False if it must not.

        Counted (and committed by the caller) before the copy runs, so a copy that kills its
        worker still counts. With the first delivery, `max_deliveries` runs were started and none
        finished: the message kills its worker, and another copy would only loop; a person must
        look. Copies nobody took (every worker stopped) are never counted.
        """
        self.starts += 1
        return self.starts < max_deliveries

    def dead_letter(self, error: str) -> None:
        """Give up on delivering it: a dead letter until staff re-drive or resolve it."""
        self.status = OutboxStatus.DEAD
        self.last_error = error
        if self.inbox_event is not None and self.inbox_event.status in (EventStatus.RECEIVED, EventStatus.RETRYING):
            self.inbox_event.status = EventStatus.DEAD
            self.inbox_event.last_error = error

    def redrive(self) -> None:
        """Staff's retry of a dead letter: fresh attempts, deliveries (so the redelivery wait
        starts short again) and started copies, starting now."""
        if self.status is not OutboxStatus.DEAD:
            raise Conflict(f"message {self.id} is {self.status.value}, not a dead letter")
        self.status = OutboxStatus.PENDING
        self.attempts = 0
        self.deliveries = 0
        self.starts = 0
        self.available_at = utcnow()
        if self.inbox_event is not None and self.inbox_event.status is EventStatus.DEAD:
            self.inbox_event.status = EventStatus.RETRYING

    def resolve(self, note: str) -> None:
        """Staff close a dead letter without re-driving it (handled by hand, or not needed)."""
        if self.status is not OutboxStatus.DEAD:
            raise Conflict(f"message {self.id} is {self.status.value}, not a dead letter")
        self.status = OutboxStatus.RESOLVED
        self.resolution_note = note
        self.resolved_at = utcnow()
        if self.inbox_event is not None:
            self.inbox_event.status = EventStatus.RESOLVED
            self.inbox_event.outcome = f"resolved by staff: {note}"

    def reopen(self, note: str) -> None:
        """Staff take back a resolution: a dead letter again, to retry or replay. The old note
        stays in the audit trail; the row shows why it was reopened."""
        if self.status is not OutboxStatus.RESOLVED:
            raise Conflict(f"message {self.id} is {self.status.value}, not a resolved dead letter")
        self.status = OutboxStatus.DEAD
        self.resolution_note = None
        self.resolved_at = None
        if self.inbox_event is not None and self.inbox_event.status is EventStatus.RESOLVED:
            self.inbox_event.status = EventStatus.DEAD
            self.inbox_event.outcome = f"reopened by staff: {note}"


def retry_delay(attempt: int, base_seconds: float, cap_seconds: float = 3600.0) -> float:
    """Exponential back-off: base, 2*base, 4*base, ... capped at an hour."""
    return min(cap_seconds, base_seconds * (2 ** (attempt - 1)))


def enqueue(session: Session, topic: Topic, body: dict, *, inbox_event: InboxEvent | None = None,
            order_id: str | None = None) -> OutboxMessage:
    message = OutboxMessage(topic=topic, payload=json.dumps(body, sort_keys=True), inbox_event=inbox_event,
                            order_id=order_id or body.get("order_id"))
    session.add(message)
    return message


class StoredEvent(NamedTuple):
    id: int
    status: EventStatus
    duplicate: bool


def _event_insert(dialect_insert):
    table = InboxEvent.__table__
    return dialect_insert(table).on_conflict_do_nothing(index_elements=["event_id"]).returning(table.c.id)


# Built once: the webhook's hot path only binds parameters (INSERT … ON CONFLICT exists on both).
_INSERT_EVENT = {"postgresql": _event_insert(postgresql_insert), "sqlite": _event_insert(sqlite_insert)}
_INSERT_OUTBOX = insert(OutboxMessage.__table__)
_EXISTING_EVENT = select(InboxEvent.id, InboxEvent.status).where(InboxEvent.event_id == bindparam("event_id"))


# PostgreSQL, on the driver's cursor (the webhook's hot path: no SQLAlchemy statement machinery
# per request). The inbox row and its outbox row are ONE statement (a data-modifying CTE): one
# round trip, and in autocommit no BEGIN or COMMIT of its own, since a single statement is its
# own transaction, committed (and flushed to the WAL) before it returns.
_PG_INBOX_ROW = """
    INSERT INTO inbox_events (event_id, type, api_version, livemode, payload, object_id, status, attempts,
                              outcome, received_at, processed_at)
    VALUES (%(event_id)s, %(type)s, %(api_version)s, %(livemode)s, %(payload)s, %(object_id)s, %(status)s, 0,
            %(outcome)s, %(received_at)s, %(processed_at)s)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING id"""
_PG_STORE_AND_QUEUE = f"""
    WITH stored_event AS ({_PG_INBOX_ROW}
    ), queued AS (
        INSERT INTO outbox (topic, payload, inbox_event_id, status, attempts, deliveries, available_at, created_at)
        SELECT %(queue_topic)s, %(queue_payload)s, id, %(queue_status)s, 0, 0, %(received_at)s, %(received_at)s
        FROM stored_event
    )
    SELECT id FROM stored_event"""
_PG_EXISTING = "SELECT id, status FROM inbox_events WHERE event_id = %(event_id)s"

# A group of events (the webhook's group commit) in ONE statement, whatever its size: the rows go
# in as arrays, one per column, so the text never changes and psycopg prepares it once. The arrays
# are sent in binary (%b): in text, psycopg quotes each element of an array in Python, which for
# the payloads' quotes cost more CPU than the statement saved. Inserted
# in event id order, as every group is, so two groups holding the same ids never wait on each
# other in opposite orders (a deadlock).
_PG_STORE_AND_QUEUE_GROUP = """
    WITH arrived AS (
        SELECT * FROM unnest(%(event_id)b::text[], %(type)b::text[], %(api_version)b::text[],
                             %(livemode)b::boolean[], %(payload)b::text[], %(object_id)b::text[],
                             %(status)b::text[], %(outcome)b::text[], %(received_at)b::timestamptz[],
                             %(processed_at)b::timestamptz[], %(queue_payload)b::text[])
            WITH ORDINALITY AS arrived(event_id, type, api_version, livemode, payload, object_id, status, outcome,
                                       received_at, processed_at, queue_payload, position)
    ), stored_event AS (
        INSERT INTO inbox_events (event_id, type, api_version, livemode, payload, object_id, status, attempts,
                                  outcome, received_at, processed_at)
        SELECT event_id, type, api_version, livemode, payload, object_id, status, 0, outcome, received_at,
               processed_at
        FROM arrived ORDER BY position
        ON CONFLICT (event_id) DO NOTHING
        RETURNING id, event_id
    ), queued AS (
        INSERT INTO outbox (topic, payload, inbox_event_id, status, attempts, deliveries, available_at, created_at)
        SELECT %(queue_topic)s, arrived.queue_payload, stored_event.id, %(queue_status)s, 0, 0,
               arrived.received_at, arrived.received_at
        FROM stored_event JOIN arrived USING (event_id)
        WHERE arrived.queue_payload IS NOT NULL
        ORDER BY stored_event.id
    )
    SELECT event_id, id FROM stored_event"""
_PG_EXISTING_GROUP = "SELECT event_id, id, status FROM inbox_events WHERE event_id = ANY(%(event_ids)s::text[])"


def _inbox_row(event: dict, raw_payload: str, handled: bool) -> dict:
    obj = event.get("data", {}).get("object") or {}
    now = utcnow()
    return {
        "event_id": event["id"],
        "type": event["type"],
        "api_version": event.get("api_version"),
        "livemode": bool(event.get("livemode", False)),
        "payload": raw_payload,
        "object_id": obj.get("id") if isinstance(obj.get("id"), str) else None,
        "status": EventStatus.RECEIVED if handled else EventStatus.IGNORED,
        "outcome": None if handled else f"event type {event['type']} is not handled",
        "processed_at": None if handled else now,
        "received_at": now,
    }


def store_event_pg(connection, event: dict, raw_payload: str, *, handled_types: frozenset[str]) -> StoredEvent:
    """`store_event` on PostgreSQL, through a psycopg connection: one statement (two for a duplicate),
    in the connection's transaction, or its own in autocommit."""
    handled = event["type"] in handled_types
    row = _inbox_row(event, raw_payload, handled)
    params = {**row, "status": row["status"].value}
    if handled:
        params.update(queue_topic=Topic.STRIPE_EVENT.value, queue_payload=json.dumps({"event_id": event["id"]}),
                      queue_status=OutboxStatus.PENDING.value)
    with connection.cursor() as cursor:
        cursor.execute(_PG_STORE_AND_QUEUE if handled else _PG_INBOX_ROW, params)
        stored = cursor.fetchone()
        if stored is None:
            cursor.execute(_PG_EXISTING, {"event_id": event["id"]})
            existing_id, existing_status = cursor.fetchone()
            return StoredEvent(existing_id, EventStatus(existing_status), True)
    return StoredEvent(stored[0], row["status"], False)


def _first_copies(arrivals: list[tuple[dict, str]]) -> list[tuple[dict, str]]:
    """Each event of a group once (its first copy), in event id order; a later copy is its duplicate."""
    first: dict[str, tuple[dict, str]] = {}
    for event, raw_payload in arrivals:
        first.setdefault(event["id"], (event, raw_payload))
    return [first[event_id] for event_id in sorted(first)]


def _answers(arrivals: list[tuple[dict, str]], outcome: dict[str, StoredEvent]) -> list[StoredEvent]:
    """What each arrival of a group is answered: its event's outcome, as a duplicate for every copy after the first."""
    answered, seen = [], set()
    for event, _raw in arrivals:
        stored = outcome[event["id"]]
        answered.append(stored if event["id"] not in seen else stored._replace(duplicate=True))
        seen.add(event["id"])
    return answered


def store_events_pg(connection, arrivals: list[tuple[dict, str]], *,
                    handled_types: frozenset[str]) -> list[StoredEvent]:
    """`store_event_pg` for a group of (event, raw payload), answered in their order: one statement
    (two if any is a duplicate of a stored event), so in autocommit ONE transaction for them all.

    Two copies of one event in the group store it once; the later copy is a duplicate.
    """
    if len(arrivals) == 1:
        event, raw_payload = arrivals[0]
        return [store_event_pg(connection, event, raw_payload, handled_types=handled_types)]
    columns: dict[str, list] = {name: [] for name in (
        "event_id", "type", "api_version", "livemode", "payload", "object_id", "status", "outcome", "received_at",
        "processed_at", "queue_payload")}
    statuses: dict[str, EventStatus] = {}
    for event, raw_payload in _first_copies(arrivals):
        handled = event["type"] in handled_types
        row = _inbox_row(event, raw_payload, handled)
        statuses[event["id"]] = row["status"]
        row.update(status=row["status"].value,
                   queue_payload=json.dumps({"event_id": event["id"]}) if handled else None)
        for name, values in columns.items():
            values.append(row[name])
    outcome: dict[str, StoredEvent] = {}
    with connection.cursor() as cursor:
        cursor.execute(_PG_STORE_AND_QUEUE_GROUP, {**columns, "queue_topic": Topic.STRIPE_EVENT.value,
                                                  "queue_status": OutboxStatus.PENDING.value})
        for event_id, stored_id in cursor.fetchall():
            outcome[event_id] = StoredEvent(stored_id, statuses[event_id], False)
        already = [event_id for event_id in columns["event_id"] if event_id not in outcome]
        if already:
            cursor.execute(_PG_EXISTING_GROUP, {"event_ids": already})
            for event_id, existing_id, existing_status in cursor.fetchall():
                outcome[event_id] = StoredEvent(existing_id, EventStatus(existing_status), True)
    return _answers(arrivals, outcome)


# SQLite, on the driver's connection (the webhook's hot path). SQLite has one writer at a time,
# so a group holds every other writer up for as long as it writes: its rows are made ready before
# it takes the turn, and it writes them with one INSERT per table (no INSERT inside WITH here).
# What store_event writes into columns of its own must fit them on every backend (lengths, ASCII only:
# a lone surrogate such as "\ud800" is valid JSON but cannot be encoded for the database). The webhook
# refuses an event that breaks them (webhook_app.webhooks), and the store process a request that does.
EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,251}")
EVENT_TYPE = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
API_VERSION = re.compile(r"[\x21-\x7e]{1,40}")
OBJECT_ID = re.compile(r"[\x21-\x7e]{1,255}")


def why_not_storable(event) -> str | None:
    """Why a parsed event cannot be stored in the inbox (None if it can): not a Stripe event, or an id,
    type, api_version or data.object.id that breaks the rules above. One check for every way in: the
    webhook answers 400 `not_an_event` with this message, and `shop reconcile` names the event with it,
    so no backend stores what another would refuse (SQLite would take an object id of 300 characters
    or one holding a NUL; PostgreSQL would not)."""
    if not isinstance(event, dict):
        return "the body is not a JSON object"
    if event.get("object") != "event":
        return 'the body is not a Stripe event (object is not "event")'
    if not isinstance(event.get("id"), str) or not EVENT_ID.fullmatch(event["id"]):
        return "the event has no evt_ id"
    if not isinstance(event.get("type"), str) or not event["type"]:
        return "the event has no type"
    if not EVENT_TYPE.fullmatch(event["type"]):
        return "the event's type is not a Stripe event type"
    api_version = event.get("api_version")
    if api_version is not None and not (isinstance(api_version, str) and API_VERSION.fullmatch(api_version)):
        return "the event's api_version is not a Stripe API version"
    if not isinstance(event.get("livemode", False), bool):
        return "the event's livemode is not true or false"
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        return "the event has no data.object"
    object_id = data["object"].get("id")
    if isinstance(object_id, str) and not OBJECT_ID.fullmatch(object_id):
        return "the event's data.object.id is not a Stripe id"
    return None


_SQLITE_INBOX_COLUMNS = ("event_id", "type", "api_version", "livemode", "payload", "object_id", "status",
                         "outcome", "received_at", "processed_at")
_SQLITE_INBOX_VALUES = "(?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)"
_SQLITE_QUEUE_VALUES = "(?, ?, ?, ?, 0, 0, ?, ?)"


def _sqlite_inbox_rows(count: int) -> str:
    """The INSERT of `count` inbox rows; RETURNING says which were new (the others are stored already)."""
    return (f"INSERT INTO inbox_events ({', '.join(_SQLITE_INBOX_COLUMNS[:7])}, attempts, "
            f"{', '.join(_SQLITE_INBOX_COLUMNS[7:])}) VALUES {', '.join([_SQLITE_INBOX_VALUES] * count)} "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id, id")


def _sqlite_queue_rows(count: int) -> str:
    """The INSERT of `count` outbox rows: one statement, where an executemany steps SQLite once a row
    and hands Python's interpreter lock to the process's other threads at each step, all under the
    writers' turn (docs/benchmarks.md)."""
    return ("INSERT INTO outbox (topic, payload, inbox_event_id, status, attempts, deliveries, available_at, "
            f"created_at) VALUES {', '.join([_SQLITE_QUEUE_VALUES] * count)}")


def _sqlite_existing(count: int) -> str:
    return f"SELECT event_id, id, status FROM inbox_events WHERE event_id IN ({', '.join('?' * count)})"


# Timestamps exactly as SQLAlchemy writes them on SQLite, so every other reader parses them.
def _sqlite_timestamp():
    from sqlalchemy.dialects.sqlite import dialect

    sqlite = dialect()
    return InboxEvent.__table__.c.received_at.type.dialect_impl(sqlite).bind_processor(sqlite)


_SQLITE_TIMESTAMP = _sqlite_timestamp()


def store_events_sqlite(connection, arrivals: list[tuple[dict, str]], *, handled_types: frozenset[str],
                        turn=contextlib.nullcontext) -> list[StoredEvent]:
    """`store_event` on SQLite for a group of (event, raw payload), through a sqlite3 connection in
    autocommit mode (the service's engine sets isolation_level None), answered in their order: one
    BEGIN IMMEDIATE … COMMIT, one INSERT of all the inbox rows and one of all the outbox rows, inside
    `turn(connection)` (the writers' turn: models.db.writer_turn), which the rows are ready before.
    Two copies of one event in the group store it once; the later copy is a duplicate."""
    firsts = _first_copies(arrivals)
    inbox_values: list = []
    statuses: dict[str, EventStatus] = {}
    queue_rows: dict[str, tuple] = {}  # a handled event's outbox row, but for its inbox id
    for event, raw_payload in firsts:
        handled = event["type"] in handled_types
        row = _inbox_row(event, raw_payload, handled)
        received_at = _SQLITE_TIMESTAMP(row["received_at"])
        statuses[event["id"]] = row["status"]
        if handled:
            queue_rows[event["id"]] = (Topic.STRIPE_EVENT.value, json.dumps({"event_id": event["id"]}),
                                       OutboxStatus.PENDING.value, received_at, received_at)
        row.update(status=row["status"].value, received_at=received_at,
                   processed_at=None if handled else received_at)
        inbox_values += [row[name] for name in _SQLITE_INBOX_COLUMNS]
    event_ids = [event["id"] for event, _raw in firsts]
    outcome: dict[str, StoredEvent] = {}
    with turn(connection):
        cursor = connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            new = dict(cursor.execute(_sqlite_inbox_rows(len(firsts)), inbox_values).fetchall())
            queued = [(topic, payload, new[event_id], status, available_at, created_at)
                      for event_id, (topic, payload, status, available_at, created_at) in queue_rows.items()
                      if event_id in new]
            if queued:
                cursor.execute(_sqlite_queue_rows(len(queued)), [value for row in queued for value in row])
            already = [event_id for event_id in event_ids if event_id not in new]
            if already:
                for event_id, existing_id, existing_status in cursor.execute(_sqlite_existing(len(already)), already):
                    outcome[event_id] = StoredEvent(existing_id, EventStatus(existing_status), True)
            cursor.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        finally:
            cursor.close()
    for event_id, stored_id in new.items():
        outcome[event_id] = StoredEvent(stored_id, statuses[event_id], False)
    return _answers(arrivals, outcome)


def store_event(session: Session | Connection, event: dict, raw_payload: str, *,
                handled_types: frozenset[str]) -> StoredEvent:
    """Store a verified Stripe event once, with its outbox row, in the caller's transaction.

    `session` is an ORM Session or a plain Core Connection (the webhook uses the latter: no
    identity map or unit of work to set up and tear down per request). On PostgreSQL the
    webhook's connection is in autocommit: the one statement is the whole transaction.

    `handled_types` comes from the handler registry (`consumers.handlers.HANDLED_EVENT_TYPES`).
    Types the service does not handle are stored as ignored, with no outbox row, so they stay
    visible and never reach a worker. This is the webhook's hot path: one statement on
    PostgreSQL (`store_event_pg`), two on SQLite (which has no INSERT inside WITH). The unique event id, not a
    look-up first, decides what is a duplicate, which also holds when two deliveries of one
    event race each other.
    """
    dialect = session.dialect if isinstance(session, Connection) else session.get_bind().dialect
    if dialect.name == "postgresql":
        connection = session if isinstance(session, Connection) else session.connection()
        # The driver's own connection, in this transaction.
        return store_event_pg(connection.connection.dbapi_connection, event, raw_payload, handled_types=handled_types)
    handled = event["type"] in handled_types
    row = _inbox_row(event, raw_payload, handled)
    stored_id = session.execute(_INSERT_EVENT[dialect.name], row).scalar_one_or_none()
    if stored_id is None:
        existing = session.execute(_EXISTING_EVENT, {"event_id": event["id"]}).one()
        return StoredEvent(existing.id, existing.status, True)
    if handled:
        session.execute(_INSERT_OUTBOX, {
            "topic": Topic.STRIPE_EVENT, "payload": json.dumps({"event_id": event["id"]}),
            "inbox_event_id": stored_id, "status": OutboxStatus.PENDING, "available_at": row["received_at"],
            "created_at": row["received_at"]})
    return StoredEvent(stored_id, row["status"], False)
