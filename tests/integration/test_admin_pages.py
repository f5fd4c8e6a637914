"""The staff console's pages: dead letters, orders and their decisions, one page per order, search.

Data comes through the real paths: checkout, signed webhooks, the worker (a dead letter is a
handler failing while its table is away), localstripe for money. Decisions go through the
console's forms with the session's CSRF token, as a browser sends them.
"""
from __future__ import annotations

import dataclasses
import html
import re

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from models.db import transaction
from models.events import InboxEvent, OutboxMessage, OutboxStatus
from models.history import StaffAction
from models.orders import Order
from models.staff import ADD_LOGIN, add_staff_member
from tests.conftest import deliver_with
from tests.support import SHIPPING, WEBHOOK_SECRET, confirm_card, event_for, free_port
from webhook_app.cli import shop

EMAIL = "kenji.staff@example.com"
PASSWORD = "a long staff password"
CARD = "4242424242424242"


# --- data through the real paths ----------------------------------------------------------------

def dead_letter(settings, sessions, checkout, post_event, deliver, *, items=(("TEA-01", 1),), **checkout_args):
    """A real dead letter: the succeeded handler fails on every attempt while `shipments` is away."""
    order = checkout(list(items), **checkout_args)
    event = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"], amount=order["total"])
    with sessions.kw["bind"].begin() as conn:
        conn.execute(text("ALTER TABLE shipments RENAME TO shipments_away"))
    try:
        post_event(event)
        for _ in range(settings.max_attempts):
            deliver(max_rounds=1)
    finally:
        with sessions.kw["bind"].begin() as conn:
            conn.execute(text("ALTER TABLE shipments_away RENAME TO shipments"))
    with sessions() as session:
        message_id = session.scalars(
            select(OutboxMessage.id).join(InboxEvent, OutboxMessage.inbox_event_id == InboxEvent.id)
            .where(InboxEvent.event_id == event["id"])).one()
        assert session.get(OutboxMessage, message_id).status is OutboxStatus.DEAD
    return order, event, message_id


def flagged_order(checkout, post_event, deliver, *, pay=True, **checkout_args):
    """Paid (at localstripe, with a card) for less than the order's total: flagged for a person."""
    order = checkout([("TEA-01", 1)], **checkout_args)
    if pay:
        confirm_card(order["payment_intent_id"], CARD)
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"] - 100))
    deliver()
    return order


def add_staff(sessions, email=EMAIL):
    with transaction(sessions) as session:
        add_staff_member(session, email, PASSWORD, actor="test setup")


def csrf_token(client, path="/admin/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert match, f"no csrf_token on {path}"
    return match.group(1)


def logged_in(client, sessions, email=EMAIL):
    add_staff(sessions, email)
    response = client.post("/admin/login", data={"email": email, "password": PASSWORD,
                                                  "csrf_token": csrf_token(client)})
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def post(client, path, **data):
    """A console form as a browser sends it: with the page's CSRF token."""
    return client.post(path, data={"csrf_token": csrf_token(client, "/admin/"), **data})


def page(client, path) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return html.unescape(response.get_data(as_text=True))


def flashes(text: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", m).strip() for m in re.findall(r'<p class="notice (?:ok|error)"[^>]*>(.*?)</p>',
                                                                  text, flags=re.S)]


def audit_rows(sessions):
    """The decisions audited (the staff login the fixture added is audited too, and left out)."""
    with sessions() as session:
        return list(session.scalars(select(StaffAction).where(StaffAction.action != ADD_LOGIN)
                                    .order_by(StaffAction.id)))


def order_status(sessions, order_id) -> str:
    with sessions() as session:
        return session.get(Order, order_id).status.value


@pytest.fixture
def staff_client(client, sessions):
    return logged_in(client, sessions)


# --- dead letters ---------------------------------------------------------------------------------

def test_dead_letter_page_shows_the_traceback_and_a_masked_payload_and_retry_pays_the_order(
        staff_client, settings, sessions, checkout, post_event, deliver):
    order, event, message_id = dead_letter(settings, sessions, checkout, post_event, deliver,
                                           email="private.buyer@example.com")
    listed = page(staff_client, "/admin/dead-letters")
    assert f'href="/admin/dead-letters/{message_id}"' in listed and event["id"] in listed
    assert f'href="/admin/orders/{order["order_id"]}"' in listed  # its order, though its handler never ran

    shown = page(staff_client, f"/admin/dead-letters/{message_id}")
    assert "Traceback" in shown and "shipments" in shown
    assert "[parameters: •••]" in shown  # a statement's bound values can be a customer's address
    assert '"amount": ' in shown and event["id"] in shown  # the payload, pretty-printed
    assert event["data"]["object"]["client_secret"] not in shown
    assert '"client_secret": "•••"' in shown

    response = post(staff_client, f"/admin/dead-letters/{message_id}/retry")
    assert (response.status_code, response.headers["Location"]) == (303, f"/admin/dead-letters/{message_id}")
    after = page(staff_client, f"/admin/dead-letters/{message_id}")
    assert any("queued again" in message for message in flashes(after))
    deliver()
    assert order_status(sessions, order["order_id"]) == "paid"

    (row,) = audit_rows(sessions)
    assert (row.actor, row.action, row.target) == (EMAIL, "retry", f"dead letter {message_id}")
    # The retry is part of the order's story, with who did it.
    story = page(staff_client, f"/admin/orders/{order['order_id']}")
    assert f"staff {EMAIL}: retry dead letter {message_id}" in story
    assert 'id="order-status">paid<' in story


def test_the_order_of_a_dead_letter_whose_handler_never_ran_gets_the_audit_row(settings, sessions, checkout,
                                                                              post_event, deliver):
    """The event never got an order id (its handler failed each time): the retry's audit row is
    still the order's, found through the event's PaymentIntent."""
    from consumers.staff_actions import retry_dead_letter

    order, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    retry_dead_letter(sessions, message_id, actor="someone")
    (row,) = audit_rows(sessions)
    assert row.order_id == order["order_id"]


def test_a_dead_mail_page_masks_the_recipient_name_and_address_and_links_its_order(staff_client, settings, sessions,
                                                                                 checkout, post_event):
    order = checkout([("TEA-01", 1)], email="hanako.private@example.com")
    confirm_card(order["payment_intent_id"], CARD)
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    nobody_listens = dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{free_port()}")
    deliver_with(nobody_listens, sessions)  # the order is paid; its confirmation mail fails every attempt
    with sessions() as session:
        message = session.scalars(select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.DEAD)).one()

    listed = page(staff_client, "/admin/dead-letters")
    shown = page(staff_client, f"/admin/dead-letters/{message.id}")
    assert "mail “confirmation”" in listed and f'href="/admin/orders/{order["order_id"]}"' in shown
    assert '"to": "•••"' in shown and '"kind": "confirmation"' in shown
    for private in ("hanako.private", SHIPPING["name"], SHIPPING["address"], SHIPPING["postal_code"]):
        assert private not in listed and private not in shown, private
    assert 'id="retry"' in shown


def test_resolving_needs_a_note_and_then_closes_the_dead_letter_with_it(staff_client, settings, sessions, checkout,
                                                                      post_event, deliver):
    _, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    refused = post(staff_client, f"/admin/dead-letters/{message_id}/resolve", note="   ")
    assert refused.status_code == 303
    assert any("needs a note" in m for m in flashes(page(staff_client, f"/admin/dead-letters/{message_id}")))
    with sessions() as session:
        assert session.get(OutboxMessage, message_id).status is OutboxStatus.DEAD
    assert audit_rows(sessions) == []

    post(staff_client, f"/admin/dead-letters/{message_id}/resolve", note="shipped by hand")
    shown = page(staff_client, f"/admin/dead-letters/{message_id}")
    assert "resolved" in shown and "shipped by hand" in shown and 'id="reopen"' in shown
    with sessions() as session:
        message = session.get(OutboxMessage, message_id)
        assert (message.status, message.resolution_note) == (OutboxStatus.RESOLVED, "shipped by hand")
    assert "No dead letters" in page(staff_client, "/admin/dead-letters")


def test_dead_letters_are_filtered_by_type_error_and_since_and_paged(staff_client, settings, sessions, checkout,
                                                                   post_event, deliver, monkeypatch):
    ids = [dead_letter(settings, sessions, checkout, post_event, deliver)[2] for _ in range(3)]

    def listed(query=""):
        text = page(staff_client, f"/admin/dead-letters{query}")
        return [int(i) for i in re.findall(r'<tr data-id="(\d+)"', text)], text

    assert listed()[0] == ids
    assert listed("?type=payment_intent.succeeded")[0] == ids
    assert listed("?type=payment_intent.payment_failed")[0] == []
    assert listed("?error=shipments")[0] == ids and listed("?error=no+such+words")[0] == []
    assert listed("?since=1d")[0] == ids and listed("?since=2099-01-01")[0] == []
    bad = staff_client.get("/admin/dead-letters?since=yesterday-ish")
    assert bad.status_code == 422 and "is not a date" in bad.get_data(as_text=True)
    # The filter form is posted with its token, then shown as a plain, bookmarkable GET.
    posted = post(staff_client, "/admin/dead-letters", type="payment_intent.succeeded", error="shipments", since="")
    assert posted.headers["Location"] == "/admin/dead-letters?type=payment_intent.succeeded&error=shipments"

    monkeypatch.setattr("webhook_app.admin.dead_letters.PAGE_SIZE", 2)
    first, text = listed()
    assert first == ids[:2] and "Page 1 of 2" in text
    assert listed("?page=2")[0] == ids[2:]


def test_bulk_retry_shows_what_the_filter_matches_then_retries_exactly_those(staff_client, settings, sessions,
                                                                             checkout, post_event, deliver):
    ids = [dead_letter(settings, sessions, checkout, post_event, deliver)[2] for _ in range(2)]
    preview = page(staff_client, "/admin/dead-letters/bulk-retry?error=shipments")
    assert "2 dead letters" in preview and [int(i) for i in re.findall(r'name="id" value="(\d+)"', preview)] == ids
    with sessions() as session:  # showing it changed nothing
        assert all(session.get(OutboxMessage, i).status is OutboxStatus.DEAD for i in ids)

    # A colleague resolves one meanwhile: the confirmation retries the other and says so.
    post(staff_client, f"/admin/dead-letters/{ids[0]}/resolve", note="handled by hand")
    done = post(staff_client, "/admin/dead-letters/bulk-retry?error=shipments", id=[str(i) for i in ids],
                note="table restored")
    assert (done.status_code, done.headers["Location"]) == (303, "/admin/dead-letters?error=shipments")
    messages = flashes(page(staff_client, "/admin/dead-letters?error=shipments"))
    assert any(f"1 dead letter queued again: {ids[1]}" in m for m in messages), messages
    assert any(f"Not retried: {ids[0]}" in m for m in messages), messages
    rows = [r for r in audit_rows(sessions) if r.action == "retry"]
    assert [(r.target, r.note, r.actor) for r in rows if not (r.detail or "").startswith("refused")] == \
        [(f"dead letter {ids[1]}", "table restored", EMAIL)]
    deliver()
    with sessions() as session:
        assert session.get(OutboxMessage, ids[1]).status is OutboxStatus.DONE
        assert session.get(OutboxMessage, ids[0]).status is OutboxStatus.RESOLVED


# --- orders needing review, decisions ---------------------------------------------------------------

def test_review_list_says_why_in_a_sentence_and_links_each_decision(staff_client, checkout, post_event, deliver):
    order = flagged_order(checkout, post_event, deliver)
    listed = page(staff_client, "/admin/orders?status=needs_review")
    total = order["total"]
    assert (f"The customer paid {total - 100:,} JPY, but the order's total is {total:,} JPY: the amounts differ."
            in listed)
    for decision in ("accept", "cancel", "refund"):
        assert f'href="/admin/orders/{order["order_id"]}/{decision}"' in listed
    every = page(staff_client, "/admin/orders")
    assert order["order_id"] in every
    assert order["order_id"] not in page(staff_client, "/admin/orders?status=paid")


def test_accept_shows_what_happens_to_money_and_stock_needs_a_note_and_fulfils(staff_client, client, sessions,
                                                                              checkout, post_event, deliver):
    order = flagged_order(checkout, post_event, deliver)
    order_id = order["order_id"]
    confirm = page(staff_client, f"/admin/orders/{order_id}/accept")
    held = f"{order['total'] - 100:,} JPY"
    assert f"Money: the {held} taken is kept" in confirm and "Stock: the units it holds (1 × TEA-01) leave the shelf" \
        in confirm
    assert order_status(sessions, order_id) == "needs_review"  # the confirmation page changed nothing

    no_note = post(staff_client, f"/admin/orders/{order_id}/accept", note="")
    assert no_note.headers["Location"] == f"/admin/orders/{order_id}/accept"
    assert order_status(sessions, order_id) == "needs_review" and audit_rows(sessions) == []

    done = post(staff_client, f"/admin/orders/{order_id}/accept", note="customer paid the rest by bank transfer")
    assert (done.status_code, done.headers["Location"]) == (303, f"/admin/orders/{order_id}")
    story = page(staff_client, f"/admin/orders/{order_id}")
    assert any("accept done, needs_review → paid" in m for m in flashes(story))
    assert 'id="order-status">paid<' in story
    assert f"staff {EMAIL}: accept order {order_id} (needs_review -> paid)" in story
    assert "note: customer paid the rest by bank transfer" in story
    assert client.get(f"/orders/{order_id}").get_json()["shipment"]["status"] == "pending"


def test_cancel_with_refund_gives_the_money_back_at_stripe_and_refund_alone_too(staff_client, sessions, checkout,
                                                                               post_event, deliver):
    first = flagged_order(checkout, post_event, deliver)
    confirm = page(staff_client, f"/admin/orders/{first['order_id']}/cancel")
    assert "Cancelling is refused unless you tick" in confirm and 'name="refund" value="yes"' in confirm

    refused = post(staff_client, f"/admin/orders/{first['order_id']}/cancel", note="customer asked")
    assert refused.status_code == 303
    assert any("Not done:" in m and "holds" in m for m in flashes(page(staff_client, f"/admin/orders/{first['order_id']}")))
    assert order_status(sessions, first["order_id"]) == "needs_review"

    post(staff_client, f"/admin/orders/{first['order_id']}/cancel", note="customer asked", refund="yes")
    assert order_status(sessions, first["order_id"]) == "refunded"

    second = flagged_order(checkout, post_event, deliver)
    assert "goes back to the customer's card at Stripe" in page(staff_client, f"/admin/orders/{second['order_id']}/refund")
    post(staff_client, f"/admin/orders/{second['order_id']}/refund", note="wrong amount charged")
    story = page(staff_client, f"/admin/orders/{second['order_id']}")
    assert 'id="order-status">refunded<' in story and "by staff" in story
    actions = [(r.action, r.order_id, r.status_after, r.actor) for r in audit_rows(sessions)]
    assert actions == [("cancel", first["order_id"], "needs_review", EMAIL),   # the refused one, audited
                       ("cancel", first["order_id"], "refunded", EMAIL),
                       ("refund", second["order_id"], "refunded", EMAIL)]


# --- the order's page and search ------------------------------------------------------------------------

def test_order_page_tells_the_whole_story(staff_client, settings, sessions, checkout, post_event, deliver):
    order, event, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    post(staff_client, f"/admin/orders/{order['order_id']}", note="x")  # a stray POST to a page: refused as 405
    post(staff_client, f"/admin/dead-letters/{message_id}/retry", note="table restored")
    deliver()
    story = page(staff_client, f"/admin/orders/{order['order_id']}")
    for part in ("Hokkaido black tea", "TEA-01", "consumed",                         # lines, reservations
                 f"stripe event payment_intent.succeeded {event['id']}",            # every event
                 "processed, 4 attempt(s)", "status pending_payment -> paid",  # attempts, status changes
                 "cause: ",                                                         # with their cause
                 "mail confirmation queued",                                        # mails
                 f"staff {EMAIL}: retry dead letter {message_id}", "note: table restored",
                 SHIPPING["address"], "buyer@example.com"):                         # the customer, for staff
        assert part in story, part


@pytest.mark.parametrize("reference", ["order_id", "payment_intent_id", "event_id", "email"])
def test_search_by_any_reference_opens_the_orders_page(staff_client, checkout, post_event, deliver, reference):
    order = flagged_order(checkout, post_event, deliver, pay=False, email="Sachiko@Example.com")
    event = event_for("localstripe_payment_intent.payment_failed", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"])
    post_event(event)
    value = {"order_id": order["order_id"], "payment_intent_id": order["payment_intent_id"],
             "event_id": event["id"], "email": "sachiko@example.com"}[reference]
    found = post(staff_client, "/admin/search", q=f" {value} ")
    assert found.status_code == 303
    opened = staff_client.get(found.headers["Location"])
    assert (opened.status_code, opened.headers.get("Location")) == (303, f"/admin/orders/{order['order_id']}")


def test_search_by_an_intent_the_order_was_paid_on_but_no_longer_holds_opens_the_orders_page(
        staff_client, client, checkout, post_event, deliver):
    """The pi_… of a second tab's payment (what Stripe's dashboard and a dispute show) finds its order too."""
    from tests.integration.test_staff_decisions import _paid_on_a_second_tab_only

    order, stray = _paid_on_a_second_tab_only(client, checkout, post_event, deliver)
    found = post(staff_client, "/admin/search", q=stray)
    assert found.status_code == 303
    opened = staff_client.get(found.headers["Location"])
    assert (opened.status_code, opened.headers.get("Location")) == (303, f"/admin/orders/{order['order_id']}")


def test_search_lists_several_orders_and_says_when_nothing_matches(staff_client, checkout):
    orders = [checkout([("TEA-01", 1)], email="twice@example.com")["order_id"] for _ in range(2)]
    several = page(staff_client, "/admin/search?q=twice@example.com")
    assert all(f'href="/admin/orders/{o}"' in several for o in orders)
    none = staff_client.get("/admin/search?q=ord_nothing_like_it")
    assert none.status_code == 404 and "No order matches" in none.get_data(as_text=True)
    assert staff_client.get("/admin/orders/ord_nothing_like_it").status_code == 404
    assert staff_client.get("/admin/dead-letters/999999").status_code == 404


# --- CSRF, secrets, the same audit rows as the CLI ---------------------------------------------------------

def _actions(order_id: str, message_id: int) -> list[tuple[str, dict]]:
    return [(f"/admin/dead-letters/{message_id}/retry", {"note": "n"}),
            (f"/admin/dead-letters/{message_id}/resolve", {"note": "n"}),
            (f"/admin/dead-letters/bulk-retry", {"id": str(message_id)}),
            (f"/admin/orders/{order_id}/accept", {"note": "n"}),
            (f"/admin/orders/{order_id}/cancel", {"note": "n", "refund": "yes"}),
            (f"/admin/orders/{order_id}/refund", {"note": "n"})]


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_every_action_without_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing(
        staff_client, settings, sessions, checkout, post_event, deliver, token):
    flagged = flagged_order(checkout, post_event, deliver)
    _, _, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)

    def snapshot():
        with sessions() as session:
            message = session.get(OutboxMessage, message_id)
            state = (message.status, message.attempts)
        return (*state, order_status(sessions, flagged["order_id"]), len(audit_rows(sessions)))

    before = snapshot()
    for path, data in _actions(flagged["order_id"], message_id):
        response = staff_client.post(path, data={**data, **({"csrf_token": token} if token else {})})
        assert response.status_code == 400, path
        assert "Nothing was changed" in response.get_data(as_text=True)
        assert snapshot() == before, path


def test_no_console_page_shows_a_card_number_a_client_secret_or_a_webhook_secret_and_every_form_has_a_token(
        staff_client, settings, sessions, checkout, post_event, deliver, app):
    # A customer who typed their card number into the address; a colleague who pasted secrets into notes.
    typed = dict(SHIPPING, address="Kita 1-jo 4242 4242 4242 4242 Sapporo")
    flagged = flagged_order(checkout, post_event, deliver, shipping=typed)
    order, event, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)
    post(staff_client, f"/admin/dead-letters/{message_id}/resolve",
         note=f"card {CARD} refunded by hand, webhook secret {WEBHOOK_SECRET}")
    post(staff_client, f"/admin/orders/{flagged['order_id']}/accept", note=f"customer read out {CARD}")
    with sessions() as session:
        secrets_in_data = [o.client_secret for o in session.scalars(select(Order))]
    assert all(secrets_in_data) and event["data"]["object"]["client_secret"]

    urls = ["/admin/", "/admin/dead-letters", f"/admin/dead-letters/{message_id}",
            "/admin/dead-letters/bulk-retry", "/admin/orders", "/admin/orders?status=needs_review",
            f"/admin/orders/{order['order_id']}", f"/admin/orders/{flagged['order_id']}",
            *(f"/admin/orders/{flagged['order_id']}/{d}" for d in ("accept", "cancel", "refund")),
            "/admin/search?q=buyer@example.com"]
    # Every console page is in the list (a new page makes this test name it).
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules() if rule.rule.startswith("/admin")}
    assert endpoints - {"admin.login", "admin.logout", "admin.retry", "admin.resolve", "admin.reopen"} == {
        "admin.dashboard", "admin.dead_letters", "admin.dead_letter", "admin.bulk_retry", "admin.orders",
        "admin.order", "admin.decide", "admin.search"}
    forbidden = [CARD, "4242 4242 4242 4242", WEBHOOK_SECRET, settings.stripe_api_key,
                 event["data"]["object"]["client_secret"], *secrets_in_data]
    for url in urls:
        text = page(staff_client, url)
        for secret in forbidden:
            assert secret not in text, (url, secret)
        forms = re.findall(r"<form\b.*?</form>", text, flags=re.S)
        assert forms and all('name="csrf_token"' in form for form in forms), url
    assert "[card number ••••4242]" in page(staff_client, f"/admin/orders/{flagged['order_id']}")


def _cli(settings, *args):
    result = CliRunner().invoke(shop, list(args), env={"DATABASE_URL": settings.database_url,
                                                       "STRIPE_API_BASE": settings.stripe_api_base,
                                                       "LOG_FORMAT": "console"})
    assert result.exit_code in (0, 1), result.output
    return result


def _comparable(row: StaffAction, normalise_ids: bool = False) -> dict:
    """An audit row's fields but who and when (and its own id); for rows about two different
    orders, their order and shipment ids made alike."""
    fields = {c.name: getattr(row, c.name) for c in StaffAction.__table__.columns if c.name not in ("id", "actor", "at")}
    if normalise_ids:
        fields = {key: re.sub(r"\b(ord|shp)_[0-9a-f]+", r"\1_ID", value) if isinstance(value, str) else value
                  for key, value in fields.items()}
    return fields


def test_the_cli_and_the_console_write_the_same_audit_rows_for_the_same_action(
        staff_client, settings, sessions, checkout, post_event, deliver):
    order, event, message_id = dead_letter(settings, sessions, checkout, post_event, deliver)

    def dead_again():  # the handler fails again for all its attempts: a dead letter once more
        with sessions.kw["bind"].begin() as conn:
            conn.execute(text("ALTER TABLE shipments RENAME TO shipments_away"))
        try:
            for _ in range(settings.max_attempts):
                deliver(max_rounds=1)
        finally:
            with sessions.kw["bind"].begin() as conn:
                conn.execute(text("ALTER TABLE shipments_away RENAME TO shipments"))

    pairs = []

    def both(cli_args, console_path, data, between=None):
        start = len(audit_rows(sessions))
        _cli(settings, *cli_args, "--as", "cli-person")
        if between:
            between()
        post(staff_client, console_path, **data)
        rows = audit_rows(sessions)[start:]
        pairs.append((rows[0], rows[-1]))

    both(["dlq", "retry", str(message_id), "--note", "fixed"], f"/admin/dead-letters/{message_id}/retry",
         {"note": "fixed"}, between=dead_again)
    both(["dlq", "resolve", str(message_id), "--note", "done by hand"], f"/admin/dead-letters/{message_id}/resolve",
         {"note": "done by hand"},
         between=lambda: _cli(settings, "dlq", "reopen", str(message_id), "--note", "again", "--as", "cli-person"))
    flagged = [flagged_order(checkout, post_event, deliver) for _ in range(2)]
    both(["orders", "cancel", flagged[0]["order_id"], "--note", "asked"], f"/admin/orders/{flagged[0]['order_id']}/cancel",
         {"note": "asked"})  # refused both times: money is held
    start = len(audit_rows(sessions))
    _cli(settings, "orders", "accept", flagged[0]["order_id"], "--note", "keep it", "--as", "cli-person")
    post(staff_client, f"/admin/orders/{flagged[1]['order_id']}/accept", note="keep it")
    accepted = audit_rows(sessions)[start:]

    for cli_row, console_row in pairs:
        assert (cli_row.actor, console_row.actor) == ("cli-person", EMAIL)
        assert _comparable(cli_row) == _comparable(console_row)
    assert [r.action for r, _ in pairs] == ["retry", "resolve", "cancel"]
    assert accepted[0].order_id != accepted[1].order_id
    assert _comparable(accepted[0], normalise_ids=True) == _comparable(accepted[1], normalise_ids=True)
    assert accepted[1].status_after == "paid" and accepted[1].actor == EMAIL
