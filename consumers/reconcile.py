"""`shop reconcile`: ask Stripe for the events it sent (or meant to) and store any that never arrived.

Webhooks can be lost for good: Stripe stops retrying after three days, and an endpoint that
answered 4xx/5xx meanwhile (no secret configured, a bad deploy) has nothing stored. Stripe's
event list is the source of truth; the inbox's unique event id makes this safe to run at
any time, as often as wanted.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

import structlog
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from consumers.handlers import HANDLED_EVENT_TYPES
from consumers.payments import events_since
from models.db import transaction
from models.events import InboxEvent, store_event, why_not_storable
from models.logs import describe_error

log = structlog.get_logger(__name__)

_SPAN = re.compile(r"^(\d+)([dhms])$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_span(text: str) -> int:
    """'3d', '12h', '30m', '90s' as seconds."""
    match = _SPAN.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a span like 3d, 12h, 30m or 90s")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


_LOOKUP_BATCH = 100  # Stripe's page size (events_since): one inbox look-up a page


@dataclass
class Refused:
    """A missing event that was not stored, and why: the webhook's rules for an event (`why_not_storable`)
    or the database's refusal (`describe_error`: no payload, no secret)."""
    event_id: str
    event_type: str
    reason: str


@dataclass
class Reconciled:
    seen: int = 0
    missing: int | None = None  # known once every page is looked up in the inbox
    stored: int = 0
    refused: list[Refused] = field(default_factory=list)


class DatabaseFailed(Exception):
    """The database failed in a way that is not about one event's values (unreachable, connection lost,
    locked, read-only, privileges, schema): every later event would fail alike, so the run stopped where
    it was. `result` says what was stored (and refused) until then; running again is safe. The
    database's error is the `__cause__`."""

    def __init__(self, result: Reconciled):
        super().__init__("stopped before storing any event" if result.missing is None
                         else f"stopped after storing {result.stored} of {result.missing} missing events")
        self.result = result


def _refuses_the_event(exc: BaseException, dbapi) -> bool:
    """True for the database refusing this event's values: a DataError (on PostgreSQL, an object id
    longer than its column, or a NUL in it: a coupon's, product's or plan's id is chosen by whoever made
    it) or an IntegrityError (a duplicate event id is no error: ON CONFLICT DO NOTHING). On PostgreSQL
    `store_event` raises the driver's own error; on SQLite SQLAlchemy's, wrapping it."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return isinstance(orig, (dbapi.DataError, dbapi.IntegrityError))


def reconcile(factory: sessionmaker[Session], since_seconds: int) -> Reconciled:
    """Store the events Stripe holds from the last `since_seconds` that the inbox does not have,
    oldest first by `created` (then id, for events of the same second).

    Stripe lists events newest first (localstripe oldest first), and the worker applies queued
    events in the order they were stored: a dispute's closing stored before its opening, or a
    refund's failure before its success, would reach the worker in an order that never happened.
    So the whole listing is read before anything is stored. Held meanwhile are only the events the
    inbox lacks (each page's ids are looked up as it comes), and the listing is bounded by its
    `created_gte` window (`--since`; Stripe keeps 30 days): normally a handful, after a long
    outage that outage's events. If Stripe fails midway, nothing is stored and the run fails;
    running it again is safe.

    Each event is stored in a transaction of its own. One the webhook would refuse (`why_not_storable`:
    an object id over 255 characters or holding a control or non-ASCII character, say, which a coupon's,
    product's or plan's id chosen by hand can be) is not stored on any backend, as the webhook would
    not have stored it; one the database refuses for its values (`_refuses_the_event`) neither. Either
    is logged, listed in `refused` with its reason, and the run goes on with the next. Any other
    database error, in a look-up or a store, stops the run at once (`DatabaseFailed`).
    """
    result = Reconciled()
    since = int(time.time()) - since_seconds
    dbapi = factory.kw["bind"].dialect.loaded_dbapi
    missing: list[dict] = []
    page: list[dict] = []
    try:
        for data in events_since(since):
            result.seen += 1
            page.append(data)
            if len(page) == _LOOKUP_BATCH:
                missing += _not_in_inbox(factory, page)
                page = []
        missing += _not_in_inbox(factory, page)
    except DBAPIError as exc:
        raise DatabaseFailed(result) from exc
    missing.sort(key=lambda data: (int(data.get("created") or 0), data["id"]))
    result.missing = len(missing)
    for data in missing:
        # Not the database: SQLite stores an object id of 300 characters or holding a NUL, which PostgreSQL
        # refuses. The webhook's rules decide, so each backend's inbox holds only what a delivery could store.
        problem = why_not_storable(data)
        if problem:
            _refuse(result, data, problem)
            continue
        try:
            with transaction(factory) as session:
                stored = store_event(session, data, json.dumps(data), handled_types=HANDLED_EVENT_TYPES)
        except (DBAPIError, dbapi.Error) as exc:
            if not _refuses_the_event(exc, dbapi):
                raise DatabaseFailed(result) from exc
            _refuse(result, data, describe_error(exc))
            continue
        # The unique event id decides: a webhook may have delivered it since the look-up.
        if not stored.duplicate:
            result.stored += 1
            log.info("event_reconciled", event_id=data["id"], event_type=data["type"], status=stored.status.value)
    return result


def _refuse(result: Reconciled, data: dict, reason: str) -> None:
    event_type = str(data.get("type"))  # a str even when the type is what is wrong
    result.refused.append(Refused(data["id"], event_type, reason))
    log.warning("event_not_reconciled", event_id=data["id"], event_type=event_type, error=reason)


def _not_in_inbox(factory: sessionmaker[Session], events: list[dict]) -> list[dict]:
    if not events:
        return []
    with factory() as session:
        stored = set(session.scalars(select(InboxEvent.event_id).where(
            InboxEvent.event_id.in_([data["id"] for data in events]))))
    return [data for data in events if data["id"] not in stored]
