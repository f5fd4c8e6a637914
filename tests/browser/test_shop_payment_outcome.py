"""The complete and confirmation screens before the worker records Stripe's event, in headless Chromium:
what Stripe says became of the payment ("not paid yet"), and Stripe not answering at all ("we could not
check your payment just now"), never the old card's decline. The step bar says "Complete" only once the
money is received; the UNKNOWN heading wraps between Japanese phrases on a phone, never mid-word; the
confirmation offers no Pay while Stripe does not answer, only "Check again". A payment another tab took on
the order's earlier intent is shown as received; the step bar tells a screen reader which steps are done;
an error page's Japanese heading wraps between phrases on a phone too.

Stripe is made unreachable with tests.support.stripe_unreachable: the live server runs in this process
and asks Stripe through the SDK's process-wide address, which the block points at a closed port (the
page's Stripe.js still loads from localstripe, and the worker thread simply retries what it needs).
"""
from __future__ import annotations

from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.by import By

from consumers.checkout import replace_payment_intent
from models.orders import Order, OrderStatus
from tests.browser.shop_flow import (DECLINED, VISA, add_to_cart, enter_card, fill_information,
                                     pay_error, press_pay, shop_settings, stock, text_of, wait, wait_for_outcome)
from tests.browser.test_shop_purchase import only_order, shop  # noqa: F401 - shop is a fixture
from tests.support import confirm_card, free_port, stripe_unreachable

# Refused by Stripe when the card is set up (localstripe's "attaching is declined"): the order is
# placed and its stock held, but no payment was ever tried on its PaymentIntent.
REFUSED_AT_SETUP = "4000000000000002"
NOT_PAID = ("Not paid yet", "No payment has been taken for this order yet.")
COULD_NOT_CHECK = ("We could not check your payment just now",
                   "The payment service did not answer. If you entered a card, please do not pay again: "
                   "this page checks again by itself and shows the outcome as soon as it can.")
# Its Japanese heading's phrases (bunsetsu): a line may end after any of them, never inside one.
COULD_NOT_CHECK_JA_PHRASES = ("お支払いの", "状況を", "確認できませんでした")
CONFIRM_COULD_NOT_CHECK = ("The payment service did not answer, so we could not check the outcome of your last "
                           "payment. Please do not pay again yet: this page checks again by itself, and offers "
                           "Pay once it knows your last card was not charged.")
# The text of each line an element's words are laid out on, top to bottom (from each character's box).
LINES_OF = """
const lines = [];
let top = null;
const walker = document.createTreeWalker(arguments[0], NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  for (let i = 0; i < node.length; i++) {
    const range = document.createRange();
    range.setStart(node, i);
    range.setEnd(node, i + 1);
    const box = range.getClientRects()[0];
    if (!box || box.width === 0) continue;
    if (top === null || box.top > top + box.height / 2) { lines.push(""); top = box.top; }
    lines[lines.length - 1] += node.data[i];
  }
}
return lines;
"""


@pytest.fixture
def settings(database_url, tmp_path, localstripe):
    return shop_settings(database_url, tmp_path, localstripe)




def complete_url(shop: str, order: Order, lang: str = "en") -> str:
    """The order's complete screen, as the pay step sends the buyer there (and as they may bookmark it)."""
    return f"{shop}/orders/{order.id}/complete?token={order.access_token}&lang={lang}"


def outcome(browser) -> tuple[str, str, str]:
    """The complete screen's state, heading and first paragraph, once the page is there."""
    section = wait(browser).until(lambda b: b.find_element(By.ID, "outcome"))
    return (section.get_attribute("data-status"), section.find_element(By.TAG_NAME, "h1").text,
            section.find_element(By.TAG_NAME, "p").text)


def current_step(browser) -> str:
    """The step bar's current step, the same for the eye (class) and for screen readers (aria-current).
    A done step is said to be done in words a screen reader reads, hidden from the eye (its colour says it)."""
    (shown,) = browser.find_elements(By.CSS_SELECTOR, ".steps li.current")
    assert shown.get_attribute("aria-current") == "step"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".steps [aria-current]")) == 1
    for done in browser.find_elements(By.CSS_SELECTOR, ".steps li.done"):
        (said,) = done.find_elements(By.CSS_SELECTOR, ".visually-hidden")
        assert said.get_attribute("textContent") in (" (done)", "（完了済み）")
        assert said.size["width"] <= 1 and said.size["height"] <= 1   # read, not seen
    return shown.text


@contextmanager
def on_phone(browser):
    """The page laid out on a phone-sized screen (as the screenshot fixture's phone=True)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    try:
        yield
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def heading_lines(browser, css: str = "#outcome h1") -> list[str]:
    """The outcome's heading (or another) as laid out, line by line; it never overflows its box."""
    heading = browser.find_element(By.CSS_SELECTOR, css)
    assert browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", heading)
    return browser.execute_script(LINES_OF, heading)


def to_confirmation(browser, shop):
    """Products, cart, information: the confirmation screen with two teas to Hokkaido (¥3,100)."""
    add_to_cart(browser, shop, "TEA-01", 2)
    browser.find_element(By.ID, "to-info").click()
    fill_information(browser)
    wait(browser).until(lambda b: urlsplit(b.current_url).path == "/checkout/confirm")
    assert text_of(browser, "#total") == "¥3,100"


def first_card_declined(browser, shop, sessions) -> Order:
    """Pay with a card Stripe declines; Stripe's event processed, the order reads payment_failed."""
    to_confirmation(browser, shop)
    enter_card(browser, DECLINED)
    press_pay(browser)
    assert "declined" in pay_error(browser).lower()
    wait(browser).until(lambda _: only_order(sessions).status is OrderStatus.PAYMENT_FAILED)
    order = only_order(sessions)
    assert order.failure_message
    return order


def test_an_order_placed_with_nothing_charged_shows_not_paid_yet(browser, shop, screenshot, sessions):
    to_confirmation(browser, shop)
    enter_card(browser, REFUSED_AT_SETUP)
    press_pay(browser)
    # Stripe refused the card before any payment was tried: the order is placed, its stock held.
    assert "declined" in pay_error(browser).lower()
    order = only_order(sessions)
    assert order.status is OrderStatus.PENDING_PAYMENT
    assert stock(sessions, "TEA-01") == (40, 2)

    browser.get(complete_url(shop, order))
    assert outcome(browser) == ("not_paid", *NOT_PAID)
    main = text_of(browser, "main")
    assert "Payment received" not in main and "declined" not in main.lower()
    assert text_of(browser, "#order-id") == order.id
    assert text_of(browser, "#to-payment") == "Go to payment"
    assert browser.find_element(By.CSS_SELECTOR, "meta[http-equiv=refresh]").get_attribute("content") == "10"
    assert current_step(browser) == "Confirmation"   # not paid: the buyer is not done
    screenshot("complete-not-paid-yet")
    screenshot("complete-not-paid-yet", phone=True)

    # The buyer's own order: "Go to payment" leads back to the card field, with no decline said there.
    browser.find_element(By.ID, "to-payment").click()
    wait(browser).until(lambda b: urlsplit(b.current_url).path == "/checkout/confirm")
    assert browser.find_element(By.ID, "pay").is_enabled()
    assert not browser.find_elements(By.ID, "declined") and not browser.find_elements(By.ID, "payment-unknown")
    assert only_order(sessions).status is OrderStatus.PENDING_PAYMENT


def test_stripe_not_answering_is_said_on_the_complete_screen_not_as_the_old_decline(browser, shop, screenshot,
                                                                                   sessions):
    order = first_card_declined(browser, shop, sessions)
    with stripe_unreachable():
        browser.get(complete_url(shop, order))
        assert outcome(browser) == ("payment_unknown", *COULD_NOT_CHECK)
        main = text_of(browser, "main")
        assert order.failure_message not in main and "declined" not in main.lower()
        assert not browser.find_elements(By.ID, "to-payment")   # never a second Pay while it is unknown
        assert text_of(browser, "#order-id") == order.id
        assert browser.find_element(By.CSS_SELECTOR, "meta[http-equiv=refresh]").get_attribute("content") == "10"
        assert current_step(browser) == "Confirmation"   # perhaps paid, perhaps not: not "Complete"
        with on_phone(browser):
            lines = heading_lines(browser)
        # English still breaks between words only.
        assert " ".join(line.strip() for line in lines) == COULD_NOT_CHECK[0], lines
        screenshot("complete-could-not-check-payment")
        screenshot("complete-could-not-check-payment", phone=True)

        browser.get(complete_url(shop, order, lang="ja"))
        assert outcome(browser)[:2] == ("payment_unknown", "お支払いの状況を確認できませんでした")
        assert current_step(browser) == "ご確認"
        assert heading_lines(browser) == ["お支払いの状況を確認できませんでした"]   # one line on a desktop
        with on_phone(browser):
            lines = heading_lines(browser)
        # On a phone the Japanese heading takes two lines or more, each break between two phrases, none mid-word.
        phrases = COULD_NOT_CHECK_JA_PHRASES
        phrase_ends = {len("".join(phrases[:n])) for n in range(1, len(phrases))}
        line_ends = {len("".join(lines[:n])) for n in range(1, len(lines))}
        assert "".join(lines) == "お支払いの状況を確認できませんでした"
        assert len(lines) >= 2 and line_ends <= phrase_ends, lines
        # Not by luck of the font's widths: headings break only at spaces, punctuation and <wbr>.
        assert browser.find_element(By.CSS_SELECTOR, "#outcome h1").value_of_css_property("word-break") == "keep-all"
        screenshot("complete-could-not-check-payment-ja")
        screenshot("complete-could-not-check-payment-ja", phone=True)

    # Stripe answers again: the buyer's own order goes back to the card field, which says the decline.
    browser.get(complete_url(shop, order))
    wait(browser).until(lambda b: urlsplit(b.current_url).path == "/checkout/confirm")
    assert "declined" in text_of(browser, "#declined").lower()
    assert only_order(sessions).status is OrderStatus.PAYMENT_FAILED


def test_stripe_not_answering_is_said_on_the_confirmation_screen_not_as_the_old_decline(browser, shop, screenshot,
                                                                                       sessions):
    order = first_card_declined(browser, shop, sessions)
    browser.get(f"{shop}/checkout/confirm?lang=en")
    assert "declined" in text_of(browser, "#declined").lower()   # Stripe answers: the decline is said

    with stripe_unreachable():
        browser.get(f"{shop}/checkout/confirm?lang=en")
        unknown = wait(browser).until(lambda b: b.find_element(By.ID, "payment-unknown"))
        # No card field and no Pay while the last card may have been charged: "Check again", and the
        # page checks again by itself.
        assert not browser.find_elements(By.ID, "pay") and not browser.find_elements(By.ID, "card-element")
        assert unknown.text == CONFIRM_COULD_NOT_CHECK
        assert unknown.get_attribute("role") == "alert"
        assert not browser.find_elements(By.ID, "declined")
        assert order.failure_message not in text_of(browser, "main")
        # Still the order's screen: its lines, its hold.
        assert text_of(browser, "#total") == "¥3,100"
        assert "held for you until" in text_of(browser, "#hold")
        assert text_of(browser, "#check-again") == "Check again"
        assert browser.find_element(By.CSS_SELECTOR, "meta[http-equiv=refresh]").get_attribute("content") == "10"
        assert current_step(browser) == "Confirmation"
        screenshot("confirmation-could-not-check-payment")
        screenshot("confirmation-could-not-check-payment", phone=True)
        browser.get(f"{shop}/checkout/confirm?lang=ja")
        assert text_of(browser, "#check-again") == "もう一度確認する"
        screenshot("confirmation-could-not-check-payment-ja")
        screenshot("confirmation-could-not-check-payment-ja", phone=True)
        browser.get(f"{shop}/checkout/confirm?lang=en")

    # Stripe answers again, the buyer checks again: the decline, and Pay with another card works.
    browser.find_element(By.ID, "check-again").click()
    wait(browser).until(lambda b: b.find_elements(By.ID, "declined"))
    assert "declined" in text_of(browser, "#declined").lower()
    assert not browser.find_elements(By.ID, "payment-unknown")
    enter_card(browser, VISA)
    press_pay(browser)
    wait(browser).until(lambda b: "/complete" in b.current_url)
    wait_for_outcome(browser, "paid")
    assert only_order(sessions).status is OrderStatus.PAID
    assert stock(sessions, "TEA-01") == (38, 0)


@pytest.fixture
def shop_hearing_no_events(live_server, localstripe):
    """The shop on a real HTTP server that Stripe's events never reach (localstripe sends them to a port
    nothing listens on), with no worker: what Stripe did is known only to Stripe."""
    localstripe.register_webhook(f"http://127.0.0.1:{free_port()}/webhooks/stripe")
    yield live_server


def test_a_payment_another_tab_took_on_the_orders_earlier_intent_is_shown_as_received(
        browser, shop_hearing_no_events, screenshot, sessions, settings):
    shop = shop_hearing_no_events
    to_confirmation(browser, shop)
    enter_card(browser, REFUSED_AT_SETUP)
    press_pay(browser)
    assert "declined" in pay_error(browser).lower()
    order = only_order(sessions)
    earlier = order.payment_intent_id
    # Another tab pays the order's intent at Stripe while this one's pay step gives the order a new intent
    # (Stripe would not confirm the old one again, it thought); the payment's event never arrives.
    assert confirm_card(earlier, VISA) == "succeeded"
    replace_payment_intent(sessions, settings, order.id, earlier, "requires_payment_method")
    order = only_order(sessions)
    assert order.payment_intent_id != earlier and order.status is OrderStatus.PENDING_PAYMENT

    # The buyer reloads the confirmation: no card field, no Pay; the complete screen says the money is received.
    browser.get(f"{shop}/checkout/confirm?lang=en")
    wait(browser).until(lambda b: "/complete" in b.current_url)
    assert outcome(browser)[:2] == ("payment_received", "Payment received")
    assert "Not paid yet" not in text_of(browser, "main")
    assert current_step(browser) == "Complete"
    screenshot("complete-paid-on-earlier-intent")
    browser.get(complete_url(shop, order, lang="ja"))
    assert outcome(browser)[:2] == ("payment_received", "お支払いを受け付けました")
    assert current_step(browser) == "完了"
    screenshot("complete-paid-on-earlier-intent-ja", phone=True)
    assert only_order(sessions).status is OrderStatus.PENDING_PAYMENT   # all of it from Stripe, none from us


def test_a_japanese_error_page_heading_wraps_between_phrases_on_a_phone(browser, shop, screenshot, sessions):
    to_confirmation(browser, shop)
    browser.get(f"{shop}/checkout/confirm?lang=ja")
    assert browser.find_element(By.CSS_SELECTOR, "ol.steps").get_attribute("aria-label") == "ご購入の手順"
    assert current_step(browser) == "ご確認"   # and cart, information said to be done
    enter_card(browser, REFUSED_AT_SETUP)
    press_pay(browser)
    pay_error(browser)
    order = only_order(sessions)

    # The order's link with a wrong token: the refusal's heading is a long Japanese sentence.
    browser.get(f"{shop}/orders/{order.id}/complete?token=wrong&lang=ja")
    heading = "このリンクではご注文を表示できません。ご注文確認メールのリンクをお使いください。"
    phrases = ("このリンクでは", "ご注文を", "表示できません。", "ご注文確認メールの", "リンクを", "お使いください。")
    with on_phone(browser):
        lines = heading_lines(browser, "main h1")
    phrase_ends = {len("".join(phrases[:n])) for n in range(1, len(phrases))}
    line_ends = {len("".join(lines[:n])) for n in range(1, len(lines))}
    assert "".join(lines) == heading
    assert len(lines) >= 2 and line_ends <= phrase_ends, lines
    assert browser.find_element(By.CSS_SELECTOR, "main h1").value_of_css_property("word-break") == "keep-all"
    screenshot("error-bad-link-ja")
    screenshot("error-bad-link-ja", phone=True)
