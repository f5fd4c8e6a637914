"""Staff record that a shipment left the warehouse (`shop orders ship`, the console's *Ship*): its units
are gone for good, so a refund or a cancel after it (a chargeback lost) never puts them back on sale."""
from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import select

from consumers.staff_actions import cancel_order
from models.history import StaffAction
from tests.integration.test_admin_pages import EMAIL, flashes, logged_in, page, post
from tests.support import confirm_card, event_for
from webhook_app.cli import shop


def _run(settings, *args):
    return CliRunner().invoke(shop, list(args), env={"DATABASE_URL": settings.database_url,
                                                     "STRIPE_API_BASE": settings.stripe_api_base,
                                                     "LOG_FORMAT": "console", "SHOP_STAFF": None})


def _paid(client, checkout, post_event, deliver) -> dict:
    placed = checkout([("CUP-01", 3)])
    assert confirm_card(placed["payment_intent_id"], "4242424242424242") == "succeeded"
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=placed["payment_intent_id"],
                         order_id=placed["order_id"], amount=placed["total"]))
    deliver()
    assert client.get(f"/orders/{placed['order_id']}").get_json()["shipment"]["status"] == "pending"
    return placed


def _dispute_lost(placed: dict) -> dict:
    event = event_for("charge.dispute.created")
    event["type"] = "charge.dispute.closed"
    event["data"]["object"].update(id="dp_ShippedLost01", charge="ch_ShippedLost01",
                                   payment_intent=placed["payment_intent_id"], amount=placed["total"],
                                   currency="jpy", status="lost")
    return event


def _cups(client) -> tuple[int, int]:
    body = client.get("/products/CUP-01").get_json()
    return body["on_hand"], body["reserved"]


def _actions(sessions, order_id) -> list[tuple]:
    with sessions() as session:
        return [(a.actor, a.action, a.status_before, a.status_after, a.note, a.detail) for a in session.scalars(
            select(StaffAction).where(StaffAction.order_id == order_id).order_by(StaffAction.id))]


def test_units_of_an_order_recorded_as_shipped_stay_gone_when_it_is_cancelled_after_a_chargeback_lost(
        settings, client, sessions, checkout, post_event, deliver):
    placed = _paid(client, checkout, post_event, deliver)
    order_id = placed["order_id"]

    shipped = _run(settings, "orders", "ship", order_id, "--note", "Yamato 1234-5678", "--as", "hana")

    assert shipped.exit_code == 0, shipped.output
    assert "paid -> paid" in shipped.output
    assert client.get(f"/orders/{order_id}").get_json()["shipment"]["status"] == "shipped"
    [(actor, action, before, after, note, detail)] = _actions(sessions, order_id)
    assert (actor, action, before, after, note) == ("hana", "ship", "paid", "paid", "Yamato 1234-5678")
    assert detail.endswith("shipped: its units no longer go back on the shelf")
    # Weeks later the card holder disputes and the shop loses: the documented remedy is cancel.
    post_event(_dispute_lost(placed))
    deliver()
    assert client.get(f"/orders/{order_id}").get_json()["status"] == "needs_review"
    decision = cancel_order(sessions, order_id, actor="hana", note="chargeback lost")
    assert decision.detail.startswith("0 units back on the shelf")
    assert _cups(client) == (0, 0)  # the three cups the customer has are not for sale again


def test_only_a_pending_shipment_can_be_recorded_as_shipped_and_each_refusal_is_audited(
        settings, client, sessions, checkout, post_event, deliver):
    unpaid = checkout([("TEA-01", 1)])
    refused = _run(settings, "orders", "ship", unpaid["order_id"], "--note", "sent", "--as", "hana")
    assert refused.exit_code == 1
    assert f"order {unpaid['order_id']} is pending_payment and has no shipment" in refused.output

    placed = _paid(client, checkout, post_event, deliver)
    assert _run(settings, "orders", "ship", placed["order_id"], "--note", "sent", "--as", "hana").exit_code == 0
    again = _run(settings, "orders", "ship", placed["order_id"], "--note", "sent again", "--as", "ivan")
    assert again.exit_code == 1 and "already recorded as shipped" in again.output

    refunded = _run(settings, "orders", "refund", placed["order_id"], "--reason", "lost in transit", "--as", "hana")
    assert refunded.exit_code == 0, refunded.output
    assert _cups(client) == (0, 0)  # shipped: a refund gives the money back, not the cups to the shelf

    assert _run(settings, "orders", "ship", "ord_nosuchorder", "--note", "sent").exit_code == 2
    assert [row[:2] + row[5:] for row in _actions(sessions, unpaid["order_id"])] == [
        ("hana", "ship", f"refused: order {unpaid['order_id']} is pending_payment and has no shipment: there is "
                         f"nothing to send")]
    ships = [(actor, detail) for actor, action, _, _, _, detail in _actions(sessions, placed["order_id"])
             if action == "ship"]
    assert [actor for actor, _ in ships] == ["hana", "ivan"]
    assert ships[0][1].startswith("shipment shp_") and ships[1][1].startswith("refused: shipment shp_")


def test_the_console_records_a_shipment_sent_behind_a_confirmation_page(client, sessions, checkout, post_event,
                                                                        deliver):
    staff = logged_in(client, sessions)
    placed = _paid(client, checkout, post_event, deliver)
    order_id = placed["order_id"]
    assert 'id="decide-ship"' in page(staff, f"/admin/orders/{order_id}")

    confirm = page(staff, f"/admin/orders/{order_id}/ship")
    assert "Money: unchanged." in confirm
    assert "From now on a refund or cancel no longer puts them back on sale." in confirm
    assert ">Mark shipped</button>" in confirm

    response = post(staff, f"/admin/orders/{order_id}/ship", note="Sagawa 9876")
    assert (response.status_code, response.headers["Location"]) == (303, f"/admin/orders/{order_id}")
    story = page(staff, f"/admin/orders/{order_id}")
    assert any("ship done, paid → paid" in message for message in flashes(story))
    assert 'id="decide-ship"' not in story
    assert "the goods have already been shipped" in page(staff, f"/admin/orders/{order_id}/refund")
    assert [(actor, action, note) for actor, action, _, _, note, _ in _actions(sessions, order_id)] == [
        (EMAIL, "ship", "Sagawa 9876")]
