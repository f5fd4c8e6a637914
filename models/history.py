"""What happened to an order and who did it: status changes with their cause, every handler
attempt, every staff action (the audit trail) and every staff alert. Rows are only ever added.

`shop orders show` and the staff console read the whole story of an order from these tables.
"""
from __future__ import annotations

import enum
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Iterator

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import ID_TYPE, Base, enum_column, utcnow
from models.events import index_where_set, retry_delay

# Who or what is changing orders in this unit of work: "event evt_…", "staff alice: accept",
# "reservation expiry", "checkout". Set by the entry point, read by Order's state machine,
# so a status change can never be written without its cause.
_cause: ContextVar[str] = ContextVar("status_change_cause", default="unattributed")


@contextmanager
def caused_by(cause: str) -> Iterator[None]:
    token = _cause.set(cause)
    try:
        yield
    finally:
        _cause.reset(token)


def current_cause() -> str:
    return _cause.get()


class OrderStatusChange(Base):
    """One move of the order state machine, written by Order itself."""

    __tablename__ = "order_status_changes"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(24), default=None)  # None: the order was created
    to_status: Mapped[str] = mapped_column(String(24))
    cause: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class AttemptOutcome(str, enum.Enum):
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


class EventAttempt(Base):
    """One run of a handler on a stored event, by a worker, a replay or a staff retry.

    Replays and retries never overwrite history: each run is its own row with its error.
    """

    __tablename__ = "event_attempts"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    inbox_event_id: Mapped[int] = mapped_column(ID_TYPE, ForeignKey("inbox_events.id"), index=True)
    outbox_id: Mapped[int | None] = mapped_column(ID_TYPE, ForeignKey("outbox.id"), default=None)
    order_id: Mapped[str | None] = mapped_column(String(40), index=True, default=None)
    runner: Mapped[str] = mapped_column(String(200))       # "worker", "replay by alice"
    outcome: Mapped[AttemptOutcome] = mapped_column(enum_column(AttemptOutcome))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    traceback: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class StaffAction(Base):
    """The audit trail: who did what, when, why, and what it did to the order's status."""

    __tablename__ = "staff_actions"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))        # retry, resolve, reopen, replay, refund, accept, cancel
    target: Mapped[str] = mapped_column(String(255))       # "order ord_…", "dead letter 12", "event evt_…"
    order_id: Mapped[str | None] = mapped_column(String(40), index=True, default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    status_before: Mapped[str | None] = mapped_column(String(24), default=None)
    status_after: Mapped[str | None] = mapped_column(String(24), default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)  # e.g. Stripe's refund id, or the refusal
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_staff_actions_at", "at"),)


def record_staff_action(session: Session, *, actor: str, action: str, target: str, order_id: str | None = None,
                        note: str | None = None, status_before: str | None = None,
                        status_after: str | None = None, detail: str | None = None) -> StaffAction:
    row = StaffAction(actor=actor, action=action, target=target, order_id=order_id, note=note,
                      status_before=status_before, status_after=status_after, detail=detail)
    session.add(row)
    return row


class StaffAlert(Base):
    """A message sent to staff (or logged when no STAFF_ALERT_URL is set), kept for the order's story.

    The text never carries a customer's e-mail, name or address: ids, amounts and reasons only.
    """

    __tablename__ = "staff_alerts"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    order_id: Mapped[str | None] = mapped_column(String(40), index=True, default=None)
    outbox_id: Mapped[int | None] = mapped_column(ID_TYPE, default=None)
    event_id: Mapped[str | None] = mapped_column(String(255), default=None)
    text: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(String(500), default=None)
    delivered: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When a POST to STAFF_ALERT_URL is still to be made: set when the alert is recorded (its first
    # POST follows the commit; the relay makes it if that never happens) and after a failed POST.
    # NULL once delivered, logged without STAFF_ALERT_URL, given up, or while a POST is in hand:
    # a POST claims the row first (consumers.alerts), so no alert is POSTed twice.
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # POSTs started

    __table_args__ = (index_where_set("ix_staff_alerts_next_attempt_at", "next_attempt_at"),)

    def next_attempt_after_failure(self, now: datetime) -> datetime | None:
        """When to POST again after a failed POST: a minute later, doubling up to an hour, the last
        one a day after the alert was recorded; None after that one (given up)."""
        give_up_at = self.created_at + ALERT_RETRY_FOR
        if now >= give_up_at:
            return None
        return min(now + timedelta(seconds=retry_delay(self.attempts, ALERT_RETRY_SECONDS)), give_up_at)


# A failed staff alert POST is retried for a day (a chat outage, a hook's deploy), from a minute apart
# to an hour apart: about 30 POSTs. The relay also makes the first POST of an alert whose process died
# before making it, once ALERT_RETRY_SECONDS have passed since it was recorded.
ALERT_RETRY_FOR = timedelta(hours=24)
ALERT_RETRY_SECONDS = 60


class StaffMember(Base):
    """A login for the staff console; the password is stored only as a salted hash."""

    __tablename__ = "staff_members"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)
    # Each console session carries the value it was opened under; logging out or disabling the
    # login adds one, which ends every session opened before (models.staff.end_sessions).
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
