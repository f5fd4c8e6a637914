"""Checkout, the use case: place the order, create its PaymentIntent, abandon it when Stripe fails;
and the shop's pay step, which confirms that intent (replacing it if Stripe will not confirm it again).

Called by the HTTP API (and the shop's screens) with plain values; no web framework here.
Who attached an intent to the order is decided under the order's row lock: a request whose
Stripe call failed never cancels an order that another request (same Idempotency-Key) has
meanwhile given a PaymentIntent, and an intent that arrives for a cancelled order is cancelled.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import stripe
import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from consumers.payments import (IntentNotConfirmable, PaymentGatewayError, PaymentRefused, cancel_payment_intent,
                                confirm_payment_intent, create_payment_intent)
from models.base import utcnow
from models.carts import Cart, CartStatus, get_cart, reprice_cart
from models.catalog import ReservationStatus
from models.db import transaction
from models.errors import Conflict, DomainError, InvalidInput, OutOfStock, PriceChanged
from models.events import Topic, enqueue
from models.history import OrderStatusChange, caused_by, current_cause
from models.logs import describe_error
from models.orders import (Order, OrderStatus, ShippingAddress, get_order, hold_payment_intent, place_order,
                           record_payment_intent, release_reservations)
from models.settings import Settings

log = structlog.get_logger(__name__)

# A replayed Idempotency-Key of an order in one of these states gets no client_secret: it can
# no longer be paid.
CLOSED = frozenset({OrderStatus.CANCELLED, OrderStatus.REFUNDED})
# Orders a buyer can still pay (again, after a declined card).
PAYABLE = frozenset({OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED})
# An intent Stripe will not confirm in these states, on which no money moved, may be replaced by
# a new one for the same order; any other state (succeeded, processing, canceled) never is.
REPLACEABLE_INTENT_STATES = frozenset({"requires_payment_method", "requires_action"})


class CheckoutCancelled(Conflict):
    code = "checkout_cancelled"


class CheckoutInProgress(Conflict):
    code = "checkout_in_progress"


class IdempotencyKeyReused(InvalidInput):
    code = "idempotency_key_reused"


class PaymentProviderUnavailable(DomainError):
    """Stripe failed or passed the deadline; the order was cancelled and its stock released."""

    code = "payment_provider_unavailable"


class PaymentProviderRefused(PaymentProviderUnavailable):
    """Stripe answered and refused to create the payment (not an outage); the order was cancelled and its
    stock released. The API answers it as it answers an unavailable Stripe (502, same code); the shop's
    screens say what was refused (`reason`, Stripe's words)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


class PaymentProviderBusy(DomainError):
    """This process already waits on Stripe for as many checkouts as it allows; nothing was reserved."""

    code = "payment_provider_busy"


@dataclass(frozen=True)
class CheckoutRequest:
    cart_id: str
    email: str
    shipping: ShippingAddress
    idempotency_key: str | None = None
    # A repeated key with another e-mail or address is refused (the API's key, as Stripe's own):
    # answering with the first order would ship it where the caller no longer asked. The shop's
    # screens key on the cart and show the placed order's details, so they pass False.
    same_details: bool = True


class StripeCallSlots:
    """A per-process cap on web requests waiting for Stripe at once.

    Web threads that wait on a stalled Stripe cannot take webhooks; with fewer slots (and
    waiters) than threads, some threads are always free for the webhook endpoint and the
    health checks. So every call to Stripe a web request makes takes a slot: checkout's create,
    the pay step's confirm (and the cancel and create around it), the SetupIntent, the shop's
    screens asking what became of a payment, and the console's refunds. While Stripe answers promptly, a call over
    the cap waits briefly for a slot (a burst of customers is not refused); once every slot is
    held by a call older than Stripe normally takes, Stripe is slow and a checkout is refused at
    once (503), before it reserves. A call that finds no slot raises PaymentProviderBusy.
    """

    # Stripe answers a create in well under this; a call older than it means Stripe is slow.
    SLOW_SECONDS = 1.0

    def __init__(self, limit: int):
        self.limit = limit
        self._semaphore = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._waiting = 0

    def refuse_if_stalled(self) -> None:
        """Refuse a checkout before it reserves anything when every slot waits on a slow Stripe."""
        with self._lock:
            stalled = (len(self._started) >= self.limit
                       and time.monotonic() - max(self._started.values()) > self.SLOW_SECONDS)
        if stalled:
            raise self._busy()

    @contextmanager
    def call(self) -> Iterator[None]:
        """Hold a slot for one call to Stripe (waiting briefly for one while Stripe is quick)."""
        if not self._semaphore.acquire(blocking=False) and not self._wait_for_slot():
            raise self._busy()
        me = threading.get_ident()
        with self._lock:
            self._started[me] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                del self._started[me]
            self._semaphore.release()

    def _wait_for_slot(self) -> bool:
        with self._lock:
            if self._waiting >= self.limit:
                return False
            self._waiting += 1
        try:
            return self._semaphore.acquire(timeout=self.SLOW_SECONDS)
        finally:
            with self._lock:
                self._waiting -= 1

    def _busy(self) -> "PaymentProviderBusy":
        log.warning("stripe_call_refused_busy", limit=self.limit)
        return PaymentProviderBusy(
            "the payment provider is slow to answer and this server is waiting on it for as many checkouts "
            "as it allows; nothing is reserved, please retry in a moment")


_slots: dict[int, StripeCallSlots] = {}
_slots_lock = threading.Lock()


def stripe_call_slots(limit: int) -> StripeCallSlots:
    """The process's slots for a given cap (one set per process, shared by its threads)."""
    with _slots_lock:
        if limit not in _slots:
            _slots[limit] = StripeCallSlots(limit)
        return _slots[limit]


def checkout(sessions: sessionmaker[Session], settings: Settings, request: CheckoutRequest) -> Order:
    """Check a cart out: the order with its PaymentIntent attached (a replayed key: the order it created).

    Raises a DomainError the caller presents: NotFound, InvalidInput, OutOfStock, PriceChanged,
    CheckoutCancelled, CheckoutInProgress, IdempotencyKeyReused, PaymentProviderUnavailable,
    PaymentProviderBusy.
    """
    with caused_by("checkout"):
        return _checkout(sessions, settings, request)


def _checkout(sessions: sessionmaker[Session], settings: Settings, request: CheckoutRequest) -> Order:
    existing = order_for_key(sessions, request.idempotency_key)
    if existing is not None:
        return replay(sessions, settings, existing, request)
    stripe_call_slots(settings.stripe_max_concurrent_calls).refuse_if_stalled()
    try:
        order = place(sessions, settings, request)
    except (OutOfStock, PriceChanged):
        raise
    except (IntegrityError, Conflict):
        # A concurrent request with the same key got there first (the unique key, or the
        # cart it just checked out): answer with its order.
        existing = order_for_key(sessions, request.idempotency_key)
        if existing is None:
            raise
        return replay(sessions, settings, existing, request)
    return pay(sessions, settings, order)


def place(sessions: sessionmaker[Session], settings: Settings, request: CheckoutRequest) -> Order:
    """Reserve the cart's stock and create the order, at the catalog's current prices.

    A line whose price changed since it was added is updated in the cart (committed) and the
    checkout refused with PriceChanged: the customer confirms the new total first.
    """
    with transaction(sessions) as session:
        cart = get_cart(session, request.cart_id, for_update=True)
        if cart.status is not CartStatus.OPEN:
            raise Conflict(f"cart {cart.id} is already checked out", field="cart_id")
        changes = reprice_cart(session, cart)
        if not changes:
            order = place_order(session, cart, email=request.email, shipping=request.shipping,
                                idempotency_key=request.idempotency_key,
                                reservation_ttl_seconds=settings.reservation_ttl_seconds)
        else:
            subtotal, currency = cart.subtotal, cart.currency
    if changes:
        log.info("checkout_refused_price_changed", cart_id=request.cart_id, lines_changed=len(changes))
        raise PriceChanged(request.cart_id, changes, subtotal, currency)
    structlog.contextvars.bind_contextvars(order_id=order.id)
    log.info("order_placed", total=order.total, currency=order.currency)
    return order


def pay(sessions: sessionmaker[Session], settings: Settings, order: Order) -> Order:
    """Create the order's PaymentIntent at Stripe and attach it; abandon the order if Stripe fails."""
    try:
        intent = _create_intent(settings, order)
    except PaymentProviderBusy:
        # No call was made: the stock goes back, and there is nothing to cancel at Stripe.
        winner = abandon(sessions, order.id, "payment provider busy", stripe_called=False)
        if winner is None:
            raise
        return winner
    except PaymentGatewayError as exc:
        return _given_up(sessions, order.id, exc)
    return attach(sessions, order.id, intent)


def _given_up(sessions: sessionmaker[Session], order_id: str, exc: PaymentGatewayError) -> Order:
    """Stripe failed to create the order's intent: the order abandoned (502), unless another request
    attached one meanwhile (its order is the answer)."""
    winner = abandon(sessions, order_id, str(exc))
    if winner is None:
        # The message goes to the public client: the SDK's text names Stripe's (or the egress
        # proxy's) host, port and path, or quotes a masked API key. abandon() logged it.
        if isinstance(exc, PaymentRefused):
            raise PaymentProviderRefused("Stripe refused to create the payment; the stock was released",
                                         exc.reason) from exc
        raise PaymentProviderUnavailable("could not create the payment with Stripe; the stock was released, "
                                         "please retry") from exc
    return winner


def _create_intent(settings: Settings, order: Order, *, replacing: str | None = None) -> stripe.PaymentIntent:
    with stripe_call_slots(settings.stripe_max_concurrent_calls).call():
        return create_payment_intent(order_id=order.id, amount=order.total, currency=order.currency,
                                     email=order.email, deadline_seconds=settings.stripe_deadline_seconds,
                                     replacing=replacing)


def confirm_payment(sessions: sessionmaker[Session], settings: Settings, order_id: str,
                    payment_method_id: str) -> stripe.PaymentIntent:
    """Pay for a placed order with the buyer's PaymentMethod: confirm its PaymentIntent on the server.

    After a declined card the buyer pays again with another one on the same order. Stripe lets
    the same intent be confirmed again; an intent that can no longer be confirmed though no money
    moved on it (localstripe keeps a declined intent unconfirmable) is replaced by a new intent
    for the same order, the same amount and the same held stock (replace_payment_intent), and
    that one is confirmed. Raises CardDeclined, CheckoutCancelled (the order can no longer be
    paid), IntentNotConfirmable (already paid or cancelled at Stripe), PaymentRefused,
    PaymentGatewayError, PaymentProviderBusy (this process already waits on Stripe for as many calls
    as it allows; the call that found no slot was not sent).
    """
    with caused_by("checkout"):
        with sessions() as session:
            order = get_order(session, order_id)
            if order.status not in PAYABLE or order.payment_intent_id is None:
                raise _cancelled(session, order)
            # Paid after its hold ran out, the order would be cancelled by the expiry sweep and its
            # stock sold again, the money taken all the same: refused before Stripe is asked, and so is a
            # confirmation that could still be waiting for Stripe's answer when the hold runs out.
            lapsed = hold_lapsed(order, within_seconds=settings.stripe_deadline_seconds + 1)
            if lapsed is not None:
                raise lapsed
            intent_id = order.payment_intent_id
        try:
            return _keep_the_hold_for(sessions, order_id, _confirm(settings, intent_id, payment_method_id))
        except IntentNotConfirmable as exc:
            if exc.status not in REPLACEABLE_INTENT_STATES:
                raise
            old_status = exc.status
            log.info("payment_intent_not_confirmable", order_id=order_id, payment_intent=intent_id,
                     intent_status=old_status)
        new_intent_id = replace_payment_intent(sessions, settings, order_id, intent_id, old_status)
        if old_status == "requires_action":
            _cancel_before_paying_again(settings, order_id, intent_id)
        return _keep_the_hold_for(sessions, order_id, _confirm(settings, new_intent_id, payment_method_id))


# Intent statuses after a confirmation in which money is taken or on its way (or the buyer is in 3-D
# Secure now): Stripe's event follows, and until it is stored the expiry sweep knows nothing of it.
PAYMENT_UNDER_WAY = frozenset({"succeeded", "processing", "requires_capture", "requires_action"})
# How long such an order's hold is kept from then on, at least: longer than a 3-D Secure dialog and
# Stripe's webhook delays, and short, since a buyer who leaves 3-D Secure unfinished holds the stock as long.
PAYMENT_UNDER_WAY_HOLD = timedelta(minutes=10)


def _keep_the_hold_for(sessions: sessionmaker[Session], order_id: str, intent: stripe.PaymentIntent):
    """The intent the pay step confirmed, after its order's hold is made to last PAYMENT_UNDER_WAY_HOLD more
    when Stripe took (or is taking) the money. The sweep keeps a hold only for a payment whose event is
    stored: a hold that ran out between Stripe's answer and its event would have been cancelled, its units
    sold to another buyer, and the buyer charged for them. Under the order's lock, as the sweep decides."""
    if intent.status not in PAYMENT_UNDER_WAY:
        return intent
    try:
        with transaction(sessions) as session:
            order = get_order(session, order_id, for_update=True)
            if order.status not in PAYABLE:  # paid already (the event came first), or cancelled meanwhile
                return intent
            until = utcnow() + PAYMENT_UNDER_WAY_HOLD
            if order.reserved_until >= until:
                return intent
            active = [r for r in order.reservations if r.status is ReservationStatus.ACTIVE]
            if not active:  # the sweep released them in the last moment: the late event flags the order
                return intent
            order.reserved_until = until
            for reservation in active:
                reservation.expires_at = until
    except SQLAlchemyError as exc:
        # The card is charged whatever our database says now: the buyer is told so (the pay step's answer),
        # and a hold that runs out before Stripe's event is what the late event flags for staff.
        log.error("hold_not_kept_payment_under_way", order_id=order_id, payment_intent=intent.id,
                  error=describe_error(exc))
        return intent
    log.info("hold_kept_payment_under_way", order_id=order_id, payment_intent=intent.id,
             intent_status=intent.status, reserved_until=until.isoformat())
    return intent


def _cancel_before_paying_again(settings: Settings, order_id: str, intent_id: str) -> None:
    """Cancel at Stripe, now, an intent that waited for 3-D Secure, before another intent of the
    order is confirmed: its dialog may still be open in another tab, and the buyer could complete
    both (the cancellation the replacement queued comes later). If it was paid meanwhile, the
    other is not confirmed: IntentNotConfirmable, as for any intent paid already."""
    with stripe_call_slots(settings.stripe_max_concurrent_calls).call():
        outcome = cancel_payment_intent(intent_id)  # PaymentGatewayError, PaymentProviderBusy: nothing confirmed
    status = outcome.removeprefix("not cancellable: already ")
    if status in ("succeeded", "processing", "requires_capture"):
        log.warning("payment_intent_paid_meanwhile", order_id=order_id, payment_intent=intent_id,
                    intent_status=status)
        raise IntentNotConfirmable(f"payment intent {intent_id} was paid meanwhile ({status})",
                                   payment_intent_id=intent_id, status=status)


def _confirm(settings: Settings, intent_id: str, payment_method_id: str) -> stripe.PaymentIntent:
    with stripe_call_slots(settings.stripe_max_concurrent_calls).call():
        return confirm_payment_intent(payment_intent_id=intent_id, payment_method_id=payment_method_id,
                                      deadline_seconds=settings.stripe_deadline_seconds)


def replace_payment_intent(sessions: sessionmaker[Session], settings: Settings, order_id: str, old_intent_id: str,
                           old_status: str | None = None) -> str:
    """Give a payable order a new PaymentIntent in place of one Stripe will no longer confirm; its id.

    The new intent is created first (same amount, `metadata.order_id`) and switched in under the
    order's lock, only while the order is still payable, still holds `old_intent_id` and still
    holds its stock; the old intent's cancellation at Stripe is queued in that same transaction.
    The old intent stays recorded as one of the order's: paid before that cancellation reaches
    Stripe (another tab), its stored payment keeps the order's hold as one on the new intent would.
    Switching before cancelling matters: Stripe's `payment_intent.canceled` for the old intent
    then finds an order holding another intent and is ignored, instead of cancelling the order.
    A late event for the old intent is ignored the same way (a succeeded one is flagged for a
    person). A request that lost the race to another replacing the same intent uses the winner's
    intent and has its own cancelled. Raises CheckoutCancelled when the order can no longer be
    paid, PaymentRefused / PaymentGatewayError when Stripe cannot create the new intent (nothing
    changed: the order keeps its old intent).
    """
    with sessions() as session:
        order = get_order(session, order_id)
        if order.status in PAYABLE and order.payment_intent_id not in (None, old_intent_id):
            return order.payment_intent_id  # replaced already, by a request that got here first
        problem = _not_replaceable(session, order, old_intent_id)
        if problem is not None:
            raise problem
    intent = _create_intent(settings, order, replacing=old_intent_id)
    with transaction(sessions) as session:
        order = get_order(session, order_id, for_update=True)
        problem = _not_replaceable(session, order, old_intent_id)
        if problem is None:
            hold_payment_intent(session, order, intent.id, intent.client_secret)
            # The status stays: the history says why the order pays through another intent now.
            order.status_changes.add(OrderStatusChange(
                from_status=order.status.value, to_status=order.status.value, cause=current_cause(),
                reason=f"payment intent {old_intent_id} replaced by {intent.id} "
                       f"(Stripe would not confirm it again: {old_status or 'unknown state'})"))
            queue_intent_cancellation(session, order, payment_intent_id=old_intent_id)
            current = intent.id
        else:
            current = order.payment_intent_id
            if current != intent.id:
                queue_intent_cancellation(session, order, payment_intent_id=intent.id)
                record_payment_intent(session, order, intent.id)  # created for it, payable until cancelled
            # Another request replaced the same intent first: pay through the one it attached.
            if order.status in PAYABLE and current is not None and current != old_intent_id:
                problem = None
    if problem is not None:
        log.warning("payment_intent_not_replaced", order_id=order_id, payment_intent=old_intent_id,
                    reason=problem.message)
        raise problem
    structlog.contextvars.bind_contextvars(payment_intent=current)
    log.info("payment_intent_replaced", order_id=order_id, old_payment_intent=old_intent_id,
             payment_intent=current)
    return current


def _not_replaceable(session: Session, order: Order, old_intent_id: str) -> CheckoutCancelled | None:
    """Why the order may not get a new intent in place of `old_intent_id` (None: it may)."""
    if order.status not in PAYABLE:
        return _cancelled(session, order)
    if order.payment_intent_id != old_intent_id:
        return CheckoutCancelled(f"order {order.id} no longer pays through payment intent {old_intent_id}",
                                 field="payment_intent_id")
    return hold_lapsed(order)


def hold_lapsed(order: Order, *, within_seconds: float = 0) -> CheckoutCancelled | None:
    """Why the order can no longer be paid for its stock: its hold ran out, or runs out within
    `within_seconds` (a confirmation that may take that long must not outlast it). None: it holds it."""
    if order.reserved_until <= utcnow() + timedelta(seconds=within_seconds) \
            or any(r.status is not ReservationStatus.ACTIVE for r in order.reservations):
        return CheckoutCancelled(f"order {order.id} no longer holds its stock", field="order_id")
    return None


def attach(sessions: sessionmaker[Session], order_id: str, intent: stripe.PaymentIntent) -> Order:
    """Store the intent on the order, under its lock; whoever attached one first wins.

    An intent that arrives for an order cancelled meanwhile (its checkout was abandoned, its
    hold expired) must not stay payable: its cancellation is queued with the refusal. Either way
    the intent is recorded as one of the order's (`OrderPaymentIntent`): until its cancellation
    reaches Stripe it can be paid, and a payment on it keeps the order's hold.
    """
    with transaction(sessions) as session:
        order = get_order(session, order_id, for_update=True)
        if order.payment_intent_id is None and order.status is OrderStatus.PENDING_PAYMENT:
            hold_payment_intent(session, order, intent.id, intent.client_secret)
            attached = True
        else:
            attached = False
            if order.payment_intent_id != intent.id:
                queue_intent_cancellation(session, order, payment_intent_id=intent.id)
                record_payment_intent(session, order, intent.id)  # created for it, payable until cancelled
        status, current = order.status, order.payment_intent_id
        refusal = _cancelled(session, order) if status in CLOSED else None
    if attached:
        structlog.contextvars.bind_contextvars(payment_intent=intent.id)
        log.info("payment_intent_created", order_id=order_id, amount=order.total)
        return order
    if status in CLOSED:
        log.warning("payment_intent_for_closed_order", order_id=order_id, payment_intent=intent.id,
                    order_status=status.value)
        raise refusal
    log.info("payment_intent_already_attached", order_id=order_id, payment_intent=current)
    return order


def abandon(sessions: sessionmaker[Session], order_id: str, reason: str, *, stripe_called: bool = True) -> Order | None:
    """Stripe failed: unless another request attached an intent meanwhile, cancel and release.

    Decided under the order's lock. If an intent is attached, that request won: its order is
    returned and nothing is cancelled. Otherwise (None) the order is cancelled, its stock
    released, its cart reopened and its key freed for a fresh try; and since Stripe may have
    created an intent whose answer never came back, the cancellation of every intent of this
    order is queued in the same transaction.
    """
    with transaction(sessions) as session:
        order = get_order(session, order_id, for_update=True)
        if order.payment_intent_id is not None and order.status not in CLOSED:
            log.info("checkout_completed_by_another_request", order_id=order_id,
                     payment_intent=order.payment_intent_id)
            return order
        if order.status in (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED):
            released = release_reservations(session, order)
            order.cancel(f"payment provider unavailable: {reason}")
            session.get(Cart, order.cart_id).status = CartStatus.OPEN
            log.warning("checkout_abandoned", order_id=order_id, reason=reason, units_released=released)
        order.idempotency_key = None  # a retry with the same key starts afresh
        if stripe_called or order.payment_intent_id:
            queue_intent_cancellation(session, order, payment_intent_id=order.payment_intent_id)
    return None


def replay(sessions: sessionmaker[Session], settings: Settings, order: Order, request: CheckoutRequest) -> Order:
    """Answer a repeated Idempotency-Key with the order it created, never a second order."""
    if order.cart_id != request.cart_id:
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different cart", field="Idempotency-Key")
    shipping = request.shipping
    placed_for = (order.email, order.ship_name, order.ship_postal_code, order.ship_prefecture, order.ship_address)
    if request.same_details and placed_for != (request.email, shipping.name, shipping.postal_code,
                                               shipping.prefecture, shipping.address):
        raise IdempotencyKeyReused(f"this Idempotency-Key placed order {order.id} with another e-mail or shipping "
                                   f"address; use a new key for a new order", field="Idempotency-Key")
    if order.status in CLOSED:
        with sessions() as session:
            raise _cancelled(session, order)
    if order.payment_intent_id is not None:
        return order
    if order.status is not OrderStatus.PENDING_PAYMENT:
        with sessions() as session:
            raise _cancelled(session, order)
    # The first request stopped between placing the order and storing its intent (or is still
    # there): the order's idempotency key at Stripe gives back the same intent.
    try:
        intent = _create_intent(settings, order)
    except PaymentProviderBusy:
        raise PaymentProviderBusy(
            f"the payment provider is slow to answer and this server is waiting on it for as many checkouts as it "
            f"allows; order {order.id} keeps its stock, please retry with the same Idempotency-Key in a moment"
        ) from None
    except PaymentGatewayError as exc:
        if _first_request_may_still_run(settings, order):
            # Stripe refuses a second request with a key whose first is still being answered.
            raise CheckoutInProgress(f"the checkout for order {order.id} with this Idempotency-Key is still in "
                                     f"progress", field="Idempotency-Key") from exc
        # The first request died: no one else will release the stock before the hold runs out.
        return _given_up(sessions, order.id, exc)
    return attach(sessions, order.id, intent)


def _first_request_may_still_run(settings: Settings, order: Order) -> bool:
    """Whether the request that placed the order may still be waiting for Stripe: placed less than its
    wait for a call slot and its deadline ago (and a few seconds for the clocks and the commit)."""
    return utcnow() - order.created_at < timedelta(seconds=settings.stripe_deadline_seconds + StripeCallSlots.SLOW_SECONDS + 5)


def order_for_key(sessions: sessionmaker[Session], key: str | None) -> Order | None:
    if not key:
        return None
    with sessions() as session:
        return session.scalars(select(Order).where(Order.idempotency_key == key)).one_or_none()


def queue_intent_cancellation(session: Session, order: Order, *, payment_intent_id: str | None) -> None:
    """Queue, in the caller's transaction, the cancellation at Stripe of the order's intent.

    Without an id, the worker finds the order's intents at Stripe by their metadata, among
    those created since the order was placed (a minute earlier, for clocks that disagree).
    """
    body = {"order_id": order.id}
    if payment_intent_id:
        body["payment_intent_id"] = payment_intent_id
    else:
        body["created_since"] = int(order.created_at.timestamp()) - 60
    enqueue(session, Topic.PAYMENT_CANCEL, body)


def _cancelled(session: Session, order: Order) -> CheckoutCancelled:
    """The refusal for a request whose order can no longer be paid, saying what really checks its cart out
    again. abandon() (Stripe failed) reopens the cart and frees the order's key: the same request, same
    key, places a new order. An order cancelled otherwise keeps its key, which answers with this refusal
    for good: the expiry sweep reopens the cart for a new key; staff cancel leaves it checked out."""
    cart = session.get(Cart, order.cart_id)
    cart_open = cart is not None and cart.deleted_at is None and cart.status is CartStatus.OPEN
    if cart_open and order.idempotency_key is None:
        next_step = ("its cart is open again and the order gave up its Idempotency-Key: retry the request, with "
                     "the same key, to check the cart out anew")
    elif cart_open:
        next_step = ("its cart is open again: check it out anew with a new Idempotency-Key (this one keeps "
                     "answering with this order)")
    else:
        next_step = "its cart is not open for another checkout (checked out again, or closed with the order)"
    reason = order.cancel_reason
    return CheckoutCancelled(f"order {order.id} of this Idempotency-Key is {order.status.value}"
                             f"{f' ({reason})' if reason else ''}; {next_step}", field="Idempotency-Key")
