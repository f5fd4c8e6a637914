"""The console's home: what is waiting, what failed, what needs a person, and a day of traffic.

Every figure is one grouped query on indexed columns (status, received_at, processed_at),
never a walk over the rows, so the page stays cheap on a large inbox.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import render_template
from sqlalchemy import Float, Integer, cast, func, select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus
from models.orders import Order, OrderStatus
from webhook_app import state
from webhook_app.admin import bp
from webhook_app.admin.chart import traffic_charts

WINDOW_MINUTES = 24 * 60


@dataclass
class MinuteTraffic:
    """Events received and processed in each minute of the window, and the processing lag."""

    start: datetime                                      # the first minute of the window
    received: dict[int, int] = field(default_factory=dict)     # minute index -> events received
    processed: dict[int, int] = field(default_factory=dict)    # minute index -> events processed
    lag_avg: dict[int, float] = field(default_factory=dict)    # minute index -> mean seconds, by processing minute
    lag_max: dict[int, float] = field(default_factory=dict)


@dataclass
class Dashboard:
    orders_by_status: dict[str, int]
    events_waiting: int
    oldest_waiting_at: datetime | None
    retries_scheduled: int
    dead_letters: int
    now: datetime
    traffic: MinuteTraffic

    @property
    def needs_review(self) -> int:
        return self.orders_by_status.get(OrderStatus.NEEDS_REVIEW.value, 0)

    @property
    def oldest_waiting_age(self) -> timedelta | None:
        return self.now - self.oldest_waiting_at if self.oldest_waiting_at else None


def _epoch_seconds(column, dialect: str):
    """Seconds since 1970 as a number, in SQL (SQLite keeps times as text)."""
    if dialect == "sqlite":
        return (func.julianday(column) - 2440587.5) * 86400.0
    return cast(func.extract("epoch", column), Float)


def _minute_of(column, dialect: str):
    if dialect == "sqlite":
        return cast(_epoch_seconds(column, dialect) / 60, Integer)  # positive, so the cast floors
    return cast(func.floor(_epoch_seconds(column, dialect) / 60), Integer)


def minute_traffic(session: Session, now: datetime) -> MinuteTraffic:
    dialect = session.get_bind().dialect.name
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=WINDOW_MINUTES - 1)
    first_minute = int(start.timestamp() // 60)
    traffic = MinuteTraffic(start=start)

    received_minute = _minute_of(InboxEvent.received_at, dialect)
    for minute, count in session.execute(
            select(received_minute, func.count())
            .where(InboxEvent.received_at >= start).group_by(received_minute)).all():
        traffic.received[int(minute) - first_minute] = count

    processed_minute = _minute_of(InboxEvent.processed_at, dialect)
    lag = _epoch_seconds(InboxEvent.processed_at, dialect) - _epoch_seconds(InboxEvent.received_at, dialect)
    for minute, count, lag_avg, lag_max in session.execute(
            select(processed_minute, func.count(), func.avg(lag), func.max(lag))
            .where(InboxEvent.processed_at >= start).group_by(processed_minute)).all():
        index = int(minute) - first_minute
        traffic.processed[index] = count
        traffic.lag_avg[index] = max(float(lag_avg), 0.0)
        traffic.lag_max[index] = max(float(lag_max), 0.0)
    return traffic


def dashboard_figures(session: Session, now: datetime | None = None) -> Dashboard:
    now = now or utcnow()
    by_status = {status.value: 0 for status in OrderStatus}
    for status, count in session.execute(select(Order.status, func.count()).group_by(Order.status)).all():
        by_status[status.value] = count
    waiting, oldest = session.execute(
        select(func.count(), func.min(InboxEvent.received_at))
        .where(InboxEvent.status.in_([EventStatus.RECEIVED, EventStatus.RETRYING]))).one()
    retries = session.scalar(
        select(func.count()).select_from(OutboxMessage)
        .where(OutboxMessage.status.in_([OutboxStatus.PENDING, OutboxStatus.PUBLISHED]),
               OutboxMessage.attempts > 0))
    dead = session.scalar(select(func.count()).select_from(OutboxMessage)
                          .where(OutboxMessage.status == OutboxStatus.DEAD))
    return Dashboard(orders_by_status=by_status, events_waiting=waiting, oldest_waiting_at=oldest,
                     retries_scheduled=retries, dead_letters=dead, now=now, traffic=minute_traffic(session, now))


def age_in_words(age: timedelta | None) -> str:
    if age is None:
        return "none waiting"
    seconds = max(int(age.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days"


@bp.get("/")
def dashboard():
    with state().sessions() as session:
        figures = dashboard_figures(session)
    return render_template("admin/dashboard.html", title="Dashboard", d=figures,
                           oldest_age=age_in_words(figures.oldest_waiting_age),
                           charts=traffic_charts(figures.traffic, WINDOW_MINUTES),
                           statuses=[s.value for s in OrderStatus])
