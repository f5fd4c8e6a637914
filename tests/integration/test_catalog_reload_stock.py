"""`shop catalog load` again: each sku's stock moves by its figure's change since the last load, so units sold
(or put back by a refund) since stay as they are; and on PostgreSQL a load racing a checkout is waited for
or refused with one line, never a traceback."""
from __future__ import annotations

import json
import subprocess
import threading

import pytest
from click.testing import CliRunner

from models.carts import get_cart
from models.catalog import Product
from models.catalog_file import apply_catalog
from models.db import make_engine, transaction
from models.orders import ShippingAddress, place_order
from tests.backends import servers_available, wait_until_waiting_for_a_lock
from tests.support import BIN, CATALOG, SHIPPING, env_for, event_for
from webhook_app.cli import shop


def catalog_with(changes: dict[str, dict]) -> dict:
    """A fresh copy of CATALOG with some products' fields changed (or added), by sku."""
    catalog = json.loads(json.dumps(CATALOG))
    for sku, fields in changes.items():
        product = next((p for p in catalog["products"] if p["sku"] == sku), None)
        if product is None:
            product = {"sku": sku, "name": f"{sku} product", "unit_amount": 1000}
            catalog["products"].append(product)
        product.update(fields)
    return catalog


@pytest.fixture
def catalog_file(tmp_path):
    def write(catalog: dict):
        path = tmp_path / "catalog.json"
        path.write_text(json.dumps(catalog))
        return path
    return write


@pytest.fixture
def load(settings, catalog_file):
    """`shop catalog load FILE` in this process, as an operator runs it."""
    def run(catalog: dict):
        path = catalog_file(catalog)
        env = {"DATABASE_URL": settings.database_url, "BROKER_URL": settings.broker_url, "LOG_FORMAT": "console"}
        return path, CliRunner().invoke(shop, ["catalog", "load", str(path)], env=env, catch_exceptions=False)
    return run


@pytest.fixture
def paid(checkout, post_event, deliver):
    """Check out these items and have Stripe say the payment succeeded: the units leave the shelf."""
    def place(items):
        order = checkout(items)
        assert post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                                    order_id=order["order_id"], amount=order["total"])).status_code == 200
        deliver()
        return order
    return place


def stock(client, sku: str) -> tuple[int, int, int]:
    product = client.get(f"/products/{sku}").get_json()
    return product["on_hand"], product["reserved"], product["available"]


def refunded_in_full(order: dict) -> dict:
    """charge.refunded as Stripe sends it for a refund of the whole payment made in its dashboard."""
    event = event_for("charge.refunded")
    charge = event["data"]["object"]
    charge.update(id="ch_ReloadCharge01", payment_intent=order["payment_intent_id"], amount=order["total"],
                  currency=order["currency"], amount_refunded=order["total"], refunded=True)
    charge["refunds"]["data"] = [{"id": "re_ReloadRefund01", "object": "refund", "amount": order["total"],
                                  "charge": "ch_ReloadCharge01", "currency": order["currency"],
                                  "payment_intent": order["payment_intent_id"], "status": "succeeded",
                                  "reason": None}]
    return event


# --- a figure is the stock as of the load that brought it --------------------------------------------------------


def test_reloading_the_catalog_to_change_a_price_keeps_the_units_sold_since_off_sale(client, paid, load):
    paid([("CUP-01", 3)])                                   # all three cups
    assert stock(client, "CUP-01") == (0, 0, 0)

    path, result = load(catalog_with({"TEA-01": {"unit_amount": 1300}}))   # the file is otherwise as loaded
    assert result.exit_code == 0, result.output
    assert "0 created, 2 updated" in result.output

    assert stock(client, "CUP-01") == (0, 0, 0)
    assert client.get("/products/TEA-01").get_json()["unit_amount"] == 1300
    assert stock(client, "TEA-01") == (40, 0, 40)


def test_raising_a_figure_adds_the_units_received_to_what_is_left_and_loading_it_again_adds_nothing(
        client, paid, load):
    paid([("TEA-01", 2)])
    assert stock(client, "TEA-01") == (38, 0, 38)

    for _ in range(2):
        _, result = load(catalog_with({"TEA-01": {"stock": 50}}))     # ten more arrived
        assert result.exit_code == 0, result.output
        assert stock(client, "TEA-01") == (48, 0, 48)


def test_lowering_a_figure_takes_that_many_units_off_what_is_left(client, paid, load):
    paid([("TEA-01", 2)])
    _, result = load(catalog_with({"TEA-01": {"stock": 35}}))         # five broken in the count
    assert result.exit_code == 0, result.output
    assert stock(client, "TEA-01") == (33, 0, 33)


def test_with_nothing_sold_between_loads_the_stock_on_hand_is_the_figure_loaded(client, load):
    for figure in (50, 30, 40):
        _, result = load(catalog_with({"TEA-01": {"stock": figure}, "NEW-01": {"stock": 5}}))
        assert result.exit_code == 0, result.output
        assert stock(client, "TEA-01") == (figure, 0, figure)
        assert stock(client, "NEW-01") == (5, 0, 5)              # a new sku starts at its figure


def test_units_a_refund_put_back_stay_on_sale_and_are_not_put_back_twice_by_a_reload(
        client, paid, load, post_event, deliver):
    order = paid([("CUP-01", 3)])
    _, result = load(catalog_with({"TEA-01": {"unit_amount": 1300}}))
    assert result.exit_code == 0, result.output
    assert stock(client, "CUP-01") == (0, 0, 0)

    assert post_event(refunded_in_full(order)).status_code == 200   # refunded before the cups left
    deliver()
    assert client.get(f"/orders/{order['order_id']}").get_json()["status"] == "refunded"
    assert stock(client, "CUP-01") == (3, 0, 3)

    _, result = load(catalog_with({"TEA-01": {"unit_amount": 1300}}))
    assert result.exit_code == 0, result.output
    assert stock(client, "CUP-01") == (3, 0, 3)


def test_a_figure_leaving_fewer_units_than_checkouts_hold_is_refused_naming_it_and_loads_nothing(
        client, checkout, load):
    checkout([("CUP-01", 2)])                                        # held, not paid
    assert stock(client, "CUP-01") == (3, 2, 1)

    path, result = load(catalog_with({"TEA-01": {"unit_amount": 1300, "stock": 50}, "CUP-01": {"stock": 1},
                                     "NEW-01": {"stock": 5}}))
    assert result.exit_code == 1, result.output
    assert f"{path}: CUP-01: stock 3 -> 1 would leave 1 on hand, below the 2 units reserved by checkouts" \
        in result.output
    assert "Traceback" not in result.output
    assert stock(client, "CUP-01") == (3, 2, 1)
    assert stock(client, "TEA-01") == (40, 0, 40)
    assert client.get("/products/TEA-01").get_json()["unit_amount"] == 1200
    assert client.get("/products/NEW-01").status_code == 404

    _, result = load(catalog_with({"CUP-01": {"stock": 2}}))              # one broken: two left, both held
    assert result.exit_code == 0, result.output
    assert stock(client, "CUP-01") == (2, 2, 0)


def test_a_figure_taking_off_more_units_than_are_left_is_refused_naming_it_and_loads_nothing(client, paid, load):
    paid([("CUP-01", 3)])
    path, result = load(catalog_with({"TEA-01": {"stock": 50}, "CUP-01": {"stock": 2}}))
    assert result.exit_code == 1, result.output
    assert (f"{path}: CUP-01: stock 3 -> 2 would take 1 off the 0 on hand (units sold since the last load "
            f"stay sold)") in result.output
    assert (stock(client, "CUP-01"), stock(client, "TEA-01")) == ((0, 0, 0), (40, 0, 40))


# --- PostgreSQL: a load and a checkout at the same time -----------------------------------------------------------
# (On SQLite every write transaction takes the one writer's turn first: a load and a checkout never overlap.)

def waiting_for_a_lock_at(database_url: str, proc: subprocess.Popen | None = None,
                                  thread: threading.Thread | None = None) -> None:
    engine = make_engine(database_url)
    try:
        wait_until_waiting_for_a_lock(engine, proc=proc, thread=thread)
    finally:
        engine.dispose()


def shop_catalog_load_started(settings, path, tmp_path) -> subprocess.Popen:
    """`shop catalog load FILE` in a process of its own, as an operator runs it beside the web processes."""
    env = env_for(tmp_path, DATABASE_URL=settings.database_url, BROKER_URL=settings.broker_url)
    return subprocess.Popen([str(BIN / "shop"), "catalog", "load", str(path)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


if servers_available():
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_checkout_committed_after_the_load_read_the_stock_is_counted_by_the_load_not_a_crash(
            sessions, client, checkout):
        session = sessions()
        try:
            session.begin()
            read = session.get(Product, "CUP-01")                          # the load has read the row ...
            assert read.stock.reserved == 0
            checkout([("CUP-01", 2)])                                     # ... a checkout holds 2 cups and commits
            with pytest.raises(ValueError, match="CUP-01: stock 3 -> 1 would leave 1 on hand, below the 2 units "
                                                 "reserved by checkouts"):
                apply_catalog(session, catalog_with({"CUP-01": {"stock": 1}}))
        finally:
            session.close()
        assert stock(client, "CUP-01") == (3, 2, 1)

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_load_waits_for_a_checkout_holding_the_stock_then_refuses_in_one_line_counting_its_hold(
            settings, sessions, client, catalog_file, tmp_path):
        cart = client.post("/carts").get_json()["id"]
        assert client.post(f"/carts/{cart}/items", json={"sku": "CUP-01", "quantity": 2}).status_code == 200
        path = catalog_file(catalog_with({"CUP-01": {"stock": 1}}))
        with transaction(sessions) as session:                            # the checkout's transaction, open
            place_order(session, get_cart(session, cart, for_update=True), email="buyer@example.com",
                        shipping=ShippingAddress(**SHIPPING), reservation_ttl_seconds=1800)
            session.flush()                                               # CUP-01's row is locked, 2 reserved
            loading = shop_catalog_load_started(settings, path, tmp_path)
            waiting_for_a_lock_at(settings.database_url, proc=loading)
        out, err = loading.communicate(timeout=60)
        assert loading.returncode == 1, (out, err)
        assert "Traceback" not in err
        assert err.strip() == (f"Error: {path}: CUP-01: stock 3 -> 1 would leave 1 on hand, below the 2 units "
                               f"reserved by checkouts")
        assert stock(client, "CUP-01") == (3, 2, 1)

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_checkout_waits_for_a_load_holding_the_stock_and_sees_the_stock_it_loaded(settings, sessions, client):
        cart = client.post("/carts").get_json()["id"]
        assert client.post(f"/carts/{cart}/items", json={"sku": "CUP-01", "quantity": 2}).status_code == 200
        answered = {}

        def check_out():
            answered["response"] = client.post("/checkout", json={"cart_id": cart, "email": "buyer@example.com",
                                                                  "shipping": SHIPPING})

        with transaction(sessions) as session:                            # the load's transaction, open
            apply_catalog(session, catalog_with({"CUP-01": {"stock": 1}}))     # two cups broken in the count
            checking_out = threading.Thread(target=check_out)
            checking_out.start()
            waiting_for_a_lock_at(settings.database_url, thread=checking_out)
        checking_out.join(60)
        response = answered["response"]
        assert response.status_code == 409, response.get_json()
        assert response.get_json()["error"]["code"] == "out_of_stock"
        assert "CUP-01" in response.get_json()["error"]["message"]
        assert stock(client, "CUP-01") == (1, 0, 1)

    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_a_load_adding_the_sku_another_load_adds_meanwhile_fails_in_one_line_not_a_traceback(
            settings, sessions, client, catalog_file, tmp_path):
        new = {"currency": "jpy", "products": [{"sku": "NEW-01", "name": "New tea", "unit_amount": 900, "stock": 5}]}
        path = catalog_file(new)
        with transaction(sessions) as session:                            # the other load, not yet committed
            apply_catalog(session, json.loads(json.dumps(new)))
            loading = shop_catalog_load_started(settings, path, tmp_path)
            waiting_for_a_lock_at(settings.database_url, proc=loading)
        out, err = loading.communicate(timeout=60)
        assert loading.returncode == 1, (out, err)
        assert "Traceback" not in err
        assert err.strip().startswith(f"Error: {path}: nothing was loaded: the database refused it (duplicate key")
        assert err.strip().endswith("load it again")
        assert stock(client, "NEW-01") == (5, 0, 5)
