"""What staff decide about the cases that need a person: dead letters and flagged orders.

One function per decision (replay, retry, resolve, reopen, refund, accept, cancel); the CLI and
the staff console call exactly these. Each writes its audit row in the same transaction as its
effect, runs under `caused_by("staff NAME: ACTION")` so the order's status changes name it, and
raises a domain error when it refuses. A refusal is audited too, in a transaction of its own.
A refund is the only place the service gives money back, always on a person's word.
"""
from __future__ import annotations

import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

import structlog
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from consumers.alerts import deliver_alert
from consumers.handlers import Outcome
from consumers.handlers.payment_intents import fulfil_paid_order
from consumers.payments import PaymentGatewayError, find_refunds, refund_payment, retrieve_payment_intent
from consumers.processing import StripeRecordNeeded, handler_context, record_failed_run, run_event
from models.db import retrying_conflicts, transaction
from models.errors import Conflict, DomainError, NotFound
from models.events import EventStatus, InboxEvent, OutboxMessage, OutboxStatus, Topic, enqueue
from models.history import caused_by, record_staff_action
from models.locks import try_lock
from models.logs import describe_error, redact
from models.money import per_currency
from models.orders import (
    Order,
    OrderStatus,
    ShipmentStatus,
    can_transition,
    cancel_ruled_out,
    cart_left_to_buyer,
    cover_units,
    get_order,
    intents_counted_for,
    money_in_other_currencies,
    payment_waiting,
    record_refund,
    return_unshipped_units,
    settle_chargebacks,
)
from models.refunds import REFUND_RULED_OUT, Dispute, Refund, RefundSource, refund_ruled_out
from models.settings import Settings

log = structlog.get_logger(__name__)


class Refused(Conflict):
    """A staff decision that cannot be carried out as asked; the message says why and what to do."""

    code = "refused"


@dataclass(frozen=True)
class Decision:
    """What a staff action did: the order's status before and after, and a line of detail."""

    action: str
    target: str
    order_id: str | None = None
    status_before: str | None = None
    status_after: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class OrderAsSeen:
    """What a confirmation page showed of the order a decision is about: its status, the money it holds
    (minor units, in the order's currency) and its shipment's status (None: it has none). A decision given
    one is carried out only on that order: one changed since (a payment landed, a colleague decided) is
    refused, so staff never confirm one amount and refund another. The CLI passes none: it acts at once."""

    status: str
    money_held: int
    shipment: str | None

    @classmethod
    def of(cls, order: Order) -> OrderAsSeen:
        return cls(order.status.value, order.money_held, order.shipment.status.value if order.shipment else None)

    def described(self, currency: str) -> str:
        shipment = f"shipment {self.shipment}" if self.shipment else "no shipment"
        return f"{self.status}, holding {self.money_held} {currency}, {shipment}"


def _refuse_if_changed(order: Order, expected: OrderAsSeen) -> None:
    now = OrderAsSeen.of(order)
    if now != expected:
        raise Refused(f"order {order.id} changed since you looked: it is now {now.described(order.currency)} "
                      f"(the page showed {expected.described(order.currency)}); nothing was done: review it again")


def _still_as_seen(order: Order, expected: OrderAsSeen | None) -> None:
    """The comparison again, under the decision's own lock of the order: the one before the decision
    (`_one_decision_at_a_time`) commits, and a payment the worker applies between the two would
    otherwise be kept (accept) without staff having seen it."""
    if expected is not None:
        _refuse_if_changed(order, expected)


def _status(order: Order | None) -> str | None:
    return order.status.value if order is not None else None


def _audit(session: Session, *, actor: str, action: str, target: str, order: Order | None,
           before: str | None, note: str | None, detail: str = "") -> Decision:
    record_staff_action(session, actor=actor, action=action, target=target, order_id=order.id if order else None,
                        note=note, status_before=before, status_after=_status(order), detail=detail or None)
    log.info("staff_action", actor=actor, action=action, target=target, order_id=order.id if order else None,
             status_before=before, status_after=_status(order), detail=detail)
    return Decision(action, target, order.id if order else None, before, _status(order), detail)


@contextmanager
def _audited_refusal(factory: sessionmaker[Session], *, actor: str, action: str, target: str,
                     order_id: str | None, note: str | None) -> Iterator[None]:
    """A decision refused (a rule said no) or failed (Stripe said no) leaves an audit row saying
    what was not done and why. Unknown ids are not audited: nothing was decided about anything.
    """
    try:
        yield
    except (NotFound, RefundPartlyDone):
        raise  # nothing was decided about anything, or what was done is audited already
    except (DomainError, PaymentGatewayError) as exc:
        outcome = f"refused: {exc.message}" if isinstance(exc, DomainError) else f"failed at Stripe: {exc}"
        with transaction(factory) as session:
            order = session.get(Order, order_id) if order_id else None
            record_staff_action(session, actor=actor, action=action, target=target, order_id=order_id, note=note,
                                status_before=_status(order), status_after=_status(order), detail=outcome)
        log.info("staff_action_not_done", actor=actor, action=action, target=target, outcome=outcome)
        raise


@contextmanager
def _one_decision_at_a_time(factory: sessionmaker[Session], order_id: str,
                            expected: OrderAsSeen | None = None) -> Iterator[None]:
    """Refuse a decision on an order while another staff decision on it is being carried out, or, given
    `expected`, when the order is no longer as its confirmation page showed it.

    A refund spans calls to Stripe made with no transaction open (a slow Stripe must not hold the
    order's row, or SQLite's one write lock), so the order's row lock cannot keep two refunds apart:
    a second click found the first's refund at Stripe and recorded it as its own, and both were
    audited as a refund done. This lock spans the whole decision; a second one is refused at once,
    and audited as refused, rather than left to wait for Stripe behind the first."""
    with try_lock(factory.kw["bind"], f"staff decision on order {order_id}") as taken:
        if not taken:
            raise Refused(f"another staff decision on order {order_id} is in progress (a refund waiting for "
                          f"Stripe's answer, say): nothing was done; look at the order again in a moment")
        if expected is not None:
            # Under the order's row lock, which the worker applying a payment takes too: a payment it is
            # applying now is counted before the comparison, not after it.
            with transaction(factory) as session:
                _refuse_if_changed(get_order(session, order_id, for_update=True), expected)
        yield


def _order_of(session: Session, event: InboxEvent | None, *, lock: bool) -> Order | None:
    """The order an event is about: the one it was applied to, else the one holding its intent."""
    if event is None:
        return None
    query = select(Order).where(Order.id == event.order_id) if event.order_id else (
        select(Order).where(Order.payment_intent_id == event.object_id) if event.object_id else None)
    if query is None:
        return None
    return session.scalars(query.with_for_update() if lock else query).one_or_none()


# --- dead letters and stored events ------------------------------------------------------------

class EventResolved(Refused):
    """A replay of an event staff resolved: refused, and audited as refused, until it is reopened."""


class ReplayFailed(Exception):
    """A replay whose run raised (the handler, or Stripe or a rule it met): nothing of it was applied.

    It was kept as a failed attempt of the event, with its traceback, and as an audit row, as a
    worker's failed run is kept; `error` says what failed, `order_id` whose story shows it.
    """

    def __init__(self, event_id: str, error: str, order_id: str | None):
        super().__init__(f"replay of event {event_id} failed: {error}")
        self.event_id, self.error, self.order_id = event_id, error, order_id


def replay_event(factory: sessionmaker[Session], settings: Settings, event_id: str, *, actor: str,
                 note: str | None = None) -> Outcome:
    """`shop events replay`: run a stored event's handler now, under the worker's locks, in the worker's order.

    Lock order, the same as the worker's (consumers/processing.py), so the two never deadlock:
    the event's outbox rows (by id), then its inbox row, then the order. Whatever delivery is
    still open (a dead letter, a scheduled retry) is closed, so the event cannot be applied a
    second time through that route. A resolved event is closed: it is refused (EventResolved)
    until staff reopen it. A run that fails, whatever raised (a rule, Stripe, the database, a
    bug), is kept as an attempt with its error and as an audited decision, as a worker's run
    would be, and ReplayFailed is raised from it. An unknown event raises NotFound, unaudited.
    """
    try:
        return _replay(factory, settings, event_id, actor=actor, note=note)
    except (NotFound, EventResolved):
        raise  # nothing was decided about anything, or the refusal is audited already
    except Exception as exc:
        raise _failed_replay(factory, event_id, exc, actor=actor, note=note) from exc


def _failed_replay(factory: sessionmaker[Session], event_id: str, exc: Exception, *, actor: str,
                   note: str | None) -> ReplayFailed:
    """Keep a replay's failure (its transaction was rolled back) as the worker keeps a run's."""
    error, trace = describe_error(exc), redact(traceback.format_exc(limit=20))
    if isinstance(exc, DomainError):
        detail = f"refused: {exc.message}"
    elif isinstance(exc, PaymentGatewayError):
        detail = f"failed at Stripe: {exc}"
    else:
        detail = f"failed: {error}"
    with transaction(factory) as session:
        # Columns only, not the order with its relationships: what failed may be one of their tables.
        event = session.execute(select(InboxEvent.id, InboxEvent.order_id, InboxEvent.object_id)
                                .where(InboxEvent.event_id == event_id)).one()
        order_id = event.order_id or (session.scalar(select(Order.id).where(Order.payment_intent_id == event.object_id))
                                      if event.object_id else None)
        status = session.scalar(select(Order.status).where(Order.id == order_id)) if order_id else None
        record_failed_run(session, event.id, runner=f"replay by {actor}", error=error, trace=trace,
                          order_id=order_id)
        record_staff_action(session, actor=actor, action="replay", target=f"event {event_id}", order_id=order_id,
                            note=note, status_before=status and status.value, status_after=status and status.value,
                            detail=detail)
    log.warning("staff_action_not_done", actor=actor, action="replay", target=f"event {event_id}", outcome=detail)
    return ReplayFailed(event_id, error, order_id)


def _replay(factory: sessionmaker[Session], settings: Settings, event_id: str, *, actor: str,
            note: str | None) -> Outcome:
    # Stripe's records a handler needs are fetched with no transaction open, as the worker does: a slow
    # Stripe must not hold the order's lock, or SQLite's one write lock (every webhook would wait on it).
    fetched: dict[tuple[str, str], object] = {}
    while True:
        try:
            with caused_by(f"staff {actor}: replay"), transaction(factory) as session:
                messages = list(session.scalars(
                    select(OutboxMessage).join(InboxEvent, OutboxMessage.inbox_event_id == InboxEvent.id)
                    .where(InboxEvent.event_id == event_id).order_by(OutboxMessage.id)
                    .with_for_update(of=OutboxMessage)))
                event = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event_id)
                                        .with_for_update()).one_or_none()
                if event is None:
                    raise NotFound(f"no stored event {event_id}")
                order = _order_of(session, event, lock=True)
                before = _status(order)
                target = f"event {event_id}"
                if event.status is EventStatus.RESOLVED:
                    closed = next((m for m in messages if m.status is OutboxStatus.RESOLVED), None)
                    reason = (f"event {event_id} is resolved (note: {closed.resolution_note if closed else 'none'}); "
                              f"reopen it first: shop dlq reopen {closed.id if closed else '?'} --note TEXT")
                    _audit(session, actor=actor, action="replay", target=target, order=order, before=before, note=note,
                           detail=f"refused: {reason}")
                    refusal = EventResolved(reason)
                else:
                    refusal = None
                    outcome = run_event(session, event, settings, runner=f"replay by {actor}",
                                        context=handler_context(settings, fetched))
                    for message in messages:
                        if message.status not in (OutboxStatus.DONE, OutboxStatus.RESOLVED):
                            message.mark_done()
                    if order is None and outcome.order_id:
                        order = session.get(Order, outcome.order_id)
                    if order is not None:
                        # A payment staff reopened and applied now counts for the order: a dispute on its intent
                        # lost meanwhile (recorded, but not counted while the payment was not) comes off it now.
                        settle_chargebacks(session, order)
                    _audit(session, actor=actor, action="replay", target=target, order=order, before=before, note=note,
                           detail=f"{outcome.status.value}: {outcome.reason}")
            break
        except StripeRecordNeeded as need:
            if need.key in fetched:
                raise
            fetched[need.key] = need.fetch()  # rolled back; Stripe asked with no lock held
    if refusal is not None:
        raise refusal
    if outcome.alert_id is not None:
        deliver_alert(factory, settings, outcome.alert_id)
    log.info("event_replayed", event_id=event_id, status=outcome.status.value, reason=outcome.reason)
    return outcome


def dead_letters(session: Session) -> list[OutboxMessage]:
    return list(session.scalars(
        select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.DEAD).order_by(OutboxMessage.id)))


def order_id_of_message(session: Session, message: OutboxMessage) -> str | None:
    """The order a message is about: a mail's or Stripe call's own, else its event's order, else
    the order holding the event's PaymentIntent (an event whose handler never got to run)."""
    if message.order_id:
        return message.order_id
    order = _order_of(session, message.inbox_event, lock=False)
    return order.id if order is not None else None


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a staff member looks at: by event type (or topic: `mail`), by a piece
    of the last error, and by when the message was created."""

    kind: str | None = None
    error_text: str | None = None
    since: datetime | None = None

    def query(self):
        query = (select(OutboxMessage).outerjoin(InboxEvent, OutboxMessage.inbox_event_id == InboxEvent.id)
                 .where(OutboxMessage.status == OutboxStatus.DEAD))
        if self.kind:
            topics = [topic for topic in Topic if topic.value == self.kind]
            query = query.where(or_(InboxEvent.type == self.kind, OutboxMessage.topic.in_(topics))
                                if topics else InboxEvent.type == self.kind)
        if self.error_text:
            query = query.where(OutboxMessage.last_error.ilike(f"%{_like_escaped(self.error_text)}%", escape="\\"))
        if self.since:
            query = query.where(OutboxMessage.created_at >= self.since)
        return query


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def find_dead_letters(session: Session, which: DeadLetterFilter, *, offset: int = 0,
                      limit: int | None = None) -> tuple[list[OutboxMessage], int]:
    """One page of the dead letters matching `which`, oldest first, and how many match in all."""
    query = which.query()
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    page = query.order_by(OutboxMessage.id).offset(offset)
    if limit is not None:
        page = page.limit(limit)
    return list(session.scalars(page)), total


def dead_letter_kinds(session: Session) -> list[str]:
    """The event types (and topics, for mails and Stripe calls) that have dead letters now."""
    rows = session.execute(
        select(InboxEvent.type, OutboxMessage.topic)
        .select_from(OutboxMessage).outerjoin(InboxEvent, OutboxMessage.inbox_event_id == InboxEvent.id)
        .where(OutboxMessage.status == OutboxStatus.DEAD).distinct()).all()
    return sorted({event_type or topic.value for event_type, topic in rows})


def get_dead_letter(session: Session, message_id: int, *, for_update: bool = True) -> OutboxMessage:
    message = session.get(OutboxMessage, message_id, with_for_update=for_update)
    if message is None:
        raise NotFound(f"no dead letter {message_id}")
    return message


def _dead_letter_decision(factory: sessionmaker[Session], message_id: int, *, actor: str, action: str,
                          note: str | None, change) -> Decision:
    target = f"dead letter {message_id}"
    with factory() as session:
        order_id = order_id_of_message(session, get_dead_letter(session, message_id, for_update=False))
    with _audited_refusal(factory, actor=actor, action=action, target=target, order_id=order_id, note=note), \
            caused_by(f"staff {actor}: {action}"), transaction(factory) as session:
        message = get_dead_letter(session, message_id)
        order = session.get(Order, order_id) if order_id else None
        before = _status(order)
        change(message)
        return _audit(session, actor=actor, action=action, target=target, order=order, before=before, note=note,
                      detail=f"message is {message.status.value}")


def retry_dead_letter(factory: sessionmaker[Session], message_id: int, *, actor: str,
                      note: str | None = None) -> Decision:
    """Re-drive: the relay publishes it again now and the worker runs it with fresh attempts."""
    return _dead_letter_decision(factory, message_id, actor=actor, action="retry", note=note,
                                 change=lambda message: message.redrive())


def resolve_dead_letter(factory: sessionmaker[Session], message_id: int, *, actor: str, note: str) -> Decision:
    """Close a dead letter without running it: its event can then not be replayed until reopened."""
    return _dead_letter_decision(factory, message_id, actor=actor, action="resolve", note=note,
                                 change=lambda message: message.resolve(note))


def reopen_dead_letter(factory: sessionmaker[Session], message_id: int, *, actor: str, note: str) -> Decision:
    """Take back a resolution: a dead letter again, which staff may then retry or replay."""
    return _dead_letter_decision(factory, message_id, actor=actor, action="reopen", note=note,
                                 change=lambda message: message.reopen(note))


# --- flagged orders ----------------------------------------------------------------------------

def find_orders(session: Session, status: OrderStatus | None = None, *, offset: int = 0,
                limit: int | None = None) -> tuple[list[Order], int]:
    """One page of orders (with `status`, or all), the longest-waiting first for review, newest
    first otherwise; and how many there are in all."""
    query = select(Order)
    if status is not None:
        query = query.where(Order.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    order_by = (Order.updated_at, Order.id) if status is OrderStatus.NEEDS_REVIEW else (Order.created_at.desc(),
                                                                                       Order.id.desc())
    page = query.order_by(*order_by).offset(offset)
    if limit is not None:
        page = page.limit(limit)
    return list(session.scalars(page)), total


def orders_needing_review(session: Session) -> list[Order]:
    return list(session.scalars(
        select(Order).where(Order.status == OrderStatus.NEEDS_REVIEW).order_by(Order.updated_at)))


def refund_order(factory: sessionmaker[Session], order_id: str, *, actor: str, reason: str,
                 expected: OrderAsSeen | None = None) -> Decision:
    """Give the money the order holds back at Stripe, mark it refunded and put unshipped units back
    (refused, given `expected`, on an order changed since: see OrderAsSeen)."""
    with _audited_refusal(factory, actor=actor, action="refund", target=f"order {order_id}", order_id=order_id,
                          note=reason), _one_decision_at_a_time(factory, order_id, expected):
        return _give_money_back(factory, order_id, actor=actor, action="refund", note=reason)


class RefundPartlyDone(PaymentGatewayError):
    """A refund Stripe made on some of the order's intents and refused (or could not take) on another:
    what was made is recorded and audited (`decision`, its detail `partly done: …`), the order keeps
    what it still holds and is not refunded; the message says what went back and what did not."""

    def __init__(self, decision: Decision):
        super().__init__(f"order {decision.order_id}: {decision.detail}")
        self.decision = decision


def disputes_by_intent(session: Session, order_ids: list[str]) -> dict[str, dict[str | None, Dispute]]:
    """For each order that has one, its intents a dispute rules a refund out of, each with its latest such
    dispute (`REFUND_RULED_OUT`: open, Stripe refuses to refund the charge; lost, the card network gave the
    money back). Key None: a dispute that does not say which intent it contests."""
    found: dict[str, dict[str | None, Dispute]] = {}
    if not order_ids:
        return found
    for dispute in session.scalars(select(Dispute).where(Dispute.order_id.in_(order_ids),
                                                         Dispute.status.in_(REFUND_RULED_OUT)).order_by(Dispute.id)):
        found.setdefault(dispute.order_id, {})[dispute.payment_intent_id] = dispute
    return found


@dataclass(frozen=True)
class RefundScope:
    """What a staff refund of an order covers: every intent a payment of it was counted on (`counted`)
    and the order's own; of those, the ones a dispute rules out (`left_out`); and `disputed`, every
    dispute on the order that rules a refund out (key None: one that does not say which intent)."""

    own: str | None
    counted: frozenset[str]
    disputed: dict[str | None, Dispute]
    currency: str  # the order's: a dispute in another contests money never counted in what it holds

    @property
    def intents(self) -> list[str | None]:
        """The order's own intent first, then every other intent a payment of the order was counted on (a
        second tab's). When the order's own is not among those, accept and refund have it cancelled at
        Stripe (`_stop_payments_on`)."""
        return [self.own, *sorted(self.counted - {self.own})]

    @property
    def unnamed(self) -> Dispute | None:
        """A dispute that does not say which intent it contests: none of the order's is refunded."""
        return self.disputed.get(None)

    @property
    def left_out(self) -> dict[str, Dispute]:
        """The intents the refund leaves out, in `intents` order, each with its dispute."""
        return {intent_id: self.disputed[intent_id] for intent_id in self.intents if intent_id in self.disputed}

    @property
    def held_under_dispute(self) -> int:
        """What the order holds on intents whose dispute is open (a lost one's money is counted off already), in
        its currency (`Order.counts_currency`)."""
        return sum(d.amount for intent_id, d in self.disputed.items() if intent_id in self.counted
                   and d.status != "lost" and d.currency.lower() == self.currency.lower())


def refund_scope(session: Session, order: Order, disputed: dict[str | None, Dispute] | None = None) -> RefundScope:
    """The order's `RefundScope`; `disputed`: its entry of `disputes_by_intent`, when already read."""
    if disputed is None:
        disputed = disputes_by_intent(session, [order.id]).get(order.id, {})
    return RefundScope(order.payment_intent_id, frozenset(intents_counted_for(session, order)), disputed,
                       order.currency)


def refunds_ruled_out(session: Session, orders: list[Order]) -> dict[str, Dispute]:
    """For each order a refund can give nothing back to because of a dispute, that dispute.

    A dispute rules out its own intent only: the refund leaves that intent out and gives back what
    the others hold. So it rules the order's refund out when no undisputed intent holds money by our
    counts: every intent paid on it is disputed, or it holds no more than its open disputes contest. A
    dispute that does not say which intent it contests rules out the whole order."""
    by_order = disputes_by_intent(session, [order.id for order in orders])
    ruled_out = {}
    for order in orders:
        disputed = by_order.get(order.id)
        if not disputed:
            continue
        scope = refund_scope(session, order, disputed)
        if scope.unnamed is not None:
            ruled_out[order.id] = scope.unnamed
        elif not scope.counted - disputed.keys() or order.money_held <= scope.held_under_dispute:
            ruled_out[order.id] = max(disputed.values(), key=lambda dispute: dispute.id)
    return ruled_out


def refund_ruled_out_on(dispute: Dispute) -> str:
    """Why a refund cannot give back an intent's money (or the order's, when it is the only one left)."""
    on = f"payment intent {dispute.payment_intent_id}" if dispute.payment_intent_id else "an unnamed payment intent"
    return f"{refund_ruled_out(dispute)} ({on})"


def _left_out(dispute: Dispute) -> str:
    """What an audit row, a review reason and the console say of an intent the refund leaves out."""
    if dispute.status == "lost":
        return (f"payment intent {dispute.payment_intent_id} left out: its dispute {dispute.stripe_dispute_id} was "
                f"lost, the card network gave {dispute.amount} {dispute.currency} back already")
    return (f"payment intent {dispute.payment_intent_id} left out: disputed (dispute {dispute.stripe_dispute_id} is "
            f"{dispute.status}), Stripe does not refund it; decide once the dispute is closed")


def _give_money_back(factory: sessionmaker[Session], order_id: str, *, actor: str, action: str,
                     note: str) -> Decision:
    """The one refund path (refund, cancel --refund): safe to run again after a lost commit.

    Every intent a payment of the order was counted on is refunded what Stripe still holds of it:
    the order's own, and a stray intent that paid it too (a second checkout tab). For each, Stripe
    is asked first which refunds it already holds: one we made but never recorded (our commit was
    lost) is recorded now instead of being made twice. A new refund is keyed on the order, the
    intent and the attempt, never on staff's words, which stay in our database.

    An intent a dispute rules out (open: Stripe refuses to refund it; lost: the customer has the money
    back) is left out, and refused only when nothing else is left to give back. Each intent's refund
    is its own call to Stripe: when Stripe refuses (or cannot take) one after making another, those
    made are recorded as staff refunds all the same, the order is not refunded while it holds money
    (it stays in review, saying why), and RefundPartlyDone says what went back and what did not.
    """
    with factory() as session:
        order = get_order(session, order_id)
        if order.status is OrderStatus.REFUNDED and order.money_held <= 0:
            raise Refused(f"order {order_id} is already refunded ({order.refunded_amount} {order.currency} given "
                          f"back, Stripe refund {order.refund_id}): there is nothing left to refund")
        order.ensure_refundable()
        seen_before = _status(order)  # what staff decided on: the worker may change it while Stripe answers
        scope = refund_scope(session, order)
        if scope.unnamed is not None:  # which payment it contests is unknown: none of them is refunded
            raise Refused(refund_ruled_out(scope.unnamed))
        intents = scope.intents
        recorded = set(session.scalars(select(Refund.stripe_refund_id).where(Refund.order_id == order_id)))
    refunds, paid, own_status = [], [], None
    left_out = list(scope.left_out.values())
    not_taken: list[tuple[str, PaymentGatewayError]] = []
    for intent_id in intents:
        if intent_id in scope.left_out:
            continue
        try:
            intent = retrieve_payment_intent(intent_id) or {}
            if intent_id == intents[0]:
                own_status = intent.get("status")
            if intent.get("status") == "succeeded":  # money was taken on it
                paid.append(intent_id)
                _refund_what_is_left(order_id, intent, recorded, own=intent_id == intents[0], into=refunds)
        except PaymentGatewayError as exc:
            not_taken.append((intent_id, exc))
    if not_taken and not refunds:
        raise not_taken[0][1]  # nothing went back: the decision failed at Stripe as a whole
    if not paid and not left_out:
        raise Refused(f"Stripe took no payment on order {order_id} (payment intent {', '.join(intents)}): "
                      f"there is nothing to refund")
    if not refunds:
        if left_out and not paid:
            raise Refused("; ".join(refund_ruled_out_on(dispute) for dispute in left_out))
        raise Refused(f"Stripe holds nothing of order {order_id} to give back: every payment on it "
                      f"({', '.join(paid)}) is refunded already"
                      + "".join(f"; {refund_ruled_out_on(dispute)}" for dispute in left_out))
    ids = ", ".join(r.id for r in refunds)
    log.info("refund_at_stripe", order_id=order_id, refund_ids=ids, actor=actor)

    def record() -> tuple[Decision, bool]:
        with caused_by(f"staff {actor}: {action}"), transaction(factory) as session:
            order = get_order(session, order_id, for_update=True)
            stored = [_record_staff_refund(session, order, refund, note) for refund in refunds]
            # Stripe's answer, or its refund.failed / refund.canceled the worker handled meanwhile.
            failed = [row for row in stored if row.status in ("failed", "canceled")]
            kept_back = [_left_out(dispute) for dispute in left_out] + [
                f"payment intent {intent_id} refused at Stripe: {exc}" for intent_id, exc in not_taken] + [
                f"refund {row.stripe_refund_id} {row.status} at Stripe: {row.amount} {row.currency} did not go back"
                for row in failed]
            # A payment the worker counted while Stripe made these refunds (a second tab's, on an intent
            # the first read did not know): not refunded, so the order is not refunded either.
            counted_meanwhile = [i for i in refund_scope(session, order).intents if i not in intents]
            kept_back += [f"a payment on payment intent {intent_id} was counted while the refund was made, and "
                          f"is not refunded" for intent_id in counted_meanwhile]
            amounts = _given_back(refunds)
            if counted_meanwhile or (kept_back and order.money_held > 0):
                # Not refunded while it holds money: staff decide again once the dispute is closed, Stripe
                # takes it, or for the payment counted meanwhile or a refund that failed.
                given = f"refund {ids} made ({amounts})"
                still = f"it holds {order.money_held} {order.currency} still"
                _keep_in_review(order, f"staff {actor}: {action}: {given}; {'; '.join(kept_back)}; {still}")
                detail = f"{given}; {'; '.join(kept_back)}; {still}, {order.status.value}; its units stay held"
            else:
                returned = return_unshipped_units(session, order)
                if order.status is not OrderStatus.REFUNDED:
                    order.mark_refunded(refunds[-1].id, note)
                else:  # the worker marked it so from Stripe's charge.refunded for these refunds, meanwhile
                    order.refund_id, order.refund_reason = refunds[-1].id, note
                detail = "; ".join([f"stripe refund {ids} ({amounts})", *kept_back,
                                    f"{returned} units back on the shelf"])
            partly = bool(not_taken or counted_meanwhile or failed)
            if partly:
                detail = f"partly done: {detail}"
            if own_status in STILL_PAYABLE:  # the money came on another tab's intent
                detail += _stop_payments_on(session, order)
            return _audit(session, actor=actor, action=action, target=f"order {order_id}", order=order,
                          before=seen_before, note=note, detail=detail), partly

    # The money went back at Stripe: its record must not be lost to a deadlock with a worker's batch
    # (which locks stock, then another order's row), so the transaction is run again if PostgreSQL
    # chose it to abort. Refunds are keyed by Stripe's id: recording one twice is not possible.
    decision, partly = retrying_conflicts(record)
    if partly:
        raise RefundPartlyDone(decision)
    return decision


def _given_back(refunds: list) -> str:
    """What the refunds give back, summed per currency ("3100 jpy, 2000 usd"): each is in its intent's
    currency, which for a payment in another currency than the order's is not the order's."""
    by_currency: dict[str, int] = {}
    for refund in refunds:
        by_currency[refund.currency] = by_currency.get(refund.currency, 0) + refund.amount
    return ", ".join(f"{amount} {currency}" for currency, amount in by_currency.items())


def _keep_in_review(order: Order, reason: str) -> None:
    """Flag the order for review, or add to the reason it is in review for (a refunded order stays so)."""
    if can_transition(order.status, OrderStatus.NEEDS_REVIEW):
        order.flag_for_review(reason)
    elif order.status is OrderStatus.NEEDS_REVIEW:
        order.review_reason = f"{order.review_reason}; then: {reason}" if order.review_reason else reason


# An intent's statuses at Stripe in which the customer can still pay it, or it can still be captured.
STILL_PAYABLE = ("requires_payment_method", "requires_confirmation", "requires_action", "requires_capture")


def _stop_payments_on(session: Session, order: Order) -> str:
    """Queue the cancellation at Stripe of the intent the order holds (through the outbox, as the
    expiry sweep does), so the customer can no longer pay an order that will not ship or that was
    paid on another intent; returns what the audit row says of it. An intent that succeeded
    meanwhile is left alone at Stripe, and its succeeded event flags the order."""
    enqueue(session, Topic.PAYMENT_CANCEL, {"order_id": order.id, "payment_intent_id": order.payment_intent_id})
    return f"; payment intent {order.payment_intent_id} to cancel at Stripe"


def _refund_what_is_left(order_id: str, intent: dict, recorded: set[str], *, own: bool, into: list) -> None:
    """Add to `into` a succeeded intent's refunds at Stripe not recorded yet, then a new one for what it still
    holds, if any (those found are kept when Stripe then refuses the new one)."""
    intent_id = intent["id"]
    received = intent.get("amount_received")
    if received is None:  # an API without it (localstripe): a succeeded intent received its amount
        received = intent.get("amount") or 0
    every = find_refunds(intent_id)
    standing = [r for r in every if r.status not in ("failed", "canceled")]
    into += [r for r in standing if r.id not in recorded]
    left = received - sum(r.amount for r in standing)
    if left > 0:
        into.append(refund_payment(order_id=order_id, payment_intent_id=intent_id, amount=left,
                                   attempt=next_refund_attempt(every), stray=not own))


def next_refund_attempt(refunds_at_stripe: list) -> int:
    """The attempt number a new refund of the intent is keyed on: one more than every refund Stripe
    holds for it, failed and canceled ones too. Counting only those that stand, a new refund after
    one that failed would reuse the failed one's key, and Stripe answers a reused key with its first
    answer (for 24 hours): the failed refund again, and no money back."""
    return len(refunds_at_stripe) + 1


def _record_staff_refund(session: Session, order: Order, refund, reason: str) -> Refund:
    """The refund staff made, recorded once; its row as stored. The worker may have stored it first, from
    Stripe's charge.refunded or refund.updated while Stripe's answer to staff was on its way: the row is
    staff's all the same, with their reason, and keeps the status the worker learnt (newer than the answer)."""
    row = record_refund(session, order, stripe_refund_id=refund.id, amount=refund.amount, currency=refund.currency,
                        status=refund.status, source=RefundSource.STAFF, reason=reason)
    if row is None:
        row = session.scalars(select(Refund).where(Refund.stripe_refund_id == refund.id)).one()
        row.source, row.reason = RefundSource.STAFF, reason
    return row


def accept_order(factory: sessionmaker[Session], order_id: str, *, actor: str, note: str,
                 expected: OrderAsSeen | None = None) -> Decision:
    """Keep the payment of a flagged order and fulfil it, if its units can be covered.

    An order whose goods already left (or are about to: a pending shipment, e.g. flagged for a
    dispute after it was paid) just goes back to paid. Otherwise its hold is consumed, or stock
    is taken if the hold was released; if some sku is short, nothing changes and it is refused.
    """
    target = f"order {order_id}"
    with _audited_refusal(factory, actor=actor, action="accept", target=target, order_id=order_id, note=note), \
            _one_decision_at_a_time(factory, order_id, expected), caused_by(f"staff {actor}: accept"), \
            transaction(factory) as session:
        order = get_order(session, order_id, for_update=True)
        _still_as_seen(order, expected)
        before = _status(order)
        if order.status is not OrderStatus.NEEDS_REVIEW:
            raise Refused(f"order {order_id} is {before}: only an order in review can be accepted")
        # What it holds counts every lost dispute on a payment applied to it (the worker and a replay settle
        # them as they apply a payment; settled again here from the rows, so nothing counts twice).
        settle_chargebacks(session, order)
        if order.money_held <= 0:
            raise Refused(f"order {order_id} holds no money of the customer: there is nothing to keep; "
                          f"cancel it instead")
        if order.shipment is not None and order.shipment.status is not ShipmentStatus.CANCELLED:
            paid_at = order.paid_at
            order.mark_paid()
            order.paid_at = paid_at or order.paid_at
            detail = f"already fulfilled (shipment {order.shipment.status.value}): back to paid"
        else:
            missing = cover_units(session, order)
            if missing:
                raise Refused(f"not enough stock to fulfil order {order_id}: {'; '.join(missing)}")
            if order.shipment is not None:
                order.shipment.status = ShipmentStatus.PENDING  # its units are taken again
            buyers_cart = cart_left_to_buyer(session, order)
            fulfil_paid_order(session, order, close_cart=buyers_cart is None)
            detail = f"units taken, shipment {order.shipment.id} to pack, confirmation mail queued"
            if buyers_cart is not None:
                detail += (f"; cart {buyers_cart.id} left to the buyer ({buyers_cart.status.value} again since the "
                           f"order's hold ran out)")
        if order.payment_intent_id and order.payment_intent_id not in intents_counted_for(session, order):
            detail += _stop_payments_on(session, order)  # kept a payment on another tab's intent
        return _audit(session, actor=actor, action="accept", target=target, order=order, before=before, note=note,
                      detail=detail)


def _keeping_the_money(order: Order) -> str:
    """What keeps an order's money instead of a cancel: accept, which only an order in review takes;
    a paid order keeps it already."""
    if order.status is OrderStatus.NEEDS_REVIEW:
        return "accept keeps it and ships"
    if order.status is OrderStatus.PAID:
        return "left as it is, the paid order keeps it and ships"
    return f"left as it is, the order keeps it ({order.status.value})"


def cancel_order(factory: sessionmaker[Session], order_id: str, *, actor: str, note: str,
                 refund: bool = False, expected: OrderAsSeen | None = None) -> Decision:
    """Cancel an order and put its units back; refused while it holds money, unless `refund`.

    With `refund`, the money held is given back at Stripe first (the refund path) and the order
    ends refunded. An order nobody paid also gets its PaymentIntent cancelled at Stripe (through
    the outbox, as the expiry sweep does), so it can no longer be paid. Refused, with or without
    `refund`, while a payment for the order is stored and not yet applied (on any intent it held):
    the order does not count that money yet, and the hold is what the payment will take.
    """
    target = f"order {order_id}"
    with _audited_refusal(factory, actor=actor, action="cancel", target=target, order_id=order_id, note=note), \
            _one_decision_at_a_time(factory, order_id, expected):
        if refund:
            with factory() as session:
                order = get_order(session, order_id)
                _refuse_while_a_payment_waits(session, order)
                held = order.money_held > 0 or order_id in money_in_other_currencies(session, [order])
            if held:
                return _give_money_back(factory, order_id, actor=actor, action="cancel", note=note)
        with caused_by(f"staff {actor}: cancel"), transaction(factory) as session:
            order = get_order(session, order_id, for_update=True)
            _still_as_seen(order, expected)
            before = _status(order)
            # Decided under the order's lock, which the worker applying the payment also takes.
            _refuse_while_a_payment_waits(session, order)
            settle_chargebacks(session, order)
            if refund and (order.money_held > 0 or money_in_other_currencies(session, [order]).get(order_id)):
                # It held nothing when the refund path was chosen (read without the lock): a payment came since.
                raise Refused(f"order {order_id} received a payment while it was being cancelled (it holds "
                              f"{order.money_held} {order.currency} now): nothing was done; cancel --refund again "
                              f"gives it back")
            if order.money_held > 0:
                disputed = refunds_ruled_out(session, [order]).get(order_id)
                if disputed is not None:  # cancel --refund could give none of it back
                    raise Refused(f"order {order_id} holds {order.money_held} {order.currency} taken from the "
                                  f"customer, and a refund is ruled out: {refund_ruled_out_on(disputed)}; "
                                  f"{_keeping_the_money(order)}")
                raise Refused(f"order {order_id} holds {order.money_held} {order.currency} taken from the customer: "
                              f"cancel --refund gives it back; {_keeping_the_money(order)}")
            elsewhere = money_in_other_currencies(session, [order]).get(order_id)
            if elsewhere:  # not in the order's money (`Order.counts_currency`), taken from the customer all the same
                taken = per_currency(elsewhere)
                raise Refused(f"order {order_id} holds {taken} taken from the customer in another currency than its "
                              f"own: cancel --refund gives it back")
            if not can_transition(order.status, OrderStatus.CANCELLED):
                raise Refused(f"order {order_id} is {before} and cannot be cancelled")
            returned = return_unshipped_units(session, order)
            order.cancel(f"cancelled by staff: {note}")
            detail = f"{returned} units back on the shelf"
            if before in (OrderStatus.PENDING_PAYMENT.value, OrderStatus.PAYMENT_FAILED.value) \
                    and order.payment_intent_id:
                detail += _stop_payments_on(session, order)
            return _audit(session, actor=actor, action="cancel", target=target, order=order, before=before,
                          note=note, detail=detail)


def _refuse_while_a_payment_waits(session: Session, order: Order) -> None:
    waiting = payment_waiting(session, order)
    if waiting is not None:
        raise Refused(cancel_ruled_out(waiting))


def ship_order(factory: sessionmaker[Session], order_id: str, *, actor: str, note: str,
               expected: OrderAsSeen | None = None) -> Decision:
    """Record that the order's shipment left the warehouse (the note says how: carrier, tracking).

    A fact staff write down, not a change to money or the order's status: its units are gone for
    good, so a refund or cancel after it (a chargeback lost) no longer puts them back on the shelf.
    Refused while the order has no pending shipment (unpaid, already shipped, or its units put back).
    """
    target = f"order {order_id}"
    with _audited_refusal(factory, actor=actor, action="ship", target=target, order_id=order_id, note=note), \
            _one_decision_at_a_time(factory, order_id, expected), caused_by(f"staff {actor}: ship"), \
            transaction(factory) as session:
        order = get_order(session, order_id, for_update=True)
        _still_as_seen(order, expected)
        before = _status(order)
        problem = not_shippable(order)
        if problem is not None:
            raise Refused(problem)
        order.shipment.mark_shipped()
        return _audit(session, actor=actor, action="ship", target=target, order=order, before=before, note=note,
                      detail=f"shipment {order.shipment.id} shipped: its units no longer go back on the shelf")


def not_shippable(order: Order) -> str | None:
    """Why the order's shipment cannot be recorded as sent (None: it can)."""
    shipment = order.shipment
    if shipment is None:
        return f"order {order.id} is {order.status.value} and has no shipment: there is nothing to send"
    if shipment.status is ShipmentStatus.SHIPPED:
        return f"shipment {shipment.id} of order {order.id} is already recorded as shipped"
    if shipment.status is not ShipmentStatus.PENDING:
        return (f"shipment {shipment.id} of order {order.id} is {shipment.status.value}: its units went back on "
                f"the shelf, so there is nothing to send")
    return None
