"""A checkout retried with its Idempotency-Key after the first request placed the order and stored no intent.

While the first request may still be waiting for Stripe, a retry that Stripe refuses is 409
`checkout_in_progress` (the order keeps its stock: the first request decides). Once the first request must
have finished or died (placed longer ago than its call-slot wait and deadline), a retry that Stripe fails
is what the first request's failure would have been: 502, the stock released, the key free again. A retry
that finds no call slot says the order keeps its stock (not "nothing is reserved").
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from models.base import utcnow
from models.carts import get_cart
from models.db import transaction
from models.orders import Order, OrderStatus, ShippingAddress, place_order
from tests.stripe_proxy import BlackHole
from tests.support import SHIPPING, free_port, use_stripe


def order_placed_by_a_request_that_died(client, sessions, key: str, *, seconds_ago: float) -> tuple[str, str]:
    """The first request placed the order and its hold, then its process died before Stripe answered."""
    cart = client.post("/carts").get_json()["id"]
    assert client.post(f"/carts/{cart}/items", json={"sku": "TEA-01", "quantity": 1}).status_code == 200
    with transaction(sessions) as session:
        order = place_order(session, get_cart(session, cart), email="a@example.com",
                            shipping=ShippingAddress(**SHIPPING), reservation_ttl_seconds=1800, idempotency_key=key)
        order.created_at = utcnow() - timedelta(seconds=seconds_ago)
        return cart, order.id


def retry(stripe_down_client, cart: str, key: str):
    return stripe_down_client.post("/checkout", json={"cart_id": cart, "email": "a@example.com", "shipping": SHIPPING},
                                   headers={"Idempotency-Key": key})


def test_a_retry_after_the_first_request_died_is_502_and_releases_the_stock_while_stripe_is_down(
        client, sessions, make_client, localstripe):
    cart, order_id = order_placed_by_a_request_that_died(client, sessions, "key-died", seconds_ago=60)
    assert client.get("/products/TEA-01").get_json()["reserved"] == 1
    try:
        down = make_client(stripe_api_base=f"http://127.0.0.1:{free_port()}")
        answer = retry(down, cart, "key-died")
    finally:
        use_stripe(localstripe.base)
    assert answer.status_code == 502, answer.get_json()
    assert answer.get_json()["error"]["code"] == "payment_provider_unavailable"
    assert client.get("/products/TEA-01").get_json()["reserved"] == 0
    with sessions() as session:
        order = session.get(Order, order_id)
        assert (order.status, order.idempotency_key) == (OrderStatus.CANCELLED, None)  # the key is free again
    again = client.post("/checkout", json={"cart_id": cart, "email": "a@example.com", "shipping": SHIPPING},
                        headers={"Idempotency-Key": "key-died"})
    assert again.status_code == 201 and again.get_json()["order_id"] != order_id, again.get_json()


def test_a_retry_while_the_first_request_may_still_wait_for_stripe_is_in_progress_and_keeps_the_stock(
        client, sessions, make_client, localstripe):
    cart, order_id = order_placed_by_a_request_that_died(client, sessions, "key-running", seconds_ago=0)
    try:
        down = make_client(stripe_api_base=f"http://127.0.0.1:{free_port()}")
        answer = retry(down, cart, "key-running")
    finally:
        use_stripe(localstripe.base)
    assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "checkout_in_progress", \
        answer.get_json()
    assert client.get("/products/TEA-01").get_json()["reserved"] == 1
    with sessions() as session:
        assert session.get(Order, order_id).status is OrderStatus.PENDING_PAYMENT


def test_a_retry_that_finds_no_stripe_call_slot_says_the_order_keeps_its_stock(
        client, sessions, make_client, localstripe):
    cart = client.post("/carts").get_json()["id"]
    assert client.post(f"/carts/{cart}/items", json={"sku": "TEA-01", "quantity": 2}).status_code == 200
    body = {"cart_id": cart, "email": "k@example.com", "shipping": SHIPPING}
    hole = BlackHole()
    try:
        stalled = make_client(stripe_api_base=hole.base, stripe_deadline_seconds=30, stripe_max_concurrent_calls=1)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(lambda: stalled.post("/checkout", json=body, headers={"Idempotency-Key": "busy-key"}))
            hole.wait_for_requests(1)  # the first request placed the order (stock held) and waits on Stripe
            busy = stalled.post("/checkout", json=body, headers={"Idempotency-Key": "busy-key"})
            held = client.get("/products/TEA-01").get_json()["reserved"]
            hole.cut()
            first.result(30)
    finally:
        hole.close()
        use_stripe(localstripe.base)
    assert busy.status_code == 503 and held == 2, (busy.get_json(), held)
    message = busy.get_json()["error"]["message"]
    assert "keeps its stock, please retry with the same Idempotency-Key" in message, message
    assert "nothing is reserved" not in message
