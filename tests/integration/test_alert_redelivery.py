"""A staff alert whose POST to STAFF_ALERT_URL failed is POSTed again by the relay, with back-off, for a day;
never twice once a POST succeeded, never by two relays at once; `shop_staff_alerts_undelivered` counts
the alerts still to POST.

The hook is a real HTTP server that answers 200 or 503 (a chat outage) and can hold a POST in hand.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from alembic import command
from sqlalchemy import select

from consumers import alerts
from consumers.order_story import alert_delivery, order_story
from consumers.relay import Relay
from models.base import utcnow
from models.db import make_engine, transaction
from models.history import StaffAlert
from models.migrations import alembic_config
from tests.integration.test_health_and_cli import _samples
from tests.integration.test_migrations import _differences, _is_0015s, _is_0017s
from tests.support import event_for, rendered_logs

UNDELIVERED = "shop_staff_alerts_undelivered"


class Hook:
    """STAFF_ALERT_URL: records every POST's text; answers `status`; holds POSTs while `hold` is set."""

    def __init__(self):
        self.posts: list[str] = []
        self.status = 200
        self.hold = False
        self.arrived = threading.Event()
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                hook.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
                if hook.hold:
                    hook.arrived.set()
                    hook.release.wait(30)
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _hook_and_settings(settings):
    hook = Hook()
    return hook, dataclasses.replace(settings, staff_alert_url=hook.url)


def _alert(sessions, alert_id: int) -> StaffAlert:
    with sessions() as session:
        return session.get(StaffAlert, alert_id)


def _alert_in_story(sessions, order_id: str) -> str:
    """What the order's story (`shop orders show`, the console's order page) says of its one alert."""
    with sessions() as session:
        [entry] = [entry for entry in order_story(session, order_id).entries if entry.kind == "alert"]
    return entry.details[0]


def test_an_alert_posted_while_the_hook_was_down_is_posted_by_the_relay_once_it_is_back(
        settings, sessions, client, checkout, post_event):
    from tests.conftest import deliver_with
    hook, alerting = _hook_and_settings(settings)
    try:
        hook.status = 503  # the chat service is down
        order = checkout([("TEA-01", 1)])
        post_event(event_for("localstripe_payment_intent.succeeded", intent_id=order["payment_intent_id"],
                             order_id=order["order_id"], amount=order["total"] + 1))  # does not add up: alerted
        deliver_with(alerting, sessions)
        with sessions() as session:
            [alert] = session.scalars(select(StaffAlert)).all()
        assert (len(hook.posts), alert.delivered, alert.attempts) == (1, False, 1)
        assert _samples(client)[UNDELIVERED] == 1
        assert _alert_in_story(sessions, order["order_id"]) == \
            f"not delivered yet: 1 POST failed, the next at {alert.next_attempt_at.isoformat()}"

        hook.status = 200  # back
        with transaction(sessions) as session:  # its back-off is over
            session.get(StaffAlert, alert.id).next_attempt_at = utcnow() - timedelta(seconds=1)
        relay = Relay(alerting)
        try:
            [chore] = [chore for chore in relay.chores if chore.name == "staff_alert_redelivery"]
            chore.run(relay.factory)  # as the relay's thread runs it
            chore.run(relay.factory)
        finally:
            relay.engine.dispose()
    finally:
        hook.close()
    assert len(hook.posts) == 2 and hook.posts[0] == hook.posts[1]
    assert f"/admin/orders/{order['order_id']}" in hook.posts[1]
    after = _alert(sessions, alert.id)
    assert (after.delivered, after.attempts, after.next_attempt_at) == (True, 2, None)
    assert _samples(client)[UNDELIVERED] == 0
    assert _alert_in_story(sessions, order["order_id"]) == "delivered"


def test_a_failing_hook_is_tried_again_from_a_minute_to_an_hour_apart_and_given_up_a_day_after_the_alert(
        settings, sessions, client):
    hook, alerting = _hook_and_settings(settings)
    try:
        hook.status = 503
        alert_id = alerts.alert_staff(sessions, alerting, "Message 7 was dead-lettered: boom", outbox_id=7)
        first = _alert(sessions, alert_id)
        assert (len(hook.posts), first.attempts) == (1, 1)
        assert timedelta(seconds=59) < first.next_attempt_at - first.created_at < timedelta(seconds=62)

        due = first.next_attempt_at
        assert alerts.redeliver_alerts(sessions, alerting, now=due - timedelta(seconds=1)) == 0
        assert len(hook.posts) == 1  # not due yet: nothing POSTed

        gaps = []
        while due is not None:
            assert alerts.redeliver_alerts(sessions, alerting, now=due) == 0
            row = _alert(sessions, alert_id)
            assert (len(hook.posts), row.attempts) == (row.attempts, row.attempts)  # one POST per turn
            if row.next_attempt_at is not None:
                gaps.append(row.next_attempt_at - due)
            last, due = due, row.next_attempt_at
        assert _samples(client)[UNDELIVERED] == 0  # given up: no longer counted as still to POST
        assert alerts.redeliver_alerts(sessions, alerting, now=last + timedelta(days=2)) == 0
    finally:
        hook.close()
    minutes = [gap / timedelta(minutes=1) for gap in gaps]
    assert minutes[:7] == [2, 4, 8, 16, 32, 60, 60]
    assert max(minutes) == 60
    assert last == first.created_at + timedelta(hours=24)  # the last POST, a day after the alert was recorded
    given_up = _alert(sessions, alert_id)
    assert (given_up.delivered, given_up.next_attempt_at) == (False, None)
    assert given_up.attempts == len(hook.posts) == 2 + len(gaps)  # the first, the retries, the last at 24 h
    assert 25 <= given_up.attempts <= 35
    assert alert_delivery(given_up) == f"not delivered after {given_up.attempts} POSTs: given up (a day of retries), " \
                                      f"or a POST in hand; in the log"


def test_an_alert_whose_post_succeeded_is_never_posted_again(settings, sessions, client):
    hook, alerting = _hook_and_settings(settings)
    try:
        alert_id = alerts.alert_staff(sessions, alerting, "Order ord_x: dispute dp_1 closed: won", order_id="ord_x")
        assert _samples(client)[UNDELIVERED] == 0
        for later in (timedelta(minutes=2), timedelta(hours=2), timedelta(days=2)):
            assert alerts.redeliver_alerts(sessions, alerting, now=utcnow() + later) == 0
        assert alerts.deliver_alert(sessions, alerting, alert_id) is False  # a second call does nothing either
    finally:
        hook.close()
    assert len(hook.posts) == 1
    assert (_alert(sessions, alert_id).delivered, _alert(sessions, alert_id).attempts) == (True, 1)


def test_an_alert_whose_process_died_before_its_post_is_posted_by_the_relay_a_minute_later(
        settings, sessions, client):
    hook, alerting = _hook_and_settings(settings)
    try:
        with transaction(sessions) as session:  # recorded and committed; the worker dies before its POST
            alert_id = alerts.record_alert(session, alerting, "Order ord_y needs review", order_id="ord_y").id
        assert _samples(client)[UNDELIVERED] == 1
        assert alerts.redeliver_alerts(sessions, alerting, now=utcnow() + timedelta(seconds=30)) == 0
        assert hook.posts == []  # its own process may still be POSTing it
        assert alerts.redeliver_alerts(sessions, alerting, now=utcnow() + timedelta(seconds=61)) == 1
        assert alerts.redeliver_alerts(sessions, alerting, now=utcnow() + timedelta(days=2)) == 0
    finally:
        hook.close()
    assert len(hook.posts) == 1 and "ord_y" in hook.posts[0]
    assert _alert(sessions, alert_id).delivered is True
    assert _samples(client)[UNDELIVERED] == 0


def test_an_alert_in_one_relays_hands_is_not_posted_by_another_relay_or_its_own_process(settings, sessions):
    hook, alerting = _hook_and_settings(settings)
    try:
        hook.status = 503
        alert_id = alerts.alert_staff(sessions, alerting, "Order ord_z: refund re_1 failed", order_id="ord_z")
        due = _alert(sessions, alert_id).next_attempt_at
        hook.status, hook.hold = 200, True  # back, and slow: relay one's POST is held in hand
        one = threading.Thread(target=alerts.redeliver_alerts, args=(sessions, alerting), kwargs={"now": due})
        one.start()
        assert hook.arrived.wait(30), "relay one never POSTed"
        assert alerts.redeliver_alerts(sessions, alerting, now=due + timedelta(hours=1)) == 0  # relay two
        assert alerts.deliver_alert(sessions, alerting, alert_id) is False  # the process that recorded it
        hook.release.set()
        one.join(30)
        assert not one.is_alive()
        assert alerts.redeliver_alerts(sessions, alerting, now=due + timedelta(days=2)) == 0
    finally:
        hook.close()
    assert len(hook.posts) == 2  # the failed one, then relay one's
    assert _alert(sessions, alert_id).delivered is True


def test_two_relays_at_once_post_each_alert_once(settings, sessions):
    hook, alerting = _hook_and_settings(settings)
    try:
        with transaction(sessions) as session:
            texts = [alerts.record_alert(session, alerting, f"Alert number {n}").text for n in range(20)]
        later = utcnow() + timedelta(minutes=2)
        start = threading.Barrier(2)
        delivered: list[int] = []

        def relay():
            start.wait(30)
            delivered.append(alerts.redeliver_alerts(sessions, alerting, now=later))

        relays = [threading.Thread(target=relay) for _ in range(2)]
        for thread in relays:
            thread.start()
        for thread in relays:
            thread.join(60)
    finally:
        hook.close()
    assert sorted(hook.posts) == sorted(texts)  # each once
    assert sum(delivered) == 20
    with sessions() as session:
        assert session.scalars(select(StaffAlert.delivered)).all() == [True] * 20


def test_a_relay_without_staff_alert_url_leaves_an_alert_whose_post_failed_waiting_for_one_that_has_it(
        settings, sessions, client):
    hook, alerting = _hook_and_settings(settings)
    try:
        hook.status = 503
        alert_id = alerts.alert_staff(sessions, alerting, "Message 9 was dead-lettered: boom", outbox_id=9)
        failed = _alert(sessions, alert_id)
        assert (len(hook.posts), failed.attempts, failed.delivered) == (1, 1, False)
        assert _samples(client)[UNDELIVERED] == 1

        # A relay started without the URL (a forgotten setting) takes its turns: it must not claim the alert.
        no_url = dataclasses.replace(settings, staff_alert_url=None)
        with rendered_logs() as logs:
            relay = Relay(no_url)
        try:
            assert [line for line in logs if "staff_alert_url_missing" in line] != []  # its start says so
            [chore] = [chore for chore in relay.chores if chore.name == "staff_alert_redelivery"]
            with transaction(sessions) as session:  # its back-off is over
                session.get(StaffAlert, alert_id).next_attempt_at = utcnow() - timedelta(seconds=1)
            chore.run(relay.factory)
            chore.run(relay.factory)
        finally:
            relay.engine.dispose()
        waiting = _alert(sessions, alert_id)
        assert (waiting.attempts, waiting.delivered) == (1, False) and waiting.next_attempt_at is not None
        assert _samples(client)[UNDELIVERED] == 1

        # A relay with it POSTs the alert when its turn comes.
        hook.status = 200
        assert alerts.redeliver_alerts(sessions, alerting) == 1
    finally:
        hook.close()
    assert len(hook.posts) == 2
    assert _alert(sessions, alert_id).delivered and _samples(client)[UNDELIVERED] == 0


def test_an_alert_only_logged_without_staff_alert_url_is_not_posted_later_nor_counted(settings, sessions, client):
    hook, alerting = _hook_and_settings(settings)
    try:
        with rendered_logs() as logs:
            alert_id = alerts.alert_staff(sessions, dataclasses.replace(settings, staff_alert_url=None), "Logged only")
        assert [line for line in logs if "staff_alert" in line and "Logged only" in line] != []
        assert _samples(client)[UNDELIVERED] == 0
        assert alerts.redeliver_alerts(sessions, alerting, now=utcnow() + timedelta(hours=1)) == 0
    finally:
        hook.close()
    assert hook.posts == []
    assert (_alert(sessions, alert_id).delivered, _alert(sessions, alert_id).attempts) == (False, 0)
    assert alert_delivery(_alert(sessions, alert_id)) == "not POSTed (no STAFF_ALERT_URL): in the log"


def test_0015_gives_the_alerts_recorded_before_it_no_post_to_make_and_its_downgrade_drops_its_columns(
        database_url, settings, sessions):
    hook, alerting = _hook_and_settings(settings)
    try:
        hook.status = 503
        alerts.alert_staff(sessions, alerting, "Failed once")
    finally:
        hook.close()
    command.downgrade(alembic_config(database_url), "0014")
    differences = [diff for diff in _differences(database_url) if not _is_0017s(diff)]
    assert len(differences) == 3 and all(_is_0015s(diff) for diff in differences)
    command.upgrade(alembic_config(database_url), "head")
    assert _differences(database_url) == []
    [alert] = _all(sessions)
    # Not POSTed again after the upgrade: a deployment turning STAFF_ALERT_URL on is not sent its old alerts.
    assert (alert.text, alert.delivered, alert.attempts, alert.next_attempt_at) == ("Failed once", False, 0, None)


def test_the_gauge_and_the_relay_find_the_alerts_to_post_by_the_partial_index(database_url):
    queries = ("SELECT count(*) FROM staff_alerts WHERE next_attempt_at IS NOT NULL",
               "SELECT id FROM staff_alerts WHERE next_attempt_at <= '2026-11-28' "
               "ORDER BY next_attempt_at, id LIMIT 50")
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            for query in queries:
                if engine.dialect.name == "postgresql":
                    connection.exec_driver_sql("SET enable_seqscan = off")  # the table is empty
                    plan = " ".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {query}"))
                else:
                    plan = " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
                assert "ix_staff_alerts_next_attempt_at" in plan, (query, plan)
    finally:
        engine.dispose()


def _all(sessions) -> list[StaffAlert]:
    with sessions() as session:
        return session.scalars(select(StaffAlert).order_by(StaffAlert.id)).all()
