"""Run one outbox message through its handler in one transaction; record retries and dead letters.

The worker acknowledges a broker message only after this has committed. A crash before the
commit leaves the message to be delivered again; after it, the next delivery finds the
outbox row done and changes nothing. Every handler run, failed ones included, is written
down as an EventAttempt: replays and retries add history, they never overwrite it.
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

import structlog
from sqlalchemy import event as orm_event, select, update
from sqlalchemy.orm import Session, lazyload, selectinload, sessionmaker

from consumers import metrics
from consumers.alerts import deliver_alert, record_alert
from consumers.handlers import HANDLERS, HandlerContext, Outcome
from consumers.handlers.lookup import ids_named, order_named
from consumers.mail import (MailOutcomeUnknown, MailsAfterCommit, MailServerUnreachable, is_still_true,
                           send_after_commit, send_mail)
from consumers.payments import cancel_order_payment_intents, list_refunds, retrieve_payment_intent
from models.base import utcnow
from models.catalog import ReservationStatus, SoldUnits, collect_sold_units
from models.db import RowsAtCommit, add_row, collect_rows_at_commit, transaction, write_and_release
from models.events import PAYMENT_SUCCEEDED, EventStatus, InboxEvent, OutboxMessage, OutboxStatus, Topic
from models.history import AttemptOutcome, EventAttempt, caused_by
from models.logs import describe_error, redact
from models.orders import Order, OrderStatus
from models.settings import Settings

log = structlog.get_logger(__name__)

# An event in one of these states is finished: nothing moves it back (a late failure of
# another copy, a re-publish) except a staff decision.
CLOSED_EVENT_STATES = frozenset({EventStatus.PROCESSED, EventStatus.IGNORED, EventStatus.RESOLVED})


@dataclass(frozen=True)
class Result:
    outcome: str          # "done", "skipped", "retry", "dead", "missing"
    detail: str = ""


def key_is_live(api_key: str) -> bool:
    """Stripe's key prefixes: sk_live_/rk_live_ act on live data, anything else on test data."""
    return api_key.startswith(("sk_live_", "rk_live_"))


# What a handler may need from Stripe's API, by kind: an intent's record, an intent's refunds.
_STRIPE_RECORDS = {"payment_intent": retrieve_payment_intent, "refunds": list_refunds}


class StripeRecordNeeded(Exception):
    """A handler needs one of Stripe's records (`_STRIPE_RECORDS`): the worker fetches it outside
    the transaction (a slow Stripe must never hold the order's lock or SQLite's write lock) and
    runs the handler again with it."""

    def __init__(self, kind: str, object_id: str):
        super().__init__(f"{kind} of {object_id}")
        self.key = (kind, object_id)

    def fetch(self):
        kind, object_id = self.key
        return _STRIPE_RECORDS[kind](object_id)


def handler_context(settings: Settings, fetched: dict[tuple[str, str], object] | None = None) -> HandlerContext:
    """Without `fetched`, Stripe is asked at once (a staff replay); with it, only what was
    fetched beforehand is used and anything else raises StripeRecordNeeded (the worker)."""
    def ask(kind: str, object_id: str):
        if fetched is None:
            return _STRIPE_RECORDS[kind](object_id)
        if (kind, object_id) not in fetched:
            raise StripeRecordNeeded(kind, object_id)
        return fetched[(kind, object_id)]

    return HandlerContext(livemode=key_is_live(settings.stripe_api_key),
                          retrieve_payment_intent=lambda intent_id: ask("payment_intent", intent_id),
                          list_refunds=lambda intent_id: ask("refunds", intent_id))


def not_this_account(event: dict, livemode: bool) -> str | None:
    """Why a verified event is not this account's to act on, or None.

    A signing secret is not proof of the account: `stripe listen` forwards test-mode and
    connected accounts' events with the same secret as the endpoint's own.
    """
    if event.get("account"):
        return f"event of connected account {event['account']}: this service is not a Connect platform"
    if bool(event.get("livemode")) != livemode:
        mode = "live" if event.get("livemode") else "test"
        return f"{mode}-mode event, but STRIPE_API_KEY is a {'live' if livemode else 'test'}-mode key"
    return None


def _ignore_foreign(session: Session, event: dict, reason: str) -> Outcome:
    order = order_named(session, event)
    if order is None:
        intent_id, _ = ids_named(event)
        return Outcome.ignored(reason if intent_id is None else f"{reason} (payment intent {intent_id})")
    log.warning("foreign_event_names_our_order", order_id=order.id, reason=reason)
    return Outcome.ignored(reason, order.id, alert=f"Order {order.id}: event {event['id']} ignored: {reason}")


def run_event(session: Session, event: InboxEvent, settings: Settings | None = None, *, runner: str = "worker",
              outbox_id: int | None = None, context: HandlerContext | None = None,
              data: dict | None = None) -> Outcome:
    """Apply a stored event's handler, write its outcome on the inbox row and one EventAttempt.

    Used by the worker and by staff (`shop events replay`, a retry), who pass `runner` (e.g.
    "replay by alice"). A processed or resolved event is reported and left alone. Alerts the
    handler raises are written as StaffAlert rows in this transaction; the caller delivers
    `outcome.alert_id` after committing (`consumers.alerts.deliver_alert`). `data` is the event's
    payload if the caller has decoded it already (a worker batch has: decoding it twice was 4 % of
    a paid order's worker CPU).
    """
    settings = settings or Settings.from_env()
    structlog.contextvars.bind_contextvars(event_id=event.event_id, event_type=event.type)
    data = event.data if data is None else data
    intent_id, _ = ids_named(data)
    if intent_id:
        structlog.contextvars.bind_contextvars(payment_intent=intent_id)
    if event.status in (EventStatus.PROCESSED, EventStatus.RESOLVED):
        # Finished: running it again would, for instance, count a declined card twice.
        log.info("event_already_processed", status=event.status.value, outcome=event.outcome)
        said = "already processed" if event.status is EventStatus.PROCESSED else "resolved by staff"
        return Outcome(event.status, f"{said}: {event.outcome}", event.order_id)
    context = context or handler_context(settings)
    started, run_started = utcnow(), time.monotonic()
    handler = HANDLERS.get(event.type)
    foreign = not_this_account(data, context.livemode)
    # The event is the cause; a staff run says who ran it ("event evt_… (replay by alice)").
    with caused_by(f"event {event.event_id}" + ("" if runner == "worker" else f" ({runner})")):
        if foreign:
            outcome = _ignore_foreign(session, data, foreign)
        elif handler is None:
            outcome = Outcome.ignored(f"event type {event.type} is not handled")
        else:
            outcome = handler(session, data, context)
    event.attempts += 1
    event.status = outcome.status
    event.outcome = outcome.reason
    event.order_id = outcome.order_id or event.order_id
    event.last_error = None
    event.processed_at = utcnow()
    add_row(session, EventAttempt(inbox_event_id=event.id, outbox_id=outbox_id, order_id=event.order_id,
                                  runner=runner, outcome=AttemptOutcome(outcome.status.value), reason=outcome.reason,
                                  started_at=started, finished_at=event.processed_at))
    if outcome.alert:
        alert = record_alert(session, settings, outcome.alert, order_id=outcome.order_id, event_id=event.event_id)
        outcome = dataclasses.replace(outcome, alert_id=alert.id)
    if runner != "worker":
        _observe_when_committed(session, event.type, outcome.status.value, run_started)
    log.info("event_processed", status=outcome.status.value, reason=outcome.reason)
    return outcome


def _observe_when_committed(session: Session, event_type: str, outcome: str, started: float) -> None:
    """Count a staff run (`shop events replay`) in shop_events_processed_total once its transaction
    commits, as the worker counts its own runs after its commit (`_observe`): a replay that fails
    applies nothing and is not counted. Not in the lag: it runs when a person decides."""
    orm_event.listen(session, "after_commit", lambda _session: metrics.observe_event(
        event_type, outcome, started=started, stripe_created=None), once=True)


def record_failed_run(session: Session, inbox_event_id: int, *, runner: str, error: str, trace: str | None,
                      outbox_id: int | None = None, order_id: str | None = None) -> EventAttempt:
    """A handler run that raised, as its own history row (in the failure's transaction)."""
    attempt = EventAttempt(inbox_event_id=inbox_event_id, outbox_id=outbox_id, order_id=order_id, runner=runner,
                           outcome=AttemptOutcome.FAILED, error=redact(error),
                           traceback=redact(trace) if trace else None)
    session.add(attempt)
    return attempt


@dataclass
class _Claimed:
    """What one message's first transaction found and did (see `_claim`)."""
    result: Result | None = None      # missing or skipped: nothing else to do
    outcome: Outcome | None = None    # a stripe event's handler ran
    outside: tuple[Topic, dict] | None = None  # a call to make with no transaction open, then mark done
    deliveries: int = 0               # the message's deliveries when claimed (see `_lease`)


def _claim(session: Session, settings: Settings, outbox_id: int, handled: dict,
           fetched: dict[tuple[str, str], object]) -> _Claimed:
    """Lock the message and, for a Stripe event, run its handler and mark the message done,
    in the caller's transaction. Raises StripeRecordNeeded or the handler's error."""
    message = _lock(session, outbox_id)
    if message is None:
        return _Claimed(Result("missing", f"no outbox message {outbox_id}"))
    return _claim_locked(session, settings, message, handled, fetched)


def _claim_locked(session: Session, settings: Settings, message: OutboxMessage, handled: dict,
                  fetched: dict[tuple[str, str], object]) -> _Claimed:
    if not message.is_to_handle():
        log.info("message_skipped", status=message.status.value)
        return _Claimed(Result("skipped", message.status.value))
    topic, body = message.topic, message.body
    if topic is Topic.MAIL and _leased(message):
        # Another worker took it and is sending it (a copy the relay published before it took the
        # original, say): that worker marks it done, or the relay publishes it again once the lease ends.
        log.info("mail_not_sent_leased", leased_until=message.leased_until.isoformat())
        return _Claimed(Result("skipped", "not sent: another worker is sending it (its lease has not ended)"))
    if topic is Topic.STRIPE_EVENT:
        outcome = _handle_event(session, settings, message, handled, fetched)
        message.mark_done()
        return _Claimed(outcome=outcome)
    if topic is Topic.MAIL and not is_still_true(session, body):
        log.info("mail_dropped", kind=body.get("kind"), order_id=body.get("order_id"),
                 reason="the order moved on since it was queued")
        message.mark_done()
        return _Claimed()
    return _Claimed(outside=(topic, body), deliveries=message.deliveries or 0)


def _observe(handled: dict, outcome: Outcome | None, started: float) -> None:
    if outcome is not None:
        metrics.observe_event(handled["type"], outcome.status.value, started=started,
                              stripe_created=handled.get("created"))


def process_message(factory: sessionmaker[Session], settings: Settings, outbox_id: int) -> Result:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(outbox_id=outbox_id)
    started = time.monotonic()
    handled: dict = {}  # the inbox event whose handler ran: for the failure's history row and the metrics
    fetched: dict[tuple[str, str], object] = {}  # Stripe's records, fetched outside the transaction
    send_by = None  # set once this worker holds the mail's lease
    try:
        while True:
            try:
                with transaction(factory) as session:
                    mails = send_after_commit(session, settings.redelivery_seconds)
                    claimed = _claim(session, settings, outbox_id, handled, fetched)
                    send_by = None
                    if claimed.outside is not None and claimed.outside[0] is Topic.MAIL and settings.smtp_url:
                        send_by = _extend_lease(session.get(OutboxMessage, outbox_id), settings)
                break
            except StripeRecordNeeded as need:
                if need.key in fetched:
                    raise
                # Rolled back; ask Stripe with no lock held (an outage raises: retried later).
                fetched[need.key] = need.fetch()
        if claimed.result is not None:
            return claimed.result
        if claimed.outside is not None:
            # Calls to SMTP and Stripe happen outside any transaction, so a slow server never
            # holds a database lock; a crash before marking it done repeats the call (at least
            # once: Stripe's cancel is idempotent, a mail may be sent twice). A mail's lease was
            # extended with its claim: the relay publishes no copy while it is being sent, and no
            # other worker sends one it already has.
            _call_outside(settings, *claimed.outside, outbox_id=outbox_id, deadline=send_by)
            with transaction(factory) as session:
                _lock(session, outbox_id).mark_done()
    except Exception as exc:  # noqa: BLE001 - every failure is recorded and retried, never dropped
        return _failed(factory, settings, outbox_id, exc, handled, started, leased=send_by is not None)
    _observe(handled, claimed.outcome, started)
    _send_committed_mails(factory, settings, mails, _mail_deadline(settings))
    if claimed.outcome is not None and claimed.outcome.alert_id is not None:
        deliver_alert(factory, settings, claimed.outcome.alert_id)
    return Result("done")


def _connected() -> bool:
    return True


# What a batch says of a message it left unrun because its worker lost the broker's connection: the
# broker hands that delivery to another worker (or again to this one), which runs it.
_CONNECTION_LOST = Result("skipped", "left unrun: the worker lost its connection to the broker, "
                                    "which delivers it again")


def _mail_deadline(settings: Settings) -> float:
    """When a worker stops starting the mails of what it just committed: half the redelivery wait from
    the commit (`time.monotonic()`), so a slow SMTP server and a large batch do not hold the worker (and
    the broker's messages it has not acknowledged) for ever. Each mail sent over SMTP gets a fresh lease
    right before it is sent (`_lease`), so the relay publishes no copy of a mail being sent. One not
    started by the deadline is left as it is, published and due: the relay publishes it once its wait is
    over and another worker sends it."""
    return time.monotonic() + settings.redelivery_seconds / 2


# The longest one mail's SMTP session may take, whatever the redelivery wait: a batch sends the broker
# its heartbeats only between calls, and RabbitMQ closes a connection silent for about 90 s
# (`consumers.worker._still_connected`), handing the batch's messages, mails too, to another worker.
MAIL_SESSION_SECONDS_MAX = 60.0


def _send_seconds(settings: Settings) -> float:
    """The time one mail's SMTP session has from its lease: three quarters of the redelivery wait (the
    last quarter is for marking it done before the relay would publish it again), at most
    MAIL_SESSION_SECONDS_MAX. A session that would run past it before the mail's end gives up (retried);
    one whose end the server does not answer within it is a dead letter (`MailOutcomeUnknown`)."""
    return min(settings.redelivery_seconds * 3 / 4, MAIL_SESSION_SECONDS_MAX)


def _extend_lease(message: OutboxMessage, settings: Settings) -> float:
    """A mail about to be sent (its row locked) is this worker's for a whole redelivery wait from now: not
    due for the relay, and not sent by another worker (`_leased`), a copy it already has included; the
    `time.monotonic()` by which its SMTP session must end (`_send_seconds`). The lease ends when the relay
    may publish the mail again, so the worker that runs that copy finds it over."""
    send_by = time.monotonic() + _send_seconds(settings)
    message.available_at = message.leased_until = utcnow() + timedelta(seconds=settings.redelivery_seconds)
    return send_by


def _leased(message: OutboxMessage) -> bool:
    """Another worker holds the mail's lease (`_extend_lease`): it is sending it, or has sent it and is
    about to mark it done. A holder whose send failed gave the lease up (`_record_failure`)."""
    return message.leased_until is not None and message.leased_until > utcnow()


class _Call(NamedTuple):
    """A call a committed transaction left to make with no transaction open (a mail, a Stripe cancel)."""
    outbox_id: int
    topic: Topic
    body: dict
    started: float
    deliveries: int  # the message's deliveries when claimed: a re-publication since is another's copy


def _send_committed_mails(factory, settings: Settings, mails: MailsAfterCommit, deadline: float,
                          connected: Callable[[], bool] = _connected) -> None:
    """Send the confirmation mails a committed transaction queued (`MailsAfterCommit`), as
    `_finish_outside` sends a batch's mail messages; a failure schedules the mail's retry."""
    calls = [_Call(row.id, Topic.MAIL, row.body, time.monotonic(), row.deliveries or 0) for row in mails.committed()]
    if calls:
        _finish_outside(factory, settings, calls, {}, deadline, connected)


def _failed(factory, settings: Settings, outbox_id: int, exc: Exception, handled: dict, started: float, *,
            leased: bool = False) -> Result:
    result = _record_failure(factory, settings, outbox_id, exc, handled.get("inbox_event_id"), leased=leased)
    if "type" in handled and result.outcome in ("retry", "dead"):
        metrics.observe_run_time(handled["type"], started)  # counted by _record_failure
    return result


class BatchNotCommitted(Exception):
    """The batch's one transaction failed as a whole (its commit, a lost connection)."""


def process_batch(factory: sessionmaker[Session], settings: Settings, outbox_ids: list[int],
                  connected: Callable[[], bool] = _connected) -> dict[int, Result]:
    """Run several messages in ONE transaction, each in its own savepoint; the result of each.

    What `process_message` does for one message, at one commit for all (the commit and its
    round trips are most of a paid order's cost). The messages are locked together; the ordinary
    payments among them are applied together (`_pay_ordinary_orders`), then the other events are
    taken in outbox id order, and the mails are claimed together last, so none is sent that an
    event queued before it made untrue. A
    message whose handler raises rolls back only its savepoint; it and any message needing
    one of Stripe's records (StripeRecordNeeded) go through `process_message` after the
    commit, which records a failure exactly as for a message on its own, and so do the mails
    queued after it. Mails and Stripe
    calls are made after the commit, with no lock held, each marked done once made, each mail under
    a fresh lease (`_finish_outside`), and no mail is started after the batch's deadline
    (`_mail_deadline`); staff alerts are POSTed after them. If the
    transaction itself fails, nothing of it was kept and every message goes through
    `process_message`. The units the paid orders take off the shelf are written in one UPDATE
    per sku just before the commit (`models.catalog.SoldUnits`), so the stock rows are locked
    for the commit only. The caller acknowledges messages only after this returns.
    """
    ids = sorted(set(outbox_ids))
    results: dict[int, Result] = {}
    alone: list[int] = []        # to run one at a time after the commit
    finished: list[tuple[dict, Outcome | None, float]] = []
    outside: list[_Call] = []
    try:
        with transaction(factory) as session:
            sold, rows = collect_sold_units(session), collect_rows_at_commit(session)
            confirmations = send_after_commit(session, settings.redelivery_seconds)
            messages = _lock_messages(session, ids)
            paid = _pay_ordinary_orders(session, settings, messages, sold, rows)
            for outbox_id, (handled, outcome, started) in paid.items():
                finished.append((handled, outcome, started))
                results[outbox_id] = Result("done")
            mails = [message for message in messages if message.topic is Topic.MAIL]
            claimed_already = set(paid) | {message.id for message in mails}
            for outbox_id in ids:
                if outbox_id in claimed_already:
                    continue
                structlog.contextvars.clear_contextvars()
                structlog.contextvars.bind_contextvars(outbox_id=outbox_id)
                started, handled = time.monotonic(), {}
                # What an earlier message read without a lock (a mail's look at its order) is read
                # again, so each message sees the rows as a transaction of its own would.
                session.expire_all()
                try:
                    with sold.savepoint(), rows.savepoint(), session.begin_nested():
                        claimed = _claim(session, settings, outbox_id, handled, {})
                except StripeRecordNeeded:
                    alone.append(outbox_id)
                    continue
                except Exception as exc:  # noqa: BLE001 - rolled back to its savepoint, run alone below
                    log.info("batch_message_failed", error=describe_error(exc))
                    alone.append(outbox_id)
                    continue
                if claimed.result is not None:
                    results[outbox_id] = claimed.result
                elif claimed.outside is not None:
                    outside.append(_Call(outbox_id, *claimed.outside, started, claimed.deliveries))
                else:
                    finished.append((handled, claimed.outcome, started))
                    results[outbox_id] = Result("done")
            # Mails only need their message: claimed together, after every event of the batch ran,
            # so a "payment failed" mail looks at its order as it is once a payment queued before it
            # was applied (`is_still_true`), as one message at a time would. A mail queued after a
            # message left for later (run alone) waits for it the same way.
            session.expire_all()
            for message in mails:
                if alone and min(alone) < message.id:
                    alone.append(message.id)
                    continue
                claimed = _claim_locked(session, settings, message, {}, {})
                if claimed.outside is not None:
                    outside.append(_Call(message.id, *claimed.outside, time.monotonic(), claimed.deliveries))
                else:
                    results[message.id] = claimed.result or Result("done")
            # The paid orders' units leave the shelf in one UPDATE per sku, so the stock rows are
            # locked from here to the commit only, not from the batch's first order.
            rows.add_to(session)  # history, attempts and mails: one INSERT per table at the commit
            sold.apply(session)
    except Exception as exc:  # noqa: BLE001 - nothing of the batch was committed: one at a time instead
        structlog.contextvars.clear_contextvars()
        log.warning("batch_not_committed", messages=len(ids), error=describe_error(exc))
        return {outbox_id: process_message(factory, settings, outbox_id) if connected() else _CONNECTION_LOST
                for outbox_id in ids}
    structlog.contextvars.clear_contextvars()
    deadline = _mail_deadline(settings)
    for handled, outcome, started in finished:
        _observe(handled, outcome, started)
    _finish_outside(factory, settings, outside, results, deadline, connected)
    _send_committed_mails(factory, settings, confirmations, deadline, connected)
    # Alerts after the mails: a mail's redelivery wait is running, an alert has none (a slow
    # hook, 5 s a POST, must not push the buyers' mails past their deadline).
    for _, outcome, _ in finished:
        if outcome is not None and outcome.alert_id is not None:
            connected()  # keeps the connection alive (a heartbeat when one is due)
            deliver_alert(factory, settings, outcome.alert_id)
    for outbox_id in sorted(alone):  # in outbox id order, as one message at a time
        results[outbox_id] = process_message(factory, settings, outbox_id) if connected() else _CONNECTION_LOST
    return results


# An order a succeeded event can pay.
_PAYABLE = (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED)


def _pay_ordinary_orders(session: Session, settings: Settings, messages: list[OutboxMessage], sold: SoldUnits,
                         rows: RowsAtCommit) -> dict[int, tuple[dict, Outcome, float]]:
    """Pay a batch's ordinary orders together; {outbox id: (handled, outcome, started)} of those paid.

    Ordinary: a live message of a `payment_intent.succeeded` event not yet finished, of this
    account and mode, for the order holding that intent, which is waiting for its payment, has
    counted none yet, holds all its units and is owed exactly the amount paid, in its currency,
    one event per order. Their messages, events and orders are locked with one statement per
    table (the orders' holds and lines read with one more each), the same handler runs on each,
    and their changes are written together (`models.db.write_and_release`): one statement per
    table and set of changed columns, not a dozen per order, and not through the unit of work.
    Anything else is left to the batch's one-by-one path, as is every one of these if any of
    them raises (their one savepoint is rolled back). Orders are paid before the batch's other messages, so
    another event for the same order in the batch is applied after the payment, as it would be
    had it arrived later: the handlers allow any order of arrival (an order's status only moves
    forward, a stale decline is ignored).
    """
    livemode = key_is_live(settings.stripe_api_key)
    chosen: list[tuple[OutboxMessage, InboxEvent, dict]] = []
    orders: dict[str, Order] = {}
    for message, event, order in _lock_payments(session, messages):
        data = event.data
        if order.payment_intent_id not in orders and _is_ordinary(data, order, livemode):
            orders[order.payment_intent_id] = order
            chosen.append((message, event, data))
    if not chosen:
        return {}
    context = dataclasses.replace(handler_context(settings, {}), locked_orders=orders)
    paid: dict[int, tuple[dict, Outcome, float]] = {}
    changed: list[object] = []  # what the handler may have changed or made, written together
    try:
        with sold.savepoint(), rows.savepoint(), session.begin_nested(), session.no_autoflush:
            for message, event, data in chosen:
                started = time.monotonic()
                order = orders[event.object_id]
                structlog.contextvars.clear_contextvars()
                structlog.contextvars.bind_contextvars(outbox_id=message.id, order_id=order.id)
                outcome = run_event(session, event, settings, runner="worker", outbox_id=message.id,
                                    context=context, data=data)
                message.mark_done()
                handled = {"inbox_event_id": event.id, "type": event.type, "created": data.get("created")}
                paid[message.id] = (handled, outcome, started)
                changed += [message, event, order, *order.reservations, order.shipment]
            write_and_release(session, changed)
    except Exception as exc:  # noqa: BLE001 - rolled back to its savepoint: each runs on its own instead
        structlog.contextvars.clear_contextvars()
        log.info("batch_payments_rolled_back", payments=len(chosen), error=describe_error(exc))
        return {}
    return paid


def _lock_messages(session: Session, ids: list[int]) -> list[OutboxMessage]:
    """A batch's messages, locked in outbox id order (as each would be on its own), by key only:
    a filter on another column lets the planner pick that column's index, and with statistics
    that lag a fast-growing table it then scans every row of the kind (seen at 1 ms per 1,000)."""
    return list(session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(ids))
                                .order_by(OutboxMessage.id).with_for_update()))


def _lock_payments(session: Session, batch: list[OutboxMessage]) -> list[tuple[OutboxMessage, InboxEvent, Order]]:
    """The batch's live succeeded events with the order holding their intent, locked as a message
    on its own locks them (its message, its event, then its order), each table in one statement
    that looks rows up by key only (see `_lock_messages`); everything else is checked here."""
    messages = [message for message in batch if message.topic is Topic.STRIPE_EVENT
                and message.inbox_event_id is not None and message.is_to_handle()]
    if not messages:
        return []
    events = {event.id: event for event in session.scalars(
        select(InboxEvent).where(InboxEvent.id.in_([m.inbox_event_id for m in messages]))
        .order_by(InboxEvent.id).with_for_update())
        if event.type == PAYMENT_SUCCEEDED and event.status not in CLOSED_EVENT_STATES and event.object_id}
    if not events:
        return []
    orders = {order.payment_intent_id: order for order in session.scalars(
        select(Order).where(Order.payment_intent_id.in_({e.object_id for e in events.values()}))
        .order_by(Order.id)
        .options(selectinload(Order.reservations), selectinload(Order.lines), lazyload(Order.shipment))
        .with_for_update())}
    return [(message, events[message.inbox_event_id], orders[events[message.inbox_event_id].object_id])
            for message in messages
            if message.inbox_event_id in events and events[message.inbox_event_id].object_id in orders]


def _is_ordinary(data: dict, order: Order, livemode: bool) -> bool:
    intent = (data.get("data") or {}).get("object") or {}
    paid = intent.get("amount_received") or intent.get("amount") or 0
    currency = intent.get("currency")
    return (order.status in _PAYABLE and order.paid_amount == 0
            and not_this_account(data, livemode) is None and intent.get("id") == order.payment_intent_id
            and paid == order.total and isinstance(currency, str) and currency.lower() == order.currency.lower()
            and all(r.status is ReservationStatus.ACTIVE for r in order.reservations))


def _finish_outside(factory, settings: Settings, calls: list[_Call], results: dict[int, Result], deadline: float,
                    connected: Callable[[], bool] = _connected) -> None:
    """Make a batch's mail and Stripe calls one by one, no lock held, and mark those made done.

    Before each mail goes to the SMTP server, one short transaction marks the mails sent before it done
    and gives it a fresh lease (`_lease`: not due for the relay for a redelivery wait), and its session
    must end within three quarters of that (`_send_seconds`): the relay never publishes a copy of a mail
    still being sent, nor of one sent and not yet marked done. A mail the relay published again meanwhile
    (another worker's copy), that another worker leased meanwhile (it is sending a copy), or that was
    finished meanwhile is not sent. The others are marked done in one
    UPDATE at the end, and before that every quarter of the redelivery wait. No mail is started once
    `deadline` (`_mail_deadline`) has passed, nor once the worker's connection to the broker is lost
    (`connected`, asked before each call, also sends its heartbeats: else RabbitMQ closes a connection
    silent for a long batch, and hands the batch's mail messages to another worker, which sends them
    too), nor once the SMTP server was not reached for one, or did not answer one's end (each would wait
    as long for it): the rest stay published and due, for the relay. Mails only logged (no SMTP_URL) get
    no lease and are all marked in the one UPDATE."""
    made: list[tuple[int, float]] = []
    left, marked_at, unreachable = 0, time.monotonic(), False
    for outbox_id, topic, body, started, deliveries in calls:
        alive = connected()
        if topic is Topic.MAIL and (time.monotonic() >= deadline or not alive or unreachable):
            results[outbox_id] = Result("skipped", "left for the relay: the SMTP server did not answer an "
                                                   "earlier mail of the batch" if unreachable else
                                                   "left for the relay: the mails after the commit ran past "
                                                   "half the redelivery wait")
            left += 1
            continue
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(outbox_id=outbox_id)
        send_by = None
        if topic is Topic.MAIL and settings.smtp_url:
            send_by = _lease(factory, settings, outbox_id, deliveries, made, results)
            made, marked_at = [], time.monotonic()
            if send_by is None:
                continue
        try:
            _call_outside(settings, topic, body, outbox_id=outbox_id, deadline=send_by)
        except Exception as exc:  # noqa: BLE001 - recorded and retried as for a message on its own
            results[outbox_id] = _failed(factory, settings, outbox_id, exc, {}, started,
                                         leased=send_by is not None)
            unreachable = unreachable or isinstance(exc, (MailServerUnreachable, MailOutcomeUnknown))
            continue
        made.append((outbox_id, started))
        if time.monotonic() - marked_at >= settings.redelivery_seconds / 4:
            _mark_done(factory, settings, made, results)
            made, marked_at = [], time.monotonic()
    structlog.contextvars.clear_contextvars()
    _mark_done(factory, settings, made, results)
    if left:
        log.warning("mails_left_for_relay", count=left, smtp_unreachable=unreachable,
                    deadline_seconds=settings.redelivery_seconds / 2)


def _lease(factory, settings: Settings, outbox_id: int, deliveries: int, made: list[tuple[int, float]],
           results: dict[int, Result]) -> float | None:
    """In one short transaction, mark the calls `made` done and extend the lease of the mail about to be
    sent (`_extend_lease`), if it is still this worker's: live, not published again since it was
    claimed (its deliveries unchanged), else another worker has or will have its copy, and not leased by
    another worker (`_leased`: one sending a copy published before this worker claimed it). The
    `time.monotonic()` by which its SMTP session must end, or None if it is not to be sent (its result
    says why)."""
    try:
        with transaction(factory) as session:
            _mark_made(session, made)
            message = _lock(session, outbox_id)
            if message is None:
                taken_by_another = "missing"
            elif not message.is_to_handle():
                taken_by_another = message.status.value  # done by a copy, retried after a copy's failure
            elif (message.deliveries or 0) != deliveries:
                taken_by_another = "published again"  # the relay's copy is another worker's to send
            elif _leased(message):
                taken_by_another = "leased by another worker"  # a copy's worker is sending it
            else:
                taken_by_another = None
            send_by = None if taken_by_another else _extend_lease(message, settings)
    except Exception as exc:  # noqa: BLE001 - as `_mark_done`; the mail stays published, for the relay
        _made_failed(factory, settings, made, results, exc)
        results[outbox_id] = Result("skipped", f"left for the relay: its lease could not be extended "
                                               f"({describe_error(exc)})")
        return None
    for made_id, _ in made:
        results[made_id] = Result("done")
    if taken_by_another:
        log.info("mail_not_sent_taken_meanwhile", status=taken_by_another)
        results[outbox_id] = Result("skipped", f"not sent: {taken_by_another} since this worker claimed it")
    return send_by


def _mark_made(session: Session, made: list[tuple[int, float]]) -> None:
    """The calls made, done (as `OutboxMessage.mark_done` for each), in one UPDATE."""
    if made:
        session.execute(update(OutboxMessage).where(OutboxMessage.id.in_([i for i, _ in made]))
                        .values(status=OutboxStatus.DONE, done_at=utcnow())
                        .execution_options(synchronize_session=False))


def _made_failed(factory, settings: Settings, made: list[tuple[int, float]], results: dict[int, Result],
                 exc: Exception) -> None:
    for outbox_id, started in made:  # as process_message: the call is made again on the retry
        results[outbox_id] = _failed(factory, settings, outbox_id, exc, {}, started, leased=True)


def _mark_done(factory, settings: Settings, made: list[tuple[int, float]], results: dict[int, Result]) -> None:
    """Mark the calls made done in one UPDATE (as `OutboxMessage.mark_done` for each, locking their rows)."""
    if not made:
        return
    try:
        with transaction(factory) as session:
            _mark_made(session, made)
    except Exception as exc:  # noqa: BLE001 - as process_message: the call is made again on the retry
        _made_failed(factory, settings, made, results, exc)
        return
    for outbox_id, _ in made:
        results[outbox_id] = Result("done")


def start_copy(factory: sessionmaker[Session], settings: Settings, outbox_id: int) -> bool:
    """Before running a copy of a message (a re-publication, or a broker's redelivery after a
    worker died), count it as started, committed first, so a copy that kills its worker counts
    too. After `max_deliveries` starts it is a dead letter instead. True if given up."""
    with transaction(factory) as session:
        message = _lock(session, outbox_id)
        if message is None or message.status is not OutboxStatus.PUBLISHED:
            return False  # finished or decided meanwhile: the run below skips it
        if message.start_copy(settings.max_deliveries):
            return False
        error = f"taken by a worker {message.starts} times without one finishing it"
        message.dead_letter(error)
        alert_id = record_alert(session, settings, f"Message {outbox_id} was dead-lettered: {error}",
                                outbox_id=outbox_id, order_id=message.order_id).id
        topic, event_type = message.topic, message.inbox_event.type if message.inbox_event is not None else None
    metrics.observe_failed_delivery(topic.value, event_type, dead=True)
    log.error("message_dead_lettered", error=error)
    deliver_alert(factory, settings, alert_id)
    return True


def _call_outside(settings: Settings, topic: Topic, body: dict, *, outbox_id: int | None = None,
                  deadline: float | None = None) -> None:
    if topic is Topic.MAIL:
        send_mail(settings, body, outbox_id=outbox_id, deadline=deadline)
    elif topic is Topic.PAYMENT_CANCEL:
        result = cancel_order_payment_intents(order_id=body["order_id"], created_since=body.get("created_since"),
                                              payment_intent_id=body.get("payment_intent_id"))
        log.info("payment_intent_cancelled", order_id=body["order_id"], result=result)


def _lock(session: Session, outbox_id: int) -> OutboxMessage | None:
    return session.scalars(select(OutboxMessage).where(OutboxMessage.id == outbox_id).with_for_update()).one_or_none()


def _lock_event(session: Session, inbox_event_id: int) -> InboxEvent:
    return session.scalars(select(InboxEvent).where(InboxEvent.id == inbox_event_id).with_for_update()).one()


def _handle_event(session: Session, settings: Settings, message: OutboxMessage, handled: dict,
                  fetched: dict[tuple[str, str], object]) -> Outcome | None:
    event = _lock_event(session, message.inbox_event_id)
    if event.status in CLOSED_EVENT_STATES:
        structlog.contextvars.bind_contextvars(event_id=event.event_id, event_type=event.type)
        log.info("event_already_processed", status=event.status.value)
        return None
    handled.update(inbox_event_id=event.id, type=event.type, created=event.data.get("created"))
    return run_event(session, event, settings, runner="worker", outbox_id=message.id,
                     context=handler_context(settings, fetched))


def _record_failure(factory, settings: Settings, outbox_id: int, exc: Exception,
                    inbox_event_id: int | None, *, leased: bool = False) -> Result:
    """Record a failed run of the message: retried later, or a dead letter. `leased`: the failure is of a
    mail this worker held the lease of, which it gives up, so the retry is sent when due."""
    error = describe_error(exc)
    trace = traceback.format_exc(limit=20)
    alert_id = None
    with transaction(factory) as session:
        message = _lock(session, outbox_id)
        if message is None:
            return Result("missing", f"no outbox message {outbox_id}")
        event = _lock_event(session, message.inbox_event_id) if message.inbox_event_id is not None else None
        if inbox_event_id is not None:
            record_failed_run(session, inbox_event_id, runner="worker", error=error, trace=trace,
                              outbox_id=outbox_id, order_id=event.order_id if event is not None else None)
        if not message.is_to_handle():
            # Decided meanwhile by another copy (done), by staff (resolved, re-driven) or by an
            # earlier failure (scheduled, dead): this late failure must not reopen it.
            log.warning("late_failure_not_recorded", status=message.status.value, error=error)
            return Result("skipped", f"message already {message.status.value}; failure kept as history only")
        if leased:
            message.leased_until = None
        unknown = isinstance(exc, MailOutcomeUnknown)
        if unknown:
            # The SMTP server may have taken the mail: a retry could mail the buyer again. Staff check
            # the server's log (the error names the Message-ID) before a retry.
            message.attempts += 1
            message.dead_letter(redact(f"{error}\n{trace}"))
            again = False
        else:
            again = message.schedule_retry(redact(f"{error}\n{trace}"), max_attempts=settings.max_attempts,
                                           base_seconds=settings.retry_base_seconds)
        if event is not None and event.status not in CLOSED_EVENT_STATES:
            event.attempts = message.attempts
            event.last_error = error
            event.status = EventStatus.RETRYING if again else EventStatus.DEAD
        attempts, next_at, topic = message.attempts, message.available_at, message.topic
        event_type = event.type if event is not None else None
        if not again:
            said = "at once, not retried (the mail may have gone out)" if unknown else f"after {attempts} attempts"
            alert_id = record_alert(session, settings, f"Message {outbox_id} was dead-lettered {said}: {error}",
                                    outbox_id=outbox_id, order_id=message.order_id or (event and event.order_id),
                                    event_id=event.event_id if event is not None else None).id
    metrics.observe_failed_delivery(topic.value, event_type, dead=not again)
    if again:
        log.warning("handler_failed_will_retry", error=error, attempts=attempts, next_attempt_at=next_at.isoformat())
        return Result("retry", error)
    log.error("message_dead_lettered", error=error, attempts=attempts)
    deliver_alert(factory, settings, alert_id)
    return Result("dead", error)
