"""What the service refuses at its edges and how it says so: a JSON body nested deeper than Python
reads (422 naming the body, never a 500), a setting or a DATABASE_URL / BROKER_URL the processes
cannot run with (the process stops at start with one line naming the variable and what it must be,
never a traceback), and a catalog file with a sku the shop cannot address, text that is not
valid Unicode, or nesting Python cannot read (`shop catalog load` exits 1 naming the field, and
loads nothing).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_cli_and_console_bounds import run  # noqa: F401 - the `shop ARGS…` fixture
from tests.support import assert_error

NESTED = "[" * 1000 + "]" * 1000  # 2 KB, past Python's recursion limit for json.loads


def assert_stopped_at_start(result, *needles: str) -> str:
    """Exit 1 with one line of explanation (no traceback, no exception out of the command)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- D1: JSON nested too deeply -------------------------------------------------------------------------------


def _nested_too_deeply(response):
    error = assert_error(response, 422, "invalid_input", "body")
    assert "nested too deeply" in error["message"], error


@pytest.mark.parametrize("endpoint", ["/checkout", "/carts/{cart}/items"])
def test_json_nested_too_deeply_for_the_cart_and_checkout_api_is_422_naming_the_body(client, endpoint):
    cart = client.post("/carts").get_json()["id"]
    _nested_too_deeply(client.post(endpoint.format(cart=cart), data=NESTED, content_type="application/json"))
    assert client.get(f"/carts/{cart}").get_json()["items"] == []


def test_json_nested_too_deeply_for_the_pay_step_is_422_naming_the_body(client):
    html = client.get("/?lang=en").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    response = client.post("/checkout/pay", data=NESTED, content_type="application/json",
                           headers={"Accept": "application/json", "X-CSRFToken": token})
    _nested_too_deeply(response)


# --- D2: settings out of range stop every process at start ----------------------------------------------------


@pytest.mark.parametrize("name, value, expected", [
    ("STRIPE_MAX_CONCURRENT_CALLS", "0", "STRIPE_MAX_CONCURRENT_CALLS must be an integer from 1 to 1000, got '0'"),
    ("RESERVATION_TTL_SECONDS", "99999999999999",
     "RESERVATION_TTL_SECONDS must be an integer from 1 to 604800, got '99999999999999'"),
    ("WEBHOOK_MAX_BYTES", "-1", "WEBHOOK_MAX_BYTES must be an integer from 1024 to 16777216, got '-1'"),
    ("STRIPE_DEADLINE_SECONDS", "nan", "STRIPE_DEADLINE_SECONDS must be a number from 1 to 60, got 'nan'"),
    ("LOG_FORMAT", "xml", "LOG_FORMAT must be one of json, console, got 'xml'"),
    ("FORWARDED_ALLOW_IPS", "10.0.0.1/8", "FORWARDED_ALLOW_IPS must be * or comma-separated addresses or networks "
                                          "of the proxies in front of gunicorn (10.0.0.2, 10.0.0.0/8), got '10.0.0.1/8'"),
])
def test_a_setting_out_of_range_stops_a_cli_verb_with_one_line_naming_it(run, name, value, expected):
    line = assert_stopped_at_start(run("db", "upgrade", **{name: value}))
    assert line == expected


def test_a_setting_out_of_range_stops_the_web_app_at_start_naming_it(monkeypatch, settings):
    from webhook_app import create_app

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("STRIPE_MAX_CONCURRENT_CALLS", "-1")
    with pytest.raises(SystemExit) as stopped:
        create_app()
    assert str(stopped.value.code) == "STRIPE_MAX_CONCURRENT_CALLS must be an integer from 1 to 1000, got '-1'"


@pytest.mark.parametrize("name, value, said", [
    ("RESERVATION_TTL_SECONDS", "0", "RESERVATION_TTL_SECONDS must be an integer from 1 to 604800, got '0'"),
    ("BROKER_URL", "nonsense://mq/shop", "BROKER_URL names a transport kombu does not have ('nonsense')")])
def test_a_refused_setting_stops_gunicorn_itself_not_only_its_workers(settings, name, value, said):
    """Refused in each worker only, a setting made gunicorn's master start a new worker forever; the
    broker's was not checked by the web at all (its /readyz asks that broker)."""
    env = {**os.environ, "DATABASE_URL": settings.database_url, name: value,
           "GUNICORN_BIND": "127.0.0.1:0", "WEB_CONCURRENCY": "1"}
    started = subprocess.run([str(Path(sys.executable).with_name("gunicorn")), "webhook_app:create_app()"],
                             cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                             timeout=60)
    assert started.returncode == 1, started.stderr
    assert said in started.stderr
    assert "Booting worker" not in started.stdout + started.stderr


# --- D3: DATABASE_URL and BROKER_URL ---------------------------------------------------------------------------


VERBS = [("db", "upgrade"), ("events", "list"), ("orders", "review"), ("dlq", "list"), ("staff", "list")]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_a_database_url_that_is_not_a_url_stops_every_verb_naming_database_url(run, verb):
    line = assert_stopped_at_start(run(*verb, DATABASE_URL="garbage"), "DATABASE_URL", "'garbage'")
    assert "postgresql+psycopg://" in line and "sqlite:///" in line  # what it must look like


def test_a_sqlite_database_url_whose_folder_cannot_be_made_stops_naming_database_url(run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for url in ("sqlite:////proc/nope/x.db", f"sqlite:///{blocker}/shop.db"):
        line = assert_stopped_at_start(run("db", "upgrade", DATABASE_URL=url), "DATABASE_URL")
        assert "folder" in line, line


@pytest.mark.parametrize("url, needle", [
    ("nosuchdb://host/shop", "PostgreSQL"),                       # a database SQLAlchemy does not know
    ("mysql://shop@db/shop", "PostgreSQL"),                       # one it knows, that this service does not use
    ("postgresql+nosuchdriver://shop@db/shop", "nosuchdriver"),   # a driver SQLAlchemy does not know
    ("postgresql+psycopg://shop@db:notaport/shop", "a database URL such as"),  # a port that is not a number
    ("sqlite:///instance/shop.db?timeout=soon", "timeout"),       # a driver argument it cannot take
])
def test_a_database_url_the_service_cannot_use_stops_naming_database_url(run, url, needle):
    line = assert_stopped_at_start(run("db", "upgrade", DATABASE_URL=url), "DATABASE_URL")
    assert needle in line, line


def test_a_refused_database_url_never_shows_its_password(run):
    result = run("db", "upgrade", DATABASE_URL="mysql://shop:s3cret-pw@db/shop")
    line = assert_stopped_at_start(result, "DATABASE_URL")
    assert "s3cret-pw" not in line


def test_a_bad_database_url_stops_the_web_app_at_start_naming_it(monkeypatch):
    from webhook_app import create_app

    monkeypatch.setenv("DATABASE_URL", "garbage")
    with pytest.raises(SystemExit) as stopped:
        create_app()
    assert "DATABASE_URL" in str(stopped.value.code)


@pytest.mark.parametrize("verb", ["relay", "worker", "db upgrade"])
@pytest.mark.parametrize("url, needle", [("nonsense://x", "'nonsense'"), ("garbage", "'garbage'")])
def test_a_broker_url_with_an_unknown_transport_stops_the_process_naming_broker_url(run, monkeypatch, verb, url,
                                                                                     needle):
    # Were it not refused, the relay and the worker would wait for that broker forever.
    def started(*_args, **_kwargs):
        raise AssertionError("started with a BROKER_URL no transport can use")

    monkeypatch.setattr("consumers.relay.run_relay", started)
    monkeypatch.setattr("consumers.worker.run_worker", started)
    line = assert_stopped_at_start(run(*verb.split(), BROKER_URL=url), "BROKER_URL", needle)
    assert "amqp://" in line


def test_a_refused_broker_url_never_shows_its_password(run):
    line = assert_stopped_at_start(run("db", "upgrade", BROKER_URL="nonsense://shop:s3cret-pw@mq/shop"),
                                   "BROKER_URL")
    assert "s3cret-pw" not in line


def test_the_suites_broker_and_database_urls_still_start(run):
    assert run("db", "upgrade").exit_code == 0


# --- D4, D5: the catalog file --------------------------------------------------------------------------------


def _catalog(tmp_path, **product):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"currency": "jpy", "products": [
        {"sku": "NEW-01", "name": "New tea", "unit_amount": 900, "stock": 5, **product}]}))
    return path


@pytest.mark.parametrize("sku", [
    pytest.param("A\u0000B", id="nul"),
    pytest.param("A\tB", id="tab"),
    pytest.param("A\u001bB", id="escape"),
    pytest.param(" ", id="blank"),
    pytest.param("", id="empty"),
    pytest.param(" NEW-01", id="leading-space"),     # the cart API strips what it is sent: it could never add it
    pytest.param("A/B", id="slash"),                 # /products/A/B is another address
    pytest.param("A\ud800B", id="lone-surrogate"),
    pytest.param("X" * 65, id="past-the-column"),
    pytest.param(7, id="a-number"),
])
def test_catalog_load_refuses_a_sku_the_shop_cannot_address_and_loads_nothing(run, client, tmp_path, sku):
    before = client.get("/products").get_json()
    result = run("catalog", "load", _catalog(tmp_path, sku=sku))
    assert result.exit_code == 2, result.output  # bad usage: the file is not a catalog
    assert "products[0].sku must " in result.output
    assert "Traceback" not in result.output
    assert client.get("/products").get_json() == before


@pytest.mark.parametrize("sku", ["NEW-01", "お茶-01", "A.B_C+D", "X" * 64])
def test_catalog_load_takes_a_sku_the_cart_api_can_add(run, client, tmp_path, sku):
    result = run("catalog", "load", _catalog(tmp_path, sku=sku))
    assert result.exit_code == 0, result.output
    assert client.get(f"/products/{sku}").status_code == 200
    cart = client.post("/carts").get_json()["id"]
    assert client.post(f"/carts/{cart}/items", json={"sku": sku, "quantity": 1}).status_code == 200


@pytest.mark.parametrize("field, value, message", [
    ("name_ja", "お\ud800茶", "products[0].name_ja must be valid Unicode text"),
    ("name", "New \udfff tea", "products[0].name must be valid Unicode text"),
    ("name", "New\u0000tea", "products[0].name must not contain control characters"),
    ("name_ja", "新\n茶", "products[0].name_ja must not contain control characters"),
    ("name", "N" * 201, "products[0].name must be a non-empty string of at most 200 characters"),
])
def test_catalog_load_refuses_product_text_the_shop_cannot_show_naming_the_field(run, client, tmp_path, field,
                                                                                 value, message):
    result = run("catalog", "load", _catalog(tmp_path, **{field: value}))
    assert result.exit_code == 2, result.output  # bad usage: the file is not a catalog
    assert message in result.output
    assert client.get("/products/NEW-01").status_code == 404


def test_japanese_screens_keep_the_catalogs_names_when_the_catalog_file_holds_a_lone_surrogate(make_client,
                                                                                               tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"currency": "jpy", "products": [
        {"sku": "TEA-01", "name": "Hokkaido black tea", "name_ja": "北海道\ud800紅茶", "unit_amount": 1200,
         "stock": 40}]}))
    response = make_client(catalog_file=str(path)).get("/?lang=ja")
    assert response.status_code == 200
    assert "Hokkaido black tea" in response.get_data(as_text=True)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_catalog_load_of_a_file_nested_too_deeply_is_exit_2_saying_so(run, tmp_path, suffix):
    path = tmp_path / f"catalog{suffix}"
    path.write_text("[" * 5000 + "]" * 5000)
    result = run("catalog", "load", path)
    assert result.exit_code == 2, result.output  # bad usage: the file is not a catalog
    assert "nested too deeply" in result.output
    assert isinstance(result.exception, SystemExit), result.exception
