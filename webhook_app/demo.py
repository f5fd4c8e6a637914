"""`shop demo`: one purchase against the running service and localstripe, each step printed.

The confirm step is what Stripe.js does in the customer's browser: attach a card to the
PaymentIntent and confirm it, through the service's one Stripe client (consumers.payments).
Everything else goes through the service's own API. A step that fails stops the demo with one
line (click.ClickException, exit 1) saying what failed and what to check, never a traceback.
"""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

import click

from consumers.payments import (CardDeclined, PaymentGatewayError, PaymentRefused, configure_stripe,
                                confirm_payment_intent, create_card_payment_method)
from models.settings import Settings

STRIPE_ITSELF = "https://api.stripe.com"  # where the SDK goes when STRIPE_API_BASE is unset
REQUEST_TIMEOUT_SECONDS = 15  # the service's own waits (a Stripe call, a turn to write) are shorter


def _call(method: str, url: str, body: dict | None = None) -> tuple[int, object]:
    """The service's answer: its status and its JSON (or its text, when it is not JSON)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, http.client.HTTPException) as exc:  # refused, timed out, reset, DNS, not HTTP
        reason = getattr(exc, "reason", exc)  # URLError wraps the socket's error
        reason = getattr(reason, "strerror", None) or reason
        if isinstance(reason, TimeoutError) or str(reason) == "timed out":
            reason = f"no answer within {REQUEST_TIMEOUT_SECONDS} s"
        raise click.ClickException(f"{method} {url}: could not reach the service ({reason}); "
                                   f"is `make run` up, and is --url its address?") from exc
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode(errors="replace")


def _answer(body: object) -> str:
    """What the service said, in a line: the message of its error shape, else the start of the body."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('code')}: {error.get('message')}"
    text = body if isinstance(body, str) else json.dumps(body)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:200] + "…"


def _expect(step: str, method: str, url: str, wanted: int, body: dict | None = None) -> dict:
    status, answer = _call(method, url, body)
    if status != wanted or not isinstance(answer, (dict, list)):
        raise click.ClickException(f"{step} failed: {method} {url} answered {status}: {_answer(answer)}")
    return answer


class StripeRefusedStep(Exception):
    """Stripe answered a step of the confirm with a refusal, or could not be reached: which step, and
    the gateway's error (`consumers.payments`)."""

    def __init__(self, step: str, error: PaymentGatewayError):
        super().__init__(f"{step}: {error}")
        self.step, self.error = step, error


def confirm_with_card(payment_intent_id: str, card: str) -> str:
    """What Stripe.js does: make a PaymentMethod of the card, attach it, confirm. Returns the intent's
    status (or the decline); StripeRefusedStep says which step Stripe refused. Through the service's own
    Stripe client (`consumers.payments`): the same API base, deadlines and error translation as
    checkout's confirm."""
    shown = f"{card[:4]}…{card[-4:]}"
    try:
        method_id = _step(f"refused to make a PaymentMethod of card {shown}", create_card_payment_method, card)
        return _step(f"refused to confirm {payment_intent_id} with card {shown}", confirm_payment_intent,
                     payment_intent_id=payment_intent_id, payment_method_id=method_id).status
    except CardDeclined as exc:
        return f"declined: {exc.message}"


def _step(step: str, call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except CardDeclined:
        raise
    except PaymentGatewayError as exc:
        raise StripeRefusedStep(step, exc) from exc


def _confirm(payment_intent_id: str, card: str, api_base: str) -> str:
    try:
        return confirm_with_card(payment_intent_id, card)
    except StripeRefusedStep as refused:
        exc = refused.error
        cause = _root_cause(exc)
        if not isinstance(exc, PaymentRefused) and isinstance(cause, OSError):  # refused, timed out, no such host
            reason = _one_line(cause.strerror or str(cause))
            raise click.ClickException(
                f"4. confirm failed: could not reach Stripe at {api_base} ({reason}); "
                f"is localstripe running, and is STRIPE_API_BASE its address?") from exc
        # Stripe answered: a bad card number, a bad key, an intent that cannot be confirmed, … in Stripe's
        # own words (its message), not the SDK's class name.
        stripe_error = exc.__cause__
        status = getattr(stripe_error, "http_status", None)
        said = _one_line(getattr(stripe_error, "user_message", None) or str(stripe_error or exc))
        raise click.ClickException(
            f"4. confirm failed: Stripe at {api_base} {refused.step}"
            f"{f' ({status}: {said})' if status else f': {said}'}; check --card (a test card such as "
            f"4242424242424242) and STRIPE_API_KEY") from exc


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _root_cause(exc: BaseException) -> BaseException:
    """The error at the bottom of the chain: the socket's own ("Connection refused"), not the SDK's
    paragraph around it."""
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__
    return exc


def run_demo(base: str, settings: Settings, *, card: str, timeout: float, echo) -> bool:
    if not timeout > 0:  # the command's option refuses it too; a direct caller gets the same words
        raise click.BadParameter(f"{timeout:g} is not greater than 0", param_hint="'--timeout'")
    configure_stripe(settings)
    products = _expect("1. product", "GET", f"{base}/products", 200)
    if not products:
        raise click.ClickException(f"1. product failed: no products at {base}/products; "
                                   f"load a catalog (`shop catalog load FILE`), as `make run` does")
    product = max(products, key=lambda p: p["available"])
    echo(f"1. product   {product['sku']} {product['name']}: {product['unit_amount']} {product['currency']}, "
         f"on hand {product['on_hand']}, reserved {product['reserved']}")
    cart = _expect("2. cart", "POST", f"{base}/carts", 201)
    status, items = _call("POST", f"{base}/carts/{cart['id']}/items", {"sku": product["sku"], "quantity": 2})
    if status != 200 or not isinstance(items, dict):
        hint = (f" (the demo buys 2 of the product with the most available: {product['sku']}, "
                f"{product['available']} available)" if status == 409 else "")
        raise click.ClickException(f"2. cart failed: POST {base}/carts/{cart['id']}/items answered {status}: "
                                   f"{_answer(items)}{hint}")
    cart = items
    echo(f"2. cart      {cart['id']}: 2 x {product['sku']}, subtotal {cart['subtotal']}")
    checkout = _expect("3. checkout", "POST", f"{base}/checkout", 201, {
        "cart_id": cart["id"], "email": "demo@example.com",
        "shipping": {"name": "Hanako Yamada", "postal_code": "060-0001", "prefecture": "Hokkaido",
                     "address": "Kita 1-jo Nishi 2-chome, Sapporo"}})
    echo(f"3. checkout  order {checkout['order_id']}: subtotal {checkout['subtotal']} + shipping "
         f"{checkout['shipping_fee']} = {checkout['total']}; PaymentIntent {checkout['payment_intent_id']}, "
         f"stock reserved until {checkout['reserved_until']}")
    shown = f"{card[:4]}…{card[-4:]}"
    confirmed = _confirm(checkout["payment_intent_id"], card, settings.stripe_api_base or STRIPE_ITSELF)
    echo(f"4. confirm   card {shown}: {confirmed}")
    if confirmed in ("requires_action", "requires_source_action"):
        raise click.ClickException(f"4. confirm: card {shown} asks for 3-D Secure, which only a browser can "
                                   f"complete; buy with it in the shop's screens at {base}/")
    # With the order's access token, as the buyer: the shipment's details are theirs to see.
    order_url = f"{base}/orders/{checkout['order_id']}?token={checkout['access_token']}"
    deadline = time.monotonic() + timeout
    while True:
        order = _expect("5. webhook", "GET", order_url, 200)
        if order.get("status") != "pending_payment" or time.monotonic() >= deadline:
            break
        time.sleep(min(0.3, max(0.0, deadline - time.monotonic())))
    if order.get("status") == "pending_payment":
        raise click.ClickException(
            f"5. webhook failed: no webhook processed within {timeout:g} s, order {checkout['order_id']} is still "
            f"pending_payment; is the worker running, and is localstripe (or `stripe listen`) forwarding "
            f"webhooks to {base}/webhooks/stripe with the secret in STRIPE_WEBHOOK_SECRETS?")
    echo(f"5. webhook   received and processed: order is {order.get('status')}"
         + (f" ({order.get('failure_code')})" if order.get("failure_code") else ""))
    if order.get("shipment"):
        echo(f"6. shipment  {order['shipment']['id']} to {order['shipment']['prefecture']}, "
             f"fee {order['shipment']['fee']}, status {order['shipment']['status']}")
    after = _expect("7. stock", "GET", f"{base}/products/{product['sku']}", 200)
    echo(f"7. stock     {product['sku']}: on hand {after['on_hand']}, reserved {after['reserved']}, "
         f"available {after['available']}")
    return order.get("status") in ("paid", "payment_failed")
