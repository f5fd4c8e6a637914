"""The shop's screens: products, cart, information, confirmation (Stripe.js), complete, my page.

Server-rendered; the only script is static/shop.js, which collects the card with Stripe.js on
the confirmation screen. "Pay" places the order through the same checkout use case as
`POST /checkout`; the card goes from the browser to Stripe, and the server confirms the
order's PaymentIntent with the PaymentMethod Stripe.js returns (3-D Secure is finished by
Stripe.js in the page). An order is confirmed only once the worker has recorded Stripe's
webhook; until then the complete and confirmation screens ask Stripe what became of the
payment (payment_outcome), so an answer lost on the way never leaves them telling an old story.
An order the expiry sweep cancelled while its card was being charged is asked about too (late_payment):
never shown as plain "cancelled", and its reopened cart places no second order while it holds money.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import structlog
from flask import (Blueprint, current_app, flash, jsonify, make_response, redirect, render_template, request,
                   session, url_for)
from flask_wtf.csrf import CSRFError
from sqlalchemy import func, select

from consumers.checkout import (CheckoutCancelled, CheckoutInProgress, CheckoutRequest, IdempotencyKeyReused,
                                PaymentProviderBusy, PaymentProviderRefused, PaymentProviderUnavailable,
                                confirm_payment, hold_lapsed, stripe_call_slots)
from consumers.checkout import checkout as checkout_cart
from consumers.payments import (CardDeclined, IntentNotConfirmable, PaymentGatewayError, PaymentRefused,
                                create_setup_intent, retrieve_payment_intent)
from models.carts import (LARGEST_CHARGE, MAX_QUANTITY, Cart, CartStatus, CurrencyMismatch, TotalTooSmall, get_cart,
                          reprice_before_adding)
from models.catalog import Product
from models.catalog_file import localized_product_names
from models.db import transaction
from models.errors import DomainError, InvalidInput, NotFound, OutOfStock, PriceChanged, TotalTooLarge
from models.history import OrderStatusChange
from models.orders import (HOLD_RAN_OUT, Order, OrderStatus, PaymentWaiting, ShippingAddress, earlier_payment_intents,
                           get_order, payment_waiting)
from models.shipping import PREFECTURES, canonical_prefecture, load_shipping_table
from webhook_app import state
from webhook_app.admin import csrf
from webhook_app.shop_text import current_language, heading, local_time, prefecture_label, price, translate
from webhook_app.validation import EMAIL, json_value_if_sent, postal_code, unstorable

log = structlog.get_logger(__name__)

bp = Blueprint("shop_pages", __name__)

# Orders the buyer can still pay: the confirmation screen keeps offering the card field.
PAYABLE = (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED)
# Stripe's ids are letters, digits and underscores; up to 255 characters, as Stripe allows.
PAYMENT_METHOD_ID = re.compile(r"pm_[A-Za-z0-9_]{1,252}")
# The checkout's step bar (layout.html): 1 cart, 2 information, then these two.
CONFIRMATION_STEP, COMPLETE_STEP = 3, 4   # the card is entered at the confirmation
# "Only N left" below this many.
FEW_LEFT = 5
BUYER_FIELDS = ("name", "email", "postal_code", "prefecture", "address")
MAX_LENGTH = {"name": 200, "email": 254, "postal_code": 200, "prefecture": 200, "address": 500}
UNSTORABLE_TEXT = {"email": "error_email", "postal_code": "error_postal_code", "prefecture": "error_prefecture"}
# The confirmation form's field holding the fingerprint of what the screen showed (PayPlaces).
SHOWN_FIELD = "shown_fingerprint"
# The information form's language button sends this: show the form again in the other language.
SWITCH_LANGUAGE_FIELD = "switch_language"


# --- the request's language, CSRF and headers -----------------------------------------------

@bp.before_request
def _protect_forms():
    if request.method == "POST":
        csrf.protect()


def _render(template: str, **context) -> str:
    """A shop template with the request's language and the formatting helpers."""
    language = current_language()
    names = _product_names(language)
    other_language = "en" if language == "ja" else "ja"
    return render_template(f"shop/{template}", lang=language, price=price, other_lang=other_language,
                           language_href=_with_language(other_language),
                           t=lambda key, **values: translate(key, language, **values),
                           heading=lambda key: heading(key, language),
                           product_name=lambda sku, name: names.get(sku) or name,
                           prefecture_label=lambda name: prefecture_label(name, language),
                           local_time=lambda moment: local_time(moment, language), **context)


def _t(key: str, **values) -> str:
    return translate(key, current_language(), **values)


def _message_page(heading_key: str, message_key: str | None = None, **context) -> str:
    """A page that only says something (an error, a refused link): its heading from `heading_key`, with the
    phrase breaks of every heading (shop_text.heading), then the sentence of `message_key` if it says more."""
    title = _t(heading_key)
    return _render("message.html", title=title, heading_key=heading_key,
                   message=_t(message_key) if message_key else title, **context)


def _with_language(language: str) -> str:
    """This screen's address in another language: `lang` changed, every other query argument kept
    (an order's token: without it the complete screen refuses and my page hides the delivery details)."""
    arguments = request.args.copy()
    arguments["lang"] = language
    return "?" + urlencode(list(arguments.items(multi=True)))


@lru_cache(maxsize=8)
def _digest_of(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def _script_url(filename: str) -> str:
    """A static script's URL naming its content: a page always runs the script written for it, never a
    copy the browser kept from before a deploy (the pay step refuses what an older shop.js sends)."""
    path = Path(current_app.static_folder) / filename
    stat = path.stat()
    return url_for("static", filename=filename, v=_digest_of(str(path), stat.st_mtime_ns, stat.st_size))


def _product_names(language: str) -> dict[str, str]:
    """{sku: name} in the buyer's language from the catalog file; {} (the catalog's names) without one."""
    catalog_file = state().settings.catalog_file
    if not catalog_file:
        return {}
    try:
        return localized_product_names(Path(catalog_file), language)
    except (OSError, DomainError) as exc:
        # A missing or broken file costs the translations, never the page.
        log.warning("catalog_file_unreadable", catalog_file=catalog_file, error=str(exc)[:200])
        return {}


def _product_name(sku: str, name: str) -> str:
    return _product_names(current_language()).get(sku) or name


def _stripe_origin() -> str:
    parts = urlsplit(state().settings.stripe_js_url)
    return f"{parts.scheme}://{parts.netloc}"


@bp.after_request
def _shop_headers(response):
    # Personal data and per-buyer totals: never cached by a proxy; scripts from us and Stripe only.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    stripe_origin = _stripe_origin()
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'self' {stripe_origin}; "
        f"connect-src 'self' {stripe_origin} https://api.stripe.com; "
        f"frame-src {stripe_origin} https://js.stripe.com https://hooks.stripe.com; "
        "img-src 'self' data:; style-src 'self' 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
    return response


@bp.errorhandler(CSRFError)
def _form_expired(exc: CSRFError):
    if _wants_json():
        return jsonify({"error": {"code": "csrf_failed", "message": _t("form_expired")}}), 400
    return _message_page("form_expired"), 400


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound):
    return not_found_page()


def not_found_page():
    """The shop's "page not found", in the buyer's language (also for an address no route matches)."""
    return _message_page("not_found"), 404


# An error page's title and sentence by status (webhook_app.errors decides who gets one); any
# other status gets the "could not be completed" pair. Never the error's own message: that is
# written for developers and may name internals.
ERROR_TEXT = {400: "error_bad_request", 405: "error_method", 413: "error_too_large", 422: "error_bad_request",
              500: "error_internal", 502: "error_unavailable", 503: "error_unavailable"}


def error_page(status: int):
    """The shop's page for an error answer to a browser, in the buyer's language, with the way home."""
    if status == 404:
        page = not_found_page()
    else:
        key = ERROR_TEXT.get(status, "error_other")
        page = _message_page(f"{key}_title", key, back_to="back_to_shop", step=None), status
    # Also for an address no route of the shop matches (no blueprint, so no after_request of ours ran).
    return _shop_headers(make_response(page))


def _wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json"


# --- the buyer's cart and order, remembered in the signed session cookie ----------------------

def _session_cart(db, *, create: bool = False) -> Cart | None:
    cart_id = session.get("cart_id")
    cart = None
    if cart_id:
        try:
            cart = get_cart(db, cart_id)
        except NotFound:
            cart = None
    if cart is None and create:
        cart = Cart()
        db.add(cart)
        db.flush()
        session["cart_id"] = cart.id
        session.pop("order", None)
    return cart


def _session_order(db) -> Order | None:
    """The order this buyer placed from the session's cart, if it belongs to that cart."""
    remembered = session.get("order")
    if not remembered:
        return None
    order = db.get(Order, remembered["id"])
    if order is None or order.cart_id != session.get("cart_id"):
        return None
    return order


def _forget_purchase() -> None:
    """The purchase is over (paid, or can no longer be paid): the next visit starts a new cart."""
    for key in ("cart_id", "order"):
        session.pop(key, None)


def _open_order(db) -> Order | None:
    order = _session_order(db)
    if order is not None and order.status in PAYABLE:
        return order
    return None


def _cart_lines(db, cart: Cart) -> list[dict]:
    lines = []
    for item in cart.items:
        product = db.get(Product, item.sku)
        lines.append({"sku": item.sku, "name": product.name if product else item.sku, "quantity": item.quantity,
                      "unit_amount": item.unit_amount, "amount": item.unit_amount * item.quantity,
                      "available": product.stock.available if product else 0})
    return lines


# --- products and cart ------------------------------------------------------------------------

@bp.get("/")
def products():
    with state().sessions() as db:
        items = db.scalars(select(Product).order_by(Product.sku)).unique().all()
        listing = [{"sku": p.sku, "name": p.name, "unit_amount": p.unit_amount, "currency": p.currency,
                    "available": p.stock.available} for p in items]
    return _render("products.html", title=_t("products"), products=listing, few_left=FEW_LEFT,
                           step=None)


def _quantity(raw: str | None) -> int | None:
    try:
        value = int(raw or "")
    except ValueError:
        return None
    return value if 0 <= value <= MAX_QUANTITY else None


@bp.post("/cart/items")
def add_to_cart():
    sku = (request.form.get("sku") or "").strip()
    if unstorable(sku):
        # No sku holds control characters (and PostgreSQL refuses to be asked for one): unknown.
        raise NotFound("no product has a sku with control characters", field="sku")
    quantity = _quantity(request.form.get("quantity", "1"))
    if not quantity:
        flash(_t("bad_quantity", n=MAX_QUANTITY), "error")
        return redirect(url_for("shop_pages.products"), 303)
    try:
        with transaction(state().sessions) as db:
            product = db.get(Product, sku)
            if product is None:
                raise NotFound(f"no product with sku {sku}", field="sku")
            name, currency = _product_name(product.sku, product.name), product.currency
            cart = _session_cart(db)
            if cart is None or cart.status is not CartStatus.OPEN:
                _forget_purchase()
                cart = _session_cart(db, create=True)
            # A cart filled before the catalog changed currency takes the new currency's products once it
            # holds the new prices: re-priced (committed) and the addition left to the buyer, as the API does.
            repriced = bool(reprice_before_adding(db, cart, product))
            if not repriced:
                item = cart.add(product, quantity)
                # Adding holds nothing (checkout reserves), but what cannot be sold is refused now;
                # raising rolls the addition back.
                if item.quantity > product.stock.available:
                    raise OutOfStock(sku, item.quantity, product.stock.available)
    except CurrencyMismatch:  # a line with no price in the product's currency: only the buyer can remove it
        flash(_t("currency_stranded", name=name), "error")
        return redirect(url_for("shop_pages.show_cart"), 303)
    except TotalTooLarge:  # the cart is in the product's currency (cart.add refuses another)
        flash(_t("total_too_large", largest=price(LARGEST_CHARGE, currency)), "error")
        return redirect(url_for("shop_pages.products"), 303)
    except InvalidInput:
        flash(_t("bad_quantity", n=MAX_QUANTITY), "error")
        return redirect(url_for("shop_pages.products"), 303)
    except OutOfStock as exc:
        flash(_t("not_enough_stock", name=name, n=exc.available), "error")
        return redirect(url_for("shop_pages.products"), 303)
    if repriced:
        flash(_t("repriced_not_added", name=name), "error")
        return redirect(url_for("shop_pages.show_cart"), 303)
    flash(_t("added", name=name), "info")
    return redirect(url_for("shop_pages.show_cart"), 303)


@bp.post("/cart/items/<sku>")
def change_cart_item(sku: str):
    quantity = 0 if "remove" in request.form else _quantity(request.form.get("quantity"))
    with transaction(state().sessions) as db:
        cart = _session_cart(db)
        if cart is None or cart.status is not CartStatus.OPEN:
            return redirect(url_for("shop_pages.show_cart"), 303)
        item = next((i for i in cart.items if i.sku == sku), None)
        if item is None:
            raise NotFound(f"no {sku} in this cart", field="sku")
        if quantity is None:
            flash(_t("bad_quantity", n=MAX_QUANTITY), "error")
        elif quantity == 0:
            cart.items.remove(item)
        else:
            product = db.get(Product, sku)
            if quantity > product.stock.available:
                flash(_t("not_enough_stock", name=_product_name(sku, product.name), n=product.stock.available),
                      "error")
            else:
                try:
                    cart.change_quantity(item, quantity)
                except TotalTooLarge:
                    flash(_t("total_too_large", largest=price(LARGEST_CHARGE, cart.currency)), "error")
    return redirect(url_for("shop_pages.show_cart"), 303)


@bp.get("/cart")
def show_cart():
    with state().sessions() as db:
        cart = _session_cart(db)
        order = _open_order(db) if cart is not None and cart.status is not CartStatus.OPEN else None
        if cart is not None and cart.status is not CartStatus.OPEN and order is None:
            _forget_purchase()
            cart = None
        lines = _cart_lines(db, cart) if cart is not None else []
        subtotal, currency = (cart.subtotal, cart.currency) if cart is not None else (0, None)
    return _render("cart.html", title=_t("cart"), lines=lines, subtotal=subtotal, currency=currency,
                           editable=order is None, few_left=FEW_LEFT, step=1)


# --- information ------------------------------------------------------------------------------

def validate_buyer(form) -> tuple[dict, dict]:
    """The buyer's details from the form, and per field what is wrong (the same rules as POST /checkout)."""
    values = {key: (form.get(key) or "").strip() for key in BUYER_FIELDS}
    errors = {}
    for key in BUYER_FIELDS:
        if not values[key]:
            errors[key] = _t("error_required")
        elif unstorable(values[key], multiline=key == "address"):
            # Control characters: what the field's own rule says (an e-mail, a postal code, a
            # prefecture), else the form's "check the marked fields".
            errors[key] = _t(UNSTORABLE_TEXT.get(key, "fix_fields"))
        elif len(values[key]) > MAX_LENGTH[key]:
            errors[key] = _t("error_too_long", n=MAX_LENGTH[key])
    if "email" not in errors and not EMAIL.match(values["email"]):
        errors["email"] = _t("error_email")
    if "postal_code" not in errors:
        ascii_code = postal_code(values["postal_code"])
        if ascii_code is None:
            errors["postal_code"] = _t("error_postal_code")
        else:
            values["postal_code"] = ascii_code
    if "prefecture" not in errors:
        prefecture = canonical_prefecture(values["prefecture"])
        if prefecture is None:
            errors["prefecture"] = _t("error_prefecture")
        else:
            values["prefecture"] = prefecture
    return values, errors


def _shipping_problem(db, cart: Cart, prefecture: str) -> str | None:
    """The prefecture field's message when the shop has no shipping rate there (a catalog may leave
    out the "default" rate), else None. The fee is looked up as the checkout does, for this cart:
    over the free-shipping threshold there is no fee to look up."""
    try:
        load_shipping_table(db).fee_for(prefecture, cart.subtotal)
    except LookupError:
        return _t("error_no_shipping", prefecture=prefecture_label(prefecture, current_language()))
    return None


def _render_info(values: dict, errors: dict, status: int = 200):
    return _render("info.html", title=_t("step_info"), values=values, errors=errors,
                           prefectures=PREFECTURES, switch_field=SWITCH_LANGUAGE_FIELD, step=2), status


@bp.route("/checkout/info", methods=["GET", "POST"])
def checkout_info():
    with state().sessions() as db:
        cart = _session_cart(db)
        if cart is None or not cart.items:
            return redirect(url_for("shop_pages.show_cart"), 303)
        if _open_order(db) is not None:
            # The order is placed with this address (its stock held, its total fixed): it is
            # paid for as it stands.
            return redirect(url_for("shop_pages.checkout_confirm"), 303)
        if request.method == "GET":
            values, errors = session.get("buyer", {}), {}
            # Details kept before the catalog lost their prefecture's rate (the confirmation sends the buyer here).
            problem = _shipping_problem(db, cart, values["prefecture"]) if values.get("prefecture") else None
            if problem:
                errors["prefecture"] = problem
            return _render_info(values, errors)
        values, errors = validate_buyer(request.form)
        if "prefecture" not in errors:
            problem = _shipping_problem(db, cart, values["prefecture"])
            if problem:
                errors["prefecture"] = problem
    if SWITCH_LANGUAGE_FIELD in request.form:
        # The language button of a refused form: the same form, what was typed and what is wrong
        # with it, in the other language; nothing kept, nothing sent on.
        return _render_info(values, errors, 422 if errors else 200)
    if errors:
        # 422 with the form again, each message beside its field.
        return _render_info(values, errors, 422)
    session["buyer"] = values
    return redirect(url_for("shop_pages.checkout_confirm"), 303)


# --- confirmation and pay ---------------------------------------------------------------------

@dataclass
class PayPlaces:
    """What pressing Pay places, as the confirmation screen shows it."""

    lines: list[dict]
    subtotal: int
    shipping_fee: int
    total: int
    buyer: dict
    order: Order | None  # once placed, the order, whose own details the screen shows

    def fingerprint(self) -> str:
        """A short digest of what the buyer reads before pressing Pay: their details, the lines, the
        fee and the total. The form carries the one of the screen it is on; place_order compares it
        with the one of what it would place, so a change made meanwhile (another tab) is never paid
        for unseen. Not a secret: the buyer's own details, digested only to be short."""
        shown = {"buyer": [self.buyer.get(key) for key in BUYER_FIELDS],
                 "lines": sorted([line["sku"], line["quantity"], line["unit_amount"]] for line in self.lines),
                 "shipping_fee": self.shipping_fee, "total": self.total}
        return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()[:32]


def _what_pay_places(db, cart: Cart, buyer: dict) -> PayPlaces | None:
    """The placed order, still payable, as it stands; else the cart's lines with the session's buyer
    details and the fee for their prefecture. None when the cart is checked out and its order can
    no longer be paid: there is nothing to place. LookupError when the shop has no shipping rate for
    the buyer's prefecture (the catalog was loaded again since they entered it)."""
    order = _open_order(db)
    if order is not None:
        return PayPlaces(lines=[line.to_dict() for line in order.lines], subtotal=order.subtotal,
                         shipping_fee=order.shipping_fee, total=order.total,
                         buyer={"name": order.ship_name, "email": order.email, "postal_code": order.ship_postal_code,
                                "prefecture": order.ship_prefecture, "address": order.ship_address},
                         order=order)
    if cart.status is not CartStatus.OPEN:
        return None
    lines = _cart_lines(db, cart)
    fee = load_shipping_table(db).fee_for(buyer["prefecture"], cart.subtotal)
    return PayPlaces(lines=lines, subtotal=cart.subtotal, shipping_fee=fee, total=cart.subtotal + fee, buyer=buyer,
                     order=None)


@bp.get("/checkout/confirm")
def checkout_confirm():
    buyer = session.get("buyer")
    declined = unknown = None
    with state().sessions() as db:
        cart = _session_cart(db)
        if cart is None or not cart.items:
            return redirect(url_for("shop_pages.show_cart"), 303)
        if not buyer:
            return redirect(url_for("shop_pages.checkout_info"), 303)
        placed = _open_order(db)
        stored = payment_waiting(db, placed) if placed is not None else None
        earlier = earlier_payment_intents(db, placed) if placed is not None and stored is None else ()
        # Pay would place a new order for the cart: first, whether an order of it the sweep cancelled took money.
        ran_out = _cart_holds_ran_out(db, cart.id) if placed is None and cart.status is CartStatus.OPEN else []
    late = late_payment(ran_out) if ran_out else None
    if late is not None and late[0].state != UNKNOWN:
        # The card was charged for this cart as its hold ran out: no second order and no Pay. The session
        # forgets the cart (the purchase is over); the order's complete screen says a person looks at it.
        _forget_purchase()
        log.info("shop_paid_as_hold_ran_out_shown", order_id=late[1].id, shown=late[0].state)
        return redirect(_complete_url(late[1]), 303)
    outcome = payment_outcome(placed, stored, earlier) if placed is not None else None
    if outcome is not None:
        lapsed = hold_lapsed(placed) is not None
        if outcome.state in (RECEIVED, PROCESSING) or (lapsed and outcome.state == UNKNOWN):
            # Money taken or on its way (a card whose answer was lost, another tab), or perhaps so:
            # Pay is not offered again, nor the old decline shown. The complete screen says what
            # happened and waits for Stripe's event.
            return redirect(_complete_url(placed), 303)
        if lapsed:
            return _hold_ran_out(placed)
        if outcome.state == DECLINED:
            declined = _t("declined", message=outcome.message)
        elif outcome.state == UNKNOWN:
            # Perhaps charged: no card field and no Pay until Stripe answers (the page checks again).
            unknown = _t("payment_unknown_confirm")
    with state().sessions() as db:
        cart = _session_cart(db)
        if cart is None or not cart.items:
            return redirect(url_for("shop_pages.show_cart"), 303)
        try:
            shown = _what_pay_places(db, cart, buyer)
        except LookupError:
            # No shipping rate for their prefecture any more: the information screen says so beside the field.
            return redirect(url_for("shop_pages.checkout_info"), 303)
        if shown is None:
            # Its order can no longer be paid (expired, cancelled): start again.
            _forget_purchase()
            flash(_t("order_closed"), "error")
            return redirect(url_for("shop_pages.show_cart"), 303)
        order = shown.order
        held_until = order.reserved_until if order is not None else None
        if order is None or placed is None or order.id != placed.id:
            declined = unknown = None  # another order than the one asked about (placed meanwhile)
        if late is not None and order is None:
            # Stripe did not answer about the order the sweep cancelled: perhaps charged, so no Pay yet.
            unknown = _t("payment_unknown_hold_ran_out")
    settings = state().settings
    return _render("confirm.html", title=_t("confirm_title"), lines=shown.lines, subtotal=shown.subtotal,
                   shipping_fee=shown.shipping_fee, total=shown.total, buyer=shown.buyer, held_until=held_until,
                   currency=order.currency if order is not None else cart.currency,
                   declined=declined, payment_unknown=unknown, placed=order is not None,
                   shown_field=SHOWN_FIELD, shown_fingerprint=shown.fingerprint(),
                   hold_minutes=settings.reservation_ttl_seconds // 60,
                   stripe_js_url=settings.stripe_js_url, script_url=_script_url("shop.js"),
                   stripe_publishable_key=settings.stripe_publishable_key, step=CONFIRMATION_STEP,
                   refresh_seconds=REFRESH_SECONDS[UNKNOWN] if unknown else None)


def _hold_ran_out(order: Order):
    """The confirmation of an order whose hold ran out: what it was, that it can no longer be paid (the
    pay step refuses it), no Pay. The session forgets it, so the next visit starts a new cart
    rather than coming back here."""
    page = _render("confirm.html", title=_t("confirm_title"), lines=[line.to_dict() for line in order.lines],
                   subtotal=order.subtotal, shipping_fee=order.shipping_fee, total=order.total,
                   currency=order.currency,
                   buyer={"name": order.ship_name, "email": order.email, "postal_code": order.ship_postal_code,
                          "prefecture": order.ship_prefecture, "address": order.ship_address},
                   placed=True, hold_expired=_t("hold_expired", time=local_time(order.reserved_until,
                                                                                current_language())),
                   step=CONFIRMATION_STEP)
    _forget_purchase()
    log.info("shop_hold_ran_out_shown", order_id=order.id)
    return page


def _refused(message_key: str, status: int, code: str, *, to: str, navigate: bool = True, **values):
    """A pay step that cannot go on: JSON for the page's script, a redirect with the message without it.

    With `navigate`, the script too goes to `to`, where the message waits (a new price, stock
    gone); without it (a declined card) the script says it beside the card field.
    """
    message = _t(message_key, **values)
    if _wants_json():
        if navigate:
            flash(message, "error")
        return jsonify({"error": {"code": code, "message": message}, "redirect": to, "navigate": navigate}), status
    flash(message, "error")
    return redirect(to, 303)


@bp.post("/checkout/confirm")
def place_order():
    """Pay, step one: the order and its PaymentIntent (the checkout use case), and a SetupIntent
    through which Stripe.js turns the card into a PaymentMethod."""
    buyer = session.get("buyer")
    confirm_url = url_for("shop_pages.checkout_confirm")
    cart_id = session.get("cart_id")
    if not buyer or not cart_id:
        return _refused("order_closed", 409, "no_cart", to=url_for("shop_pages.show_cart"))
    with state().sessions() as db:
        cart = _session_cart(db)
        try:
            shown_now = _what_pay_places(db, cart, buyer) if cart is not None and cart.items else None
        except LookupError:
            log.info("shop_checkout_refused", code="no_shipping_rate", field="shipping.prefecture")
            return _refused("fix_fields", 422, "invalid_input", to=url_for("shop_pages.checkout_info"))
        # A form without the field (a page from before it existed) counts as changed: the buyer
        # sees the screen once more and presses Pay again, rather than paying for details nobody
        # can say they saw. Without anything to place (shown_now None) the checkout below answers
        # as it always has: the paid order's complete screen, or "start again from the cart".
        if shown_now is not None and request.form.get(SHOWN_FIELD) != shown_now.fingerprint():
            log.info("shop_details_changed", cart_id=cart_id, placed=shown_now.order is not None,
                     sent=SHOWN_FIELD in request.form)
            return _refused("details_changed", 409, "details_changed", to=confirm_url)
        # Each order the cart placed that was then cancelled (its hold ran out: the sweep opens the
        # cart again) ends that key: the next Pay places a new order, under the next key.
        cancelled = db.scalar(select(func.count()).select_from(Order)
                              .where(Order.cart_id == cart_id, Order.status == OrderStatus.CANCELLED))
        ran_out = _cart_holds_ran_out(db, cart_id) if shown_now is not None and shown_now.order is None else []
    # A new order for the cart only once Stripe says none of the orders the sweep cancelled took money
    # (a tab left on the confirmation while the card was charged as the hold ran out, then Pay).
    late = late_payment(ran_out) if ran_out else None
    if late is not None and late[0].state == UNKNOWN:
        return _refused("payment_unknown_hold_ran_out_pay", 503, "payment_provider_unavailable", to=confirm_url,
                        navigate=False)
    if late is not None:
        _forget_purchase()
        log.info("shop_paid_as_hold_ran_out_shown", order_id=late[1].id, shown=late[0].state)
        if _wants_json():
            return jsonify({"status": late[0].state, "complete_url": _complete_url(late[1])}), 200
        return redirect(_complete_url(late[1]), 303)
    app_state = state()
    shipping = ShippingAddress(name=buyer["name"], postal_code=buyer["postal_code"],
                               prefecture=buyer["prefecture"], address=buyer["address"])
    try:
        # The key is the cart's: pressing Pay again, or again after a declined card, answers with
        # the same order and PaymentIntent, and the stock stays held by that one order.
        key = f"shop-{cart_id}" + (f"-{cancelled}" if cancelled else "")
        order = checkout_cart(app_state.sessions, app_state.settings,
                              CheckoutRequest(cart_id=cart_id, email=buyer["email"], shipping=shipping,
                                              idempotency_key=key, same_details=False))
    except PriceChanged:
        return _refused("price_changed", 409, "price_changed", to=confirm_url)
    except OutOfStock as exc:
        return _refused("stock_gone", 409, "out_of_stock", to=url_for("shop_pages.show_cart"), sku=exc.sku)
    except PaymentProviderRefused as exc:
        # Stripe answered and said no: not an outage, so the buyer is told what it refused.
        return _refused("payment_refused", 422, "payment_refused", to=confirm_url, navigate=False,
                        reason=exc.reason or _t("refused_unknown"))
    except (PaymentProviderUnavailable, PaymentProviderBusy):
        return _refused("provider_down", 503, "payment_provider_unavailable", to=confirm_url, navigate=False)
    except CurrencyMismatch:
        log.warning("shop_checkout_refused", code="currency_mismatch", cart_id=cart_id)
        return _refused("currency_mismatch", 409, "currency_mismatch", to=url_for("shop_pages.show_cart"))
    except CheckoutInProgress:
        # The first Pay placed the order and still waits on Stripe (or died there): the buyer waits too.
        return _refused("checkout_in_progress", 409, "checkout_in_progress", to=confirm_url, navigate=False)
    except (CheckoutCancelled, IdempotencyKeyReused):
        _forget_purchase()
        return _refused("order_closed", 409, "order_closed", to=url_for("shop_pages.show_cart"))
    except TotalTooLarge:
        return _refused("total_too_large", 422, "total_too_large", to=url_for("shop_pages.show_cart"),
                        largest=price(LARGEST_CHARGE, cart.currency if cart is not None else None))
    except TotalTooSmall as exc:
        return _refused("total_too_small", 422, "total_too_small", to=url_for("shop_pages.show_cart"),
                        smallest=price(exc.smallest, cart.currency if cart is not None else None))
    except InvalidInput as exc:
        log.info("shop_checkout_refused", code=exc.code, field=exc.field)
        return _refused("fix_fields", 422, "invalid_input", to=url_for("shop_pages.checkout_info"))
    except NotFound:
        _forget_purchase()
        return _refused("order_closed", 409, "no_cart", to=url_for("shop_pages.show_cart"))
    session["order"] = {"id": order.id, "token": order.access_token}
    if order.status not in PAYABLE:
        return _after_payment(order)
    if not _wants_json():
        # Without JavaScript there is no card field: the order is placed and held; the page says so.
        return redirect(confirm_url, 303)
    try:
        with stripe_call_slots(app_state.settings.stripe_max_concurrent_calls).call():
            setup = create_setup_intent(order_id=order.id,
                                        deadline_seconds=app_state.settings.stripe_deadline_seconds)
    except PaymentRefused as exc:
        log.warning("setup_intent_refused", order_id=order.id, error=str(exc))
        return _refused("payment_refused", 422, "payment_refused", to=confirm_url, navigate=False,
                        reason=exc.reason or _t("refused_unknown"))
    except (PaymentGatewayError, PaymentProviderBusy) as exc:
        log.warning("setup_intent_failed", order_id=order.id, error=str(exc))
        return _refused("provider_down", 503, "payment_provider_unavailable", to=confirm_url, navigate=False)
    return jsonify({"order_id": order.id, "total": order.total, "setup_client_secret": setup.client_secret,
                    "hold": _t("hold_until", time=local_time(order.reserved_until, current_language())),
                    "complete_url": _complete_url(order)}), 201


@bp.post("/checkout/pay")
def pay_order():
    """Pay, step two: confirm the order's PaymentIntent on the server with the buyer's PaymentMethod."""
    body = json_value_if_sent()  # a body Python cannot read as JSON is a 422 naming it, not a 500
    payment_method = body.get("payment_method") if isinstance(body, dict) else None
    confirm_url = url_for("shop_pages.checkout_confirm")
    if not isinstance(payment_method, str) or not PAYMENT_METHOD_ID.fullmatch(payment_method):
        return jsonify({"error": {"code": "invalid_input", "message": "payment_method must be a pm_ id",
                                  "field": "payment_method"}}), 422
    with state().sessions() as db:
        order = _session_order(db)
        if order is None:
            return _refused("order_closed", 409, "order_closed", to=url_for("shop_pages.show_cart"))
        # The card pays the order its page placed, never another one the session placed since (a
        # second tab's new cart): that page shows the order as it is now. A request without the id
        # (a script from before it was sent) cannot say which order it saw, so it is refused alike.
        sent_for = body.get("order_id")
        if sent_for != order.id:
            log.info("shop_pay_for_another_order", order_id=order.id, sent=isinstance(sent_for, str))
            return _refused("details_changed", 409, "details_changed", to=confirm_url)
        if order.status not in PAYABLE:
            return jsonify({"status": order.status.value, "complete_url": _complete_url(order)})
        order_id, complete_url = order.id, _complete_url(order)
    try:
        # A second card after a declined one goes to the same order (its stock still held); if Stripe
        # will not confirm the order's intent again, the use case gives the order a new one.
        intent = confirm_payment(state().sessions, state().settings, order_id, payment_method)
    except CardDeclined as exc:
        # The order keeps its reservation: the buyer may try another card right away.
        log.info("card_declined", order_id=order_id, decline_code=exc.code)
        return _refused("declined", 402, "card_declined", to=confirm_url, navigate=False, message=exc.message)
    except CheckoutCancelled:
        return _refused("order_closed", 409, "order_closed", to=url_for("shop_pages.show_cart"))
    except IntentNotConfirmable as exc:
        log.warning("payment_intent_not_confirmable", order_id=order_id, intent_status=exc.status)
        if exc.status == "canceled":
            return _refused("order_closed", 409, "order_closed", to=url_for("shop_pages.show_cart"))
        if exc.status in ("succeeded", "processing", "requires_capture"):
            # Paid, or being paid, already (another tab, a double click): the complete screen tells.
            return jsonify({"status": exc.status, "complete_url": complete_url})
        return _refused("payment_refused", 422, "payment_refused", to=confirm_url, navigate=False,
                        reason=exc.reason or _t("refused_unknown"))
    except PaymentRefused as exc:
        log.warning("payment_confirm_refused", order_id=order_id, error=str(exc))
        return _refused("payment_refused", 422, "payment_refused", to=confirm_url, navigate=False,
                        reason=exc.reason or _t("refused_unknown"))
    except PaymentProviderBusy as exc:
        # No slot free: nothing was sent to Stripe, so nothing can have been charged.
        log.warning("payment_confirm_failed", order_id=order_id, error=str(exc))
        return _refused("provider_down", 503, "payment_provider_unavailable", to=confirm_url, navigate=False)
    except PaymentGatewayError as exc:
        # Sent, and no clear answer came back (a timeout, a dropped connection, Stripe's 5xx): the card
        # may have been charged. Pay again is safe to offer: it confirms the same intent, which Stripe
        # refuses once paid (the buyer is sent to the complete screen), so it never charges twice.
        log.warning("payment_confirm_failed", order_id=order_id, error=str(exc))
        return _refused("payment_unknown_pay_again", 503, "payment_provider_unavailable", to=confirm_url,
                        navigate=False)
    log.info("payment_confirmed_by_shop", order_id=order_id, intent_status=intent.status)
    answer = {"status": intent.status, "complete_url": complete_url}
    if intent.status == "requires_action":
        answer["client_secret"] = intent.client_secret
    return jsonify(answer)


@dataclass(frozen=True)
class PaymentOutcome:
    """What became of the payment of an order our database does not yet record as paid, as the
    buyer's screens say it. `state` is one of the six below; `message` is the decline's words."""

    state: str
    message: str | None = None


# Money taken (Stripe's event not yet processed by us), or on its way; then Stripe waits for the
# buyer's 3-D Secure check; a declined card; no payment tried (or none left to try); Stripe did not answer.
RECEIVED, PROCESSING, AUTHENTICATING, DECLINED, NOT_PAID, UNKNOWN = (
    "payment_received", "payment_processing", "awaiting_authentication", "payment_failed", "not_paid",
    "payment_unknown")
# Stripe's intent statuses that mean the money is taken, or will be without the buyer doing more.
_INTENT_OUTCOME = {"succeeded": RECEIVED, "requires_capture": RECEIVED, "processing": PROCESSING,
                   "requires_action": AUTHENTICATING}


# Below this much of the page's Stripe deadline left, an earlier intent is not asked: its answer
# would come too late to be trusted, so the outcome is unknown rather than a guess.
_MIN_ASK_SECONDS = 0.5


def payment_outcome(order: Order, stored: PaymentWaiting | None,
                    earlier: tuple[str, ...] = ()) -> PaymentOutcome | None:
    """What became of the payment of a payable order; None for any other (its status says it all).
    `stored` is the order's payment stored and not yet applied, if any (models.orders.payment_waiting);
    `earlier` the intents it held before its current one that Stripe could still have charged
    (earlier_payment_intents).

    Stripe is the source of truth, and our database only learns from its events: a card sent
    after a declined one can be charged while the pay step's answer is lost on the way (to the
    browser or to us) and the order still reads payment_failed, with the old card's words. So,
    unless a succeeded event for one of the order's intents is already stored, Stripe is asked
    for the order's intent (the one any card is confirmed on): its status, and its latest
    decline, which is newer than ours when its event is still on the way. A decline only our
    database knows (the intent holds nothing newer: a replacement nobody paid on yet) still
    stands. When the current intent holds no payment, the earlier ones are asked too, in turn,
    within what is left of the same deadline: money taken on one of them (another tab) is a payment
    received, never "not paid yet" or a decline. Stripe not answering, about any of them, is said as
    such (UNKNOWN), never as the old decline. Called with no database session open: no connection
    waits while Stripe answers.
    """
    if order.status not in PAYABLE:
        return None
    if stored is not None:
        return PaymentOutcome(RECEIVED)
    recorded_decline = (PaymentOutcome(DECLINED, order.failure_message or order.failure_code or "")
                        if order.status is OrderStatus.PAYMENT_FAILED else PaymentOutcome(NOT_PAID))
    if order.payment_intent_id is None:
        return recorded_decline
    # One deadline for the whole screen, however many intents it asks about.
    deadline = time.monotonic() + state().settings.stripe_deadline_seconds
    intent = _ask_stripe(order, order.payment_intent_id, deadline)
    if intent is None:
        return PaymentOutcome(UNKNOWN)
    status = intent.get("status")
    if status in _MONEY_MOVING:
        return PaymentOutcome(_INTENT_OUTCOME[status])
    for intent_id in earlier:
        other = _ask_stripe(order, intent_id, deadline, earlier=True)
        if other is None:
            return PaymentOutcome(UNKNOWN)   # perhaps paid there: never "pay again" on a guess
        if other.get("status") in _MONEY_MOVING:
            log.info("payment_found_on_earlier_intent", order_id=order.id, payment_intent=intent_id,
                     intent_status=other["status"], current_payment_intent=order.payment_intent_id)
            return PaymentOutcome(_INTENT_OUTCOME[other["status"]])
    if status in _INTENT_OUTCOME:
        return PaymentOutcome(_INTENT_OUTCOME[status])
    error = intent.get("last_payment_error") or {}
    if status == "requires_payment_method" and error:
        return PaymentOutcome(DECLINED, error.get("message") or error.get("code") or "")
    # requires_payment_method with no decline, requires_confirmation, canceled: no money moved.
    return recorded_decline


# Stripe's intent statuses that mean money taken or on its way, on whichever of the order's intents.
_MONEY_MOVING = ("succeeded", "requires_capture", "processing")
# Stripe answered about an earlier intent: it does not know it (another account's key). Nothing taken
# that this account could show.
_NOT_AT_STRIPE = {"status": "not_found"}


def _ask_stripe(order: Order, intent_id: str, deadline: float, *, earlier: bool = False) -> dict | None:
    """Stripe's record of one of the order's intents, within what is left of the screen's deadline;
    None when Stripe did not answer in time (or, for the current intent, does not know it).

    The question takes one of the process's Stripe call slots, as checkout does: screens that
    reload themselves while Stripe stalls must not hold every thread the webhooks need. No slot
    free (Stripe is slow for every one of them) is said as Stripe not answering."""
    try:
        with stripe_call_slots(state().settings.stripe_max_concurrent_calls).call():
            remaining = deadline - time.monotonic()   # after any wait for a slot
            if remaining < _MIN_ASK_SECONDS:
                log.warning("payment_outcome_unknown", order_id=order.id, payment_intent=intent_id,
                            error="no time left to ask Stripe within the deadline")
                return None
            intent = retrieve_payment_intent(intent_id, deadline_seconds=remaining)
    except PaymentProviderBusy:
        log.warning("payment_outcome_unknown", order_id=order.id, payment_intent=intent_id,
                    error="every Stripe call slot of this process is waiting on Stripe")
        return None
    except PaymentGatewayError as exc:
        log.warning("payment_outcome_unknown", order_id=order.id, payment_intent=intent_id, error=str(exc)[:200])
        return None
    if intent is None:
        # The current intent unknown to Stripe (another account's key): nothing we can tell. An earlier
        # one: this account took nothing on it.
        log.warning("payment_outcome_unknown" if not earlier else "earlier_payment_intent_not_at_stripe",
                    order_id=order.id, payment_intent=intent_id, error="payment intent not found at Stripe")
        return _NOT_AT_STRIPE if earlier else None
    return intent


# An order the expiry sweep cancelled (`HOLD_RAN_OUT`) also has its cart opened again, so the same cart
# can be checked out anew: a card charged just as the hold ran out, whose event had not reached us yet,
# leaves a cancelled order that holds money.
# What such an order becomes once its late payment is applied (flagged for staff, or accepted by them).
_LATE_PAYMENT_APPLIED = (OrderStatus.NEEDS_REVIEW, OrderStatus.PAID)
# The complete screen's state for it: the payment was received, a person looks at the order.
PAID_AS_HOLD_RAN_OUT = "paid_as_hold_ran_out"


@dataclass(frozen=True)
class HoldRanOut:
    """An order the expiry sweep cancelled, and where a payment on it could be seen: `known` when our
    database already holds one (stored, or applied: flagged or accepted), else Stripe's word on `intents`
    (its current one, then earlier ones Stripe could still have charged)."""

    order: Order
    known: bool
    intents: tuple[str, ...]


def _hold_ran_out_of(db, order: Order) -> HoldRanOut | None:
    """The order as HoldRanOut when the expiry sweep cancelled it (whatever it became since); else None."""
    if order.cancel_reason != HOLD_RAN_OUT or order.status not in (OrderStatus.CANCELLED, *_LATE_PAYMENT_APPLIED):
        return None
    if order.status in _LATE_PAYMENT_APPLIED or payment_waiting(db, order) is not None:
        return HoldRanOut(order, known=True, intents=())
    current = (order.payment_intent_id,) if order.payment_intent_id else ()
    return HoldRanOut(order, known=False, intents=current + earlier_payment_intents(db, order))


def _cart_holds_ran_out(db, cart_id: str) -> list[HoldRanOut]:
    """The cart's orders the expiry sweep cancelled, newest first: one SELECT by the cart's index, and
    nothing more for a cart that never had one (every ordinary checkout)."""
    orders = db.scalars(select(Order).where(Order.cart_id == cart_id, Order.cancel_reason == HOLD_RAN_OUT)
                        .order_by(Order.created_at.desc())).all()
    return [found for found in (_hold_ran_out_of(db, order) for order in orders) if found is not None]


def late_payment(orders: list[HoldRanOut]) -> tuple[PaymentOutcome, Order] | None:
    """Whether money was taken, or is on its way, on one of these orders the expiry sweep cancelled:
    (RECEIVED or PROCESSING, that order); (UNKNOWN, the order) when Stripe did not answer about one of
    its intents; None when none of them took any (their cart may place a new order).

    The sweep cancels an order when no payment for it is *stored*; Stripe's event can still be on its
    way (a retry after a deploy, a backlog) for a card charged as the hold ran out. Until the worker
    flags the order (it does when the event arrives), only Stripe knows: asked, as payment_outcome asks,
    about succeeded, processing or requires_capture on the order's current and earlier intents, within
    one deadline. An intent Stripe does not know took nothing on this account. Called with no database
    session open."""
    deadline = time.monotonic() + state().settings.stripe_deadline_seconds
    for found in orders:
        if found.known:
            return PaymentOutcome(RECEIVED), found.order
        for intent_id in found.intents:
            intent = _ask_stripe(found.order, intent_id, deadline, earlier=True)
            if intent is None:
                return PaymentOutcome(UNKNOWN), found.order  # perhaps charged: never place another on a guess
            if intent.get("status") in _MONEY_MOVING:
                log.warning("payment_found_after_hold_ran_out", order_id=found.order.id, payment_intent=intent_id,
                            intent_status=intent["status"])
                return PaymentOutcome(_INTENT_OUTCOME[intent["status"]]), found.order
    return None


def _complete_url(order: Order) -> str:
    return url_for("shop_pages.complete", order_id=order.id, token=order.access_token)


def _after_payment(order: Order):
    if _wants_json():
        return jsonify({"status": order.status.value, "complete_url": _complete_url(order)}), 200
    return redirect(_complete_url(order), 303)


# --- complete and my page ---------------------------------------------------------------------

def _token_opens(order: Order, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), order.access_token.encode())


# How soon the complete screen looks again (and the confirmation, while Stripe does not answer): soon
# while the outcome is on its way; slower while it waits on the buyer (or on Stripe answering at all);
# never once it is final or a decline.
REFRESH_SECONDS = {RECEIVED: 2, PROCESSING: 2, AUTHENTICATING: 10, NOT_PAID: 10, UNKNOWN: 10,
                   PAID_AS_HOLD_RAN_OUT: 10}
# The step bar's "Complete" only once the money is received or on its way: a buyer who still has
# to pay (or may have to: Stripe not answering) is at the confirmation, where the card is entered.
STILL_TO_PAY = (AUTHENTICATING, DECLINED, NOT_PAID, UNKNOWN)


@bp.get("/orders/<order_id>/complete")
def complete(order_id: str):
    token = request.args.get("token")
    with state().sessions() as db:
        order = get_order(db, order_id)
        if not _token_opens(order, token):
            return _message_page("bad_token"), 403
        buyers_order = _session_order(db)
        # This buyer's own order, still payable: the decline is said beside the card field, where they can pay.
        buyers_open_order = buyers_order is not None and buyers_order.id == order.id and order.status in PAYABLE
        stored = payment_waiting(db, order) if order.status in PAYABLE else None
        earlier = earlier_payment_intents(db, order) if order.status in PAYABLE and stored is None else ()
        ran_out = _hold_ran_out_of(db, order) if order.status is OrderStatus.CANCELLED else None
    # Until the worker has recorded Stripe's event, Stripe says what became of the payment (asked
    # with no database session open).
    outcome = payment_outcome(order, stored, earlier)
    late = late_payment([ran_out]) if ran_out is not None else None
    if late is not None:
        # Cancelled as its hold ran out, yet charged (or perhaps: Stripe not answering): never a plain
        # "cancelled". The page looks again; once the late event arrives the worker flags the order.
        outcome = PaymentOutcome(UNKNOWN if late[0].state == UNKNOWN else PAID_AS_HOLD_RAN_OUT)
    if outcome is not None and outcome.state == DECLINED and buyers_open_order:
        # The buyer can try another card at once: the confirmation says the decline beside the card field.
        return redirect(url_for("shop_pages.checkout_confirm"), 303)
    if order.status is OrderStatus.PAID and session.get("order", {}).get("id") == order.id:
        _forget_purchase()
    shown_status = outcome.state if outcome is not None else order.status.value
    return _render("complete.html", title=_t("complete_title"), order=order, shown_status=shown_status,
                   decline_message=outcome.message if outcome is not None else None,
                   refresh_seconds=REFRESH_SECONDS.get(shown_status), can_pay=buyers_open_order,
                   lines=[line.to_dict() for line in order.lines], token=token,
                   step=CONFIRMATION_STEP if shown_status in STILL_TO_PAY else COMPLETE_STEP)


def my_page(order_id: str):
    """`GET /orders/<id>` for a browser: the order; its delivery details and history only with its token."""
    token = request.args.get("token")
    with state().sessions() as db:
        try:
            order = get_order(db, order_id)
        except NotFound as exc:
            return _shop_headers(make_response(_not_found(exc)))
        if token is not None and not _token_opens(order, token):
            return _shop_headers(make_response(_message_page("bad_token"), 403))
        # With its token, an order cancelled as its hold ran out: whether its card was charged even so;
        # and an order still payable: what became of its payment, as the complete screen says it (the
        # webhook may be late, and the buyer should not read "Awaiting payment" once charged).
        ran_out = (_hold_ran_out_of(db, order) if token is not None and order.status is OrderStatus.CANCELLED
                   else None)
        payable = token is not None and order.status in PAYABLE
        stored = payment_waiting(db, order) if payable else None
        earlier = earlier_payment_intents(db, order) if payable and stored is None else ()
        if ran_out is None and not payable:
            return _shop_headers(make_response(_my_page(db, order, token, order.status.value)))
    # Stripe is asked with no database session open; the page is read again after.
    if ran_out is not None:
        late = late_payment([ran_out])
        shown_status = (order.status.value if late is None
                        else UNKNOWN if late[0].state == UNKNOWN else PAID_AS_HOLD_RAN_OUT)
    else:
        shown_status = _my_page_status(order, payment_outcome(order, stored, earlier))
    with state().sessions() as db:
        return _shop_headers(make_response(_my_page(db, get_order(db, order_id), token, shown_status)))


def _my_page_status(order: Order, outcome: PaymentOutcome | None) -> str:
    """My page's status of a payable order: Stripe's word where it knows more than our database (money
    received or on its way, 3-D Secure pending, a decline, no answer), else the database's."""
    if outcome is None or outcome.state == NOT_PAID:
        return order.status.value
    return outcome.state


def _my_page(db, order: Order, token: str | None, shown_status: str) -> str:
    history = []
    if token is not None:
        history = db.scalars(select(OrderStatusChange).where(OrderStatusChange.order_id == order.id)
                             .order_by(OrderStatusChange.id)).all()
    return _render("my_page.html", title=_t("my_page"), order=order, token=token, shown_status=shown_status,
                   lines=[line.to_dict() for line in order.lines], history=history, step=None)


def wants_page() -> bool:
    """A browser asking for HTML (rather than an API client asking for JSON)."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"

