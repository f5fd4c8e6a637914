"""The shop's API: products, carts, checkout (reserve stock, create the PaymentIntent) and orders."""
from __future__ import annotations

import structlog
from flask import Blueprint, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from consumers.payments import PaymentGatewayError, create_payment_intent
from models.carts import Cart, CartStatus, get_cart
from models.catalog import Product
from models.db import transaction
from models.errors import Conflict, NotFound, OutOfStock
from models.orders import Order, OrderStatus, ShippingAddress, get_order, place_order, release_reservations
from models.shipping import canonical_prefecture
from webhook_app import state
from webhook_app.errors import ApiError
from webhook_app.validation import EMAIL, POSTAL_CODE, json_body, require_int, require_string

bp = Blueprint("shop", __name__)
log = structlog.get_logger(__name__)


def _product(session, sku: str) -> Product:
    product = session.get(Product, sku)
    if product is None:
        raise NotFound(f"no product with sku {sku}", field="sku")
    return product


@bp.get("/products")
def list_products():
    with state().sessions() as session:
        return jsonify([p.to_dict() for p in session.scalars(select(Product).order_by(Product.sku)).unique()])


@bp.get("/products/<sku>")
def show_product(sku: str):
    with state().sessions() as session:
        return jsonify(_product(session, sku).to_dict())


@bp.post("/carts")
def create_cart():
    with transaction(state().sessions) as session:
        cart = Cart()
        session.add(cart)
        session.flush()
        body = cart.to_dict()
    return jsonify(body), 201


@bp.get("/carts/<cart_id>")
def show_cart(cart_id: str):
    with state().sessions() as session:
        return jsonify(get_cart(session, cart_id).to_dict())


@bp.post("/carts/<cart_id>/items")
def add_cart_item(cart_id: str):
    data = json_body()
    sku = require_string(data, "sku", max_length=64)
    quantity = require_int(data, "quantity")
    with transaction(state().sessions) as session:
        cart = get_cart(session, cart_id, for_update=True)
        product = _product(session, sku)
        item = cart.add(product, quantity)
        # Adding to a cart holds nothing; checkout reserves. Refuse early what cannot be sold.
        if item.quantity > product.stock.available:
            raise OutOfStock(sku, item.quantity, product.stock.available)
        body = cart.to_dict()
    return jsonify(body), 200


def _checkout_input() -> tuple[str, str, ShippingAddress]:
    data = json_body()
    cart_id = require_string(data, "cart_id", max_length=40)
    email = require_string(data, "email", max_length=254)
    if not EMAIL.match(email):
        raise ApiError(422, "invalid_input", "email is not a valid e-mail address", "email")
    shipping = data.get("shipping")
    if not isinstance(shipping, dict):
        raise ApiError(422, "invalid_input", "shipping must be an object with name, postal_code, prefecture, address",
                       "shipping")
    fields = {key: require_string(shipping, key, field=f"shipping.{key}", max_length=200 if key != "address" else 500)
              for key in ("name", "postal_code", "prefecture", "address")}
    if not POSTAL_CODE.match(fields["postal_code"]):
        raise ApiError(422, "invalid_input", "shipping.postal_code must look like 123-4567", "shipping.postal_code")
    prefecture = canonical_prefecture(fields["prefecture"])
    if prefecture is None:
        raise ApiError(422, "invalid_input", f"shipping.prefecture {fields['prefecture']!r} is not a Japanese prefecture",
                       "shipping.prefecture")
    fields["prefecture"] = prefecture
    return cart_id, email, ShippingAddress(**fields)


def _checkout_body(order: Order) -> dict:
    return {
        "order_id": order.id,
        "payment_intent_id": order.payment_intent_id,
        "client_secret": order.client_secret,
        "subtotal": order.subtotal,
        "shipping_fee": order.shipping_fee,
        "total": order.total,
        "currency": order.currency,
        "reserved_until": order.reserved_until.isoformat(),
    }


def _replay(order: Order, cart_id: str):
    """Answer a repeated Idempotency-Key with the order it created, never a second order."""
    if order.cart_id != cart_id:
        raise ApiError(422, "idempotency_key_reused",
                       "this Idempotency-Key was used for a different cart", "Idempotency-Key")
    if order.payment_intent_id is None:
        if order.status is not OrderStatus.PENDING_PAYMENT:
            raise ApiError(409, "checkout_cancelled",
                           f"order {order.id} of this Idempotency-Key is {order.status.value} "
                           f"({order.cancel_reason}); start a new checkout with a new key", "Idempotency-Key")
        # The first request stopped between creating the PaymentIntent and storing it (or is
        # still there): the order's idempotency key at Stripe gives back the same intent.
        try:
            order = _attach_payment_intent(order)
        except PaymentGatewayError:
            raise ApiError(409, "checkout_in_progress",
                           f"the checkout for order {order.id} with this Idempotency-Key is still in progress",
                           "Idempotency-Key")
    return jsonify(_checkout_body(order)), 201


def _by_key(key: str | None) -> Order | None:
    if not key:
        return None
    with state().sessions() as session:
        return session.scalars(select(Order).where(Order.idempotency_key == key)).one_or_none()


def _attach_payment_intent(order: Order) -> Order:
    intent = create_payment_intent(order_id=order.id, amount=order.total, currency=order.currency, email=order.email)
    with transaction(state().sessions) as session:
        order = get_order(session, order.id, for_update=True)
        if order.payment_intent_id is not None:
            return order  # a concurrent retry of the same checkout stored it first
        order.payment_intent_id = intent.id
        order.client_secret = intent.client_secret
    structlog.contextvars.bind_contextvars(payment_intent=intent.id)
    log.info("payment_intent_created", amount=order.total)
    return order


@bp.post("/checkout")
def checkout():
    app_state = state()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key.strip()) <= 255:
        raise ApiError(422, "invalid_input", "Idempotency-Key must be 1 to 255 characters", "Idempotency-Key")
    cart_id, email, shipping = _checkout_input()
    existing = _by_key(key)
    if existing is not None:
        return _replay(existing, cart_id)
    try:
        with transaction(app_state.sessions) as session:
            cart = get_cart(session, cart_id, for_update=True)
            order = place_order(session, cart, email=email, shipping=shipping, idempotency_key=key,
                                reservation_ttl_seconds=app_state.settings.reservation_ttl_seconds)
    except (IntegrityError, Conflict):
        # A concurrent request with the same key got there first (the unique key, or the
        # cart it just checked out): answer with its order.
        existing = _by_key(key)
        if existing is None:
            raise
        return _replay(existing, cart_id)

    structlog.contextvars.bind_contextvars(order_id=order.id)
    log.info("order_placed", total=order.total, currency=order.currency)
    try:
        order = _attach_payment_intent(order)
    except PaymentGatewayError as exc:
        _abandon(order.id, str(exc))
        raise ApiError(502, "payment_provider_unavailable",
                       f"could not create the payment with Stripe ({exc}); the stock was released, please retry")
    return jsonify(_checkout_body(order)), 201


def _abandon(order_id: str, reason: str) -> None:
    """Stripe failed: release the stock, cancel the order, reopen the cart for another try."""
    with transaction(state().sessions) as session:
        order = get_order(session, order_id, for_update=True)
        release_reservations(session, order)
        order.cancel(f"payment provider unavailable: {reason}")
        order.idempotency_key = None  # a retry with the same key starts afresh
        session.get(Cart, order.cart_id).status = CartStatus.OPEN
    log.warning("checkout_abandoned", reason=reason)


@bp.get("/orders/<order_id>")
def show_order(order_id: str):
    with state().sessions() as session:
        return jsonify(get_order(session, order_id).to_dict())
