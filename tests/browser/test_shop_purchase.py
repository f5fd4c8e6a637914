"""A buyer in headless Chromium: the four screens, Stripe.js (localstripe's), 3-D Secure, declines."""
from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import stripe
from selenium.webdriver.common.by import By

from models.orders import Order, OrderStatus
from tests.browser.shop_flow import (DECLINED, THREE_D_SECURE, VISA, BackgroundWorker, add_to_cart, enter_card,
                                     fill_information, pay_error, press_pay, set_price, shop_settings, stock,
                                     text_of, three_d_secure, wait, wait_for_outcome)


@pytest.fixture
def settings(database_url, tmp_path, localstripe):
    return shop_settings(database_url, tmp_path, localstripe)


@pytest.fixture
def shop(live_server, localstripe, settings, sessions):
    """The shop on a real HTTP server, receiving localstripe's webhooks, with relay + worker running."""
    localstripe.register_webhook(f"{live_server}/webhooks/stripe")
    with BackgroundWorker(settings, sessions):
        yield live_server


def only_order(sessions) -> Order:
    with sessions() as session:
        orders = session.query(Order).all()
        assert len(orders) == 1, [o.id for o in orders]
        return orders[0]


def to_confirmation(browser, shop, sku="TEA-01", quantity=2):
    add_to_cart(browser, shop, sku, quantity)
    browser.find_element(By.ID, "to-info").click()
    fill_information(browser)
    wait(browser).until(lambda b: urlsplit(b.current_url).path == "/checkout/confirm")


def test_buyer_pays_through_the_four_screens_and_sees_the_order_confirmed(browser, shop, screenshot, sessions):
    browser.get(f"{shop}/?lang=en")
    assert "¥1,200" in text_of(browser, "#product-TEA-01")
    screenshot("1-products")
    add_to_cart(browser, shop, "TEA-01", 2)
    assert text_of(browser, "#subtotal") == "¥2,400"
    screenshot("2-cart")
    browser.find_element(By.ID, "to-info").click()
    screenshot("3-information")
    fill_information(browser)
    wait(browser).until(lambda b: urlsplit(b.current_url).path == "/checkout/confirm")
    assert text_of(browser, "#shipping-fee") == "¥700"
    assert text_of(browser, "#total") == "¥3,100"
    enter_card(browser, VISA)
    screenshot("4-confirmation")

    press_pay(browser)
    wait(browser).until(lambda b: "/complete" in b.current_url)
    wait_for_outcome(browser, "paid")
    assert "Order confirmed" in text_of(browser, "#outcome")
    assert "Hanako Yamada" in text_of(browser, "#shipment")
    screenshot("5-complete")

    order = only_order(sessions)
    assert order.status is OrderStatus.PAID
    assert stock(sessions, "TEA-01") == (38, 0)

    browser.find_element(By.ID, "my-page").click()
    assert text_of(browser, "#status") == "Paid"
    assert "Hanako Yamada" in text_of(browser, "#delivery")
    screenshot("6-my-page")


def test_declined_card_returns_to_confirmation_with_the_message_and_the_stock_held(browser, shop, screenshot,
                                                                                   sessions):
    to_confirmation(browser, shop)
    enter_card(browser, DECLINED)
    press_pay(browser)
    message = pay_error(browser)
    assert "declined" in message.lower(), message
    assert "still held" in message
    screenshot("declined")
    assert urlsplit(browser.current_url).path == "/checkout/confirm"
    assert stock(sessions, "TEA-01") == (40, 2)
    assert only_order(sessions).status in (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED)

    # Once Stripe's event is processed, the screen still says so after a reload, with the hold.
    wait(browser).until(lambda _: only_order(sessions).status is OrderStatus.PAYMENT_FAILED)
    browser.get(f"{shop}/checkout/confirm")
    assert "declined" in text_of(browser, "#declined").lower()
    assert "held for you until" in text_of(browser, "#hold")
    assert browser.find_element(By.ID, "pay").is_enabled()
    assert stock(sessions, "TEA-01") == (40, 2)


def test_another_card_after_a_decline_pays_the_same_order_once(browser, shop, screenshot, sessions):
    to_confirmation(browser, shop)
    enter_card(browser, DECLINED)
    press_pay(browser)
    assert "declined" in pay_error(browser).lower()
    wait(browser).until(lambda _: only_order(sessions).status is OrderStatus.PAYMENT_FAILED)
    declined_intent = only_order(sessions).payment_intent_id

    # On the same confirmation screen, the buyer types another card and pays again.
    enter_card(browser, VISA)
    screenshot("pay-again-after-decline")
    press_pay(browser)
    wait(browser).until(lambda b: "/complete" in b.current_url)
    wait_for_outcome(browser, "paid")
    assert "Order confirmed" in text_of(browser, "#outcome")
    screenshot("paid-after-decline")

    order = only_order(sessions)
    assert order.status is OrderStatus.PAID
    assert order.paid_amount == order.total == 3100
    assert order.payment_intent_id != declined_intent
    assert stock(sessions, "TEA-01") == (38, 0)   # decremented exactly once
    # The declined intent is cancelled at Stripe (by the worker, from the outbox).
    wait(browser).until(lambda _: stripe.PaymentIntent.retrieve(declined_intent).status == "canceled")
    assert stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "succeeded"
    assert only_order(sessions).status is OrderStatus.PAID


def test_3d_secure_card_shows_the_dialog_and_completing_it_ends_paid(browser, shop, screenshot, sessions):
    to_confirmation(browser, shop)
    enter_card(browser, THREE_D_SECURE)
    press_pay(browser)
    three_d_secure(browser, complete=True)   # the card's setup
    screenshot("3ds-dialog")
    three_d_secure(browser, complete=True)   # the payment
    wait_for_outcome(browser, "paid")
    assert only_order(sessions).status is OrderStatus.PAID
    assert stock(sessions, "TEA-01") == (38, 0)


def test_3d_secure_failed_leaves_the_order_unpaid_and_the_stock_held(browser, shop, screenshot, sessions):
    to_confirmation(browser, shop)
    enter_card(browser, THREE_D_SECURE)
    press_pay(browser)
    three_d_secure(browser, complete=True)   # the card's setup
    three_d_secure(browser, complete=False)  # the payment: the buyer fails the check
    message = pay_error(browser)
    assert "3-D Secure" in message
    screenshot("3ds-failed")
    assert urlsplit(browser.current_url).path == "/checkout/confirm"
    assert only_order(sessions).status is not OrderStatus.PAID
    assert stock(sessions, "TEA-01") == (40, 2)


# Stripe.js's 3-D Secure step rejecting instead of answering (a script error in the dialog, an extension),
# installed before any script of the page runs: each Stripe instance the page makes gets it.
THREE_D_SECURE_THROWS = """
(() => {
  let made;
  Object.defineProperty(window, "Stripe", {configurable: true, get: () => made, set: (real) => {
    made = (key) => {
      const stripe = real(key);
      stripe.confirmCardPayment = async () => { throw new TypeError("Stripe.js failed inside 3-D Secure"); };
      return stripe;
    };
  }});
})();
"""


def test_a_script_failing_inside_3d_secure_sends_the_buyer_to_the_complete_screen_not_could_not_reach(
        browser, shop, screenshot, sessions):
    """The card went to the server to be charged and Stripe asked for 3-D Secure; the page's script then
    fails. The buyer is sent to the complete screen, which asks Stripe what became of the payment, rather
    than told the payment service could not be reached (it was reached, and may yet take the money)."""
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": THREE_D_SECURE_THROWS})
    to_confirmation(browser, shop)
    enter_card(browser, THREE_D_SECURE)
    press_pay(browser)
    three_d_secure(browser, complete=True)   # the card's setup; the payment's check then throws
    wait_for_outcome(browser, "awaiting_authentication")
    order = only_order(sessions)
    assert urlsplit(browser.current_url).path == f"/orders/{order.id}/complete"
    assert "Your card's 3-D Secure check is not finished" in text_of(browser, "main")
    screenshot("3ds-script-failed")
    assert stripe.PaymentIntent.retrieve(order.payment_intent_id).status == "requires_action"
    assert order.status is not OrderStatus.PAID and stock(sessions, "TEA-01") == (40, 2)


def test_wrong_postal_code_is_shown_next_to_its_field(browser, shop, screenshot):
    add_to_cart(browser, shop, "TEA-01", 1)
    browser.find_element(By.ID, "to-info").click()
    fill_information(browser, postal_code="06-01")
    error = wait(browser).until(lambda b: b.find_element(By.ID, "postal_code-error"))  # once the answer has loaded
    assert "123-4567" in error.text
    # Next to its field: inside the same field block, right after the input.
    assert error.find_element(By.XPATH, "preceding-sibling::input").get_attribute("id") == "postal_code"
    assert browser.find_element(By.ID, "postal_code").get_attribute("aria-invalid") == "true"
    assert not browser.find_elements(By.ID, "email-error")
    screenshot("postal-code-error")
    screenshot("postal-code-error", phone=True)


def test_price_change_between_cart_and_pay_shows_the_new_total(browser, shop, screenshot, sessions):
    to_confirmation(browser, shop, quantity=2)
    assert text_of(browser, "#total") == "¥3,100"
    set_price(sessions, "TEA-01", 1500)
    enter_card(browser, VISA)
    press_pay(browser)
    wait(browser).until(lambda b: "price changed" in text_of(b, "main").lower())
    assert text_of(browser, "#subtotal") == "¥3,000"
    assert text_of(browser, "#total") == "¥3,700"
    assert text_of(browser, "#pay") == "Pay ¥3,700"
    screenshot("price-changed")
    assert stock(sessions, "TEA-01") == (40, 0)   # nothing was held for the old price

    enter_card(browser, VISA)
    press_pay(browser)
    wait_for_outcome(browser, "paid")
    order = only_order(sessions)
    assert (order.total, order.status) == (3700, OrderStatus.PAID)


def test_screens_in_japanese_on_a_phone(browser, shop, screenshot):
    browser.get(f"{shop}/?lang=ja")
    assert "カートに入れる" in text_of(browser, "#product-TEA-01")
    assert "北海道紅茶" in text_of(browser, "#product-TEA-01")
    screenshot("products", phone=True)
    add_to_cart(browser, shop, "TEA-01", 2)
    browser.get(f"{shop}/cart?lang=ja")
    assert "小計" in text_of(browser, "main")
    screenshot("cart", phone=True)
    browser.find_element(By.ID, "to-info").click()
    screenshot("information", phone=True)
    fill_information(browser)
    wait(browser).until(lambda b: urlsplit(b.current_url).path == "/checkout/confirm")
    assert "¥3,100を支払う" == text_of(browser, "#pay")
    assert "北海道紅茶" in text_of(browser, "table.lines")
    enter_card(browser, VISA)
    screenshot("confirmation", phone=True)
    press_pay(browser)
    wait_for_outcome(browser, "paid")
    assert "ご注文が確定しました" in text_of(browser, "#outcome")
    screenshot("complete", phone=True)


def test_details_changed_in_another_tab_are_shown_before_anything_is_paid(browser, shop, screenshot, sessions):
    to_confirmation(browser, shop)
    assert text_of(browser, "#shipping-fee") == "¥700"   # Hokkaido
    confirmation = browser.current_window_handle
    # Another tab: the buyer moves the delivery to Okinawa (a fee of ¥1,500) and leaves that tab.
    browser.switch_to.new_window("tab")
    browser.get(f"{shop}/checkout/info?lang=en")
    fill_information(browser, prefecture="Okinawa", postal_code="900-0001", address="Kumoji 1-1, Naha")
    wait(browser).until(lambda b: urlsplit(b.current_url).path == "/checkout/confirm")
    browser.close()
    browser.switch_to.window(confirmation)

    # Pay on the first tab, which still shows Hokkaido and ¥3,100: refused, and the screen shown again.
    enter_card(browser, VISA)
    press_pay(browser)
    wait(browser).until(lambda b: "your details or your cart changed" in text_of(b, "main").lower())
    assert text_of(browser, "#shipping-fee") == "¥1,500"
    assert text_of(browser, "#total") == "¥3,900"
    assert "Kumoji 1-1, Naha" in text_of(browser, "main")
    screenshot("details-changed")
    with sessions() as session:
        assert session.query(Order).count() == 0
    assert stock(sessions, "TEA-01") == (40, 0)

    enter_card(browser, VISA)
    press_pay(browser)
    wait_for_outcome(browser, "paid")
    order = only_order(sessions)
    assert (order.total, order.ship_prefecture, order.status) == (3900, "Okinawa", OrderStatus.PAID)


def test_an_address_opened_the_wrong_way_shows_the_shops_error_page(browser, shop, screenshot):
    browser.get(f"{shop}/checkout/pay?lang=en")   # the pay step's script posts to it
    assert "This address cannot be used this way" in text_of(browser, "h1")
    assert "continue from the shop's pages" in text_of(browser, "main")
    screenshot("error-405")
    browser.find_element(By.LINK_TEXT, "Back to the shop's home page").click()
    wait(browser).until(lambda b: b.find_elements(By.ID, "product-TEA-01"))
    browser.get(f"{shop}/checkout/pay?lang=ja")
    assert "このアドレスはこの方法では使えません" in text_of(browser, "h1")
    screenshot("error-405", phone=True)
