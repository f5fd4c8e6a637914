"""A database error's text in logs and stored tracebacks: no client secret, access token or buyer's
details from the statement's bound values or PostgreSQL's "Failing row contains (...)" (review F)."""
from __future__ import annotations

import re

import pytest
import structlog
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from models.db import make_engine
from models.events import InboxEvent
from models.history import EventAttempt
from models.logs import configure_logging, describe_error
from models.orders import Order
from tests.support import SHIPPING, event_for, rendered_logs

NAME = "Hanako Yamada"
ADDRESS = "Kita 1-jo Nishi 2-chome 5-3 (Room 1201), Sapporo"
CLIENT_SECRET = re.compile(r"(?:pi|seti)_[A-Za-z0-9]+_secret_[A-Za-z0-9]+")


def refuse(sessions, table: str, pg_check: str, *, sqlite_on: str, sqlite_when: str = "1") -> None:
    """Fault injection on the real database: any bug that ends in an IntegrityError on `table`."""
    with sessions.kw["bind"].begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text(f"CREATE TRIGGER refuse BEFORE {sqlite_on} ON {table} WHEN {sqlite_when} "
                              f"BEGIN SELECT RAISE(ABORT, 'refused by a rule'); END"))
        else:
            conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT refuse CHECK ({pg_check})"))


def the_refusal(dialect: str) -> str:
    """What the database said, which the log keeps: it is the useful part and holds no secret."""
    return "refused by a rule" if dialect == "sqlite" else 'violates check constraint "refuse"'


def assert_nothing_private(logged: str, *private: str) -> None:
    assert not CLIENT_SECRET.search(logged), f"a client secret: {CLIENT_SECRET.search(logged).group()}"
    assert logged.count("Failing row contains") == logged.count("Failing row contains (<row hidden>)")
    for value in private:
        assert value not in logged, f"{value!r} in {logged[-3000:]}"


def test_a_database_error_in_checkout_logs_no_client_secret_access_token_or_buyers_details(
        app, client, sessions):
    # The order row refuses the intent's client secret: checkout fails after Stripe made the intent.
    refuse(sessions, "orders", "client_secret IS NULL", sqlite_on="UPDATE",
           sqlite_when="NEW.client_secret IS NOT NULL")
    cart = client.post("/carts").get_json()
    client.post(f"/carts/{cart['id']}/items", json={"sku": "TEA-01", "quantity": 1})
    with rendered_logs() as lines:
        response = client.post("/checkout", json={"cart_id": cart["id"], "email": "b@example.com",
                                                   "shipping": dict(SHIPPING, name=NAME, address=ADDRESS)})
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    failed = [line for line in lines if "request_failed" in line]
    assert failed and "IntegrityError" in failed[0] and "Traceback" in failed[0]
    dialect = sessions.kw["bind"].dialect.name
    assert the_refusal(dialect) in failed[0]
    assert "UPDATE orders SET" in failed[0]  # the statement stays: it says what was being written
    with sessions() as session:
        token = session.scalars(select(Order.access_token)).one()
    assert_nothing_private("\n".join(lines), NAME, "Room 1201", token, "b@example.com")
    if dialect == "postgresql":
        assert "Failing row contains (<row hidden>)" in failed[0]


def test_a_failed_worker_run_stores_and_logs_its_traceback_without_the_refused_row(
        settings, sessions, checkout, post_event, deliver):
    order = checkout([("TEA-01", 1)], shipping=dict(SHIPPING, name=NAME, address=ADDRESS))
    # The shipment row (the buyer's name and address) is refused: the succeeded event's run fails.
    refuse(sessions, "shipments", "false", sqlite_on="INSERT")
    event = event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                      order_id=order["order_id"], amount=order["total"])
    with rendered_logs() as lines:
        assert post_event(event).status_code == 200
        deliver(max_rounds=1)
    with sessions() as session:
        attempt = session.scalars(select(EventAttempt).join(InboxEvent, EventAttempt.inbox_event_id == InboxEvent.id)
                                  .where(InboxEvent.event_id == event["id"])).one()
        stored = f"{attempt.error}\n{attempt.traceback}"
    dialect = sessions.kw["bind"].dialect.name
    assert "IntegrityError" in attempt.error and the_refusal(dialect) in stored
    assert "INSERT INTO shipments" in attempt.traceback
    logged = "\n".join(lines)
    assert the_refusal(dialect) in logged
    for where in (stored, logged):
        assert_nothing_private(where, NAME, "Room 1201", order["access_token"], order["client_secret"])
    if dialect == "postgresql":
        assert "Failing row contains (<row hidden>)" in attempt.traceback


def test_an_engines_errors_keep_the_key_that_clashed_but_not_the_values_bound(database_url):
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE clash (event_id VARCHAR(40) PRIMARY KEY, address TEXT)"))
        row = {"event_id": "evt_clash_1", "address": ADDRESS}
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO clash VALUES (:event_id, :address)"), row)
        with pytest.raises(IntegrityError) as raised, engine.begin() as conn:
            conn.execute(text("INSERT INTO clash VALUES (:event_id, :address)"), row)
        assert "Room 1201" not in str(raised.value)  # the engine hides a statement's bound values
        described = describe_error(raised.value)
        if engine.dialect.name == "postgresql":
            assert "Key (event_id)=(evt_clash_1) already exists" in described
        else:
            assert "UNIQUE constraint failed: clash.event_id" in described
        assert "Room 1201" not in described
    finally:
        engine.dispose()


@pytest.mark.parametrize("line, hidden, kept", [
    ("new row for relation \"orders\" violates check constraint \"refuse\"\n"
     "DETAIL:  Failing row contains (ord_1, tok_abcdefgh, Hanako Yamada, Kita 1-jo (Room 1201)\n"
     "Sapporo, pi_1_secret_x).\n"
     "[SQL: UPDATE orders SET client_secret=%(client_secret)s::VARCHAR]\n"
     "[parameters: {'client_secret': 'pi_1_secret_x'}]\n(Background on this error at: https://sqlalche.me/e/20/gkpj)",
     ("Room 1201", "Sapporo", "Hanako", "tok_abcdefgh", "pi_1_secret_x"),
     ('violates check constraint "refuse"', "Failing row contains (<row hidden>).",
      "[SQL: UPDATE orders SET client_secret=%(client_secret)s::VARCHAR]", "[parameters: <hidden>]",
      "(Background on this error at")),
    ("confirm failed: client_secret=pi_3AbC_secret_DeF12 seti_9Z_secret_Q1w2",
     ("pi_3AbC_secret_DeF12", "seti_9Z_secret_Q1w2"), ("pi_3AbC <client secret hidden>", "seti_9Z")),
    ("GET /orders/ord_1?token=Zq3-x_9aBcDeFgHiJk&lang=ja Authorization: Bearer sk_live_abcdefgh12345678",
     ("Zq3-x_9aBcDeFgHiJk", "sk_live_abcdefgh12345678"), ("?token=<token>&lang=ja", "Bearer <token>")),
    ("{'access_token': 'Zq3-x_9aBcDeFgHiJk', 'order_id': 'ord_1'}",
     ("Zq3-x_9aBcDeFgHiJk",), ("'access_token': '<token>'", "'order_id': 'ord_1'")),
    ("STRIPE_API_KEY sk_live_51AbCdEf9 is refused; restricted rk_test_4eC39Hq, endpoint secret whsec_Zx81Qp (pk_test_K3y)",
     ("sk_live_51AbCdEf9", "rk_test_4eC39Hq", "whsec_Zx81Qp"),
     ("STRIPE_API_KEY sk_live_<hidden> is refused", "rk_test_<hidden>", "whsec_<hidden>", "(pk_test_K3y)")),
    ("recipient refused: o'brien@example.jp, {'taro}@[192.0.2.7]': (550, b'<taro}@[192.0.2.7]> unknown')}",
     ("o'", "brien", "taro", "192.0.2.7"),
     ("recipient refused: <email>, {'<email>': (550, b'<<email>> unknown')}",)),
], ids=["postgresql-error-text", "client-secrets", "bearer-and-link-token", "access-token-field", "stripe-keys",
        "unusual-addresses"])
def test_a_rendered_line_masks_secrets_and_refused_rows_and_keeps_the_rest(line, hidden, kept):
    configure_logging("json")
    with rendered_logs() as lines:
        structlog.get_logger("test").error("something_failed", error=line)
    for value in hidden:
        assert value not in lines[0]
    for value in kept:
        assert value.replace('"', '\\"').replace("\n", "\\n") in lines[0]
