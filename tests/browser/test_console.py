"""The staff console in a real headless Chromium: logging in, the dashboard on real data, logged-out visits."""
from __future__ import annotations

from urllib.parse import urlsplit

from click.testing import CliRunner
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import text

from tests.support import event_for
from webhook_app.cli import shop

EMAIL = "hanako.staff@example.com"
PASSWORD = "a long staff password"


def add_staff(settings, email=EMAIL, password=PASSWORD):
    """As an administrator does: `shop staff add EMAIL --password-stdin`."""
    result = CliRunner().invoke(shop, ["staff", "add", email, "--password-stdin"], input=password + "\n",
                                env={"DATABASE_URL": settings.database_url, "LOG_FORMAT": "console"})
    assert result.exit_code == 0, result.output


def click_and_wait(browser, css: str) -> None:
    """Click a link or a form's button, and wait for the page that answers it."""
    button = browser.find_element(By.CSS_SELECTOR, css)
    button.click()
    WebDriverWait(browser, 10).until(lambda b: _left_the_page(button)
                                     and b.execute_script("return document.readyState") == "complete")


def _left_the_page(element) -> bool:
    try:
        return staleness_of(element)(None)
    except WebDriverException:  # Chromium, mid-navigation: "Node … does not belong to the document"
        return True


def log_in(browser, base, email=EMAIL, password=PASSWORD):
    browser.get(f"{base}/admin/login")
    browser.find_element(By.ID, "email").send_keys(email)
    browser.find_element(By.ID, "password").send_keys(password)
    click_and_wait(browser, "form button[type=submit]")  # the console, or the form again with an error


def path_of(browser) -> str:
    return urlsplit(browser.current_url).path


def make_purchases(settings, sessions, checkout, post_event, deliver):
    """Real data through the API: two paid orders, one flagged for review, one dead letter, one waiting event."""
    for _ in range(2):
        order = checkout([("TEA-01", 1)])
        post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                             order_id=order["order_id"], amount=order["total"]))
    flagged = checkout([("TEA-01", 1)])
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=flagged["payment_intent_id"],
                         order_id=flagged["order_id"], amount=flagged["total"] - 100))
    deliver()

    # A dead letter: the handler fails on every attempt while its table is away.
    failing = checkout([("TEA-01", 1)])
    with sessions.kw["bind"].begin() as conn:
        conn.execute(text("ALTER TABLE shipments RENAME TO shipments_away"))
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=failing["payment_intent_id"],
                         order_id=failing["order_id"], amount=failing["total"]))
    for _ in range(settings.max_attempts):
        deliver(max_rounds=1)
    with sessions.kw["bind"].begin() as conn:
        conn.execute(text("ALTER TABLE shipments_away RENAME TO shipments"))

    waiting = checkout([("TEA-01", 1)])
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=waiting["payment_intent_id"],
                         order_id=waiting["order_id"], amount=waiting["total"]))


def figure(browser, element_id: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, f"#{element_id} .number").text


def test_staff_member_logs_in_and_sees_the_dashboard_with_real_data(browser, live_server, screenshot, settings,
                                                                     sessions, checkout, post_event, deliver):
    make_purchases(settings, sessions, checkout, post_event, deliver)
    add_staff(settings)

    browser.get(f"{live_server}/admin/")
    assert path_of(browser) == "/admin/login"
    screenshot("login")
    log_in(browser, live_server)
    assert path_of(browser) == "/admin/", browser.page_source[:500]

    assert EMAIL in browser.find_element(By.CSS_SELECTOR, ".who").text
    assert figure(browser, "dead-letters") == "1"
    assert figure(browser, "needs-review") == "1"
    assert figure(browser, "events-waiting") == "1"
    by_status = {cell.get_attribute("data-status"): cell.text
                 for cell in browser.find_elements(By.CSS_SELECTOR, "#orders-by-status td[data-status]")}
    assert by_status["paid"] == "2" and by_status["needs_review"] == "1"
    assert by_status["pending_payment"] == "2"  # the dead letter's order and the waiting one
    links = {a.get_attribute("id"): urlsplit(a.get_attribute("href")) for a in
             browser.find_elements(By.CSS_SELECTOR, "a.figure")}
    assert links["dead-letters"].path == "/admin/dead-letters"
    assert (links["needs-review"].path, links["needs-review"].query) == ("/admin/orders", "status=needs_review")
    chart = browser.find_element(By.CSS_SELECTOR, "#events-chart svg")
    assert len(chart.find_elements(By.CSS_SELECTOR, "rect.received")) >= 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#lag-chart svg rect.lag-avg")) >= 1
    # The stylesheet came from the service itself and applied (nothing is loaded from elsewhere).
    assert browser.find_element(By.CSS_SELECTOR, ".topbar").value_of_css_property("background-color") \
        == "rgba(29, 36, 48, 1)"
    screenshot("dashboard")
    screenshot("dashboard", phone=True)

    click_and_wait(browser, ".logout button")
    assert path_of(browser) == "/admin/login"
    browser.get(f"{live_server}/admin/")
    assert path_of(browser) == "/admin/login"


def test_a_logged_out_visit_to_each_admin_url_lands_on_the_login_page(app, browser, live_server, screenshot):
    from flask import url_for

    with app.test_request_context():
        urls = [url_for(rule.endpoint, **{arg: "1" for arg in rule.arguments})
                for rule in app.url_map.iter_rules()
                if rule.rule.startswith("/admin") and "GET" in rule.methods and rule.endpoint != "admin.login"]
    assert "/admin/" in urls
    for url in urls:
        browser.get(f"{live_server}{url}")
        assert path_of(browser) == "/admin/login", url
        assert browser.find_element(By.TAG_NAME, "h1").text == "Log in"
    screenshot("login", phone=True)


def test_a_wrong_password_is_told_plainly_and_does_not_log_in(browser, live_server, screenshot, settings):
    add_staff(settings)
    log_in(browser, live_server, password="not the password at all")
    assert path_of(browser) == "/admin/login"
    assert "Wrong e-mail or password" in browser.find_element(By.CSS_SELECTOR, ".notice.error").text
    screenshot("wrong-password")
    browser.get(f"{live_server}/admin/")
    assert path_of(browser) == "/admin/login"


def test_a_form_posted_from_another_site_is_refused_and_changes_nothing(browser, live_server, screenshot, settings):
    add_staff(settings)
    log_in(browser, live_server)
    assert path_of(browser) == "/admin/"
    # Another site's page that posts a logout form to the console (no token: it cannot read one).
    forged = (f'<form id="f" method="post" action="{live_server}/admin/logout">'
              '<button id="go" type="submit">go</button></form>')
    browser.get("data:text/html," + forged)
    click_and_wait(browser, "#go")
    assert "Nothing was changed" in browser.find_element(By.CSS_SELECTOR, ".notice.error").text
    screenshot("csrf-refused")
    browser.get(f"{live_server}/admin/")
    assert path_of(browser) == "/admin/"  # still logged in
