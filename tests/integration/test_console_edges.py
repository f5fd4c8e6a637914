"""The staff console at its edges: a `next` no redirect can carry, a search that matches more orders
than it lists, a list page past the last, and a dead mail whose body holds the buyer's access token.

Data comes through the real paths (checkout, a signed webhook, the mail sender failing against a
closed port); forms are posted with the session's CSRF token, as a browser sends them.
"""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
from sqlalchemy import select, text

from models.events import OutboxMessage, OutboxStatus
from models.orders import Order
from tests.conftest import deliver_with
from tests.integration.test_admin_pages import CARD, EMAIL, PASSWORD, add_staff, csrf_token, flashes, logged_in, page
from tests.support import SHIPPING, confirm_card, event_for, free_port
from webhook_app.admin.masking import MASK, pretty_masked

BUYER = "hanako.private@example.com"


def dead_mail(settings, sessions, checkout, post_event):
    """A paid order whose confirmation mail ran out of attempts (nothing listens on the SMTP port)."""
    order = checkout([("TEA-01", 1)], email=BUYER)
    confirm_card(order["payment_intent_id"], CARD)
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver_with(dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{free_port()}"), sessions)
    with sessions() as session:
        message = session.scalars(select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.DEAD)).one()
        return order, message.id, session.get(Order, order["order_id"]).access_token


# --- a `next` with a line break -------------------------------------------------------------------

@pytest.mark.parametrize("target", ["/admin/\nx", "/admin/orders\r\nSet-Cookie: x=1", "/admin/\tx"])
def test_login_with_a_control_character_in_next_logs_in_and_goes_to_the_dashboard(client, sessions, target):
    add_staff(sessions)
    response = client.post("/admin/login", data={"email": EMAIL, "password": PASSWORD,
                                                  "csrf_token": csrf_token(client), "next": target})
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_retry_with_a_line_break_in_next_answers_with_the_dead_letters_page_and_the_usual_flash(
        client, settings, sessions, checkout, post_event):
    staff = logged_in(client, sessions)
    order, message_id, _ = dead_mail(settings, sessions, checkout, post_event)
    response = staff.post(f"/admin/dead-letters/{message_id}/retry", data={
        "csrf_token": csrf_token(staff, "/admin/"), "next": f"/admin/orders/{order['order_id']}\n"})
    assert response.status_code == 303
    assert response.headers["Location"] == f"/admin/dead-letters/{message_id}"
    with sessions() as session:
        assert session.get(OutboxMessage, message_id).status is OutboxStatus.PENDING
    shown = page(staff, response.headers["Location"])
    assert any(f"Dead letter {message_id} is queued again" in line for line in flashes(shown))


# --- search that matches more than it lists -------------------------------------------------------

def test_search_by_email_gives_the_true_count_and_says_only_the_newest_are_listed(client, sessions, checkout):
    staff = logged_in(client, sessions)
    with sessions.kw["bind"].begin() as conn:
        conn.execute(text("UPDATE stock SET on_hand = 1000 WHERE sku = 'TEA-01'"))
    first = checkout([("TEA-01", 1)], email="many@example.com")["order_id"]
    for _ in range(52):
        checkout([("TEA-01", 1)], email="Many@Example.com")
    shown = page(staff, "/admin/search?q=many@example.com")
    assert re.search(r'id="match-count">(.*?)<', shown).group(1) == "53 orders match “many@example.com”"
    assert "The newest 50 are listed." in shown
    assert len(re.findall(r'<tr><td data-label="Order">', shown)) == 50
    assert first not in shown  # the oldest is the one left out, and the page says so


def test_search_listing_every_match_says_nothing_about_the_newest(client, sessions, checkout):
    staff = logged_in(client, sessions)
    for _ in range(2):
        checkout([("TEA-01", 1)], email="two@example.com")
    shown = page(staff, "/admin/search?q=two@example.com")
    assert re.search(r'id="match-count">(.*?)<', shown).group(1) == "2 orders match “two@example.com”"
    assert "newest" not in shown


# --- a list page past the last --------------------------------------------------------------------

def test_dead_letters_page_past_the_last_says_so_and_links_to_the_last_page(
        client, settings, sessions, checkout, post_event):
    staff = logged_in(client, sessions)
    dead_mail(settings, sessions, checkout, post_event)
    shown = page(staff, "/admin/dead-letters?page=3&type=mail")
    assert re.search(r'id="match-count">(.*?)<', shown).group(1) == "1 dead letter matches this filter"
    assert "nothing is waiting" not in shown and "No dead letter matches" not in shown
    notice = re.search(r'<p class="notice" id="past-last-page">(.*?)</p>', shown).group(1)
    assert re.sub(r"<[^>]+>", "", notice) == "Page 3 is past the last (1); go to the last page."
    assert 'href="/admin/dead-letters?page=1&amp;type=mail"' in notice or \
        'href="/admin/dead-letters?page=1&type=mail"' in notice


def test_orders_page_past_the_last_says_so_and_links_to_the_last_page(client, sessions, checkout):
    staff = logged_in(client, sessions)
    checkout([("TEA-01", 1)])
    shown = page(staff, "/admin/orders?page=2")
    assert re.search(r'id="match-count">(.*?)<', shown).group(1) == "1 order"
    assert "No orders." not in shown
    assert re.search(r'Page 2 is past the last \(1\); go to <a href="/admin/orders\?page=1">the last page</a>', shown)
    assert 'id="past-last-page"' not in page(staff, "/admin/orders?page=1")


# --- a dead mail's access token -------------------------------------------------------------------

def test_dead_mail_page_masks_the_buyers_access_token_and_keeps_the_link(
        client, settings, sessions, checkout, post_event):
    staff = logged_in(client, sessions)
    order, message_id, token = dead_mail(settings, sessions, checkout, post_event)
    assert client.get(f"/orders/{order['order_id']}?token={token}").get_json()["email"] == BUYER  # what it opens
    shown = page(staff, f"/admin/dead-letters/{message_id}")
    assert token not in shown and BUYER not in shown and SHIPPING["address"] not in shown
    assert f'"my_page_path": "/orders/{order["order_id"]}?token={MASK}"' in shown


def test_masking_hides_tokens_by_key_and_in_links_but_not_look_alike_keys():
    masked = json.loads(pretty_masked({"token": "tok_1", "access_token": "abc", "tokenization_method": "apple_pay",
                                       "note": "opened /orders/ord_1?lang=ja&token=Zx-9_a#top again"}))
    assert masked == {"token": MASK, "access_token": MASK, "tokenization_method": "apple_pay",
                      "note": f"opened /orders/ord_1?lang=ja&token={MASK}#top again"}
