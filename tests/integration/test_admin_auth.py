"""The staff console's front door: logins, sessions, CSRF, the rate limit, and the dashboard's figures."""
from __future__ import annotations

import os
import re
import stat
import threading
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from models.db import transaction
from models.history import StaffAction, StaffMember
from models.settings import instance_secret_key
from models.staff import (FAILURE_WINDOW, MAX_FAILURES_PER_EMAIL_AND_IP, MAX_FAILURES_PER_IP, LoginFailure,
                          add_staff_member)
from tests.support import WEBHOOK_SECRET, event_for
from webhook_app.admin import CONSOLE_COOKIE_NAME
from webhook_app.admin.dashboard import dashboard_figures
from webhook_app.cli import shop

EMAIL = "alice@example.com"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def staff(sessions):
    with transaction(sessions) as session:
        add_staff_member(session, EMAIL, PASSWORD, actor="test setup")
    return EMAIL


def csrf_token(client, path="/admin/login") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, f"no csrf_token field on {path}"
    return match.group(1)


def log_in(client, email=EMAIL, password=PASSWORD, *, headers=None, environ_base=None, **extra):
    data = {"email": email, "password": password, "csrf_token": csrf_token(client), **extra}
    return client.post("/admin/login", data=data, headers=headers or {}, environ_base=environ_base or {})


def admin_get_rules(app):
    """Every GET page registered under /admin (found in the URL map, so new pages are covered too)."""
    return [rule for rule in app.url_map.iter_rules()
            if rule.rule.startswith("/admin") and "GET" in rule.methods and rule.endpoint != "admin.login"]


def _url(app, rule) -> str:
    with app.test_request_context():
        from flask import url_for

        return url_for(rule.endpoint, **{arg: "1" for arg in rule.arguments})


def _paid_order(checkout, post_event, deliver, email="buyer@example.com"):
    order = checkout([("TEA-01", 1)], email=email)
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver()
    return order


def _flagged_order(checkout, post_event, deliver):
    """Paid, but for less than the order's total: flagged for a person."""
    order = checkout([("TEA-01", 1)])
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"] - 100))
    deliver()
    return order


def test_every_admin_url_redirects_to_the_login_page_when_logged_out(app, client):
    rules = admin_get_rules(app)
    assert {"admin.dashboard"} <= {rule.endpoint for rule in rules}
    for rule in rules:
        url = _url(app, rule)
        response = client.get(url)
        assert response.status_code == 302, (url, response.status_code)
        assert response.headers["Location"].startswith("/admin/login?next="), (url, response.headers["Location"])
    assert client.get("/admin").status_code in (301, 302, 308)


def test_staff_member_logs_in_sees_the_dashboard_and_logs_out(client, staff, checkout, post_event, deliver):
    _paid_order(checkout, post_event, deliver)
    _flagged_order(checkout, post_event, deliver)

    response = log_in(client, next="/admin/")
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    page = client.get("/admin/").get_data(as_text=True)
    assert EMAIL in page  # who is logged in
    assert re.search(r'data-status="paid">1<', page)
    assert re.search(r'data-status="needs_review">1<', page)
    assert 'href="/admin/orders?status=needs_review"' in page and 'href="/admin/dead-letters"' in page
    assert "<svg" in page and re.search(r'id="received-total">2<', page) and re.search(r'id="processed-total">2<', page)

    logout = client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    assert logout.status_code == 302 and logout.headers["Location"] == "/admin/login"
    assert client.get("/admin/").status_code == 302


def _copy_of_the_session(app, client):
    """Another browser holding a copy of `client`'s signed session cookie (as anyone who copied it would)."""
    copy = app.test_client()
    copy.set_cookie(CONSOLE_COOKIE_NAME, client.get_cookie(CONSOLE_COOKIE_NAME, path="/admin").value,
                    path="/admin")
    return copy


def _log_out(client):
    response = client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    assert response.status_code == 302 and response.headers["Location"] == "/admin/login"


def _lands_on_the_login_page(client, path="/admin/orders"):
    response = client.get(path)
    assert response.status_code == 302, (path, response.status_code)
    assert response.headers["Location"] == f"/admin/login?next={path}"
    page = client.get(response.headers["Location"])
    assert page.status_code == 200 and 'name="password"' in page.get_data(as_text=True)


def test_logging_out_ends_the_session_so_a_copy_of_its_cookie_no_longer_opens_the_console(app, client, staff):
    assert log_in(client).status_code == 302
    copy = _copy_of_the_session(app, client)
    assert copy.get("/admin/orders").status_code == 200  # a copy works while the session lasts

    _log_out(client)
    _lands_on_the_login_page(copy)  # on the login page, not a 500
    posted = copy.post("/admin/search", data={"csrf_token": csrf_token(copy), "q": "buyer@example.com"})
    assert posted.status_code == 302 and posted.headers["Location"].startswith("/admin/login?next=")
    _lands_on_the_login_page(client)


def test_logging_out_ends_that_logins_sessions_on_every_device_but_not_other_logins(app, client, sessions, staff):
    with transaction(sessions) as session:
        add_staff_member(session, "bob@example.com", PASSWORD, actor="test setup")
    phone, bob = app.test_client(), app.test_client()
    assert log_in(client).status_code == log_in(phone).status_code == 302
    assert log_in(bob, email="bob@example.com").status_code == 302

    _log_out(client)
    _lands_on_the_login_page(phone)
    assert bob.get("/admin/orders").status_code == 200  # another login's session goes on

    assert log_in(phone).status_code == 302  # logging in again opens a new session
    assert phone.get("/admin/orders").status_code == 200


def test_a_session_from_before_session_generations_lands_on_the_login_page(client, sessions, staff):
    with sessions() as session:
        member_id = session.scalar(select(StaffMember.id).where(StaffMember.email == EMAIL))
    with client.session_transaction() as cookie:  # as Flask-Login wrote it before 0011: the id alone
        cookie["_user_id"] = str(member_id)
        cookie["_fresh"] = True
    _lands_on_the_login_page(client)


@pytest.mark.parametrize("ended", [False, True], ids=["open session", "ended session"])
def test_each_console_request_reads_the_login_once(app, client, staff, ended):
    """The check for a disabled or ended session is one read of the staff row by its primary key."""
    from sqlalchemy import event

    assert log_in(client).status_code == 302
    if ended:
        copy = _copy_of_the_session(app, client)
        _log_out(client)
        client = copy
    statements = []
    engine = app.extensions["shop"].engine
    record = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.get("/admin/orders").status_code == (302 if ended else 200)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    reads = [s for s in statements if "staff_members" in s]
    assert len(reads) == 1 and "WHERE staff_members.id =" in reads[0], reads


def test_login_never_redirects_to_another_site(client, staff):
    response = log_in(client, next="https://evil.example/admin")
    assert response.headers["Location"] == "/admin/"
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/")})
    assert log_in(client, next="//evil.example/admin").headers["Location"] == "/admin/"


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_post_without_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing(client, sessions, staff, token):
    data = {"email": EMAIL, "password": PASSWORD}
    if token:
        data["csrf_token"] = token
    client.get("/admin/login")  # a session exists, as in a browser that opened the page
    response = client.post("/admin/login", data=data)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "security token" in page and "Nothing was changed" in page
    assert response.mimetype == "text/html"
    assert client.get("/admin/").status_code == 302  # not logged in
    with sessions() as session:
        assert session.scalar(select(StaffMember.last_login_at)) is None
        assert session.scalar(select(func.count()).select_from(LoginFailure)) == 0

    assert log_in(client).status_code == 302
    logout = {"csrf_token": token} if token else {}
    assert client.post("/admin/logout", data=logout).status_code == 400
    assert client.get("/admin/").status_code == 200  # still logged in: the forged logout did nothing


def test_disabled_staff_member_cannot_log_in_and_is_logged_out(app, client, make_client, sessions, settings, staff):
    other = make_client()
    assert log_in(other).status_code == 302
    assert other.get("/admin/").status_code == 200

    result = CliRunner().invoke(shop, ["staff", "disable", EMAIL],
                                env={"DATABASE_URL": settings.database_url, "LOG_FORMAT": "console"})
    assert result.exit_code == 0, result.output

    refused = log_in(client)
    assert refused.status_code == 401
    assert "Wrong e-mail or password, or this account is disabled." in refused.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302
    assert other.get("/admin/").status_code == 302  # its open session ended
    with sessions() as session:  # and stays ended, should the login ever be enabled again
        assert session.scalar(select(StaffMember.session_generation)) == 1


def test_wrong_password_and_unknown_email_get_the_same_answer(client, staff):
    wrong = log_in(client, password="not the password")
    unknown = log_in(client, email="nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401

    def page_without(response, email):  # the form shows the e-mail typed and a fresh, time-stamped CSRF token
        return re.sub(r'name="csrf_token" value="[^"]+"', "", response.get_data(as_text=True).replace(email, ""))

    assert page_without(wrong, EMAIL) == page_without(unknown, "nobody@example.com")


def _session_cookie(response) -> str:
    cookies = [h for h in response.headers.getlist("Set-Cookie") if h.startswith(f"{CONSOLE_COOKIE_NAME}=")]
    assert cookies, response.headers
    return cookies[-1]


def test_the_console_keeps_its_own_session_so_a_token_a_shop_page_shows_cannot_post_to_it(client, staff):
    """A script on a shop page (Stripe.js on the pay step) can read that page's CSRF token and post with the
    browser's cookies: a staff member who shops in the browser they use for the console must not lend it
    their console session. The console's session is its own cookie, sent to /admin only, with its own token."""
    shop_page = client.get("/?lang=en").get_data(as_text=True)
    shop_token = re.search(r'<meta name="csrf-token" content="([^"]+)">', shop_page).group(1)
    console = _session_cookie(log_in(client))
    assert "Path=/admin" in console, console
    assert client.get_cookie(CONSOLE_COOKIE_NAME, path="/admin") is not None
    assert client.get_cookie(CONSOLE_COOKIE_NAME) is None  # never sent to the shop's pages

    refused = client.post("/admin/logout", data={"csrf_token": shop_token})
    assert refused.status_code == 400, refused.status_code
    assert client.get("/admin/").status_code == 200  # still logged in: the shop's token did nothing
    _log_out(client)  # the console's own token does
    assert client.get("/admin/").status_code == 302


def test_session_cookie_is_httponly_lax_and_secure_only_over_https(client, make_client, staff):
    plain = _session_cookie(log_in(client))
    assert "HttpOnly" in plain and "SameSite=Lax" in plain
    assert "Secure" not in plain  # http://127.0.0.1 for local use would lose its session otherwise

    https = make_client()
    token_page = https.get("/admin/login", base_url="https://shop.example")
    token = re.search(r'name="csrf_token" value="([^"]+)"', token_page.get_data(as_text=True)).group(1)
    secure = _session_cookie(https.post("/admin/login", base_url="https://shop.example",
                                        headers={"Referer": "https://shop.example/admin/login"},
                                        data={"email": EMAIL, "password": PASSWORD, "csrf_token": token}))
    assert "Secure" in secure and "HttpOnly" in secure and "SameSite=Lax" in secure

    behind_tls = make_client(admin_base_url="https://console.example")
    assert "Secure" in _session_cookie(behind_tls.get("/admin/login"))


def test_failed_logins_are_limited_per_email_and_address_across_processes(client, make_client, sessions, staff):
    for _ in range(MAX_FAILURES_PER_EMAIL_AND_IP):
        assert log_in(client, password="guess guess guess").status_code == 401
    # Another process (another gunicorn worker) sees the same count: it is kept in the database.
    other_worker = make_client()
    limited = log_in(other_worker)  # even the right password
    assert limited.status_code == 429
    assert "Too many failed logins" in limited.get_data(as_text=True)
    assert 0 < int(limited.headers["Retry-After"]) <= FAILURE_WINDOW.total_seconds() + 1
    assert other_worker.get("/admin/").status_code == 302

    # Another address is not locked out by someone else's guesses.
    from_elsewhere = make_client()
    data = {"email": EMAIL, "password": PASSWORD,
            "csrf_token": csrf_token(from_elsewhere)}
    ok = from_elsewhere.post("/admin/login", data=data, environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert ok.status_code == 302


def _failed_login_addresses(sessions) -> list[str]:
    with sessions() as session:
        return session.scalars(select(LoginFailure.ip).order_by(LoginFailure.id)).all()


def test_behind_a_trusted_proxy_one_clients_guesses_do_not_lock_out_the_other_staff(client, sessions, staff):
    """gunicorn trusts X-Forwarded-* from a proxy on its own host unless FORWARDED_ALLOW_IPS says otherwise
    (127.0.0.1 and ::1; the test client's address is 127.0.0.1): the limit counts the address that proxy saw,
    the right-most X-Forwarded-For entry, not the proxy's own, nor what the client wrote to the left of it."""
    for n in range(MAX_FAILURES_PER_IP):
        forged_then_appended = {"X-Forwarded-For": f"198.51.100.{n}, 203.0.113.5"}
        assert log_in(client, email=f"guess{n}@example.com", password="guess guess guess",
                      headers=forged_then_appended).status_code == 401
    limited = log_in(client, headers={"X-Forwarded-For": "198.51.100.200, 203.0.113.5"})
    assert limited.status_code == 429
    assert _failed_login_addresses(sessions) == ["203.0.113.5"] * MAX_FAILURES_PER_IP

    staff_member = log_in(client, headers={"X-Forwarded-For": "192.0.2.44"})  # through the same proxy
    assert staff_member.status_code == 302 and client.get("/admin/").status_code == 200


def test_a_forged_x_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_limit(client, sessions, staff):
    untrusted = {"REMOTE_ADDR": "198.51.100.20"}  # not an address FORWARDED_ALLOW_IPS names
    for n in range(MAX_FAILURES_PER_EMAIL_AND_IP):
        assert log_in(client, password="guess guess guess", headers={"X-Forwarded-For": f"203.0.113.{n}"},
                      environ_base=untrusted).status_code == 401
    limited = log_in(client, headers={"X-Forwarded-For": "203.0.113.99"}, environ_base=untrusted)
    assert limited.status_code == 429  # even the right password, whatever address it claims
    assert _failed_login_addresses(sessions) == ["198.51.100.20"] * MAX_FAILURES_PER_EMAIL_AND_IP


def test_forwarded_allow_ips_names_the_proxies_trusted_by_address_or_network(make_client, sessions, staff):
    behind = make_client(forwarded_allow_ips=("10.20.0.0/16", "192.0.2.1"))
    for proxy in ("10.20.3.4", "192.0.2.1", "127.0.0.1"):  # the last is no longer trusted: not in the list
        assert log_in(behind, password="guess guess guess", headers={"X-Forwarded-For": "203.0.113.5"},
                      environ_base={"REMOTE_ADDR": proxy}).status_code == 401
    anyone = make_client(forwarded_allow_ips=("*",))
    assert log_in(anyone, password="guess guess guess", headers={"X-Forwarded-For": "203.0.113.6"},
                  environ_base={"REMOTE_ADDR": "198.51.100.20"}).status_code == 401
    assert _failed_login_addresses(sessions) == ["203.0.113.5", "203.0.113.5", "127.0.0.1", "203.0.113.6"]


@pytest.mark.parametrize("forwarded_for", [
    "", " , ", "unknown", "203.0.113.5,", "203.0.113.5, not-an-address", "999.0.0.1", "203.0.113.5:99999",
    "[2001:db8::1", "2001:db8::1]:443", "_hidden", "1" * 5000, "203.0.113.5 203.0.113.6", "é"])
def test_a_malformed_x_forwarded_for_from_a_trusted_proxy_counts_the_proxys_address(client, sessions, staff,
                                                                                      forwarded_for):
    """Never a 500, and never an address the limit would count apart: the proxy's own, as without the header."""
    refused = log_in(client, password="guess guess guess", headers={"X-Forwarded-For": forwarded_for})
    assert refused.status_code == 401
    assert _failed_login_addresses(sessions) == ["127.0.0.1"]
    assert log_in(client, headers={"X-Forwarded-For": forwarded_for}).status_code == 302
    assert client.get("/admin/", headers={"X-Forwarded-For": forwarded_for}).status_code == 200


def test_a_login_attempt_does_not_hold_the_databases_write_turn_while_the_password_is_checked(
        make_client, sessions, staff, post_event, monkeypatch):
    """argon2 takes ~0.1 s a try and anyone may try: on SQLite a transaction open around it would hold
    the one writer's turn, and guesses from many addresses would stall every webhook (503s to Stripe)."""
    import models.staff as staff_module

    verifying, release = threading.Event(), threading.Event()

    class PausedHasher:  # the module's own hasher, its verify paused until released
        def __init__(self, hasher):
            self.hasher = hasher

        def __getattr__(self, name):
            return getattr(self.hasher, name)

        def verify(self, *args, **kwargs):
            verifying.set()
            release.wait(timeout=15)
            return self.hasher.verify(*args, **kwargs)

    monkeypatch.setattr(staff_module, "_hasher", PausedHasher(staff_module._hasher))
    guesser = make_client()  # another worker: its own engine on the same database
    token = csrf_token(guesser)
    answers = {}
    login = threading.Thread(target=lambda: answers.update(login=guesser.post(
        "/admin/login", data={"email": EMAIL, "password": "wrong password", "csrf_token": token},
        environ_base={"REMOTE_ADDR": "10.0.0.9"})), daemon=True)
    webhook = threading.Thread(target=lambda: answers.update(
        webhook=post_event(event_for("payment_intent.succeeded"))), daemon=True)
    login.start()
    try:
        assert verifying.wait(timeout=10), "the login never checked the password"
        started = time.monotonic()
        webhook.start()
        webhook.join(timeout=2)
        assert not webhook.is_alive(), "the webhook waited for the login's password check"
        assert answers["webhook"].status_code == 200, answers["webhook"].get_data(as_text=True)
        assert time.monotonic() - started < 2
    finally:
        release.set()
        login.join(timeout=20)
        webhook.join(timeout=20)
    assert not login.is_alive() and answers["login"].status_code == 401
    with sessions() as session:
        failures = session.execute(select(LoginFailure.email, LoginFailure.ip)).all()
    assert [tuple(row) for row in failures] == [(EMAIL, "10.0.0.9")]  # still recorded


def test_failures_older_than_the_window_no_longer_count(client, sessions, staff):
    from models.base import utcnow

    with transaction(sessions) as session:
        for _ in range(MAX_FAILURES_PER_EMAIL_AND_IP):
            session.add(LoginFailure(email=EMAIL, ip="127.0.0.1", at=utcnow() - FAILURE_WINDOW * 2))
    assert log_in(client).status_code == 302


def test_no_admin_page_shows_a_client_secret_webhook_secret_or_customer_data(app, client, sessions, staff, checkout,
                                                                            post_event, deliver, settings):
    order = _paid_order(checkout, post_event, deliver, email="secret-buyer@example.com")
    assert order["client_secret"]
    log_in(client)
    for rule in admin_get_rules(app):
        if rule.arguments:
            continue
        page = client.get(_url(app, rule)).get_data(as_text=True)
        for secret in (order["client_secret"], WEBHOOK_SECRET, settings.stripe_api_key, "4242424242424242",
                       "secret-buyer@example.com"):
            assert secret not in page, (rule.rule, secret)


def test_every_form_on_every_admin_page_carries_a_csrf_token(app, client, staff):
    def forms_without_token(url):
        page = client.get(url).get_data(as_text=True)
        forms = re.findall(r"<form\b.*?</form>", page, flags=re.S)
        return len(forms), [f for f in forms if 'name="csrf_token"' not in f]

    count, missing = forms_without_token("/admin/login")
    assert count == 1 and not missing
    log_in(client)
    for rule in admin_get_rules(app):
        if rule.arguments:
            continue
        count, missing = forms_without_token(_url(app, rule))
        assert count >= 1 and not missing, (rule.rule, missing)  # at least the logout form


def test_admin_pages_are_not_cached_framed_or_scripted(client, staff):
    log_in(client)
    response = client.get("/admin/")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'none'" in response.headers["Content-Security-Policy"]
    assert "<script" not in response.get_data(as_text=True)
    assert client.get("/static/site.css").status_code == 200


def test_dashboard_counts_waiting_retrying_and_dead_events(sessions, checkout, post_event, deliver, settings):
    _paid_order(checkout, post_event, deliver)
    waiting = checkout([("TEA-01", 1)])
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=waiting["payment_intent_id"],
                         order_id=waiting["order_id"], amount=waiting["total"]))
    with sessions() as session:
        figures = dashboard_figures(session)
    assert figures.events_waiting == 1 and figures.oldest_waiting_at is not None
    assert figures.orders_by_status["paid"] == 1 and figures.orders_by_status["pending_payment"] == 1
    assert figures.dead_letters == 0 and figures.needs_review == 0
    assert sum(figures.traffic.received.values()) == 2
    assert sum(figures.traffic.processed.values()) == 1
    (minute,) = figures.traffic.processed
    assert minute == 24 * 60 - 1 or minute == 24 * 60 - 2  # this minute (or the last, at a minute's turn)
    assert 0 <= figures.traffic.lag_avg[minute] < 60


def test_staff_cli_adds_lists_and_disables_logins_with_the_usual_exit_codes(settings, sessions):
    def run(*args, stdin=None):
        return CliRunner().invoke(shop, ["staff", *args], input=stdin,
                                  env={"DATABASE_URL": settings.database_url, "LOG_FORMAT": "console"})

    added = run("add", "Bob@Example.com", "--password-stdin", stdin="a long enough password\n")
    assert added.exit_code == 0, added.output
    prompted = run("add", "carol@example.com", stdin="another long password\nanother long password\n")
    assert prompted.exit_code == 0, prompted.output
    assert run("add", "bob@example.com", "--password-stdin", stdin="a long enough password\n").exit_code == 1
    assert run("add", "dave@example.com", "--password-stdin", stdin="short\n").exit_code == 2
    assert run("add", "not-an-email", "--password-stdin", stdin="a long enough password\n").exit_code == 2
    listed = run("list")
    assert listed.exit_code == 0
    assert "bob@example.com" in listed.output and "carol@example.com" in listed.output
    assert "a long enough password" not in listed.output
    assert run("disable", "bob@example.com").exit_code == 0
    assert "disabled" in run("list").output
    assert run("disable", "nobody@example.com").exit_code == 2
    with sessions() as session:
        stored = session.scalar(select(StaffMember.password_hash).where(StaffMember.email == "bob@example.com"))
    assert stored.startswith("$argon2") and "a long enough password" not in stored


def test_adding_and_disabling_a_login_is_audited_with_who_did_it(settings, sessions):
    def run(*args, stdin=None, env=None):
        return CliRunner().invoke(shop, ["staff", *args], input=stdin,
                                  env={"DATABASE_URL": settings.database_url, "LOG_FORMAT": "console", **(env or {})})

    assert run("add", "bob@example.com", "--as", "alice", "--password-stdin",
               stdin="a long enough password\n").exit_code == 0
    assert run("disable", "bob@example.com", env={"SHOP_STAFF": "carol"}).exit_code == 0
    again = run("disable", "bob@example.com", "--as", "dave")
    assert again.exit_code == 0 and "already disabled" in again.output
    refused = run("add", "bob@example.com", "--as", "erin", "--password-stdin", stdin="a long enough password\n")
    assert refused.exit_code == 1

    with sessions() as session:
        rows = session.execute(select(StaffAction.actor, StaffAction.action, StaffAction.target, StaffAction.detail)
                               .order_by(StaffAction.id)).all()
    assert [tuple(row) for row in rows] == [
        ("alice", "add login", "staff member bob@example.com", None),
        ("carol", "disable login", "staff member bob@example.com", None),
        ("dave", "disable login", "staff member bob@example.com", "already disabled; nothing changed")]
    listed = run("list").output
    assert "added by alice" in listed and "disabled by carol" in listed
    assert "disabled by dave" in listed and "(already disabled; nothing changed)" in listed


def test_secret_key_is_generated_once_with_owner_only_permissions(tmp_path):
    path = tmp_path / "instance" / "secret_key"
    first = instance_secret_key(path)
    assert len(first) >= 32 and instance_secret_key(path) == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary file left


def test_secret_key_from_the_environment_wins(tmp_path, monkeypatch):
    from models.settings import Settings

    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({"SECRET_KEY": "from-the-environment"}).secret_key == "from-the-environment"
    assert not (tmp_path / "instance" / "secret_key").exists()
    generated = Settings.from_env({}).secret_key
    assert generated == (tmp_path / "instance" / "secret_key").read_text().strip()


def test_a_process_that_cannot_write_instance_still_starts_without_a_key_file(tmp_path, monkeypatch):
    from models.settings import Settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "instance").write_text("not a folder")  # as unwritable as it gets, even for root
    settings = Settings.from_env({"DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}"})
    assert settings.secret_key is None


def test_the_logged_in_staff_members_email_is_the_actor_for_audit_rows(app, client, staff):
    from flask_login import current_user

    from webhook_app.admin import actor

    log_in(client)
    with client:  # keeps the request context of the next request open
        assert client.get("/admin/").status_code == 200
        assert current_user.email == actor() == EMAIL
