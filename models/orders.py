"""Orders, their lines and shipment, and the order state machine (a status only moves forward)."""
from __future__ import annotations

import enum
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

import structlog
from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, Text, exists, select
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, WriteOnlyMapped, mapped_column, object_session, relationship
from sqlalchemy.orm.attributes import set_committed_value

from models.base import ID_TYPE, Base, enum_column, new_id, utcnow
from models.carts import Cart, CartStatus
from models.catalog import Reservation, ReservationStatus, lock_stock, sold_units
from models.db import add_row
from models.errors import Conflict, IllegalTransition, InvalidInput, NotFound
from models.events import PAYMENT_SUCCEEDED, EventStatus, InboxEvent, OutboxMessage, Topic
from models.history import OrderStatusChange, current_cause
from models.refunds import Dispute, Refund, RefundSource
from models.shipping import load_shipping_table, shipping_fee

log = structlog.get_logger(__name__)


class OrderStatus(str, enum.Enum):
    PENDING_PAYMENT = "pending_payment"
    PAYMENT_FAILED = "payment_failed"
    PAID = "paid"
    NEEDS_REVIEW = "needs_review"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


S = OrderStatus
# The one place the allowed moves are written down. Anything not listed is refused, so a
# late or replayed event can never move an order backwards (a paid order never becomes
# payment_failed again). payment_failed -> payment_failed records a second declined card.
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING_PAYMENT: frozenset({S.PAYMENT_FAILED, S.PAID, S.NEEDS_REVIEW, S.CANCELLED}),
    S.PAYMENT_FAILED: frozenset({S.PAYMENT_FAILED, S.PAID, S.NEEDS_REVIEW, S.CANCELLED}),
    S.PAID: frozenset({S.NEEDS_REVIEW, S.REFUNDED}),
    S.NEEDS_REVIEW: frozenset({S.PAID, S.REFUNDED, S.CANCELLED}),
    S.CANCELLED: frozenset({S.NEEDS_REVIEW}),
    S.REFUNDED: frozenset(),
}


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


# The expiry sweep's reason for an order whose hold ran out before it was paid
# (consumers.relay.expire_reservations); the shop's screens look for it (a card charged just then).
HOLD_RAN_OUT = "reservation expired before payment"


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ord"))
    cart_id: Mapped[str] = mapped_column(ForeignKey("carts.id"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True, default=None)
    email: Mapped[str] = mapped_column(String(254))
    status: Mapped[OrderStatus] = mapped_column(enum_column(OrderStatus, 24), default=S.PENDING_PAYMENT, index=True)
    currency: Mapped[str] = mapped_column(String(3))
    subtotal: Mapped[int] = mapped_column(Integer)
    shipping_fee: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    ship_name: Mapped[str] = mapped_column(String(200))
    ship_postal_code: Mapped[str] = mapped_column(String(16))
    ship_prefecture: Mapped[str] = mapped_column(String(32))
    ship_address: Mapped[str] = mapped_column(String(500))
    # Shown to the buyer once (checkout's answer, the mail's link): without it, or a staff
    # session, GET /orders/<id> shows status and totals only.
    access_token: Mapped[str] = mapped_column(String(64), default=lambda: secrets.token_urlsafe(24))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True, default=None)
    client_secret: Mapped[str | None] = mapped_column(String(255), default=None)
    reserved_until: Mapped[datetime]
    payment_attempts: Mapped[int] = mapped_column(Integer, default=0)
    failure_code: Mapped[str | None] = mapped_column(String(100), default=None)
    failure_message: Mapped[str | None] = mapped_column(Text, default=None)
    review_reason: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_reason: Mapped[str | None] = mapped_column(Text, default=None)
    refund_id: Mapped[str | None] = mapped_column(String(255), default=None)
    refund_reason: Mapped[str | None] = mapped_column(Text, default=None)
    refunded_at: Mapped[datetime | None] = mapped_column(default=None)
    # Money actually taken and given back, in minor units: "money taken" is paid > refunded.
    paid_amount: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    refunded_amount: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Taken back by the card network for a dispute the shop lost (a chargeback): gone, like a refund.
    charged_back_amount: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(default=None)

    lines: Mapped[list["OrderLine"]] = relationship(
        back_populates="order", order_by="OrderLine.id", cascade="all, delete-orphan", lazy="selectin"
    )
    shipment: Mapped["Shipment | None"] = relationship(back_populates="order", uselist=False, lazy="selectin")
    reservations: Mapped[list[Reservation]] = relationship(order_by=Reservation.id, lazy="selectin")
    status_changes: WriteOnlyMapped[OrderStatusChange] = relationship(order_by=OrderStatusChange.id)

    __table_args__ = (CheckConstraint("total = subtotal + shipping_fee", name="total_adds_up"),)

    def _move(self, target: OrderStatus, reason: str | None = None) -> None:
        """The one way a status changes; each change is written down with its cause."""
        if not can_transition(self.status, target):
            raise IllegalTransition(self.id, self.status.value, target.value)
        change = OrderStatusChange(order_id=self.id, from_status=self.status.value, to_status=target.value,
                                   cause=current_cause(), reason=reason, at=utcnow())
        session = object_session(self)
        if session is not None and self.id is not None:
            add_row(session, change)
        else:
            self.status_changes.add(change)
        self.status = target

    @property
    def money_held(self) -> int:
        """Minor units taken from the customer and not given back (refunded, or charged back), in the
        order's currency: money in another is never counted in these amounts (`counts_currency`)."""
        return self.paid_amount - self.refunded_amount - self.charged_back_amount

    def counts_currency(self, currency: str | None) -> bool:
        """Whether money in `currency` counts in the order's amounts (paid, refunded, charged back): only the
        order's own currency does, since 2000 cents are not 2000 yen. A payment in another (an intent made
        with the order's metadata in Stripe's dashboard, say) is flagged for a person instead, and its
        refunds and chargebacks are left out too. Not said (None, ''): taken as the order's."""
        return not currency or currency.lower() == self.currency.lower()

    def mark_paid(self) -> None:
        self._move(S.PAID)
        self.paid_at = utcnow()
        self.failure_code = None
        self.failure_message = None

    def record_failed_attempt(self, code: str | None, message: str | None) -> None:
        self._move(S.PAYMENT_FAILED, f"card declined: {code}")
        self.payment_attempts += 1
        self.failure_code = code
        self.failure_message = message

    def flag_for_review(self, reason: str) -> None:
        self._move(S.NEEDS_REVIEW, reason)
        self.review_reason = reason

    def cancel(self, reason: str) -> None:
        self._move(S.CANCELLED, reason)
        self.cancel_reason = reason

    def ensure_refundable(self) -> None:
        """A refund is a move to refunded; or, on an order already refunded that holds money again
        (a refund failed at Stripe after it was counted, a late payment), giving back what is left."""
        if self.payment_intent_id is None:
            raise IllegalTransition(self.id, self.status.value, S.REFUNDED.value)
        if self.status is S.REFUNDED and self.money_held > 0:
            return
        if not can_transition(self.status, S.REFUNDED):
            raise IllegalTransition(self.id, self.status.value, S.REFUNDED.value)

    @property
    def refundable(self) -> bool:
        try:
            self.ensure_refundable()
        except IllegalTransition:
            return False
        return True

    def mark_refunded(self, refund_id: str, reason: str) -> None:
        """Only ever a staff action: the service never refunds on its own."""
        self._move(S.REFUNDED, reason)
        self.refund_id = refund_id
        self.refund_reason = reason
        self.refunded_at = utcnow()

    def to_dict(self) -> dict:
        shipment = self.shipment.to_dict() if self.shipment else None
        return {
            "order_id": self.id,
            "status": self.status.value,
            "email": self.email,
            "subtotal": self.subtotal,
            "shipping_fee": self.shipping_fee,
            "total": self.total,
            "currency": self.currency,
            "lines": [line.to_dict() for line in self.lines],
            "shipment": shipment,
            "payment_intent_id": self.payment_intent_id,
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
            "review_reason": self.review_reason,
            "created_at": self.created_at.isoformat(),
            "paid_at": self.paid_at.isoformat() if self.paid_at else None,
        }


class OrderPaymentIntent(Base):
    """A PaymentIntent whose payment is a payment for the order: every intent the order has held (the
    one it holds now too), every one checkout created for it, and every one made outside the service
    that a worker found by its metadata.order_id (`keep_payment_intent`). Stripe may take money on any of them
    after the order moved on to another (the pay step's replacement only queues the old one's
    cancellation, and the buyer can complete it in another tab), and such a payment stored but not
    yet applied keeps the order's hold (`payments_waiting`). Rows are only ever added."""

    __tablename__ = "order_payment_intents"

    # The primary key answers "the intents of this order" (its first column), as the sweep asks; the index
    # "the orders of this intent", as a dispute on an intent with no payment stored asks (`order_recording`).
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    payment_intent_id: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    sku: Mapped[str] = mapped_column(ForeignKey("products.sku"))
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_amount: Mapped[int] = mapped_column(Integer)

    order: Mapped[Order] = relationship(back_populates="lines")

    def to_dict(self) -> dict:
        return {
            "sku": self.sku,
            "name": self.name,
            "quantity": self.quantity,
            "unit_amount": self.unit_amount,
            "amount": self.unit_amount * self.quantity,
        }


class ShipmentStatus(str, enum.Enum):
    PENDING = "pending"        # to be packed and sent
    SHIPPED = "shipped"        # left the warehouse
    CANCELLED = "cancelled"    # refunded or cancelled before it left: its units went back on the shelf


class Shipment(Base):
    __tablename__ = "shipments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("shp"))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    postal_code: Mapped[str] = mapped_column(String(16))
    prefecture: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(500))
    fee: Mapped[int] = mapped_column(Integer)
    status: Mapped[ShipmentStatus] = mapped_column(enum_column(ShipmentStatus), default=ShipmentStatus.PENDING)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    order: Mapped[Order] = relationship(back_populates="shipment")

    def mark_shipped(self) -> None:
        """It left the warehouse: its units are gone for good, so a refund or cancellation after it
        (a chargeback lost) no longer puts them back on the shelf (`return_unshipped_units`)."""
        if self.status is not ShipmentStatus.PENDING:
            raise Conflict(f"shipment {self.id} is {self.status.value}, not pending")
        self.status = ShipmentStatus.SHIPPED

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "status": self.status.value,
            "name": self.name,
            "postal_code": self.postal_code,
            "prefecture": self.prefecture,
            "address": self.address,
            "fee": self.fee,
        }


@dataclass(frozen=True)
class ShippingAddress:
    name: str
    postal_code: str
    prefecture: str
    address: str


def place_order(
    session: Session,
    cart: Cart,
    *,
    email: str,
    shipping: ShippingAddress,
    reservation_ttl_seconds: int,
    idempotency_key: str | None = None,
) -> Order:
    """Reserve the cart's stock and create the order in pending_payment, in the caller's transaction.

    Stock rows are locked in sku order so that two checkouts never deadlock each other.
    """
    if cart.status is not CartStatus.OPEN:
        raise Conflict(f"cart {cart.id} is already checked out", field="cart_id")
    if not cart.items:
        raise InvalidInput(f"cart {cart.id} is empty", field="cart_id")
    subtotal = cart.subtotal
    rates = load_shipping_table(session)
    # The fee and the free-shipping threshold are amounts of the rates' currency: charged in another, a
    # yen fee would be read as cents. Refused (409), and said to staff, before any stock is held.
    try:
        cart.ensure_one_currency(rates.currency)
    except Conflict as exc:
        log.warning("checkout_refused_currency_mismatch", cart_id=cart.id, reason=exc.message)
        raise
    try:
        fee = shipping_fee(rates, shipping.prefecture, subtotal)
    except LookupError as exc:
        raise InvalidInput(str(exc), field="shipping.prefecture") from exc
    cart.ensure_payable(subtotal + fee, field="cart_id", charged=True)  # before any stock is held
    reserved_until = utcnow() + timedelta(seconds=reservation_ttl_seconds)
    order = Order(
        cart_id=cart.id,
        idempotency_key=idempotency_key,
        email=email,
        currency=cart.currency,
        ship_name=shipping.name,
        ship_postal_code=shipping.postal_code,
        ship_prefecture=shipping.prefecture,
        ship_address=shipping.address,
        reserved_until=reserved_until,
    )
    order.status_changes.add(OrderStatusChange(from_status=None, to_status=S.PENDING_PAYMENT.value,
                                               cause=current_cause(), reason="checkout"))
    for item in sorted(cart.items, key=lambda i: i.sku):
        stock = lock_stock(session, item.sku)
        stock.reserve(item.quantity)
        order.lines.append(
            OrderLine(sku=item.sku, name=stock.product.name, quantity=item.quantity, unit_amount=item.unit_amount)
        )
        order.reservations.append(Reservation(sku=item.sku, quantity=item.quantity, expires_at=reserved_until))
    order.subtotal, order.shipping_fee, order.total = subtotal, fee, subtotal + fee
    cart.status = CartStatus.CHECKED_OUT
    session.add(order)
    session.flush()
    return order


def release_reservations(session: Session, order: Order) -> int:
    """Give back every unit the order still holds; returns how many units were released."""
    released = 0
    for reservation in order.reservations:
        if reservation.status is ReservationStatus.ACTIVE:
            lock_stock(session, reservation.sku).release(reservation.quantity)
            reservation.status = ReservationStatus.RELEASED
            reservation.closed_at = utcnow()
            released += reservation.quantity
    return released


def consume_reservations(session: Session, order: Order) -> list[str]:
    """Decrement stock for a paid order exactly once: the units it holds leave the shelf.

    If the order no longer holds some of its units (its hold was released), nothing is
    changed and those skus are returned: the caller flags the order for a person, who decides
    whether there is stock to ship. The service never refunds on its own.
    """
    released = [r.sku for r in order.reservations if r.status is ReservationStatus.RELEASED]
    if released:
        return released
    deferred = sold_units(session)  # a worker batch writes its stock changes just before its commit
    for reservation in order.reservations:
        if reservation.status is ReservationStatus.ACTIVE:
            if deferred is not None:
                deferred.consume(reservation.sku, reservation.quantity)
            else:
                lock_stock(session, reservation.sku).consume(reservation.quantity)
            reservation.status = ReservationStatus.CONSUMED
            reservation.closed_at = utcnow()
    return []


def cover_units(session: Session, order: Order) -> list[str]:
    """Staff's accept: take every unit the order still needs off the shelf, or change nothing.

    Units it still holds are consumed; units whose hold was released (or given back) are taken
    from available stock. If some sku has too few available, nothing changes and the shortfalls
    are returned ("CUP-01: 2 wanted, 1 available") for the person to read.
    """
    needed = {ReservationStatus.ACTIVE, ReservationStatus.RELEASED, ReservationStatus.RETURNED}
    open_holds = [r for r in order.reservations if r.status in needed]
    stocks = {sku: lock_stock(session, sku) for sku in sorted({r.sku for r in open_holds})}
    wanted: dict[str, int] = {}
    for reservation in open_holds:
        if reservation.status is not ReservationStatus.ACTIVE:
            wanted[reservation.sku] = wanted.get(reservation.sku, 0) + reservation.quantity
    missing = [f"{sku}: {quantity} wanted, {stocks[sku].available} available"
               for sku, quantity in sorted(wanted.items()) if quantity > stocks[sku].available]
    if missing:
        return missing
    for reservation in open_holds:
        stock = stocks[reservation.sku]
        if reservation.status is not ReservationStatus.ACTIVE:
            stock.reserve(reservation.quantity)
        stock.consume(reservation.quantity)
        reservation.status = ReservationStatus.CONSUMED
        reservation.closed_at = utcnow()
    return []


def return_unshipped_units(session: Session, order: Order) -> int:
    """Put back on the shelf every unit the order holds that has not left the warehouse.

    Active reservations are released; if the order was paid (its reservation consumed) and its
    shipment is still pending, the shipment is cancelled and its units go back to on_hand, in
    the caller's transaction, so a refund or cancellation never loses stock. Safe to run twice:
    the second run finds nothing held. Returns the units put back.
    """
    returned = release_reservations(session, order)
    if order.shipment is not None and order.shipment.status is ShipmentStatus.PENDING:
        order.shipment.status = ShipmentStatus.CANCELLED
        for reservation in order.reservations:
            if reservation.status is ReservationStatus.CONSUMED:
                lock_stock(session, reservation.sku).restock(reservation.quantity)
                reservation.status = ReservationStatus.RETURNED
                reservation.closed_at = utcnow()
                returned += reservation.quantity
    return returned


def record_refund(session: Session, order: Order, *, stripe_refund_id: str, amount: int, currency: str,
                  status: str, source: RefundSource, reason: str | None = None) -> Refund | None:
    """Record one Stripe refund on the order once (keyed by Stripe's id); None if already recorded.

    Only a refund that has not failed, in the order's currency (`Order.counts_currency`: a refund of a
    payment in another was never counted in what the order holds), counts against the money the order holds.
    """
    if session.scalars(select(Refund).where(Refund.stripe_refund_id == stripe_refund_id)).one_or_none():
        return None
    refund = Refund(stripe_refund_id=stripe_refund_id, order_id=order.id, amount=amount, currency=currency,
                    status=status, source=source, reason=reason)
    session.add(refund)
    if status not in ("failed", "canceled") and order.counts_currency(currency):
        order.refunded_amount += amount
    return refund


def cart_left_to_buyer(session: Session, order: Order) -> Cart | None:
    """The order's cart, when it is no longer the order's but the buyer's again: reopened once the order's
    hold ran out (`models.carts.reopen_cart`), and maybe filled anew, or checked out since into a later
    order. Fulfilling the order (staff accept a late payment) leaves such a cart alone: closing it would take
    the buyer's live cart, and its new lines or checkout, away. None: the cart is still checked out into this
    order (or already deleted), and is deleted with the order's payment as ever."""
    cart = session.get(Cart, order.cart_id)
    if cart is None or cart.deleted_at is not None:
        return None
    if cart.status is CartStatus.OPEN:
        return cart
    checked_out_again = session.scalar(select(exists().where(
        Order.cart_id == order.cart_id, Order.id != order.id, Order.created_at > order.created_at)))
    return cart if checked_out_again else None


def create_shipment(session: Session, order: Order, *, known_absent: bool = False) -> Shipment:
    """The order's one shipment, created if it has none (`known_absent`: the caller knows it has
    none, so the shipment is not looked up; the unique order_id refuses a second one anyway)."""
    if known_absent:
        shipment = Shipment(order_id=order.id, name=order.ship_name, postal_code=order.ship_postal_code,
                            prefecture=order.ship_prefecture, address=order.ship_address, fee=order.shipping_fee)
        session.add(shipment)  # written with the order's other changes, at the next flush
        set_committed_value(order, "shipment", shipment)
        return shipment
    if order.shipment is None:
        order.shipment = Shipment(
            name=order.ship_name,
            postal_code=order.ship_postal_code,
            prefecture=order.ship_prefecture,
            address=order.ship_address,
            fee=order.shipping_fee,
        )
        session.flush()
    return order.shipment


def get_order(session: Session, order_id: str, *, for_update: bool = False) -> Order:
    query = select(Order).where(Order.id == order_id)
    if for_update:
        query = query.with_for_update()
    order = session.scalars(query).one_or_none()
    if order is None:
        raise NotFound(f"no order {order_id}", field="order_id")
    return order


def find_order_for_payment_intent(session: Session, payment_intent_id: str, order_id: str | None) -> Order | None:
    """The order a PaymentIntent pays for, locked: by the PaymentIntent id, else by metadata.order_id."""
    order = session.scalars(
        select(Order).where(Order.payment_intent_id == payment_intent_id).with_for_update()
    ).one_or_none()
    if order is None and order_id:
        order = session.scalars(select(Order).where(Order.id == order_id).with_for_update()).one_or_none()
        if order is not None and order.payment_intent_id not in (None, payment_intent_id):
            return None
    return order


def _intent_insert(dialect_insert):
    return dialect_insert(OrderPaymentIntent.__table__).on_conflict_do_nothing()


_INSERT_INTENT = {"postgresql": _intent_insert(postgresql_insert), "sqlite": _intent_insert(sqlite_insert)}


def record_payment_intent(session: Session, order: Order, payment_intent_id: str) -> None:
    """Write down, in the caller's transaction, that a payment on the intent is one for the order (once)."""
    session.execute(_INSERT_INTENT[session.get_bind().dialect.name],
                    {"order_id": order.id, "payment_intent_id": payment_intent_id})


# The intents a transaction linked to an order for the first time (`keep_payment_intent`), by session.
_KEPT_INTENTS = "payment_intents_kept"


def keep_payment_intent(session: Session, order: Order, payment_intent_id: str) -> None:
    """Write down that a payment on the intent is one for the order (an intent made outside the service,
    found by its metadata.order_id), in the caller's transaction and, should that transaction roll back,
    again in one of its own right after.

    A handler finds the link before anything that may fail (Stripe unreachable, a database fault); the
    event is then retried, maybe for hours, or dead-lettered, and meanwhile its payment is stored and not
    applied: kept from the first handling, the link keeps the order's hold (`payments_waiting`) all that
    time. The link cannot be written in a transaction of its own while the handler's is open (SQLite has
    one writer, and on PostgreSQL the handler holds the order's row lock that the foreign key needs), so
    it is written once that transaction has ended without a commit. A later run finds it recorded and
    writes nothing more."""
    kept = session.execute(_INSERT_INTENT[session.get_bind().dialect.name],
                           {"order_id": order.id, "payment_intent_id": payment_intent_id}).rowcount
    if not kept:
        return  # recorded before, by checkout or by an earlier run
    pending = session.info.get(_KEPT_INTENTS)
    if pending is None:
        pending = session.info[_KEPT_INTENTS] = []
        sa_event.listen(session, "after_commit", _kept_by_the_commit)
        sa_event.listen(session, "after_soft_rollback", _keep_after_the_rollback)
    pending.append({"order_id": order.id, "payment_intent_id": payment_intent_id})


def _kept_by_the_commit(session: Session) -> None:
    if not session.in_nested_transaction():  # a savepoint released is not committed yet
        session.info[_KEPT_INTENTS].clear()


def _keep_after_the_rollback(session: Session, previous_transaction) -> None:
    if previous_transaction.parent is not None:
        return  # a savepoint: its transaction may still commit, or end here later
    pending = list(session.info[_KEPT_INTENTS])
    session.info[_KEPT_INTENTS].clear()
    if not pending:
        return
    try:
        with session.get_bind().begin() as connection:
            connection.execute(_INSERT_INTENT[connection.dialect.name], pending)
    except Exception as exc:  # noqa: BLE001 - the event is retried anyway, and its next run links them again
        log.warning("payment_intent_link_not_kept", links=pending, error=str(exc))
        return
    log.info("payment_intent_link_kept", links=pending)


def hold_payment_intent(session: Session, order: Order, payment_intent_id: str,
                        client_secret: str | None = None) -> None:
    """The order pays through this intent from now on; the intents it held before stay recorded."""
    order.payment_intent_id = payment_intent_id
    if client_secret is not None:
        order.client_secret = client_secret
    record_payment_intent(session, order, payment_intent_id)


# A succeeded event in one of these states is money taken that a worker has yet to apply.
UNAPPLIED = (EventStatus.RECEIVED, EventStatus.RETRYING, EventStatus.DEAD)


class PaymentWaiting(NamedTuple):
    """A payment for an order that Stripe took and the inbox holds, not yet applied to the order."""

    event_id: str
    status: EventStatus
    payment_intent_id: str


def _unapplied_payment_on(intent_id) -> tuple:
    """SQL: a succeeded event of the intent (a value or a column) that a worker has yet to apply."""
    return (InboxEvent.object_id == intent_id, InboxEvent.type == PAYMENT_SUCCEEDED,
            InboxEvent.status.in_(UNAPPLIED))


def payment_waiting_for(order_id):
    """SQL: whether a payment for the order (`order_id`, a value or a column) is stored and not yet
    applied. Per order, its intents by the primary key, then each one's events by the inbox's
    object_id index: cheap enough for the relay's every sweep."""
    return exists().where(OrderPaymentIntent.order_id == order_id,
                          *_unapplied_payment_on(OrderPaymentIntent.payment_intent_id))


def payments_waiting(session: Session, order_ids) -> dict[str, PaymentWaiting]:
    """For each of these orders that has one, the first payment for it stored and not yet applied, on
    any intent it held. Such an order keeps its hold: the customer paid in time (the expiry sweep
    leaves it, staff cancel is refused until the payment is retried or replayed)."""
    if not order_ids:
        return {}
    rows = session.execute(
        select(OrderPaymentIntent.order_id, InboxEvent.event_id, InboxEvent.status, InboxEvent.object_id)
        .join(InboxEvent, InboxEvent.object_id == OrderPaymentIntent.payment_intent_id)
        .where(OrderPaymentIntent.order_id.in_(list(order_ids)),
               *_unapplied_payment_on(OrderPaymentIntent.payment_intent_id))
        .order_by(InboxEvent.id))
    waiting: dict[str, PaymentWaiting] = {}
    for order_id, event_id, status, intent_id in rows:
        waiting.setdefault(order_id, PaymentWaiting(event_id, status, intent_id))
    return waiting


def payment_waiting(session: Session, order: Order) -> PaymentWaiting | None:
    return payments_waiting(session, [order.id]).get(order.id)


def payment_unapplied_on(session: Session, intent_id: str) -> PaymentWaiting | None:
    """The first payment on the intent that the inbox holds and a worker has yet to apply, whichever
    order it is for: until it is applied, the intent's other money events cannot find the order a
    second tab's intent paid (consumers.handlers.lookup.lock_order_paid_on)."""
    row = session.execute(select(InboxEvent.event_id, InboxEvent.status)
                          .where(*_unapplied_payment_on(intent_id)).order_by(InboxEvent.id).limit(1)).first()
    return PaymentWaiting(row.event_id, row.status, intent_id) if row is not None else None


class PaymentSetAside(NamedTuple):
    """A payment on an intent of the order that the inbox holds and that will never be applied to it."""

    order_id: str
    payment_intent_id: str
    event_id: str
    status: EventStatus     # resolved (by staff, by hand) or ignored (by its handler)
    outcome: str | None     # staff's note, or the handler's reason

    def said(self) -> str:
        how = "was resolved by hand" if self.status is EventStatus.RESOLVED else "was ignored"
        return (f"the payment on payment intent {self.payment_intent_id} (event {self.event_id}) {how} and never "
                f"applied to this order ({self.outcome or 'no note'})")


def payment_set_aside_on(session: Session, intent_id: str) -> PaymentSetAside | None:
    """The order an intent's payment was for, when that payment is stored, closed and not applied (staff
    resolved its dead letter, or its handler ignored it) and the order records the intent
    (order_payment_intents): its disputes are still about that order's customer. The order is the one the
    event named (metadata.order_id, or the one its handler reported), confirmed by the intents table's
    primary key; each look-up is by an index."""
    rows = session.execute(select(InboxEvent.event_id, InboxEvent.status, InboxEvent.outcome, InboxEvent.order_id,
                                  InboxEvent.payload)
                           .where(InboxEvent.object_id == intent_id, InboxEvent.type == PAYMENT_SUCCEEDED,
                                  InboxEvent.status.in_((EventStatus.RESOLVED, EventStatus.IGNORED)))
                           .order_by(InboxEvent.id)).all()
    for event_id, status, outcome, reported, payload in rows:
        try:
            metadata = ((json.loads(payload).get("data") or {}).get("object") or {}).get("metadata") or {}
        except (ValueError, AttributeError):
            metadata = {}
        named = metadata.get("order_id") if isinstance(metadata, dict) else None
        for order_id in dict.fromkeys(candidate for candidate in (named, reported) if isinstance(candidate, str)):
            if session.scalar(select(exists().where(OrderPaymentIntent.order_id == order_id,
                                                    OrderPaymentIntent.payment_intent_id == intent_id))):
                return PaymentSetAside(order_id, intent_id, event_id, status, outcome)
    return None


# At most this many of an order's earlier intents are asked about (the most recently replaced first):
# each is one more round trip to Stripe on a screen the buyer waits for. An order has one or two in
# practice (one per replacement after a decline or an unfinished 3-D Secure), and the older ones are
# the likeliest to be cancelled at Stripe by now.
EARLIER_INTENTS_ASKED = 3
_PAYMENT_CANCELED = "payment_intent.canceled"


def earlier_payment_intents(db: Session, order: Order) -> tuple[str, ...]:
    """The intents the order held (or had made for it) before its current one, that Stripe could still
    have charged, most recently replaced first, at most EARLIER_INTENTS_ASKED.

    The pay step gives an order a new intent when Stripe will not confirm the old one again, and only
    queues the old one's cancellation: until it reaches Stripe, a second tab (or a 3-D Secure dialog left
    open) can still be paid on the old one. One whose `payment_intent.canceled` event is stored is left
    out: Stripe never takes money on a cancelled intent, so once the queued cancellation has gone
    through (seconds, normally) the shop's screens (webhook_app.shop_pages.payment_outcome) ask Stripe
    about the current intent only. The order among them is the order their cancellations were queued
    in, newest first (the outbox, by its order_id index); any never queued (found by a worker through its
    metadata) come last. Each query is by an index and reads a handful of rows."""
    recorded = set(db.scalars(select(OrderPaymentIntent.payment_intent_id)
                              .where(OrderPaymentIntent.order_id == order.id)))
    recorded.discard(order.payment_intent_id)
    if not recorded:
        return ()
    recorded -= set(db.scalars(select(InboxEvent.object_id).where(InboxEvent.object_id.in_(recorded),
                                                                  InboxEvent.type == _PAYMENT_CANCELED)))
    newest_first = []
    for payload in db.scalars(select(OutboxMessage.payload)
                              .where(OutboxMessage.order_id == order.id, OutboxMessage.topic == Topic.PAYMENT_CANCEL)
                              .order_by(OutboxMessage.id.desc())):
        try:
            intent_id = json.loads(payload).get("payment_intent_id")
        except (ValueError, AttributeError):
            continue
        if intent_id in recorded and intent_id not in newest_first:
            newest_first.append(intent_id)
    newest_first += sorted(recorded.difference(newest_first))
    return tuple(newest_first[:EARLIER_INTENTS_ASKED])


def order_recording(session: Session, intent_id: str) -> str | None:
    """The order that records the intent in order_payment_intents (by its payment_intent_id index), whether or
    not any payment on it was stored: a dispute on it is money contested on that order's customer, even when
    the intent's payment_intent.succeeded never reached the service."""
    return session.scalars(select(OrderPaymentIntent.order_id).where(OrderPaymentIntent.payment_intent_id == intent_id)
                           .order_by(OrderPaymentIntent.order_id).limit(1)).first()


def intents_counted_for(session: Session, order: Order) -> set[str]:
    """The intents whose money the order counts in its paid_amount: every one a payment of it was applied on
    (processed for it: `_count_payment` counts each such intent once), the one it holds as a second tab's.
    One paid in another currency is among them, though its money is not in the order's amounts
    (`Order.counts_currency`): a payment of the order all the same, which staff's refund gives back.
    The intent the order holds only once a payment on it was applied: not while that payment waits, after
    staff resolved it by hand or its handler ignored it, nor when it never reached the service."""
    return set(session.scalars(select(InboxEvent.object_id).where(
        InboxEvent.type == PAYMENT_SUCCEEDED, InboxEvent.order_id == order.id,
        InboxEvent.status == EventStatus.PROCESSED, InboxEvent.object_id.is_not(None)).distinct()))


def money_in_other_currencies(session: Session, orders: list[Order]) -> dict[str, dict[str, int]]:
    """For each of the orders that has any, the money its payments in other currencies than its own still
    hold by our records, per currency: paid, less the refunds standing and the disputes lost in that currency.
    The order's own amounts leave it out (`Order.counts_currency`); staff's refund gives it back too (every
    intent in `intents_counted_for`), and a cancel must not forget it. Read from the payments' events, so
    for staff's pages and decisions, not for the worker's hot path."""
    by_id = {order.id: order for order in orders}
    held: dict[str, dict[str, int]] = {}

    def count(order_id: str, currency: object, amount: int) -> None:
        if isinstance(currency, str) and currency and not by_id[order_id].counts_currency(currency):
            per_currency = held.setdefault(order_id, {})
            per_currency[currency.lower()] = per_currency.get(currency.lower(), 0) + amount

    if not by_id:
        return held
    paid_on = set()  # (order, intent): Stripe's duplicate of a succeeded event, or a replay, counts once
    for order_id, intent_id, payload in session.execute(select(
            InboxEvent.order_id, InboxEvent.object_id, InboxEvent.payload).where(
            InboxEvent.type == PAYMENT_SUCCEEDED, InboxEvent.order_id.in_(by_id),
            InboxEvent.status == EventStatus.PROCESSED, InboxEvent.object_id.is_not(None))):
        if (order_id, intent_id) not in paid_on:
            paid_on.add((order_id, intent_id))
            intent = (json.loads(payload).get("data") or {}).get("object") or {}
            count(order_id, intent.get("currency"), intent.get("amount_received") or intent.get("amount") or 0)
    for refund in session.scalars(select(Refund).where(Refund.order_id.in_(by_id),
                                                      Refund.status.not_in(("failed", "canceled")))):
        count(refund.order_id, refund.currency, -refund.amount)
    for dispute in session.scalars(select(Dispute).where(Dispute.order_id.in_(by_id), Dispute.status == "lost")):
        count(dispute.order_id, dispute.currency, -dispute.amount)
    return {order_id: left for order_id, per_currency in held.items()
            if (left := {currency: amount for currency, amount in per_currency.items() if amount > 0})}


def settle_chargebacks(session: Session, order: Order, *, counting: str | None = None) -> int:
    """Make the order's charged_back_amount the sum of its lost disputes on the intents whose money it counts
    (`intents_counted_for`), and return what changed. A dispute lost on an intent whose payment was never
    applied (resolved by hand, ignored, or never received) takes nothing from the order; once staff reopen and
    apply that payment, the order counts it and the same lost dispute comes off it. Computed again from the
    rows each time, so running it twice, or after the dispute handler, counts nothing twice. `counting`: an
    intent whose payment the caller's transaction is counting for the order (its event not marked processed
    yet: the payment handler, for a payment on an order that no longer waits for one). A dispute in another
    currency than the order's takes nothing from it: that payment was never counted (`Order.counts_currency`)."""
    counted = intents_counted_for(session, order) | ({counting} if counting else set())
    lost = session.execute(select(Dispute.payment_intent_id, Dispute.amount, Dispute.currency).where(
        Dispute.order_id == order.id, Dispute.status == "lost")).all()
    settled = sum(amount for intent_id, amount, currency in lost
                  if intent_id in counted and order.counts_currency(currency))
    change = settled - order.charged_back_amount
    if change:
        log.info("chargebacks_settled", charged_back=settled, change=change)
        order.charged_back_amount = settled
    return change


def cancel_ruled_out(waiting: PaymentWaiting) -> str:
    """Why staff may not cancel an order while a payment for it waits to be applied (the CLI's, the console's words)."""
    return (f"a payment for this order is stored and not yet applied (event {waiting.event_id}, status "
            f"{waiting.status.value}): retry or replay it first, then decide")
