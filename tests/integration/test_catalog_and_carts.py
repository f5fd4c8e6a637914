"""Products and carts through the HTTP API: the Contract's shapes and every status code, each bad input."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from models.carts import CartItem
from models.orders import Order
from tests.support import assert_error

PRODUCT_KEYS = {"sku", "name", "unit_amount", "currency", "on_hand", "reserved", "available"}


@pytest.fixture
def cart_id(client) -> str:
    response = client.post("/carts")
    assert response.status_code == 201
    return response.get_json()["id"]


# --- products -------------------------------------------------------------------------------------------------


def test_product_list_has_every_catalog_product_with_the_contract_fields(client):
    response = client.get("/products")
    assert response.status_code == 200
    products = response.get_json()
    assert isinstance(products, list)
    assert [p["sku"] for p in products] == ["CUP-01", "TEA-01"]
    for product in products:
        assert set(product) == PRODUCT_KEYS
    tea = next(p for p in products if p["sku"] == "TEA-01")
    assert tea == {"sku": "TEA-01", "name": "Hokkaido black tea", "unit_amount": 1200, "currency": "jpy",
                   "on_hand": 40, "reserved": 0, "available": 40}


def test_one_product_is_shown_by_sku(client):
    response = client.get("/products/CUP-01")
    assert response.status_code == 200
    assert response.get_json() == {"sku": "CUP-01", "name": "Arita tea cup", "unit_amount": 3500, "currency": "jpy",
                                   "on_hand": 3, "reserved": 0, "available": 3}


def test_unknown_product_is_404_naming_the_sku(client):
    error = assert_error(client.get("/products/NOPE-99"), 404, "not_found", "sku")
    assert "NOPE-99" in error["message"]


# --- carts ----------------------------------------------------------------------------------------------------


def test_new_cart_is_201_with_an_id_and_is_empty(client):
    response = client.post("/carts")
    assert response.status_code == 201
    body = response.get_json()
    assert isinstance(body["id"], str) and body["id"]
    shown = client.get(f"/carts/{body['id']}")
    assert shown.status_code == 200
    assert shown.get_json()["items"] == []
    assert shown.get_json()["subtotal"] == 0


def test_each_new_cart_gets_its_own_id(client):
    ids = {client.post("/carts").get_json()["id"] for _ in range(3)}
    assert len(ids) == 3


def test_adding_an_item_answers_200_with_the_cart(client, cart_id):
    response = client.post(f"/carts/{cart_id}/items", json={"sku": "TEA-01", "quantity": 2})
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == cart_id
    assert body["items"] == [{"sku": "TEA-01", "quantity": 2, "unit_amount": 1200}]
    assert body["subtotal"] == 2400
    assert body["currency"] == "jpy"


def test_cart_shows_items_subtotal_and_currency(client, cart_id):
    client.post(f"/carts/{cart_id}/items", json={"sku": "TEA-01", "quantity": 2})
    client.post(f"/carts/{cart_id}/items", json={"sku": "CUP-01", "quantity": 1})
    response = client.get(f"/carts/{cart_id}")
    assert response.status_code == 200
    body = response.get_json()
    assert {"id", "items", "subtotal", "currency"} <= set(body)
    assert body["id"] == cart_id
    assert body["items"] == [{"sku": "TEA-01", "quantity": 2, "unit_amount": 1200},
                             {"sku": "CUP-01", "quantity": 1, "unit_amount": 3500}]
    for item in body["items"]:
        assert set(item) == {"sku", "quantity", "unit_amount"}
    assert body["subtotal"] == 2 * 1200 + 3500
    assert body["currency"] == "jpy"


def test_adding_the_same_sku_again_adds_to_its_quantity(client, cart_id):
    client.post(f"/carts/{cart_id}/items", json={"sku": "TEA-01", "quantity": 2})
    body = client.post(f"/carts/{cart_id}/items", json={"sku": "TEA-01", "quantity": 3}).get_json()
    assert body["items"] == [{"sku": "TEA-01", "quantity": 5, "unit_amount": 1200}]
    assert body["subtotal"] == 6000


def test_adding_to_a_cart_reserves_no_stock(client, cart_id):
    client.post(f"/carts/{cart_id}/items", json={"sku": "TEA-01", "quantity": 2})
    tea = client.get("/products/TEA-01").get_json()
    assert (tea["on_hand"], tea["reserved"], tea["available"]) == (40, 0, 40)


def test_unknown_cart_is_404(client):
    error = assert_error(client.get("/carts/cart_doesnotexist"), 404, "not_found", "cart_id")
    assert "cart_doesnotexist" in error["message"]


def test_adding_to_an_unknown_cart_is_404_naming_the_cart(client):
    response = client.post("/carts/cart_doesnotexist/items", json={"sku": "TEA-01", "quantity": 1})
    assert_error(response, 404, "not_found", "cart_id")


def test_adding_an_unknown_sku_is_404_naming_the_sku_and_leaves_the_cart_empty(client, cart_id):
    response = client.post(f"/carts/{cart_id}/items", json={"sku": "NOPE-99", "quantity": 1})
    error = assert_error(response, 404, "not_found", "sku")
    assert "NOPE-99" in error["message"]
    assert client.get(f"/carts/{cart_id}").get_json()["items"] == []


def test_adding_more_than_is_in_stock_is_409_naming_the_sku(client, cart_id):
    response = client.post(f"/carts/{cart_id}/items", json={"sku": "CUP-01", "quantity": 4})
    error = assert_error(response, 409, "out_of_stock", "sku")
    assert "CUP-01" in error["message"]
    assert client.get(f"/carts/{cart_id}").get_json()["items"] == []


def test_adding_up_to_more_than_is_in_stock_is_409_and_keeps_the_earlier_quantity(client, cart_id):
    assert client.post(f"/carts/{cart_id}/items", json={"sku": "CUP-01", "quantity": 3}).status_code == 200
    response = client.post(f"/carts/{cart_id}/items", json={"sku": "CUP-01", "quantity": 1})
    error = assert_error(response, 409, "out_of_stock", "sku")
    assert "CUP-01" in error["message"]
    assert client.get(f"/carts/{cart_id}").get_json()["items"] == [
        {"sku": "CUP-01", "quantity": 3, "unit_amount": 3500}]


@pytest.mark.parametrize("body", [
    pytest.param({"sku": "TEA-01", "quantity": 0}, id="zero"),
    pytest.param({"sku": "TEA-01", "quantity": -1}, id="negative"),
    pytest.param({"sku": "TEA-01", "quantity": "2"}, id="string"),
    pytest.param({"sku": "TEA-01", "quantity": 1.5}, id="float"),
    pytest.param({"sku": "TEA-01", "quantity": True}, id="boolean"),
    pytest.param({"sku": "TEA-01", "quantity": None}, id="null"),
    pytest.param({"sku": "TEA-01"}, id="missing"),
    pytest.param({"sku": "TEA-01", "quantity": 100}, id="over-the-per-cart-maximum"),
])
def test_bad_quantity_is_422_naming_the_quantity_and_adds_nothing(client, sessions, cart_id, body):
    response = client.post(f"/carts/{cart_id}/items", json=body)
    assert_error(response, 422, "invalid_input", "quantity")
    assert client.get(f"/carts/{cart_id}").get_json()["items"] == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(CartItem)) == 0


@pytest.mark.parametrize("body", [
    pytest.param({"quantity": 1}, id="missing"),
    pytest.param({"sku": "", "quantity": 1}, id="empty"),
    pytest.param({"sku": 7, "quantity": 1}, id="number"),
])
def test_bad_sku_is_422_naming_the_sku(client, cart_id, body):
    assert_error(client.post(f"/carts/{cart_id}/items", json=body), 422, "invalid_input", "sku")


@pytest.mark.parametrize("data, content_type", [
    pytest.param("sku=TEA-01&quantity=1", "application/x-www-form-urlencoded", id="form"),
    pytest.param("{not json", "application/json", id="broken-json"),
    pytest.param("", "application/json", id="empty"),
    pytest.param('[{"sku": "TEA-01", "quantity": 1}]', "application/json", id="json-list"),
    pytest.param('"TEA-01"', "application/json", id="json-string"),
])
def test_body_that_is_not_a_json_object_is_422(client, cart_id, data, content_type):
    response = client.post(f"/carts/{cart_id}/items", data=data, content_type=content_type)
    error = assert_error(response, 422, "invalid_input", "body")
    assert "JSON object" in error["message"]
    assert client.get(f"/carts/{cart_id}").get_json()["items"] == []


def test_a_checked_out_cart_takes_no_more_items(client, checkout, sessions):
    order = checkout([("TEA-01", 1)])
    with sessions() as session:
        cart_id = session.get(Order, order["order_id"]).cart_id
    response = client.post(f"/carts/{cart_id}/items", json={"sku": "TEA-01", "quantity": 1})
    assert_error(response, 409, "conflict", "cart_id")
    assert client.get(f"/carts/{cart_id}").get_json()["items"] == [
        {"sku": "TEA-01", "quantity": 1, "unit_amount": 1200}]
