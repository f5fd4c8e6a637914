"""The spine in one process: checkout, a signed succeeded webhook, delivery, the order paid."""
from tests.support import event_for


def test_succeeded_webhook_marks_order_paid_and_decrements_stock_once(client, checkout, post_event, deliver):
    order = checkout([("TEA-01", 2)])
    event = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"], amount=order["total"])
    assert post_event(event).get_json() == {"received": True, "duplicate": False}
    assert post_event(event).get_json() == {"received": True, "duplicate": True}
    deliver()
    body = client.get(f"/orders/{order['order_id']}").get_json()
    assert body["status"] == "paid"
    assert body["shipment"]["status"] == "pending"
    stock = client.get("/products/TEA-01").get_json()
    assert (stock["on_hand"], stock["reserved"]) == (38, 0)
