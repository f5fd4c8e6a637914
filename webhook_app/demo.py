"""`shop demo`: one purchase against the running service and localstripe, each step printed.

The confirm step is what Stripe.js does in the customer's browser: attach a card to the
PaymentIntent and confirm it. Everything else goes through the service's own API.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import stripe

from consumers.payments import configure_stripe
from models.settings import Settings


def _call(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def confirm_with_card(payment_intent_id: str, card: str) -> str:
    """What Stripe.js does: attach the card, confirm. Returns the intent's status (or the decline)."""
    method = stripe.PaymentMethod.create(type="card", card={"number": card, "exp_month": 12, "exp_year": 2034,
                                                            "cvc": "123"})
    stripe.PaymentIntent.modify(payment_intent_id, payment_method=method.id)
    try:
        return stripe.PaymentIntent.confirm(payment_intent_id).status
    except stripe.CardError as exc:
        return f"declined: {exc.user_message}"


def run_demo(base: str, settings: Settings, *, card: str, timeout: float, echo) -> bool:
    configure_stripe(settings)
    status, products = _call("GET", f"{base}/products")
    if status != 200 or not products:
        echo(f"no products at {base}/products (status {status}); is `make run` up and the catalog loaded?")
        return False
    product = max(products, key=lambda p: p["available"])
    echo(f"1. product   {product['sku']} {product['name']}: {product['unit_amount']} {product['currency']}, "
         f"on hand {product['on_hand']}, reserved {product['reserved']}")
    _, cart = _call("POST", f"{base}/carts")
    status, cart = _call("POST", f"{base}/carts/{cart['id']}/items", {"sku": product["sku"], "quantity": 2})
    echo(f"2. cart      {cart['id']}: 2 x {product['sku']}, subtotal {cart['subtotal']}")
    status, checkout = _call("POST", f"{base}/checkout", {
        "cart_id": cart["id"], "email": "demo@example.com",
        "shipping": {"name": "Hanako Yamada", "postal_code": "060-0001", "prefecture": "Hokkaido",
                     "address": "Kita 1-jo Nishi 2-chome, Sapporo"}})
    if status != 201:
        echo(f"3. checkout  failed: {status} {checkout}")
        return False
    echo(f"3. checkout  order {checkout['order_id']}: subtotal {checkout['subtotal']} + shipping "
         f"{checkout['shipping_fee']} = {checkout['total']}; PaymentIntent {checkout['payment_intent_id']}, "
         f"stock reserved until {checkout['reserved_until']}")
    echo(f"4. confirm   card {card[:4]}…{card[-4:]}: {confirm_with_card(checkout['payment_intent_id'], card)}")
    deadline = time.monotonic() + timeout
    order = {}
    while time.monotonic() < deadline:
        # With the order's access token, as the buyer: the shipment's details are theirs to see.
        _, order = _call("GET", f"{base}/orders/{checkout['order_id']}?token={checkout['access_token']}")
        if order.get("status") != "pending_payment":
            break
        time.sleep(0.3)
    echo(f"5. webhook   received and processed: order is {order.get('status')}"
         + (f" ({order.get('failure_code')})" if order.get("failure_code") else ""))
    if order.get("shipment"):
        echo(f"6. shipment  {order['shipment']['id']} to {order['shipment']['prefecture']}, "
             f"fee {order['shipment']['fee']}, status {order['shipment']['status']}")
    _, after = _call("GET", f"{base}/products/{product['sku']}")
    echo(f"7. stock     {product['sku']}: on hand {after['on_hand']}, reserved {after['reserved']}, "
         f"available {after['available']}")
    return order.get("status") in ("paid", "payment_failed")
