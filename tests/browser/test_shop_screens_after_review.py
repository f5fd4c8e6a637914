"""The confirmation screen's script when an answer is not the shop's (a proxy's HTML 502 or 504),
the order it pays, and the screens a review found wanting, in headless Chromium."""
from __future__ import annotations

import io
import json
import threading
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.by import By

from models.orders import OrderStatus
from tests.browser.shop_flow import (DECLINED, VISA, BackgroundWorker, add_to_cart, enter_card, fill_information,
                                     pay_error, press_pay, shop_settings, text_of, wait, wait_for_outcome)
from tests.browser.test_shop_purchase import only_order, to_confirmation
from tests.support import let_the_hold_run_out, serve

GATEWAY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


class Gateway:
    """A proxy in front of the shop on a bad day: for a path it is told, it answers its own HTML error
    page, either instead of asking the shop ("instead") or after the shop did the work and its answer
    was lost ("after"). It also keeps the JSON bodies the page's script sent to the pay step."""

    def __init__(self, app):
        self.app = app
        self.faults: dict[str, tuple[str, int]] = {}
        self.pay_bodies: list[dict] = []
        self._lock = threading.Lock()

    def fail_once(self, path: str, when: str, status: int) -> None:
        with self._lock:
            self.faults[path] = (when, status)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] != "POST":
            return self.app(environ, start_response)
        if path == "/checkout/pay":
            raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(raw)
            self.pay_bodies.append(json.loads(raw))
        with self._lock:
            fault = self.faults.pop(path, None)
        if fault is None:
            return self.app(environ, start_response)
        when, status = fault
        if when == "after":
            answer = self.app(environ, lambda *args, **kwargs: (lambda data: None))
            try:
                for _ in answer:
                    pass
            finally:
                getattr(answer, "close", lambda: None)()
        start_response(f"{status} Gateway Error", [("Content-Type", "text/html"),
                                                   ("Content-Length", str(len(GATEWAY_PAGE)))])
        return [GATEWAY_PAGE]


@pytest.fixture
def settings(database_url, tmp_path, localstripe):
    return shop_settings(database_url, tmp_path, localstripe)


@pytest.fixture
def gateway(app):
    return Gateway(app)


@pytest.fixture
def live_server(gateway):
    """The test's app behind the gateway, on a real HTTP server."""
    yield from serve(gateway)


@pytest.fixture
def shop(live_server, localstripe, settings, sessions):
    localstripe.register_webhook(f"{live_server}/webhooks/stripe")
    with BackgroundWorker(settings, sessions):
        yield live_server


def test_an_html_error_page_instead_of_the_place_step_is_said_on_the_screen_and_pay_works_again(
        browser, shop, gateway, screenshot, sessions):
    to_confirmation(browser, shop)
    enter_card(browser, VISA)
    gateway.fail_once("/checkout/confirm", "instead", 502)
    press_pay(browser)
    assert "Nothing has been paid yet" in pay_error(browser)
    assert urlsplit(browser.current_url).path == "/checkout/confirm"
    assert browser.find_element(By.ID, "pay").is_enabled()
    assert gateway.pay_bodies == []
    screenshot("place-step-502")

    press_pay(browser)
    wait_for_outcome(browser, "paid")
    assert only_order(sessions).status is OrderStatus.PAID


def test_an_html_error_page_after_the_card_was_charged_sends_the_buyer_to_the_complete_screen(
        browser, shop, gateway, screenshot, sessions):
    to_confirmation(browser, shop)
    enter_card(browser, VISA)
    gateway.fail_once("/checkout/pay", "after", 504)
    press_pay(browser)
    wait(browser).until(lambda b: "/complete" in b.current_url)
    order = only_order(sessions)
    assert urlsplit(browser.current_url).path == f"/orders/{order.id}/complete"
    wait_for_outcome(browser, "paid")
    assert "Order confirmed" in text_of(browser, "#outcome")
    # The pay step was sent the order the place step answered with.
    assert [body["order_id"] for body in gateway.pay_bodies] == [order.id]

    # The language link keeps the order's token: the same screen, in Japanese.
    browser.find_element(By.CSS_SELECTOR, "a.lang").click()
    wait(browser).until(lambda b: "ご注文が確定しました" in text_of(b, "#outcome"))
    assert f"token={order.access_token}" in browser.current_url
    screenshot("complete-in-japanese")


def test_the_language_button_after_a_refused_information_form_keeps_what_was_typed(browser, shop, screenshot):
    add_to_cart(browser, shop, "TEA-01", 1)
    browser.find_element(By.ID, "to-info").click()
    fill_information(browser, postal_code="06-01", name="Taro Sato")
    assert "123-4567" in text_of(browser, "#postal_code-error")
    browser.find_element(By.CSS_SELECTOR, "button.lang").click()
    wait(browser).until(lambda b: "郵便番号は123-4567" in text_of(b, "#postal_code-error"))
    assert browser.find_element(By.ID, "name").get_attribute("value") == "Taro Sato"
    assert browser.find_element(By.ID, "postal_code").get_attribute("value") == "06-01"
    assert urlsplit(browser.current_url).path == "/checkout/info"
    screenshot("information-refused-in-japanese")


def test_the_confirmation_of_an_order_whose_hold_ran_out_offers_no_pay(browser, shop, screenshot, sessions):
    to_confirmation(browser, shop)
    enter_card(browser, DECLINED)
    press_pay(browser)
    assert "declined" in pay_error(browser).lower()
    wait(browser).until(lambda _: only_order(sessions).status is OrderStatus.PAYMENT_FAILED)
    let_the_hold_run_out(sessions, only_order(sessions).id)

    browser.get(f"{shop}/checkout/confirm?lang=en")
    assert "can no longer be paid" in text_of(browser, "#hold-expired")
    assert not browser.find_elements(By.ID, "pay")
    assert not browser.find_elements(By.ID, "declined")
    screenshot("hold-expired")
    browser.find_element(By.ID, "start-again").click()
    wait(browser).until(lambda b: b.find_elements(By.ID, "product-TEA-01"))
