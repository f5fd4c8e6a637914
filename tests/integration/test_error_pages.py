"""Errors on the shop's screens and the console: a browser asking for HTML gets the page of that part of
the site (its layout, the status, a sentence, the way home, no internals); every other client, and the
API's routes whoever asks, keep the one JSON error shape."""
from __future__ import annotations

import html
import re

import pytest

from models.db import transaction
from models.staff import add_staff_member
from tests.support import assert_error, rendered_logs

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
API = {"Accept": "application/json"}
EMAIL = "alice@example.com"
PASSWORD = "correct horse battery staple"
SECRET_DETAIL = "db password hunter2 at /srv/shop/secret.py"


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def assert_shop_page(response, status: int, says: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "text/html"
    page = text_of(response)
    assert 'class="shop"' in page                               # the shop's layout
    assert says in page
    assert re.search(r'<a href="/">[^<]+</a></p>', page), page  # the way back to the shop's home
    assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    return page


def assert_console_page(response, status: int, title: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "text/html"
    page = text_of(response)
    assert "Shop · staff console" in page and f"<h1>{title}</h1>" in page
    assert '<a href="/admin/">Back to the dashboard</a>' in page
    assert response.headers["X-Frame-Options"] == "DENY"
    return page


@pytest.fixture
def staff_client(client, sessions):
    with transaction(sessions) as session:
        add_staff_member(session, EMAIL, PASSWORD, actor="test setup")
    token = re.search(r'name="csrf_token" value="([^"]+)"', text_of(client.get("/admin/login"))).group(1)
    response = client.post("/admin/login", data={"email": EMAIL, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302, text_of(response)
    return client


# --- 405: the address exists, not for this method ---------------------------------------------------------------


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/checkout/pay", "OPTIONS, POST"),          # the pay step's script posts to it; never a page
    ("POST", "/cart", "GET, HEAD, OPTIONS"),            # a screen, posted to
    ("DELETE", "/checkout/confirm", "GET, HEAD, OPTIONS, POST"),
])
def test_a_wrong_method_on_a_shop_screen_is_the_shops_405_page_for_a_browser(client, method, path, allow):
    response = client.open(f"{path}?lang=en", method=method, headers=BROWSER)
    page = assert_shop_page(response, 405, "This address does not take this kind of request.")
    assert response.headers["Allow"] == allow
    assert "method_not_allowed" not in page and "The method is not allowed" not in page


def test_the_shops_405_page_is_in_the_buyers_language(client):
    response = client.get("/checkout/pay", headers={**BROWSER, "Accept-Language": "ja"})
    page = assert_shop_page(response, 405, "このアドレスは、この種類のリクエストを受け付けていません。")
    assert "ショップのトップへ戻る" in page


@pytest.mark.parametrize("method, path", [("GET", "/checkout/pay"), ("POST", "/cart")])
def test_a_wrong_method_on_a_shop_screen_is_json_for_an_api_client(client, method, path):
    for headers in (API, {}):
        response = client.open(path, method=method, headers=headers)
        assert_error(response, 405, "method_not_allowed")
        assert response.get_json()["error"]["message"] == "The method is not allowed for the requested URL."
        assert "Allow" in response.headers


def test_a_wrong_method_on_an_api_route_stays_json_even_for_a_browser(client):
    response = client.get("/checkout", headers=BROWSER)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "OPTIONS, POST"
    assert_error(client.put("/webhooks/stripe", headers=BROWSER), 405, "method_not_allowed")


def test_a_wrong_method_in_the_console_is_the_consoles_405_page_for_a_browser(client):
    response = client.get("/admin/logout", headers=BROWSER)
    page = assert_console_page(response, 405, "Not available this way")
    assert "Reason: 405 Method Not Allowed" in page
    assert response.headers["Allow"] == "OPTIONS, POST"
    assert_error(client.get("/admin/logout", headers=API), 405, "method_not_allowed")


# --- 400 and 413: what was sent cannot be read --------------------------------------------------------------------


def test_a_control_character_in_a_shop_screens_query_is_a_400_page_for_a_browser_and_json_for_an_api(client):
    assert_shop_page(client.get("/cart?lang=en&q=%01", headers=BROWSER), 400,
                     "What was sent could not be processed. Please go back and try again.")
    assert_error(client.get("/cart?q=%01", headers=API), 400, "invalid_input", "q")


# Werkzeug limits each field of a multipart form (Flask's MAX_FORM_MEMORY_SIZE): over it, a 413.
MULTIPART = "multipart/form-data"


def test_a_form_over_the_size_limit_is_a_413_page_for_a_browser_and_json_for_an_api(client, app):
    too_long = "x" * (app.config["MAX_FORM_MEMORY_SIZE"] + 1)
    response = client.post("/checkout/info?lang=en", data={"address": too_long}, content_type=MULTIPART,
                           headers=BROWSER)
    page = assert_shop_page(response, 413, "Please shorten what you entered and try again.")
    assert "Request Entity Too Large" not in page
    assert_error(client.post("/checkout/info", data={"address": too_long}, content_type=MULTIPART, headers=API),
                 413, "request_entity_too_large")


def test_a_console_form_over_the_size_limit_is_the_consoles_413_page(staff_client, app):
    too_long = "x" * (app.config["MAX_FORM_MEMORY_SIZE"] + 1)
    response = staff_client.post("/admin/dead-letters/1/resolve", data={"note": too_long}, content_type=MULTIPART,
                                 headers=BROWSER)
    assert_console_page(response, 413, "Too large")


# --- 500: a defect ------------------------------------------------------------------------------------------------


def _broken(*_args, **_kwargs):
    raise RuntimeError(SECRET_DETAIL)


def test_a_defect_in_a_shop_screen_is_a_500_page_without_internals_and_still_logged(client, monkeypatch):
    monkeypatch.setattr("webhook_app.shop_pages._session_cart", _broken)
    with rendered_logs() as lines:
        response = client.get("/cart?lang=en", headers={**BROWSER, "X-Request-Id": "req_shopdefect"})
    page = assert_shop_page(response, 500, "Sorry, something went wrong")
    assert "A problem on our side stopped this page; it has been recorded." in page
    assert SECRET_DETAIL not in page and "Traceback" not in page and "RuntimeError" not in page
    logged = "\n".join(lines)
    assert " request_failed " in logged and "request_id=req_shopdefect" in logged
    assert "Traceback" in logged and SECRET_DETAIL in logged


def test_a_defect_in_a_shop_screen_is_the_json_500_for_an_api_client(client, monkeypatch):
    monkeypatch.setattr("webhook_app.shop_pages._session_cart", _broken)
    for headers in (API, {}):
        error = assert_error(client.get("/cart", headers=headers), 500, "internal_error")
        assert error["message"] == "the service failed to handle this request; it was logged"


def test_a_defect_in_a_console_page_is_the_consoles_500_page_with_the_request_id(staff_client, monkeypatch):
    monkeypatch.setattr("webhook_app.admin.dashboard.dashboard_figures", _broken)
    with rendered_logs() as lines:
        response = staff_client.get("/admin/", headers={**BROWSER, "X-Request-Id": "req_consoledefect"})
    page = assert_console_page(response, 500, "Something went wrong")
    assert "req_consoledefect" in page
    assert SECRET_DETAIL not in page and "Traceback" not in page
    assert any(" request_failed " in line and "req_consoledefect" in line for line in lines)
    assert_error(staff_client.get("/admin/", headers=API), 500, "internal_error")


def test_a_defect_on_an_api_route_stays_json_even_for_a_browser(client, monkeypatch):
    monkeypatch.setattr("webhook_app.shop_api.select", _broken)
    assert_error(client.get("/products", headers=BROWSER), 500, "internal_error")


def test_an_error_page_that_itself_fails_falls_back_to_the_json_shape(client, monkeypatch):
    monkeypatch.setattr("webhook_app.shop_pages._session_cart", _broken)
    monkeypatch.setattr("webhook_app.shop_pages._render", _broken)
    with rendered_logs() as lines:
        response = client.get("/cart", headers=BROWSER)
    assert_error(response, 500, "internal_error")
    assert any(" error_page_failed " in line for line in lines)


# --- the order's URL: the buyer's "my page" in a browser, the order's JSON for the API -------------------------

def test_every_page_endpoint_outside_the_shops_and_consoles_blueprints_is_a_route_of_the_app(app):
    from webhook_app.errors import PAGE_ENDPOINTS

    assert PAGE_ENDPOINTS <= {rule.endpoint for rule in app.url_map.iter_rules()}


def test_an_error_on_my_page_is_the_shops_page_for_a_browser_and_json_for_an_api(client, checkout):
    """The link in the order mail: a control character in its token or id is the shop's page, not JSON."""
    order = checkout()
    assert_shop_page(client.get(f"/orders/{order['order_id']}?lang=en&token=%01", headers=BROWSER), 400,
                     "What was sent could not be processed. Please go back and try again.")
    assert_shop_page(client.get("/orders/ord_%01?lang=en", headers=BROWSER), 404, "")
    assert_error(client.get(f"/orders/{order['order_id']}?token=%01", headers=API), 400, "invalid_input")


def test_the_order_api_is_never_cached_and_https_answers_carry_hsts(client, checkout):
    """The order's JSON holds the buyer's address (and the checkout's, its client secret and access token)."""
    order = checkout()
    answer = client.get(f"/orders/{order['order_id']}?token={order['access_token']}", headers=API)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" not in answer.headers  # plain http: a browser would ignore it
    secure = client.get("/", base_url="https://shop.example", headers=BROWSER)
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"
