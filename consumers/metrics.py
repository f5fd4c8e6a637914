"""Prometheus metrics of every process: webhooks in, events processed, retries, dead letters, lag.

Counters and histograms are recorded where the work happens (the webhook view, the worker).
Under gunicorn and with separate worker processes they are shared through prometheus-client's
multiprocess mode: set PROMETHEUS_MULTIPROC_DIR to an empty folder for all processes of one
deployment (`make run` uses instance/metrics). Without it each process reports its own. A short-lived
`shop` command (a staff replay) counts into the same folder: its files outlive it, so the web
process keeps showing its counts.
Database-wide figures (backlog, its oldest row's age and how overdue it is, dead letters, orders in review, staff
alerts to POST again) are read at scrape time with queries that use the status indexes, never a scan of every event
ever stored, and waited for at most READ_WAIT_SECONDS: a silent database never holds the counters back.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus, Topic
from models.history import StaffAlert
from models.logs import describe_error
from models.orders import Order, OrderStatus

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _shared_folder() -> Path | None:
    """The multiprocess folder (PROMETHEUS_MULTIPROC_DIR), made if missing, or None: each process counts its own.

    prometheus-client writes each process's values to a file in it and fails, at the first metric
    defined, when the folder does not exist: a `shop events replay` in a one-off container that has
    the deployment's environment but not the folder its processes made would die of it. A folder
    that cannot be made, or that exists but cannot be written to, is logged and this process counts in
    memory instead (`_report_unusable_folder`)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return None
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        # A folder that exists but takes no file (read-only, another user's) fails at the first metric too.
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        _report_unusable_folder(folder, exc)
        values.ValueClass = values.MutexValue  # decided from the environment when prometheus_client was imported
        return None
    return Path(folder)


def _report_unusable_folder(folder: str, exc: OSError) -> None:
    """Log the unusable folder as every other line of the process: in LOG_FORMAT, on stderr.

    This runs at import, and the worker and the `shop` commands import this module before they configure
    logging: structlog's default would print the line to stdout in a format of its own, which a log
    collector parsing JSON would drop. So logging is configured here first, the way every process
    configures it (from LOG_FORMAT, as gunicorn's logger does); the process's own configure_logging
    a moment later sets the same again. A process that configured logging already (the web's
    create_app imports this module after) keeps its configuration."""
    if not structlog.is_configured():
        from models.logs import configure_logging
        from models.settings import log_format_from

        configure_logging(log_format_from(os.environ))
    log.warning("metrics_folder_unusable", folder=folder, error=str(exc),
                hint="this process counts in memory, apart from the shared folder the other processes count in")


SHARED_FOLDER = _shared_folder()

# Webhook latency is milliseconds; processing and lag run from milliseconds to hours (retries).
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)

WEBHOOKS = Counter("shop_webhooks_received", "Stripe webhook requests, by event type and outcome "
                   "(accepted, duplicate, rejected) and the reason of a rejection", ["type", "outcome", "reason"])
INGEST_SECONDS = Histogram("shop_webhook_ingest_seconds", "Time to verify and store one webhook, or to fail to "
                           "store it (accepted, duplicate and storage_unavailable; not the other rejections)",
                           buckets=_FAST)
EVENTS = Counter("shop_events_processed", "Stored events run through their handler (by a worker or a staff "
                 "replay), by type and outcome (processed, ignored, retry, dead)", ["type", "outcome"])
PROCESSING_SECONDS = Histogram("shop_event_processing_seconds", "Handler run time, one transaction",
                               ["type"], buckets=_SLOW)
LAG_SECONDS = Histogram("shop_event_lag_seconds", "From Stripe creating an event to its handler committing",
                        ["type"], buckets=_SLOW)
RETRIES = Counter("shop_retries", "Failed handler runs that were scheduled to run again", ["topic"])
DEAD_LETTERS = Counter("shop_dead_letters", "Messages dead-lettered after their last attempt", ["topic"])


def observe_webhook(event_type: str | None, outcome: str, reason: str = "", seconds: float | None = None) -> None:
    WEBHOOKS.labels(event_type or "unverified", outcome, reason).inc()
    if seconds is not None:
        INGEST_SECONDS.observe(seconds)


def observe_event(event_type: str, outcome: str, *, started: float, stripe_created: int | None) -> None:
    """One handler run that committed, the worker's or a staff replay's; `started` is time.monotonic()
    before it, `stripe_created` the event's `created` (None for a replay: days after the event, it
    would read as a worker pool days behind)."""
    EVENTS.labels(event_type, outcome).inc()
    observe_run_time(event_type, started)
    if outcome in ("processed", "ignored") and isinstance(stripe_created, int):
        LAG_SECONDS.labels(event_type).observe(max(0.0, time.time() - stripe_created))


def observe_run_time(event_type: str, started: float) -> None:
    PROCESSING_SECONDS.labels(event_type).observe(time.monotonic() - started)


# shop_events_processed_total's outcomes: a committed handler run's (its EventStatus) and a failed run's.
OUTCOME_RETRY, OUTCOME_DEAD = "retry", "dead"
EVENT_OUTCOMES = (EventStatus.PROCESSED.value, EventStatus.IGNORED.value, OUTCOME_RETRY, OUTCOME_DEAD)


def observe_failed_delivery(topic: str, event_type: str | None, *, dead: bool) -> None:
    """A message that failed, scheduled again or dead-lettered (after its last attempt, or after
    MAX_DELIVERIES started copies). A stored event's counts under its type as well, so that
    shop_events_processed_total's `retry` and `dead` add up to shop_retries_total and
    shop_dead_letters_total of topic stripe_event."""
    (DEAD_LETTERS if dead else RETRIES).labels(topic).inc()
    if event_type is not None:
        EVENTS.labels(event_type, OUTCOME_DEAD if dead else OUTCOME_RETRY).inc()


# Rejections before the event is read, under type "unverified" (internal_error too: a bug that fails a
# request before its event's type is known): each shown at 0 from the first scrape, so that increase()
# over the first one ever seen (a rotated secret, a missing one, the first 500) is not 0.
UNVERIFIED_REJECTIONS = ("missing_signature", "invalid_signature", "invalid_payload", "not_an_event",
                         "payload_too_large", "webhook_not_configured", "internal_error")
# Rejections of an event already read, under its type: shown at 0 for every type a handler is registered for.
EVENT_REJECTIONS = ("storage_unavailable", "internal_error")


def _show_series_at_zero() -> None:
    """Create at 0, in the process that serves /metrics (not in every `shop` command), the series the alerts
    read with increase(). A labelled series otherwise appears with its first count, at 1, and increase() over
    a series first seen at 1 is 0: the first dead letter, the first ignored payment, the first rotated secret
    after a start would never fire. In multiprocess mode the zeros are this process's file's, added to the
    counts the other processes write. Created: the rejection reasons above, those of an event read under
    every event type a handler is registered for; retries and dead letters of every topic; handler runs of
    every handled type in each outcome, and its run-time and lag histograms."""
    from consumers.handlers import HANDLERS  # the registry, filled by the handlers' modules

    for reason in UNVERIFIED_REJECTIONS:
        WEBHOOKS.labels("unverified", "rejected", reason)
    for topic in Topic:
        RETRIES.labels(topic.value)
        DEAD_LETTERS.labels(topic.value)
    for event_type in HANDLERS:
        for reason in EVENT_REJECTIONS:
            WEBHOOKS.labels(event_type, "rejected", reason)
        for outcome in EVENT_OUTCOMES:
            EVENTS.labels(event_type, outcome)
        PROCESSING_SECONDS.labels(event_type)
        LAG_SECONDS.labels(event_type)


# How long a scrape waits for the database gauges: well inside Prometheus's default scrape timeout (10 s).
READ_WAIT_SECONDS = 3.0


class _LatestRead:
    """The latest read of one database's gauges, running or ended, kept across scrapes (one read at a time)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reading: Future | None = None
        self.since = 0.0


# Keyed by the sessionmaker, and gone with it (an app disposed of; the tests build many).
_LATEST_READS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LATEST_READS_LOCK = threading.Lock()


def _read_of(sessions: sessionmaker[Session]) -> _LatestRead:
    with _LATEST_READS_LOCK:
        latest = _LATEST_READS.get(sessions)
        if latest is None:
            latest = _LATEST_READS[sessions] = _LatestRead()
        return latest


class DatabaseCollector:
    """Gauges read from the database at scrape time, each on an indexed status column, and
    shop_metrics_database_up: 1 when they were read; 0, and none of them, when the database did not answer
    (the process's counters are still served, those that explain the outage among them).

    A database that refuses answers at once; one that goes silent (a network partition, a frozen server) would
    hold the scrape until TCP gives up, many minutes, and Prometheus, which times out first, would lose every
    counter. So the gauges are read in a thread of their own and waited for `wait` seconds; one read at a time:
    a scrape that finds the previous read still stuck waits for that one instead of starting another, which
    would hold one more of the pool's connections for as long."""

    def __init__(self, sessions: sessionmaker[Session], wait: float = READ_WAIT_SECONDS):
        self.sessions = sessions
        self.wait = wait
        self._latest = _read_of(sessions)  # shared by every scrape of this database in this process

    def collect(self):
        gauges = self._gauges()
        yield GaugeMetricFamily("shop_metrics_database_up", "1 when this scrape read the database gauges, 0 when "
                                "the database did not answer and they are left out", value=1 if gauges else 0)
        yield from gauges

    def _gauges(self) -> list:
        latest = self._latest
        with latest.lock:
            reading = latest.reading
            if reading is None or reading.done():
                reading = latest.reading = Future()
                latest.since = time.monotonic()
                threading.Thread(target=self._read_into, args=(reading,), name="metrics-database-read",
                                 daemon=True).start()
            since = latest.since
        try:
            return reading.result(timeout=self.wait)
        except FutureTimeout:
            log.warning("metrics_database_unanswered", waited_seconds=self.wait,
                        reading_for_seconds=round(time.monotonic() - since, 1),
                        hint="the database gauges are left out (shop_metrics_database_up 0); no other read "
                             "starts until this one ends")
        except SQLAlchemyError as exc:
            log.warning("metrics_database_unreadable", error=describe_error(exc))
        return []

    def _read_into(self, reading: Future) -> None:
        try:
            reading.set_result(list(self._read()))
        except Exception as exc:  # noqa: BLE001 (handed to the scrape that waits for it, raised there)
            reading.set_exception(exc)

    def _read(self):
        now = utcnow()
        waiting = [OutboxStatus.PENDING, OutboxStatus.PUBLISHED]
        with self.sessions() as session:
            backlog = dict(session.execute(
                select(OutboxMessage.status, func.count())
                .where(OutboxMessage.status.in_([*waiting, OutboxStatus.DEAD]))
                .group_by(OutboxMessage.status)).all())
            # One index lookup per status (ix_outbox_status_available_at): the earliest time a pending
            # message was due to be published, and the earliest a published one was due to be
            # published again. Overdue is measured from there, not from created_at: a dead letter
            # staff re-drive after a day is due now, not a day late, and a retry waiting out its
            # back-off is not due at all.
            oldest = session.scalar(select(func.min(OutboxMessage.created_at))
                                    .where(OutboxMessage.status.in_(waiting)))
            due = session.execute(select(*(
                select(func.min(OutboxMessage.available_at)).where(OutboxMessage.status == status).scalar_subquery()
                for status in waiting))).one()
            inbox = dict(session.execute(
                select(InboxEvent.status, func.count())
                .where(InboxEvent.status.in_([EventStatus.RECEIVED, EventStatus.RETRYING, EventStatus.DEAD]))
                .group_by(InboxEvent.status)).all())
            review = session.scalar(select(func.count()).select_from(Order)
                                    .where(Order.status == OrderStatus.NEEDS_REVIEW))
            # The partial index ix_staff_alerts_next_attempt_at holds exactly these rows.
            alerts = session.scalar(select(func.count()).select_from(StaffAlert)
                                    .where(StaffAlert.next_attempt_at.is_not(None)))
        outbox = GaugeMetricFamily("shop_outbox_backlog", "Outbox messages not yet done, by status",
                                   labels=["status"])
        for status in (*waiting, OutboxStatus.DEAD):
            outbox.add_metric([status.value], backlog.get(status, 0))
        yield outbox
        yield GaugeMetricFamily("shop_outbox_oldest_age_seconds",
                                "Age of the oldest outbox message still waiting, since it was first queued (0 when "
                                "none); a re-driven dead letter counts from its first queuing: alert on "
                                "shop_outbox_overdue_seconds",
                                value=(now - oldest).total_seconds() if oldest else 0.0)
        earliest = min((at for at in due if at is not None), default=None)
        yield GaugeMetricFamily("shop_outbox_overdue_seconds",
                                "Seconds since the most overdue outbox message fell due with the relay not acting "
                                "on it: pending and not yet published, or published, unfinished and not published "
                                "again past its redelivery time (0 when none is overdue)",
                                value=max(0.0, (now - earliest).total_seconds()) if earliest else 0.0)
        events = GaugeMetricFamily("shop_inbox_events_open", "Stored events not finished, by status",
                                   labels=["status"])
        for status in (EventStatus.RECEIVED, EventStatus.RETRYING, EventStatus.DEAD):
            events.add_metric([status.value], inbox.get(status, 0))
        yield events
        yield GaugeMetricFamily("shop_orders_needing_review", "Orders flagged needs_review, waiting for staff",
                                value=review or 0)
        yield GaugeMetricFamily("shop_staff_alerts_undelivered",
                                "Staff alerts not yet POSTed to STAFF_ALERT_URL that will be: a POST failed and the "
                                "relay tries again with back-off for a day, or the process that recorded one died "
                                "before its POST", value=alerts or 0)


def render(sessions: sessionmaker[Session]) -> bytes:
    """The text of GET /metrics: every process's counters (multiprocess mode) plus the database gauges
    (left out, with shop_metrics_database_up 0, when the database does not answer)."""
    registry = _counters()
    registry.register(DatabaseCollector(sessions))
    return generate_latest(registry)


def render_counters() -> bytes:
    """The counters alone: what `shop worker` and `shop relay` serve on METRICS_PORT (consumers.metrics_server)."""
    return generate_latest(_counters())


def _counters() -> CollectorRegistry:
    """A registry of every process's counters (multiprocess mode), or this process's own, zeros included."""
    _show_series_at_zero()
    registry = CollectorRegistry()
    if SHARED_FOLDER is not None:
        MultiProcessCollector(registry, path=str(SHARED_FOLDER))
    else:
        for metric in (WEBHOOKS, INGEST_SECONDS, EVENTS, PROCESSING_SECONDS, LAG_SECONDS, RETRIES, DEAD_LETTERS):
            registry.register(_Reader(metric))
    return registry


class _Reader:
    """Expose one already-registered metric in another registry (single-process mode)."""

    def __init__(self, metric):
        self.metric = metric

    def collect(self):
        return self.metric.collect()


def process_exited(pid: int) -> None:
    """gunicorn's child_exit hook: drop a dead worker's live gauges from the shared folder."""
    if SHARED_FOLDER is not None:
        mark_process_dead(pid, path=str(SHARED_FOLDER))


def prepare_folder(folder: Path) -> None:
    """An empty multiprocess folder for a fresh start (old files would add up stale counts)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
