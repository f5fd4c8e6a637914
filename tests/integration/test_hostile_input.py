"""Input the database cannot store (NUL and other control characters, lone UTF-16 surrogates, an
over-long key) is refused on the way in, with a 4xx that names the field, before any query runs:
SQLite would store it and PostgreSQL would answer a 500. Also what the JSON body's 422 says, and
what checkout's 502 tells the public client."""
from __future__ import annotations

import html
import json
import re
import sqlite3

import pytest
from sqlalchemy import event, func, select

from models.carts import Cart
from models.history import StaffAction
from models.orders import Order
from models.staff import ADD_LOGIN, LoginFailure, add_staff_member
from models.db import transaction
from tests.support import SHIPPING, assert_error, free_port, use_stripe

EMAIL = "alice@example.com"
PASSWORD = "correct horse battery staple"


def count(sessions, model) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def stock(client, sku: str = "TEA-01") -> tuple[int, int, int]:
    product = client.get(f"/products/{sku}").get_json()
    return product["on_hand"], product["reserved"], product["available"]


def new_cart(client, items=(("TEA-01", 2),)) -> str:
    cart_id = client.post("/carts").get_json()["id"]
    for sku, quantity in items:
        assert client.post(f"/carts/{cart_id}/items", json={"sku": sku, "quantity": quantity}).status_code == 200
    return cart_id


def checkout_body(cart: str, **overrides) -> dict:
    return {"cart_id": cart, "email": "buyer@example.com", "shipping": dict(SHIPPING), **overrides}


def shipping(**changes) -> dict:
    return {**SHIPPING, **changes}


def csrf_token(client, path: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True)).group(1)


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


# --- the shop API: ids in the path, JSON fields, query values --------------------------------------------------


@pytest.mark.parametrize("path, field", [
    ("/products/%00", "sku"),
    ("/products/TEA%0001", "sku"),
    ("/carts/%00", "cart_id"),
    ("/carts/cart_%1b[2J", "cart_id"),
    ("/orders/%00", "order_id"),
    ("/orders/ord_%7f", "order_id"),
])
def test_an_id_in_the_path_with_a_control_character_is_404_naming_it(client, path, field):
    error = assert_error(client.get(path), 404, "not_found", field)
    assert error["message"] == f"{field} in the address must not contain control characters: it matches nothing"


def test_adding_to_a_cart_whose_id_holds_nul_is_404_and_adds_nothing(client, sessions):
    cart_id = new_cart(client, items=())
    error = assert_error(client.post("/carts/%00/items", json={"sku": "TEA-01", "quantity": 1}), 404, "not_found",
                         "cart_id")
    assert "control characters" in error["message"]
    assert count(sessions, Cart) == 1
    assert client.get(f"/carts/{cart_id}").get_json()["items"] == []


@pytest.mark.parametrize("sku, reason", [
    ("TEA\u000001", "must not contain control characters"),
    ("TEA-01\u0007", "must not contain control characters"),
    ("TEA\n01", "must not contain control characters"),
    ("\ud800", "must be valid Unicode text (it holds a lone UTF-16 surrogate)"),
])
def test_a_sku_that_cannot_be_stored_is_422_naming_it_and_the_cart_stays_empty(client, sku, reason):
    cart_id = new_cart(client, items=())
    response = client.post(f"/carts/{cart_id}/items", json={"sku": sku, "quantity": 1})
    error = assert_error(response, 422, "invalid_input", "sku")
    assert error["message"] == f"sku {reason}"
    assert client.get(f"/carts/{cart_id}").get_json()["items"] == []


UNSTORABLE_CHECKOUT = [
    pytest.param(lambda cart: {"cart_id": "\ud800"}, "cart_id", "lone UTF-16 surrogate", id="surrogate-cart_id"),
    pytest.param(lambda cart: {"cart_id": cart + "\x00"}, "cart_id", "control characters", id="nul-cart_id"),
    pytest.param(lambda cart: {"email": "a@b.co\x00"}, "email", "control characters", id="nul-email"),
    pytest.param(lambda cart: {"email": "\ud800@x.y"}, "email", "lone UTF-16 surrogate", id="surrogate-email"),
    pytest.param(lambda cart: {"shipping": shipping(name="x\x00y")}, "shipping.name", "control characters",
                 id="nul-name"),
    pytest.param(lambda cart: {"shipping": shipping(name="x\ty")}, "shipping.name", "control characters",
                 id="tab-name"),
    pytest.param(lambda cart: {"shipping": shipping(name="\ud800")}, "shipping.name", "lone UTF-16 surrogate",
                 id="surrogate-name"),
    pytest.param(lambda cart: {"shipping": shipping(postal_code="060\x1b0001")}, "shipping.postal_code",
                 "control characters", id="escape-postal_code"),
    pytest.param(lambda cart: {"shipping": shipping(prefecture="Hokkaido\x00")}, "shipping.prefecture",
                 "control characters", id="nul-prefecture"),
    pytest.param(lambda cart: {"shipping": shipping(address="Kita 1-jo\x00")}, "shipping.address",
                 "control characters", id="nul-address"),
    pytest.param(lambda cart: {"shipping": shipping(address="Kita\x7f 1-jo")}, "shipping.address",
                 "control characters", id="del-address"),
]


@pytest.mark.parametrize("change, field, reason", UNSTORABLE_CHECKOUT)
def test_a_checkout_field_that_cannot_be_stored_is_422_naming_it_and_nothing_is_reserved(
        client, sessions, change, field, reason):
    cart_id = new_cart(client)
    response = client.post("/checkout", json=checkout_body(cart_id, **change(cart_id)))
    error = assert_error(response, 422, "invalid_input", field)
    assert error["message"].startswith(f"{field} must") and reason in error["message"], error
    assert count(sessions, Order) == 0
    assert stock(client) == (40, 0, 40)
    assert client.get(f"/carts/{cart_id}").get_json()["status"] == "open"


def test_an_address_on_several_lines_is_kept_as_written(client, sessions):
    cart_id = new_cart(client)
    response = client.post("/checkout", json=checkout_body(cart_id, shipping=shipping(address="Kita 1-jo\nSapporo")))
    assert response.status_code == 201, response.get_json()
    with sessions() as session:
        assert session.get(Order, response.get_json()["order_id"]).ship_address == "Kita 1-jo\nSapporo"


@pytest.mark.parametrize("typed", ["１２３－４５６７", "１２３ー４５６７", "1234567"])
def test_a_postal_code_typed_in_full_width_is_kept_in_ascii(client, sessions, typed):
    cart_id = new_cart(client)
    response = client.post("/checkout", json=checkout_body(cart_id, shipping=shipping(postal_code=typed)))
    assert response.status_code == 201, response.get_json()
    expected = "1234567" if typed == "1234567" else "123-4567"
    with sessions() as session:
        assert session.get(Order, response.get_json()["order_id"]).ship_postal_code == expected


@pytest.mark.parametrize("typed", ["١٢٣-٤٥٦٧", "१२३-४५६७"])  # Arabic-Indic, Devanagari: digits to `\d`, not to a carrier
def test_a_postal_code_in_another_scripts_digits_is_422(client, sessions, typed):
    cart_id = new_cart(client)
    response = client.post("/checkout", json=checkout_body(cart_id, shipping=shipping(postal_code=typed)))
    error = assert_error(response, 422, "invalid_input", "shipping.postal_code")
    assert error["message"] == "shipping.postal_code must look like 123-4567"
    assert count(sessions, Order) == 0


@pytest.mark.parametrize("path", ["/products?sort=%00", "/orders/ord_x?token=%00abc"])
def test_a_query_value_with_a_control_character_is_400_naming_the_parameter(client, path):
    name = path.split("?")[1].split("=")[0]
    error = assert_error(client.get(path), 400, "invalid_input", name)
    assert error["message"] == f"query parameter {name} must not contain control characters"


# --- Idempotency-Key ------------------------------------------------------------------------------------------


def test_a_padded_idempotency_key_is_measured_as_it_would_be_stored(client, sessions):
    cart_id = new_cart(client)
    key = " " * 10 + "k" * 250
    response = client.post("/checkout", json=checkout_body(cart_id), headers={"Idempotency-Key": key})
    error = assert_error(response, 422, "invalid_input", "Idempotency-Key")
    assert error["message"] == "Idempotency-Key must be 1 to 255 characters"
    assert count(sessions, Order) == 0
    assert stock(client) == (40, 0, 40)


def test_an_idempotency_key_of_255_characters_is_stored_whole(client, sessions):
    key = "k" * 255
    response = client.post("/checkout", json=checkout_body(new_cart(client)), headers={"Idempotency-Key": key})
    assert response.status_code == 201, response.get_json()
    with sessions() as session:
        assert session.get(Order, response.get_json()["order_id"]).idempotency_key == key


def test_an_idempotency_key_with_a_control_character_is_422(client, sessions):
    response = client.post("/checkout", json=checkout_body(new_cart(client)), headers={"Idempotency-Key": "k\x01ey"})
    error = assert_error(response, 422, "invalid_input", "Idempotency-Key")
    assert error["message"] == "Idempotency-Key must not contain control characters"
    assert count(sessions, Order) == 0


# --- what the JSON body's 422 says ----------------------------------------------------------------------------


NOT_SENT_AS_JSON = "the request body must be a JSON object, sent with Content-Type: application/json"


@pytest.mark.parametrize("data, content_type, message", [
    pytest.param(None, None, NOT_SENT_AS_JSON, id="json-object-without-content-type"),
    pytest.param(None, "text/plain", NOT_SENT_AS_JSON, id="json-object-as-text-plain"),
    pytest.param('{"cart_id": "x",', "application/json",
                 "the request body is not valid JSON (Expecting property name enclosed in double quotes at line 1 "
                 "column 17): send a JSON object", id="malformed"),
    pytest.param("", "application/json", "the request body is empty: send a JSON object", id="empty"),
    pytest.param("[1, 2]", "application/json", "the request body must be a JSON object", id="a-list"),
])
def test_a_body_that_is_not_a_json_object_is_422_saying_what_is_wrong(client, sessions, data, content_type, message):
    cart_id = new_cart(client)
    payload = json.dumps(checkout_body(cart_id)) if data is None else data
    response = client.post("/checkout", data=payload, content_type=content_type)
    error = assert_error(response, 422, "invalid_input", "body")
    assert error["message"] == message
    assert count(sessions, Order) == 0
    assert stock(client) == (40, 0, 40)


# --- checkout's 502 -------------------------------------------------------------------------------------------


def test_the_502_while_stripe_is_unreachable_names_no_host_port_or_path(client, sessions, make_client, localstripe):
    cart_id = new_cart(client)
    port = free_port()
    try:
        response = make_client(stripe_api_base=f"http://127.0.0.1:{port}").post("/checkout",
                                                                                json=checkout_body(cart_id))
    finally:
        use_stripe(localstripe.base)
    error = assert_error(response, 502, "payment_provider_unavailable")
    assert error["message"] == "could not create the payment with Stripe; the stock was released, please retry"
    assert stock(client) == (40, 0, 40)
    with sessions() as session:
        (order,) = session.scalars(select(Order)).all()
        # The SDK's detail stays with the service, for staff (and in the log line checkout_abandoned).
        assert order.status.value == "cancelled" and str(port) in order.cancel_reason


# --- the backstop: a value the database itself refuses ---------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_value_the_database_refuses_is_422_not_a_500_and_nothing_is_written(client, sessions, make_client):
    """SQLite with a 1,000-byte limit on a value refuses a 500-character address in kana (1,500 bytes), as
    PostgreSQL refuses what its column cannot hold: a real DataError, past every check on the way in."""
    cart_id = new_cart(client)
    small = make_client()
    engine = small.application.extensions["shop"].engine

    @event.listens_for(engine, "connect")
    def _small_values(dbapi_connection, _record):
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)

    engine.dispose()  # connections made before the listener have no limit
    response = small.post("/checkout", json=checkout_body(cart_id, shipping=shipping(address="あ" * 500)))
    error = assert_error(response, 422, "invalid_input")
    assert error["message"] == ("a value in this request cannot be stored (too long, out of range, or holding "
                                "characters text may not contain)")
    assert count(sessions, Order) == 0
    assert stock(client) == (40, 0, 40)
    assert client.get(f"/carts/{cart_id}").get_json()["status"] == "open"


# --- the shop's screens ---------------------------------------------------------------------------------------


def pay_with(client, **kwargs):
    token = csrf_token(client, "/?lang=en")
    return client.post("/checkout/pay", headers={"Accept": "application/json", "X-CSRFToken": token}, **kwargs)


@pytest.mark.parametrize("kwargs", [
    pytest.param({"json": [1]}, id="a-list"),
    pytest.param({"json": "pm_x"}, id="a-string"),
    pytest.param({"json": {"payment_method": "pm_\ud800"}}, id="a-surrogate"),
    pytest.param({"json": {"payment_method": "pm_card\x00visa"}}, id="nul"),
])
def test_pay_step_answers_422_for_a_body_that_is_not_a_payment_method_object(client, sessions, kwargs):
    response = pay_with(client, **kwargs)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json() == {"error": {"code": "invalid_input", "message": "payment_method must be a pm_ id",
                                             "field": "payment_method"}}
    assert count(sessions, Order) == 0


def test_a_shop_screen_with_a_control_character_in_its_path_is_the_not_found_page(client):
    response = client.get("/orders/ord_%00/complete?lang=en")
    assert response.status_code == 404
    assert response.mimetype == "text/html" and "Page not found." in text_of(response)


def test_adding_a_sku_with_nul_from_the_products_screen_is_not_found_and_makes_no_cart(client, sessions):
    response = client.post("/cart/items", data={"csrf_token": csrf_token(client, "/?lang=en"), "sku": "TEA\x0001",
                                                "quantity": "1"})
    assert response.status_code == 404
    assert "Page not found." in text_of(response)
    assert count(sessions, Cart) == 0


def test_buyer_details_with_control_characters_are_shown_beside_their_fields_and_not_kept(client):
    response = client.post("/cart/items", data={"csrf_token": csrf_token(client, "/?lang=en"), "sku": "TEA-01",
                                                "quantity": "1"})
    assert response.status_code == 303
    buyer = {"name": "Hanako\x00Yamada", "email": "hanako@example.com\x00", "postal_code": "060-0001",
             "prefecture": "Hokkaido", "address": "Kita 1-jo Nishi 2-chome, Sapporo"}
    response = client.post("/checkout/info", data={"csrf_token": csrf_token(client, "/checkout/info?lang=en"),
                                                   **buyer})
    assert response.status_code == 422
    page = text_of(response)
    invalid = re.findall(r'<div class="field invalid">(.*?)</div>', page, re.S)
    assert ['id="name"' in field for field in invalid] == [True, False]
    assert 'id="email"' in invalid[1] and "This is not a valid e-mail address." in invalid[1]
    # Nothing kept: the confirmation screen still asks for the details.
    assert client.get("/checkout/confirm").location.endswith("/checkout/info")


# --- the staff console ----------------------------------------------------------------------------------------


@pytest.fixture
def staff(sessions):
    with transaction(sessions) as session:
        add_staff_member(session, EMAIL, PASSWORD, actor="test setup")
    return EMAIL


@pytest.fixture
def staff_client(client, staff):
    response = client.post("/admin/login", data={"email": EMAIL, "password": PASSWORD,
                                                  "csrf_token": csrf_token(client, "/admin/login")})
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def test_a_login_email_with_nul_is_422_naming_the_field_and_records_no_failure(client, sessions, staff):
    response = client.post("/admin/login", data={"email": "a\x00@x.y", "password": PASSWORD,
                                                 "csrf_token": csrf_token(client, "/admin/login")})
    assert response.status_code == 422
    page = text_of(response)
    assert "Not accepted: control characters" in page
    assert "email must not contain control characters. Nothing was looked up or changed." in page
    assert count(sessions, LoginFailure) == 0
    assert client.get("/admin/").status_code == 302  # not logged in


@pytest.mark.parametrize("path, name", [
    ("/admin/search?q=%00", "q"),
    ("/admin/search?q=ord_%01", "q"),
    ("/admin/dead-letters?type=%00", "type"),
    ("/admin/dead-letters?error=boom%00", "error"),
    ("/admin/orders?status=paid%00", "status"),
])
def test_a_console_search_or_filter_value_with_a_control_character_is_400_naming_it(staff_client, path, name):
    response = staff_client.get(path)
    assert response.status_code == 400
    page = text_of(response)
    assert f"query parameter {name} must not contain control characters" in page
    assert f"Reason: {name}" in page


def test_a_console_order_id_with_nul_is_the_consoles_not_found_page(staff_client):
    response = staff_client.get("/admin/orders/%00")
    assert response.status_code == 404
    page = text_of(response)
    assert "<h1>Not found</h1>" in page and "order_id in the address must not contain control characters" in page


def test_logged_out_a_console_url_with_nul_still_redirects_to_the_login_page(client):
    response = client.get("/admin/orders/%00")
    assert response.status_code == 302
    assert response.location.startswith("/admin/login")


def test_a_staff_note_with_nul_is_422_and_no_action_is_recorded(staff_client, sessions):
    response = staff_client.post("/admin/dead-letters/1/resolve", data={
        "note": "done\x00", "csrf_token": csrf_token(staff_client, "/admin/")})
    assert response.status_code == 422
    assert "note must not contain control characters" in text_of(response)
    with sessions() as session:  # the staff fixture's own login is the only audit row
        assert session.scalars(select(StaffAction.action)).all() == [ADD_LOGIN]


def test_a_staff_note_on_several_lines_is_not_refused_for_its_line_breaks(staff_client, sessions):
    response = staff_client.post("/admin/dead-letters/1/resolve", data={
        "note": "checked with\r\nthe warehouse\tok", "csrf_token": csrf_token(staff_client, "/admin/")})
    # No dead letter 1: the console's own answer, not the control-character refusal.
    assert response.status_code == 404
    assert "control characters" not in text_of(response)


# --- an address no route matches ------------------------------------------------------------------------------


@pytest.mark.parametrize("path, says", [
    ("/no-such-page", "ページが見つかりません。"),
    ("/no-such-page?lang=en", "Page not found."),
    ("/admin/no-such-page", "There is nothing at this address"),
])
def test_an_address_no_route_matches_is_a_page_for_a_browser(client, path, says):
    response = client.get(path, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert says in text_of(response)
    assert "Search for it" not in text_of(response)  # logged out: no search box in the bar


def test_an_address_no_route_matches_is_json_for_an_api_client(client):
    response = client.get("/no-such-page", headers={"Accept": "application/json"})
    assert_error(response, 404, "not_found")
