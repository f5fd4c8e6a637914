"""What the shop's screens say beyond colour and layout: the step bar, named in the page's language, says
in words which steps are done (for a screen reader; the eye sees the colour) and which is current
(aria-current); error pages' headings break between Japanese phrases (<wbr>), as every page heading does."""
from __future__ import annotations

import re

import pytest

from tests.integration.test_shop_pages import fill_cart, only_order, page, place_order_without_js

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def step_bar(html: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The step bar's name and its steps as (class, aria-current, what a screen reader reads)."""
    label, items = re.search(r'<ol class="steps" aria-label="([^"]*)">(.*?)</ol>', html, re.S).groups()
    steps = []
    for css, current, body in re.findall(r'<li class="([^"]*)"(?: aria-current="([^"]*)")?>(.*?)</li>', items):
        steps.append((css, current, re.sub(r"<[^>]+>", "", body)))
    return label, steps


def h1(html: str) -> str:
    return re.search(r"<h1>(.*?)</h1>", html, re.S).group(1)


@pytest.mark.parametrize("lang, label, steps", [
    ("en", "Checkout steps", [("done", "", "Cart (done)"), ("done", "", "Information (done)"),
                              ("current", "step", "Confirmation"), ("", "", "Complete")]),
    ("ja", "ご購入の手順", [("done", "", "カート（完了済み）"), ("done", "", "お客様情報（完了済み）"),
                         ("current", "step", "ご確認"), ("", "", "完了")]),
])
def test_the_step_bar_says_in_the_pages_language_which_steps_are_done_and_which_is_current(
        client, sessions, lang, label, steps):
    place_order_without_js(client)
    html = page(client.get(f"/checkout/confirm?lang={lang}"))
    assert step_bar(html) == (label, steps)
    # The words are for screen readers only: on the screen, the colour says it.
    assert html.count('<span class="visually-hidden">') >= 2


def test_the_first_step_has_nothing_done(client):
    fill_cart(client)
    html = page(client.get("/cart?lang=ja"))
    assert step_bar(html) == ("ご購入の手順", [("current", "step", "カート"), ("", "", "お客様情報"),
                                           ("", "", "ご確認"), ("", "", "完了")])


@pytest.mark.parametrize("method, path, heading, title", [
    ("DELETE", "/checkout/confirm", "このアドレスは<wbr>この方法では<wbr>使えません", "このアドレスはこの方法では使えません"),
    ("GET", "/no-such-page", "ページが<wbr>見つかりません。", "ページが見つかりません。"),
    ("GET", "/orders/ord_nosuchorder/complete", "ページが<wbr>見つかりません。", "ページが見つかりません。"),
])
def test_japanese_error_page_headings_break_between_phrases(client, method, path, heading, title):
    response = client.open(f"{path}?lang=ja", method=method, headers=BROWSER)
    html = page(response)
    assert h1(html) == heading
    # The page's title has the words only, no marks.
    assert f"<title>{title} · お茶の店</title>" in html
    assert "|" not in re.sub(r"<script.*?</script>", "", html, flags=re.S)


def test_a_link_that_does_not_open_the_order_has_a_heading_broken_between_phrases(client, sessions):
    place_order_without_js(client)
    order = only_order(sessions)
    html = page(client.get(f"/orders/{order.id}/complete?token=wrong&lang=ja"))
    assert h1(html) == ("このリンクでは<wbr>ご注文を<wbr>表示できません。<wbr>ご注文確認メールの<wbr>リンクを<wbr>"
                        "お使いください。")
    english = page(client.get(f"/orders/{order.id}?token=wrong&lang=en", headers=BROWSER))   # my page
    assert h1(english) == "This link does not open this order. Please use the link in your order e-mail."


def test_an_expired_form_page_heading_breaks_between_phrases(client):
    response = client.post("/cart/items?lang=ja", data={"sku": "TEA-01", "quantity": "1", "csrf_token": "stale"},
                           headers=BROWSER)
    assert response.status_code == 400
    assert h1(page(response)) == "フォームの<wbr>有効期限が<wbr>切れました。<wbr>もう一度<wbr>お試しください。"
