"""A staff member's day in a real headless Chromium: a dead letter made by a handler that fails
until it is fixed, retried from its order's page; another resolved with a note; a filtered set
bulk-retried; a flagged order accepted; and every console URL closed once logged out.

Between a decision and its effect the test delivers the outbox as the relay and worker would
(`deliver`), on the same database the live server uses.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from selenium.webdriver.common.by import By

from tests.browser.test_console import EMAIL, add_staff, log_in, path_of
from tests.browser.test_console import click_and_wait as click  # every click here opens a page
from tests.integration.test_admin_pages import dead_letter, flagged_order


def text_of(browser, css: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, css).text


def flash(browser) -> str:
    return " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, "main .notice"))


def test_staff_member_fixes_a_dead_letter_resolves_one_bulk_retries_accepts_a_flagged_order_and_ships_it(
        browser, live_server, screenshot, settings, sessions, checkout, post_event, deliver):
    flagged = flagged_order(checkout, post_event, deliver)
    order, event, first = dead_letter(settings, sessions, checkout, post_event, deliver)
    _, _, second = dead_letter(settings, sessions, checkout, post_event, deliver)
    bulk = [dead_letter(settings, sessions, checkout, post_event, deliver)[2] for _ in range(2)]
    add_staff(settings)

    browser.get(f"{live_server}/admin/")
    log_in(browser, live_server)
    assert path_of(browser) == "/admin/"
    assert text_of(browser, "#dead-letters .number") == "4"
    screenshot("dashboard")

    # From the dashboard to the dead letter, then to its order.
    click(browser, "a#dead-letters")
    assert path_of(browser) == "/admin/dead-letters"
    screenshot("dead-letters")
    screenshot("dead-letters", phone=True)
    click(browser, f'tr[data-id="{first}"] td[data-label="What"] a')
    assert path_of(browser) == f"/admin/dead-letters/{first}"
    assert "no such table: shipments" in text_of(browser, "#last-error") or "shipments" in text_of(browser, "#last-error")
    assert "Traceback" in text_of(browser, "#last-error")
    assert '"client_secret": "•••"' in text_of(browser, "#payload")
    screenshot("dead-letter")
    screenshot("dead-letter", phone=True)
    click(browser, "#order-link")
    assert path_of(browser) == f"/admin/orders/{order['order_id']}"
    assert text_of(browser, "#order-status") == "pending_payment"

    # The cause is fixed (the table is back): retry from the order's page.
    click(browser, f"#retry-{first}")
    assert path_of(browser) == f"/admin/orders/{order['order_id']}"
    assert "queued again" in flash(browser)
    deliver()
    browser.refresh()
    assert text_of(browser, "#order-status") == "paid"
    story = text_of(browser, "#story")
    assert f"staff {EMAIL}: retry dead letter {first}" in story
    screenshot("order-story")
    screenshot("order-story", phone=True)

    # Resolve another, with a note.
    browser.get(f"{live_server}/admin/dead-letters/{second}")
    browser.find_element(By.ID, "resolve-note").send_keys("Customer asked to cancel; refunded at the counter")
    click(browser, "#resolve")
    assert path_of(browser) == f"/admin/dead-letters/{second}"
    assert "resolved" in flash(browser) and text_of(browser, "#message-status") == "resolved"
    assert "Customer asked to cancel" in browser.find_element(By.TAG_NAME, "main").text
    screenshot("dead-letter-resolved")

    # Bulk retry of a filtered set: the count and the list first, then the confirming POST.
    browser.get(f"{live_server}/admin/dead-letters")
    browser.find_element(By.ID, "f-error").send_keys("shipments")
    browser.find_element(By.ID, "f-since").send_keys("1d")
    click(browser, "form.filters button[type=submit]")
    assert urlsplit(browser.current_url).query == "error=shipments&since=1d"
    assert text_of(browser, "#match-count") == "2 dead letters match this filter"
    click(browser, "#bulk-retry")
    assert "2 dead letters" in text_of(browser, "#bulk-summary")
    listed = [int(row.get_attribute("data-id")) for row in browser.find_elements(By.CSS_SELECTOR, "#bulk-table tr[data-id]")]
    assert listed == bulk
    # Each id on one line: the errors beside them may wrap anywhere, an id may not.
    assert browser.execute_script("return [...document.querySelectorAll('#bulk-table td[data-label=Id] a')]"
                                  ".map(link => link.getClientRects().length)") == [1, 1]
    screenshot("bulk-retry-confirm")
    screenshot("bulk-retry-confirm", phone=True)
    click(browser, "#confirm-bulk-retry")
    assert f"2 dead letters queued again: {bulk[0]}, {bulk[1]}" in flash(browser)
    deliver()
    browser.refresh()
    assert "No dead letter matches this filter" in browser.find_element(By.TAG_NAME, "main").text
    screenshot("bulk-retry-done")

    # Accept the flagged order: dashboard, review list, confirmation with a note.
    browser.get(f"{live_server}/admin/")
    click(browser, "a#needs-review")
    assert "the amounts differ" in text_of(browser, f'tr[data-order="{flagged["order_id"]}"] .reason')
    screenshot("orders-to-review")
    screenshot("orders-to-review", phone=True)
    click(browser, f'tr[data-order="{flagged["order_id"]}"] a.primary')
    assert path_of(browser) == f"/admin/orders/{flagged['order_id']}/accept"
    assert "is kept" in text_of(browser, "#effects")
    screenshot("accept-confirm")
    screenshot("accept-confirm", phone=True)
    browser.find_element(By.ID, "note").send_keys("Customer paid the difference by bank transfer")
    click(browser, "#confirm")
    assert path_of(browser) == f"/admin/orders/{flagged['order_id']}"
    assert "accept done" in flash(browser) and text_of(browser, "#order-status") == "paid"
    assert f"staff {EMAIL}: accept order {flagged['order_id']}" in text_of(browser, "#story")
    screenshot("order-accepted")

    # The goods leave: record the shipment as sent, so a later refund does not put them back on sale.
    click(browser, "#decide-ship")
    assert path_of(browser) == f"/admin/orders/{flagged['order_id']}/ship"
    assert "recorded as shipped" in text_of(browser, "#effects")
    screenshot("ship-confirm")
    screenshot("ship-confirm", phone=True)
    browser.find_element(By.ID, "note").send_keys("Yamato 1234-5678-9012")
    click(browser, "#confirm")
    assert path_of(browser) == f"/admin/orders/{flagged['order_id']}"
    assert "ship done" in flash(browser) and text_of(browser, "#order-status") == "paid"
    assert f"staff {EMAIL}: ship order {flagged['order_id']}" in text_of(browser, "#story")
    screenshot("order-shipped")

    browser.get(f"{live_server}/admin/")
    assert text_of(browser, "#dead-letters .number") == "0" and text_of(browser, "#needs-review .number") == "0"
    screenshot("dashboard-after")

    # Search from the box on every page.
    browser.find_element(By.ID, "search-q").send_keys(event["id"])
    click(browser, "form.search button")
    assert path_of(browser) == f"/admin/orders/{order['order_id']}"

    # Logged out, each of these pages lands on the login page.
    click(browser, ".logout button")
    for path in ("/admin/", "/admin/dead-letters", f"/admin/dead-letters/{first}", "/admin/dead-letters/bulk-retry",
                 "/admin/orders?status=needs_review", f"/admin/orders/{order['order_id']}",
                 f"/admin/orders/{flagged['order_id']}/accept", "/admin/search?q=x"):
        browser.get(f"{live_server}{path}")
        assert path_of(browser) == "/admin/login", path
