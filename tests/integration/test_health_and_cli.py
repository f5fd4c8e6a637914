"""Health, readiness and metrics endpoints, and the `shop` command on a real database."""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from models.events import InboxEvent
from tests.backends import create_postgres_database, drop_postgres_database, servers_available
from tests.support import WEBHOOK_SECRET, event_for, free_port, rendered_logs, signed_headers, stripe_fixture
from webhook_app.cli import shop
from webhook_app.signing import post_signed_event


# --- /healthz, /readyz, /metrics ------------------------------------------------------------------------------


def test_healthz_answers_200_while_the_process_runs(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_is_200_when_database_and_broker_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"ready": True, "checks": {"database": "ok", "broker": "ok"}}


CLOSED_PORT = free_port()


@pytest.mark.parametrize("unreachable_url, detail", [
    pytest.param("sqlite:////nonexistent-dir-for-shop-tests/deeper/shop.db", "no database file",
                 id="sqlite-in-missing-folder"),
    pytest.param(f"postgresql+psycopg://shop:s3cret@127.0.0.1:{CLOSED_PORT}/shop?connect_timeout=2",
                 str(CLOSED_PORT), id="postgresql-closed-port"),
])
def test_readyz_is_503_naming_the_database_and_keeps_the_error_for_the_log_only(
        make_client, unreachable_url, detail):
    not_ready = make_client(database_url=unreachable_url)
    with rendered_logs() as lines:
        response = not_ready.get("/readyz")
    assert response.status_code == 503
    # Public: which dependency is down, never the driver's text (host, user, file path).
    assert response.get_json() == {"ready": False, "checks": {"database": "unavailable", "broker": "ok"}}
    [logged] = [line for line in lines if "readiness_check_failed" in line]
    assert "database" in logged and detail in logged
    assert "s3cret" not in "".join(lines)


def _stores_nothing(client) -> None:
    """The webhook refuses an event with 503 (Stripe delivers it again): what /readyz must foresee."""
    payload = json.dumps(event_for("payment_intent.succeeded"))
    answer = client.post("/webhooks/stripe", data=payload, headers=signed_headers(payload, WEBHOOK_SECRET))
    assert answer.status_code == 503, answer.get_data(as_text=True)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a path of the embedded default
def test_readyz_is_503_on_a_sqlite_path_with_no_database_and_makes_no_file(make_client, tmp_path):
    path = tmp_path / "typo" / "shop.db"  # its folder exists: connecting would make an empty database
    path.parent.mkdir()
    not_ready = make_client(database_url=f"sqlite:///{path}")
    with rendered_logs() as lines:
        response = not_ready.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"ready": False, "checks": {"database": "unavailable", "broker": "ok"}}
    assert not path.exists()
    [logged] = [line for line in lines if "readiness_check_failed" in line]
    assert "no database file" in logged and "shop db upgrade" in logged


def test_readyz_is_503_on_a_database_not_migrated(make_client, settings, tmp_path):
    if settings.database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'empty.db'}"
        sqlite3.connect(tmp_path / "empty.db").close()  # a file, no tables: created but never upgraded
    else:
        url = create_postgres_database()
    try:
        not_ready = make_client(database_url=url)
        with rendered_logs() as lines:
            response = not_ready.get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["checks"]["database"] == "unavailable"
        [logged] = [line for line in lines if "readiness_check_failed" in line]
        assert "no inbox_events table" in logged
        _stores_nothing(not_ready)
    finally:
        if not url.startswith("sqlite"):
            drop_postgres_database(url)


if servers_available():
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_readyz_is_503_while_postgresql_takes_no_writes(client, make_client, settings):
        """A demoted primary or a database set read-only answers `SELECT 1`, and refuses every webhook."""
        assert client.get("/readyz").status_code == 200
        url = make_url(settings.database_url)
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{url.database}" SET default_transaction_read_only = on'))
            not_ready = make_client()  # new connections, which take the database's setting
            with rendered_logs() as lines:
                response = not_ready.get("/readyz")
            assert response.status_code == 503
            assert response.get_json()["checks"]["database"] == "unavailable"
            [logged] = [line for line in lines if "readiness_check_failed" in line]
            assert "takes no writes" in logged and "read-only" in logged
            _stores_nothing(not_ready)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{url.database}" RESET default_transaction_read_only'))
            admin.dispose()


def test_readyz_is_503_naming_the_broker_when_its_folder_cannot_be_made(make_client, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the broker's folder would go")
    not_ready = make_client(broker_url=f"filesystem://{blocker / 'no-such-broker'}")
    with rendered_logs() as lines:
        response = not_ready.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"ready": False, "checks": {"database": "ok", "broker": "unavailable"}}
    assert "no-such-broker" not in response.get_data(as_text=True)
    [logged] = [line for line in lines if "readiness_check_failed" in line]
    assert "broker" in logged and "no-such-broker" in logged


def _samples(client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {}
    for line in response.get_data(as_text=True).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_count_webhooks_by_outcome_and_events_processed_with_their_lag(client, checkout, post_event,
                                                                               deliver):
    before = _samples(client)
    order = checkout()
    event = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"], amount=order["total"])
    post_event(event)
    post_event(event)  # Stripe's retry of the same delivery
    client.post("/webhooks/stripe", data="{}", headers={"Stripe-Signature": "t=1,v1=00"})
    waiting = _samples(client)
    assert waiting['shop_outbox_backlog{status="pending"}'] == 1
    assert waiting['shop_inbox_events_open{status="received"}'] == 1
    deliver()
    after = _samples(client)

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    accepted = 'shop_webhooks_received_total{outcome="accepted",reason="",type="payment_intent.succeeded"}'
    assert grew(accepted) == 1
    assert grew('shop_webhooks_received_total{outcome="duplicate",reason="",type="payment_intent.succeeded"}') == 1
    assert grew('shop_webhooks_received_total{outcome="rejected",reason="invalid_signature",type="unverified"}') == 1
    assert grew("shop_webhook_ingest_seconds_count") == 2
    assert grew('shop_events_processed_total{outcome="processed",type="payment_intent.succeeded"}') == 1
    assert grew('shop_event_lag_seconds_count{type="payment_intent.succeeded"}') == 1
    assert after['shop_outbox_backlog{status="pending"}'] == 0
    assert after['shop_inbox_events_open{status="received"}'] == 0
    assert after["shop_orders_needing_review"] == 0


def test_metrics_count_retries_and_dead_letters_and_show_the_backlog_age(settings, sessions, client, checkout,
                                                                          post_event, deliver):
    from sqlalchemy import text

    before = _samples(client)
    order = checkout()
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    with sessions.kw["bind"].begin() as conn:
        conn.execute(text("ALTER TABLE shipments RENAME TO shipments_away"))
    try:
        assert _samples(client)["shop_outbox_oldest_age_seconds"] >= 0
        for _ in range(settings.max_attempts):
            deliver(max_rounds=1)
    finally:
        with sessions.kw["bind"].begin() as conn:
            conn.execute(text("ALTER TABLE shipments_away RENAME TO shipments"))
    after = _samples(client)
    assert after.get('shop_retries_total{topic="stripe_event"}', 0) - before.get(
        'shop_retries_total{topic="stripe_event"}', 0) == settings.max_attempts - 1
    assert after.get('shop_dead_letters_total{topic="stripe_event"}', 0) - before.get(
        'shop_dead_letters_total{topic="stripe_event"}', 0) == 1
    assert after['shop_outbox_backlog{status="dead"}'] == 1
    assert after['shop_inbox_events_open{status="dead"}'] == 1


# --- the shop command -----------------------------------------------------------------------------------------


@pytest.fixture
def run_shop(settings, localstripe):
    """`shop ARGS…` in this process, with the environment a deployment would give it."""
    runner = CliRunner()
    base_env = {
        "DATABASE_URL": settings.database_url,
        "BROKER_URL": settings.broker_url,
        "STRIPE_API_BASE": localstripe.base,
        "STRIPE_API_KEY": "sk_test_local",
        "STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        "LOG_FORMAT": "console",
    }

    def run(*args, **env):
        return runner.invoke(shop, [str(a) for a in args], env={**base_env, **env}, catch_exceptions=False)

    return run


def _commands(group: click.Group, prefix=()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


ALL_COMMANDS = list(_commands(shop))
# Every verb of the Contract's CLI (the design's "CLI" section); each must keep its --help.
CONTRACT_COMMANDS = [("db", "upgrade"), ("catalog", "load"), ("worker",), ("relay",), ("events", "list"),
                     ("events", "show"), ("events", "replay"), ("events", "send"),
                     ("dlq", "list"), ("dlq", "show"), ("dlq", "retry"), ("dlq", "resolve"),
                     ("orders", "review"), ("orders", "show"), ("orders", "accept"), ("orders", "cancel"),
                     ("orders", "refund"), ("reconcile",), ("staff", "add"), ("staff", "list"),
                     ("staff", "disable"), ("demo",)]
# The service's verbs beyond the Contract, which the README documents as well.
OWN_COMMANDS = [("dlq", "reopen"), ("orders", "ship")]


def test_shop_help_lists_its_verbs(run_shop):
    result = run_shop("--help")
    assert result.exit_code == 0, result.output
    for verb in ("db", "catalog", "worker", "relay", "events", "demo", "dlq", "orders", "reconcile", "staff"):
        assert verb in result.output


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_every_verb_has_help(run_shop, path):
    result = run_shop(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: shop " + " ".join(path) in result.output


def test_the_contract_verbs_are_all_there():
    assert set(CONTRACT_COMMANDS) <= set(ALL_COMMANDS)


def _readme_verbs() -> set[tuple[str, ...]]:
    """The verbs the README's command list names: `shop dlq list | show ID | retry ID…` is three."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    verbs = set()
    for line in readme.splitlines():
        if not line.startswith("    shop ") or "──" in line:  # the list, not the diagram above it
            continue
        parent: tuple[str, ...] = ()
        for alternative in line.strip().split(" | "):
            words = alternative.split()
            if words[0] == "shop":  # `shop worker | shop relay`
                group, path, words = shop, (), words[1:]
            else:  # `| show ID`: another verb of the same group
                group, path = shop.commands[parent[0]], parent
            for word in words:
                if not isinstance(group, click.Group) or word not in group.commands:
                    break
                group, path = group.commands[word], (*path, word)
            verbs.add(path)
            parent = path[:-1]
    return verbs


def test_the_readme_names_every_contract_verb_and_the_lists_name_every_verb_it_documents():
    documented = _readme_verbs()
    assert set(CONTRACT_COMMANDS) <= documented
    assert documented <= set(CONTRACT_COMMANDS) | set(OWN_COMMANDS)


def test_unknown_verb_is_exit_2(run_shop):
    assert run_shop("no-such-verb").exit_code == 2


# shop db upgrade


def test_db_upgrade_creates_the_schema_and_is_safe_to_run_again(run_shop, tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh' / 'new.db'}"
    (tmp_path / "fresh").mkdir()
    for said in ("database migrated to head", "database already at head"):
        result = run_shop("db", "upgrade", DATABASE_URL=url)
        assert result.exit_code == 0, result.output
        assert said in result.output
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "products", "stock", "carts", "orders", "reservations", "inbox_events",
            "outbox", "shipments", "shipping_rates"} <= tables


# shop catalog load

CATALOG_FILE = {
    "currency": "jpy",
    "products": [{"sku": "MUG-01", "name": "Hasami mug", "unit_amount": 2800, "stock": 12, "weight_grams": 400}],
    "shipping": {"free_over": 10000, "rates": [{"prefectures": ["Hokkaido"], "fee": 800},
                                                {"prefectures": "default", "fee": 1000}]},
}


def _product(client, sku):
    response = client.get(f"/products/{sku}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_catalog_load_from_json_adds_products_and_shipping_rates(run_shop, client, checkout, tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(CATALOG_FILE))
    result = run_shop("catalog", "load", path)
    assert result.exit_code == 0, result.output
    assert "1 created, 0 updated, 2 shipping rates" in result.output
    assert _product(client, "MUG-01") == {"sku": "MUG-01", "name": "Hasami mug", "unit_amount": 2800,
                                          "currency": "jpy", "on_hand": 12, "reserved": 0, "available": 12}
    # The shipping table was replaced: Hokkaido is now 800, everything else 1000.
    assert checkout([("MUG-01", 1)])["shipping_fee"] == 800
    assert checkout([("MUG-01", 1)], shipping={"name": "A", "postal_code": "100-0001", "prefecture": "Tokyo",
                                               "address": "Chiyoda 1-1"})["shipping_fee"] == 1000


def test_catalog_load_from_yaml_then_again_updates_by_sku(run_shop, client, tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(CATALOG_FILE))
    first = run_shop("catalog", "load", path)
    assert first.exit_code == 0, first.output
    assert "1 created, 0 updated" in first.output

    changed = json.loads(json.dumps(CATALOG_FILE))
    changed["products"][0].update(name="Hasami mug (blue)", unit_amount=3000, stock=20)
    path.write_text(yaml.safe_dump(changed))
    second = run_shop("catalog", "load", path)
    assert second.exit_code == 0, second.output
    assert "0 created, 1 updated" in second.output
    assert _product(client, "MUG-01") == {"sku": "MUG-01", "name": "Hasami mug (blue)", "unit_amount": 3000,
                                          "currency": "jpy", "on_hand": 20, "reserved": 0, "available": 20}
    assert [p["sku"] for p in client.get("/products").get_json()].count("MUG-01") == 1


def _broken(path: str, value):
    data = json.loads(json.dumps(CATALOG_FILE))
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    if value is KeyError:
        del target[last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize("data, field", [
    pytest.param(_broken("products.0.unit_amount", -5), "products[0].unit_amount", id="negative-price"),
    pytest.param(_broken("products.0.stock", "ten"), "products[0].stock", id="stock-not-int"),
    pytest.param(_broken("products.0.sku", KeyError), "products[0].sku", id="missing-sku"),
    pytest.param(_broken("currency", KeyError), "currency", id="missing-currency"),
    pytest.param(_broken("shipping.rates.0.prefectures", ["Atlantis"]), "shipping.rates[0].prefectures",
                 id="unknown-prefecture"),
    pytest.param(_broken("products", {"sku": "MUG-01"}), "products", id="products-not-a-list"),
])
def test_catalog_load_of_a_bad_file_is_exit_2_naming_the_field_and_loads_nothing(
        run_shop, client, tmp_path, data, field):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data))
    result = run_shop("catalog", "load", path)
    assert result.exit_code == 2, result.output  # bad usage: the file is not a catalog
    assert field in result.output
    assert client.get("/products/MUG-01").status_code == 404


def test_catalog_load_of_a_file_that_does_not_parse_is_exit_2(run_shop, tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text("products: [unclosed\n  - sku: {")
    result = run_shop("catalog", "load", path)
    assert result.exit_code == 2, result.output  # bad usage: the file is not a catalog
    assert "not valid YAML" in result.output


def test_catalog_load_cannot_set_stock_below_what_checkouts_reserved(run_shop, client, checkout, tmp_path):
    checkout([("TEA-01", 2)])
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"currency": "jpy", "products": [
        {"sku": "TEA-01", "name": "Hokkaido black tea", "unit_amount": 1200, "stock": 1}]}))
    result = run_shop("catalog", "load", path)
    assert result.exit_code == 1, result.output
    assert "TEA-01" in result.output and "reserved" in result.output
    tea = _product(client, "TEA-01")
    assert (tea["on_hand"], tea["reserved"]) == (40, 2)


def test_catalog_load_of_a_missing_file_is_exit_2(run_shop, tmp_path):
    assert run_shop("catalog", "load", tmp_path / "nope.json").exit_code == 2


# shop events list | show | replay


@pytest.fixture
def stored_events(checkout, post_event):
    order = checkout([("TEA-01", 2)])
    paid = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                     order_id=order["order_id"], amount=order["total"])
    refunded = {**stripe_fixture("charge.refunded"), "type": "charge.captured"}  # a type not handled: ignored
    for event in (paid, refunded):
        assert post_event(event).status_code == 200
    return {"order": order, "paid": paid, "refunded": refunded}


def test_events_list_shows_stored_events_and_filters_by_status_and_type(run_shop, stored_events):
    paid, refunded = stored_events["paid"]["id"], stored_events["refunded"]["id"]
    everything = run_shop("events", "list")
    assert everything.exit_code == 0, everything.output
    assert paid in everything.output and refunded in everything.output
    assert "payment_intent.succeeded" in everything.output

    ignored = run_shop("events", "list", "--status", "ignored")
    assert ignored.exit_code == 0
    assert refunded in ignored.output and paid not in ignored.output

    by_type = run_shop("events", "list", "--type", "payment_intent.succeeded")
    assert by_type.exit_code == 0
    assert paid in by_type.output and refunded not in by_type.output

    none = run_shop("events", "list", "--status", "dead")
    assert none.exit_code == 0
    assert "no events" in none.output


def test_events_list_with_an_unknown_status_is_exit_2(run_shop):
    result = run_shop("events", "list", "--status", "sideways")
    assert result.exit_code == 2
    assert "sideways" in result.output


def test_events_show_prints_the_stored_event_and_its_payload(run_shop, stored_events):
    event = stored_events["paid"]
    result = run_shop("events", "show", event["id"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["event_id"], shown["type"], shown["status"]) == (event["id"], "payment_intent.succeeded",
                                                                   "received")
    assert shown["payload"] == event


def test_events_show_of_an_unknown_id_is_exit_2(run_shop):
    result = run_shop("events", "show", "evt_doesnotexist")
    assert result.exit_code == 2
    assert "evt_doesnotexist" in result.output


def test_events_replay_runs_the_handler_once_and_a_second_replay_changes_nothing(
        run_shop, client, sessions, stored_events):
    order, event = stored_events["order"], stored_events["paid"]
    first = run_shop("events", "replay", event["id"])
    assert first.exit_code == 0, first.output
    assert "processed (order paid)" in first.output
    after_first = client.get(f"/orders/{order['order_id']}").get_json()
    assert after_first["status"] == "paid"
    assert _product(client, "TEA-01")["on_hand"] == 38

    second = run_shop("events", "replay", event["id"])
    assert second.exit_code == 0, second.output
    assert "already" in second.output
    assert client.get(f"/orders/{order['order_id']}").get_json() == after_first
    assert _product(client, "TEA-01")["on_hand"] == 38


def test_events_replay_of_an_unknown_id_is_exit_2(run_shop):
    result = run_shop("events", "replay", "evt_doesnotexist")
    assert result.exit_code == 2
    assert "evt_doesnotexist" in result.output


# shop events send, over real HTTP


@pytest.fixture
def live_url(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/webhooks/stripe"
    finally:
        server.shutdown()
        thread.join(5)


def _stored(sessions) -> list[str]:
    with sessions() as session:
        return session.scalars(select(InboxEvent.event_id).order_by(InboxEvent.id)).all()


def test_post_signed_event_is_accepted_by_the_running_service(live_url, sessions):
    event = stripe_fixture("payment_intent.succeeded")
    status, body = post_signed_event(live_url, event, WEBHOOK_SECRET)
    assert (status, json.loads(body)) == (200, {"received": True, "duplicate": False})
    status, body = post_signed_event(live_url, event, WEBHOOK_SECRET)
    assert (status, json.loads(body)) == (200, {"received": True, "duplicate": True})
    assert _stored(sessions) == [event["id"]]


def test_post_signed_event_with_the_wrong_secret_gets_the_400(live_url, sessions):
    status, body = post_signed_event(live_url, stripe_fixture("payment_intent.succeeded"), "whsec_wrong")
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_signature"
    assert _stored(sessions) == []


def test_events_send_signs_and_posts_a_file(run_shop, live_url, sessions, tmp_path):
    event = stripe_fixture("payment_intent.succeeded")
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    result = run_shop("events", "send", path, "--url", live_url)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("200 ")
    fresh = run_shop("events", "send", path, "--url", live_url, "--fresh-id")
    assert fresh.exit_code == 0, fresh.output
    stored = _stored(sessions)
    assert len(stored) == 2 and stored[0] == event["id"] and stored[1] != event["id"]


def test_events_send_refused_by_the_service_is_exit_1(run_shop, live_url, sessions, tmp_path):
    path = tmp_path / "event.json"
    path.write_text(json.dumps(stripe_fixture("payment_intent.succeeded")))
    result = run_shop("events", "send", path, "--url", live_url, STRIPE_WEBHOOK_SECRETS="whsec_not_the_endpoints")
    assert result.exit_code == 1
    assert result.output.startswith("400 ")
    assert _stored(sessions) == []


def test_events_send_without_a_secret_or_with_a_non_json_file_is_exit_2(run_shop, live_url, tmp_path):
    good = tmp_path / "event.json"
    good.write_text(json.dumps(stripe_fixture("payment_intent.succeeded")))
    no_secret = run_shop("events", "send", good, "--url", live_url, STRIPE_WEBHOOK_SECRETS="")
    assert no_secret.exit_code == 2
    assert "STRIPE_WEBHOOK_SECRETS" in no_secret.output
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    not_json = run_shop("events", "send", bad, "--url", live_url)
    assert not_json.exit_code == 2
    assert "not JSON" in not_json.output
