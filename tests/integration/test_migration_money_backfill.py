"""0016 gives back the money figures older databases lost (review I, defects 1 and 2).

0004 filled paid_amount for paid and refunded orders only: an order the code of 0003 flagged with the money
taken (paid after its hold ran out, an amount that did not add up) came out of it holding 0, so staff's
`cancel --refund` cancelled it without giving anything back. 0010 added charged_back_amount as 0 for every
order, disputes lost before it included. Each database is built at the old revision (by the code paths at
head, then taken down to it, or row by row as the old code stored them: that code is gone), then upgraded.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import stripe
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner

from consumers.relay import expire_reservations
from consumers.staff_actions import cancel_order
from models.db import make_engine, make_session_factory
from models.migrations import alembic_config, database_revision, upgrade
from models.orders import Order
from tests.integration.test_migrations import _differences
from tests.integration.test_refunds_and_disputes import _charge_of, dispute_event
from tests.support import confirm_card, event_for, let_the_hold_run_out
from webhook_app.admin.orders import available_decisions
from webhook_app.cli import shop

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
VISA = "4242424242424242"
FIGURES = "SELECT id, status, paid_amount, refunded_amount, charged_back_amount FROM orders ORDER BY id"


def _rows(url: str, query: str) -> list[tuple]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.exec_driver_sql(query)]
    finally:
        engine.dispose()


def _figures(url: str) -> dict[str, tuple]:
    return {order_id: rest for order_id, *rest in map(list, _rows(url, FIGURES))}


def _money_of(url: str, order_id: str) -> tuple:
    """The order as the code at head reads it: (paid, refunded, charged back, money held), and its decisions."""
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            order = session.get(Order, order_id)
            return ((order.paid_amount, order.refunded_amount, order.charged_back_amount, order.money_held),
                    available_decisions(order))
    finally:
        engine.dispose()


def _insert(url: str, table: str, *rows: dict) -> None:
    """Rows as an older revision's code stored them, in that revision's columns (reflected)."""
    engine = make_engine(url)
    try:
        reflected = sa.Table(table, sa.MetaData(), autoload_with=engine)
        with engine.begin() as connection:
            for row in rows:  # one by one: they set different columns
                connection.execute(reflected.insert().values(**row))
    finally:
        engine.dispose()


def _order(order_id: str, status: str, intent_id: str, **extra) -> dict:
    return dict(id=order_id, cart_id=f"cart_{order_id}", email="a@example.com", status=status, currency="jpy",
                subtotal=1200, shipping_fee=900, total=2100, ship_name="A", ship_postal_code="100-0001",
                ship_prefecture="Tokyo", ship_address="1-1", payment_intent_id=intent_id,
                client_secret=f"{intent_id}_secret", reserved_until=NOW, payment_attempts=0, created_at=NOW,
                updated_at=NOW, **extra)


def _succeeded(event_id: str, order_id: str, intent_id: str, status: str = "processed", **intent) -> dict:
    """A payment_intent.succeeded as the inbox kept it; `intent`: the amounts and currency Stripe sent."""
    payload = {"id": event_id, "object": "event", "type": "payment_intent.succeeded", "livemode": False,
               "data": {"object": {"id": intent_id, "object": "payment_intent", "status": "succeeded",
                                   "metadata": {"order_id": order_id}, **intent}}}
    return dict(event_id=event_id, type="payment_intent.succeeded", livemode=False, payload=json.dumps(payload),
                object_id=intent_id, status=status, attempts=1, order_id=order_id, received_at=NOW,
                processed_at=NOW if status == "processed" else None)


def _lost(dispute_id: str, order_id: str, intent_id: str, amount: int, currency: str = "jpy",
          status: str = "lost") -> dict:
    return dict(stripe_dispute_id=dispute_id, order_id=order_id, charge_id=f"ch_{dispute_id}",
                payment_intent_id=intent_id, amount=amount, currency=currency, reason="fraudulent", status=status,
                opened_at=NOW, closed_at=NOW)


def _carts(url: str, *order_ids: str) -> None:
    _insert(url, "carts", *({"id": f"cart_{order_id}", "status": "checked_out", "created_at": NOW}
                            for order_id in order_ids))


def _run_0016_again(url: str) -> None:
    """Its downgrade changes nothing; going down to 0015 and up again runs its upgrade a second time."""
    command.downgrade(alembic_config(url), "0015")
    upgrade(url, "head")
    assert database_revision(url) == "0017"  # head


# --- 1: paid_amount of orders the code of 0003 flagged with the money taken ---------------------------------


def test_an_order_charged_after_its_hold_ran_out_before_0004_holds_its_payment_again_and_cancel_refund_gives_it_back(
        database_url, sessions, checkout, post_event, deliver):
    order = checkout([("TEA-01", 2)])
    assert confirm_card(order["payment_intent_id"], VISA) == "succeeded"
    let_the_hold_run_out(sessions, order["order_id"])
    assert expire_reservations(sessions) == 1
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver()  # flagged, as the code of 0003 flagged it too: "paid after the order was cancelled"
    total = order["total"]
    assert _figures(database_url) == {order["order_id"]: ["needs_review", total, 0, 0]}
    sessions.kw["bind"].dispose()  # no connection of the test's left open across the schema changes

    command.downgrade(alembic_config(database_url), "0003")
    upgrade(database_url, "0015")
    assert _figures(database_url) == {order["order_id"]: ["needs_review", 0, 0, 0]}  # what 0004 left: 0 held

    upgrade(database_url, "head")
    assert _money_of(database_url, order["order_id"]) == ((total, 0, 0, total), ["accept", "cancel", "refund"])
    assert _differences(database_url) == []

    engine = make_engine(database_url)
    try:
        decision = cancel_order(make_session_factory(engine), order["order_id"], actor="alice",
                                note="charged after its hold ran out: give it back", refund=True)
    finally:
        engine.dispose()
    assert (decision.status_before, decision.status_after) == ("needs_review", "refunded")
    assert [refund.amount for refund in stripe.Refund.list(payment_intent=order["payment_intent_id"]).data] == [total]
    assert _figures(database_url) == {order["order_id"]: ["refunded", total, total, 0]}


def test_0016_counts_each_intent_once_in_the_orders_currency_and_leaves_written_figures_as_they_are(database_url):
    command.downgrade(alembic_config(database_url), "0003")
    orders = ("ord_short", "ord_usd", "ord_tabs", "ord_waiting", "ord_paid")
    _carts(database_url, *orders)
    _insert(database_url, "orders",
            _order("ord_short", "needs_review", "pi_short", review_reason="amount mismatch: paid 1500 jpy"),
            _order("ord_usd", "needs_review", "pi_usd", review_reason="amount mismatch: paid 2100 usd"),
            _order("ord_tabs", "needs_review", "pi_tab1", review_reason="paid but the stock is no longer held"),
            _order("ord_waiting", "pending_payment", "pi_waiting"),
            _order("ord_paid", "paid", "pi_paid", paid_at=NOW))
    _insert(database_url, "inbox_events",
            # Stripe delivered it twice: both deliveries processed, the intent's money counted once.
            _succeeded("evt_short_1", "ord_short", "pi_short", amount=2100, amount_received=1500, currency="JPY"),
            _succeeded("evt_short_2", "ord_short", "pi_short", amount=2100, amount_received=1500, currency="jpy"),
            # 2100 cents are not 2100 yen: in another currency, never in the order's own amounts.
            _succeeded("evt_usd", "ord_usd", "pi_usd", amount=2100, amount_received=2100, currency="usd"),
            # A second tab's intent paid it too ("order already flagged for review"): both are the order's.
            _succeeded("evt_tab1", "ord_tabs", "pi_tab1", amount=2100, amount_received=2100, currency="jpy"),
            _succeeded("evt_tab2", "ord_tabs", "pi_tab2", amount=2100),
            # Not applied yet (stored, or a dead letter): the worker counts it when it runs it.
            _succeeded("evt_waiting_1", "ord_waiting", "pi_waiting", "received", amount_received=2100, currency="jpy"),
            _succeeded("evt_waiting_2", "ord_waiting", "pi_waiting", "dead", amount_received=2100, currency="jpy"),
            # 0004 filled a paid order's figure with its total: a figure written, never replaced.
            _succeeded("evt_paid_1", "ord_paid", "pi_paid", amount_received=2100, currency="jpy"),
            _succeeded("evt_paid_2", "ord_paid", "pi_paid_tab", amount_received=2100, currency="jpy"))

    upgrade(database_url, "head")
    filled = {"ord_short": ["needs_review", 1500, 0, 0], "ord_usd": ["needs_review", 0, 0, 0],
              "ord_tabs": ["needs_review", 4200, 0, 0], "ord_waiting": ["pending_payment", 0, 0, 0],
              "ord_paid": ["paid", 2100, 0, 0]}
    assert _figures(database_url) == filled
    assert _money_of(database_url, "ord_tabs")[0] == (4200, 0, 0, 4200)

    _run_0016_again(database_url)
    assert _figures(database_url) == filled


# --- 2: charged_back_amount of disputes lost before 0010 ---------------------------------------------------


def test_a_dispute_lost_before_0010_is_money_gone_after_the_upgrade(
        database_url, sessions, checkout, post_event, deliver):
    order = checkout([("TEA-01", 2)])
    assert confirm_card(order["payment_intent_id"], VISA) == "succeeded"
    post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                         order_id=order["order_id"], amount=order["total"]))
    deliver()
    for kind, status in (("created", "needs_response"), ("closed", "lost")):
        post_event(dispute_event(kind, order, _charge_of(order), status))
        deliver()
    total = order["total"]
    assert _figures(database_url) == {order["order_id"]: ["needs_review", total, 0, total]}
    sessions.kw["bind"].dispose()

    command.downgrade(alembic_config(database_url), "0009")  # the dispute is kept; the figure is not there yet
    upgrade(database_url, "head")

    assert _money_of(database_url, order["order_id"]) == ((total, 0, total, 0), ["cancel", "ship"])
    shown = CliRunner().invoke(shop, ["orders", "show", order["order_id"]],
                               env={"DATABASE_URL": database_url, "LOG_FORMAT": "console"})
    assert shown.exit_code == 0, shown.output
    assert f"paid {total}, refunded 0, charged back {total} (a dispute lost)" in shown.output


def test_0016_counts_lost_disputes_on_the_intents_the_order_counts_in_its_currency(database_url):
    command.downgrade(alembic_config(database_url), "0009")
    orders = ("ord_review", "ord_usd_dispute", "ord_other_intent", "ord_won", "ord_partly")
    _carts(database_url, *orders)
    _insert(database_url, "orders",
            # As 0004 left it (flagged at 0003, money taken, paid_amount 0), its dispute lost since.
            _order("ord_review", "needs_review", "pi_review", access_token="t" * 32, paid_amount=0,
                   review_reason="paid after the order was cancelled"),
            *(_order(order_id, "paid", f"pi_{order_id}", access_token="t" * 32, paid_amount=2100, paid_at=NOW)
              for order_id in orders[1:]))
    _insert(database_url, "inbox_events",
            *(_succeeded(f"evt_{order_id}", order_id, f"pi_{order_id}", amount_received=2100, currency="jpy")
              for order_id in orders))
    _insert(database_url, "disputes",
            _lost("dp_review", "ord_review", "pi_ord_review", 2100),
            _lost("dp_usd", "ord_usd_dispute", "pi_ord_usd_dispute", 2100, currency="usd"),  # never counted
            _lost("dp_other", "ord_other_intent", "pi_never_applied", 2100),  # its payment never applied here
            _lost("dp_won", "ord_won", "pi_ord_won", 2100, status="won"),
            _lost("dp_partly_1", "ord_partly", "pi_ord_partly", 500),
            _lost("dp_partly_2", "ord_partly", "pi_ord_partly", 700))

    upgrade(database_url, "head")
    filled = {"ord_review": ["needs_review", 2100, 0, 2100], "ord_usd_dispute": ["paid", 2100, 0, 0],
              "ord_other_intent": ["paid", 2100, 0, 0], "ord_won": ["paid", 2100, 0, 0],
              "ord_partly": ["paid", 2100, 0, 1200]}
    assert _figures(database_url) == filled
    assert _money_of(database_url, "ord_review")[0] == (2100, 0, 2100, 0)

    _run_0016_again(database_url)
    assert _figures(database_url) == filled


# --- the orders the code at head counted: nothing to do ----------------------------------------------------


def test_0016_leaves_the_orders_the_code_counted_as_they_are(database_url, sessions, checkout, post_event, deliver):
    paid = checkout([("TEA-01", 1)])
    late = checkout([("TEA-01", 1)])
    for order in (paid, late):
        assert confirm_card(order["payment_intent_id"], VISA) == "succeeded"
    let_the_hold_run_out(sessions, late["order_id"])
    assert expire_reservations(sessions) == 1
    for order in (paid, late):
        post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                             order_id=order["order_id"], amount=order["total"]))
    deliver()
    for kind, status in (("created", "needs_response"), ("closed", "lost")):
        post_event(dispute_event(kind, paid, _charge_of(paid), status))
        deliver()
    counted = {paid["order_id"]: ["needs_review", paid["total"], 0, paid["total"]],
               late["order_id"]: ["needs_review", late["total"], 0, 0]}
    assert _figures(database_url) == counted
    # A chargeback figure above what the disputes give (written by an earlier release, say): never lowered.
    with sessions.kw["bind"].begin() as connection:
        connection.execute(sa.text("UPDATE orders SET charged_back_amount = 100 WHERE id = :id"),
                           {"id": late["order_id"]})
    counted[late["order_id"]][3] = 100
    sessions.kw["bind"].dispose()

    _run_0016_again(database_url)
    assert _figures(database_url) == counted
