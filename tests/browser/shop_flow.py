"""Driving the shop's screens in Chromium as a buyer does, against localstripe's fake Stripe.js.

localstripe sends its signed webhooks to the page's server, and a background worker relays and
consumes the outbox as `shop relay` and `shop worker` do, so an order becomes paid only the
way it does in production: Stripe's event, stored, then processed.
"""
from __future__ import annotations

import dataclasses
import threading
import time

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from models.catalog import Product, Stock
from tests.conftest import deliver_with
from tests.support import settings_for
from webhook_app.devserver import CATALOG

VISA = "4242424242424242"
DECLINED = "4000000000000341"
THREE_D_SECURE = "4000002500003155"
BUYER = {"name": "Hanako Yamada", "email": "hanako@example.com", "postal_code": "060-0001",
         "prefecture": "Hokkaido", "address": "Kita 1-jo Nishi 2-chome, Sapporo"}


def shop_settings(database_url, tmp_path, localstripe):
    """The suite's settings, with the screens loading localstripe's Stripe.js and taking product names
    from the shipped catalog (as `make run` does): each shop test module's `settings` fixture."""
    return dataclasses.replace(
        settings_for(database_url, broker_url=f"memory://localhost/{tmp_path.name}", stripe_api_base=localstripe.base),
        stripe_js_url=f"{localstripe.base}/js.stripe.com/v3/", catalog_file=str(CATALOG))


class BackgroundWorker:
    """Relay + worker in a thread, until stopped (the browser's payment arrives as a webhook)."""

    def __init__(self, settings, sessions):
        self.settings, self.sessions = settings, sessions
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            deliver_with(self.settings, self.sessions, max_rounds=5)
            self._stop.wait(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(30)


def wait(browser, seconds: float = 20) -> WebDriverWait:
    # A page that is being replaced (the script navigates) is looked at again, not a failure.
    # A page being replaced can answer for an element of the page before it (stale, or Chromium's
    # "node does not belong to the document"): look again until the new page is there.
    return WebDriverWait(browser, seconds, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException,
                                                              WebDriverException))


def text_of(browser, css: str) -> str:
    """The element's text, once the page that has it is there (a click may still be navigating)."""
    return wait(browser).until(lambda b: b.find_element(By.CSS_SELECTOR, css)).text


def add_to_cart(browser, base: str, sku: str, quantity: int = 1) -> None:
    browser.get(f"{base}/?lang=en")
    field = browser.find_element(By.ID, f"qty-{sku}")
    field.clear()
    field.send_keys(str(quantity))
    browser.find_element(By.CSS_SELECTOR, f"#product-{sku} button[type=submit]").click()
    wait(browser).until(expected_conditions.url_contains("/cart"))


def fill_information(browser, **changes) -> None:
    values = {**BUYER, **changes}
    wait(browser).until(lambda b: b.find_element(By.ID, "name"))  # the information page has loaded
    for key in ("name", "email", "postal_code", "address"):
        field = browser.find_element(By.ID, key)
        field.clear()
        field.send_keys(values[key])
    Select(browser.find_element(By.ID, "prefecture")).select_by_value(values["prefecture"])
    browser.find_element(By.ID, "to-confirm").click()


def enter_card(browser, number: str) -> None:
    """localstripe's card Element: five plain inputs, named by their placeholders (what a card
    typed before is replaced, as a buyer trying another card does)."""
    wait(browser).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#card-element input"))
    for placeholder, value in (("number", number), ("exp_month", "12"), ("exp_year", "34"), ("cvc", "123"),
                               ("postal_code", "06000")):
        field = browser.find_element(By.CSS_SELECTOR, f"#card-element input[placeholder={placeholder}]")
        field.clear()
        field.send_keys(value)


def press_pay(browser) -> None:
    browser.find_element(By.ID, "pay").click()


def three_d_secure(browser, complete: bool) -> None:
    """Answer localstripe's 3-D Secure dialog."""
    label = "Complete authentication" if complete else "Fail authentication"
    button = wait(browser).until(expected_conditions.element_to_be_clickable(
        (By.XPATH, f"//button[normalize-space()='{label}']")))
    button.click()


def pay_error(browser, seconds: float = 20) -> str:
    wait(browser, seconds).until(lambda b: b.find_element(By.ID, "pay-error").is_displayed())
    return text_of(browser, "#pay-error")


def wait_for_outcome(browser, status: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = browser.find_elements(By.ID, "outcome")
            if found and found[0].get_attribute("data-status") == status:
                return
        except WebDriverException:
            pass  # the page reloads itself every 2 s: an element of the page before is stale
        time.sleep(0.25)
    raise AssertionError(f"the complete screen never showed {status}: {browser.current_url}\n"
                         f"{browser.find_element(By.TAG_NAME, 'main').text}")


def stock(sessions, sku: str) -> tuple[int, int]:
    with sessions() as session:
        row = session.get(Stock, sku)
        return row.on_hand, row.reserved


def set_price(sessions, sku: str, unit_amount: int) -> None:
    with sessions.begin() as session:
        session.get(Product, sku).unit_amount = unit_amount
