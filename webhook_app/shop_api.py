"""The shop's API: products, carts, checkout (reserve stock, create the PaymentIntent) and orders."""
from __future__ import annotations

import hmac

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from consumers.checkout import CheckoutRequest
from consumers.checkout import checkout as checkout_cart
from models.carts import Cart, PriceChangedBeforeAdding, get_cart, reprice_before_adding
from models.catalog import Product
from models.db import transaction
from models.errors import NotFound, OutOfStock
from models.orders import Order, ShippingAddress, get_order
from models.shipping import ACCEPTED_PREFECTURES, canonical_prefecture
from webhook_app import state
from webhook_app.errors import ApiError
from webhook_app.shop_pages import my_page, wants_page
from webhook_app.validation import EMAIL, json_body, postal_code, require_int, require_string, unstorable

bp = Blueprint("shop", __name__)


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
        # A cart filled before the catalog changed currency takes the new currency's products once it
        # holds the new prices: re-priced here (committed), the addition refused saying so, as checkout does.
        changes = reprice_before_adding(session, cart, product)
        if changes:
            repriced = PriceChangedBeforeAdding(cart.id, sku, changes, cart.subtotal, cart.currency)
        else:
            item = cart.add(product, quantity)
            # Adding to a cart holds nothing; checkout reserves. Refuse early what cannot be sold.
            if item.quantity > product.stock.available:
                raise OutOfStock(sku, item.quantity, product.stock.available)
            body = cart.to_dict()
    if changes:
        raise repriced
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
    fields = {key: require_string(shipping, key, field=f"shipping.{key}", max_length=200 if key != "address" else 500,
                                  multiline=key == "address")
              for key in ("name", "postal_code", "prefecture", "address")}
    fields["postal_code"] = postal_code(fields["postal_code"])
    if fields["postal_code"] is None:
        raise ApiError(422, "invalid_input", "shipping.postal_code must look like 123-4567", "shipping.postal_code")
    prefecture = canonical_prefecture(fields["prefecture"])
    if prefecture is None:
        raise ApiError(422, "invalid_input",
                       f"shipping.prefecture {fields['prefecture']!r} is not {ACCEPTED_PREFECTURES}", "shipping.prefecture")
    fields["prefecture"] = prefecture
    return cart_id, email, ShippingAddress(**fields)


def _checkout_body(order: Order) -> dict:
    return {
        "order_id": order.id,
        "payment_intent_id": order.payment_intent_id,
        "client_secret": order.client_secret,
        "access_token": order.access_token,
        "subtotal": order.subtotal,
        "shipping_fee": order.shipping_fee,
        "total": order.total,
        "currency": order.currency,
        "reserved_until": order.reserved_until.isoformat(),
    }


@bp.post("/checkout")
def checkout():
    key = request.headers.get("Idempotency-Key")
    # Checked as it is stored (orders.idempotency_key is 255 characters): padding counts.
    if key is not None and (not key.strip() or len(key) > 255):
        raise ApiError(422, "invalid_input", "Idempotency-Key must be 1 to 255 characters", "Idempotency-Key")
    if key is not None and (problem := unstorable(key)):
        raise ApiError(422, "invalid_input", f"Idempotency-Key {problem}", "Idempotency-Key")
    cart_id, email, shipping = _checkout_input()
    app_state = state()
    order = checkout_cart(app_state.sessions, app_state.settings,
                          CheckoutRequest(cart_id=cart_id, email=email, shipping=shipping, idempotency_key=key))
    return jsonify(_checkout_body(order)), 201


def _presented_token() -> str | None:
    """The order's access token from `?token=` or `Authorization: Bearer …`, if the caller gave one."""
    token = request.args.get("token")
    authorization = request.headers.get("Authorization", "")
    if not token and authorization[:7].lower() == "bearer ":
        token = authorization[7:].strip()
    return token or None


# What GET /orders/<id> shows to anyone who has the order id (design.md's Contract), besides the shipment's
# status and fee. The id is no secret (it is in the my-page link, the mails and Stripe's metadata), so this is
# an allow-list: a field added to Order.to_dict() (the card's decline, staff's review reason) stays the token's.
PUBLIC_ORDER_FIELDS = ("order_id", "status", "subtotal", "shipping_fee", "total", "currency", "lines",
                       "payment_intent_id")


def order_view(order: Order, *, token: str | None, staff: bool = False) -> dict:
    """What GET /orders/<id> shows: everything to the buyer's token or staff, status and totals to anyone.

    A wrong token is refused rather than quietly answered with less, so a customer with a
    mangled link learns why they see no address.
    """
    if not staff and token is not None and not hmac.compare_digest(token.encode(), order.access_token.encode()):
        raise ApiError(403, "forbidden", "this access token does not open this order; use the link from your "
                                         "checkout or order e-mail", "token")
    body = order.to_dict()
    if staff or token is not None:
        body["shipping"] = {"name": order.ship_name, "postal_code": order.ship_postal_code,
                            "prefecture": order.ship_prefecture, "address": order.ship_address}
        return body
    public = {field: body[field] for field in PUBLIC_ORDER_FIELDS}
    public["shipment"] = (None if order.shipment is None
                          else {"status": order.shipment.status.value, "fee": order.shipment.fee})
    return public


@bp.get("/orders/<order_id>")
def show_order(order_id: str):
    if wants_page():
        # The same URL is the buyer's "my page" (the link in the order e-mail) in a browser.
        return my_page(order_id)
    token = _presented_token()
    with state().sessions() as session:
        return jsonify(order_view(get_order(session, order_id), token=token))
