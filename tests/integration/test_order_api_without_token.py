"""GET /orders/<id> as JSON without the order's access token: the order id is no secret (my-page link, mails,
Stripe's metadata), so anyone who has it sees only what design.md's Contract lists, never the card's decline
or staff's review reason; the buyer's token still opens all of it."""
from __future__ import annotations

from tests.integration.test_consumers import deliver_event, failed, succeeded  # noqa: F401 (a fixture)

PUBLIC = {"order_id", "status", "subtotal", "shipping_fee", "total", "currency", "lines", "shipment",
          "payment_intent_id"}


def test_the_cards_decline_is_shown_only_with_the_orders_token(client, checkout, deliver_event):
    order = checkout([("TEA-01", 2)])
    deliver_event(failed(order))
    anyone = client.get(f"/orders/{order['order_id']}")
    assert anyone.status_code == 200
    assert anyone.get_json()["status"] == "payment_failed"
    assert set(anyone.get_json()) == PUBLIC
    assert "card_declined" not in anyone.get_data(as_text=True)
    buyer = client.get(f"/orders/{order['order_id']}", headers={"Authorization": f"Bearer {order['access_token']}"})
    assert buyer.get_json()["failure_code"] == "card_declined" and buyer.get_json()["failure_message"]


def test_staffs_review_reason_is_shown_only_with_the_orders_token(client, checkout, deliver_event):
    order = checkout([("TEA-01", 2)])
    deliver_event(succeeded(order, amount=3101))
    anyone = client.get(f"/orders/{order['order_id']}")
    assert anyone.get_json()["status"] == "needs_review"
    assert set(anyone.get_json()) == PUBLIC
    assert "mismatch" not in anyone.get_data(as_text=True)
    buyer = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert "amount mismatch: paid 3101 jpy" in buyer["review_reason"]


def test_a_paid_order_without_the_token_answers_the_contracts_fields_and_its_shipments_status_and_fee(
        client, checkout, deliver_event):
    order = checkout([("TEA-01", 2), ("CUP-01", 1)])
    deliver_event(succeeded(order))
    body = client.get(f"/orders/{order['order_id']}").get_json()
    assert set(body) == PUBLIC
    assert (body["status"], body["subtotal"], body["shipping_fee"], body["total"], body["currency"]) == (
        "paid", order["subtotal"], order["shipping_fee"], order["total"], "jpy")
    assert body["payment_intent_id"] == order["payment_intent_id"]
    assert body["shipment"] == {"status": "pending", "fee": order["shipping_fee"]}
    assert sorted((line["sku"], line["quantity"]) for line in body["lines"]) == [("CUP-01", 1), ("TEA-01", 2)]
    with_token = client.get(f"/orders/{order['order_id']}?token={order['access_token']}").get_json()
    assert PUBLIC | {"email", "shipping", "failure_code", "failure_message", "review_reason", "created_at",
                     "paid_at"} <= set(with_token)
    assert with_token["paid_at"] is not None
