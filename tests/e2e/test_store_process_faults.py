"""The store process under gunicorn on the embedded default (SQLite): webhooks go through it, it is
restarted when killed while nothing accepted is lost or doubled, and it stops with gunicorn.

Proof that events went through it is its own count (`store_process_stopped` says how many events it
stored), never timing.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from models.events import InboxEvent, OutboxMessage
from tests.backends import EMBEDDED
from tests.support import confirm_card, event_for
from webhook_app.store_process import socket_path

pytestmark = pytest.mark.e2e

WAIT = 30.0


def _lines(cluster, event: str) -> list[dict]:
    found = []
    for line in cluster.log_of("web").splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                found.append(record)
    return found


def _started(cluster) -> dict:
    """The store process's `store_process_started` line. The master goes on once the store process's socket
    exists, a moment before that process logs the line: waited for, not read at once."""
    cluster.wait_until(lambda: _lines(cluster, "store_process_started"), timeout=WAIT,
                       what="the store process's started line")
    (started,) = _lines(cluster, "store_process_started")
    return started


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _socket(cluster) -> str:
    return socket_path(cluster.database_url.removeprefix("sqlite:///"))


def _stored_once_each(cluster, event_ids) -> None:
    with cluster.sessions() as session:
        rows = session.execute(select(InboxEvent.event_id, func.count(OutboxMessage.id))
                               .outerjoin(OutboxMessage, OutboxMessage.inbox_event_id == InboxEvent.id)
                               .where(InboxEvent.event_id.in_(list(event_ids)))
                               .group_by(InboxEvent.event_id)).all()
    assert sorted(event_id for event_id, _ in rows) == sorted(event_ids)  # the inbox's id is unique: once
    assert {count for _, count in rows} <= {1}  # one outbox row each


def the_new_store_process_serves_until_gunicorn_stops(cluster, pid: int) -> None:
    """After the store process was replaced by `pid`: stores go through it again once the web processes'
    one-second pause in trying it is over (a web process that stored one itself would have said so:
    connection lost, or unreachable), a paid order goes through, and gunicorn's stop ends it."""
    time.sleep(1.5)
    warnings = len(_lines(cluster, "store_process_connection_lost") + _lines(cluster, "store_process_unreachable"))
    later = [event_for("payment_intent.succeeded") for _ in range(20)]
    assert [cluster.post_event(event).status_code for event in later] == [200] * len(later)
    assert len(_lines(cluster, "store_process_connection_lost") + _lines(cluster, "store_process_unreachable")) \
        == warnings
    order = cluster.checkout([("TEA-01", 1)])
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    cluster.wait_for_order(order["order_id"], {"paid"})

    assert cluster.stop("web") == 0
    assert not _alive(pid) and not os.path.exists(_socket(cluster))
    (stopped,) = _lines(cluster, "store_process_stopped")  # the new one's: the killed one said nothing
    assert stopped["events"] >= len(later) + 1  # and the order's succeeded event
    _stored_once_each(cluster, {event["id"] for event in later})
    cluster.stop_all()


def test_webhooks_go_through_the_store_process_and_sigterm_of_gunicorn_stops_it_and_removes_its_socket(
        make_cluster):
    cluster = make_cluster(EMBEDDED)
    started = _started(cluster)
    assert started["socket"] == _socket(cluster) and os.path.exists(started["socket"])
    events = [event_for("payment_intent.succeeded") for _ in range(30)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda event: cluster.post_event(event).status_code, events))
    assert codes == [200] * len(events)

    # A real order still ends paid: the relay and the worker take the writers' turn beside it.
    order = cluster.checkout([("TEA-01", 1)])
    assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
    cluster.wait_for_order(order["order_id"], {"paid"})

    assert cluster.stop("web") == 0
    assert not _alive(started["pid"])
    assert not os.path.exists(started["socket"])
    (stopped,) = _lines(cluster, "store_process_stopped")
    assert stopped["events"] >= len(events) + 1  # every posted event (and localstripe's) went through it
    assert _lines(cluster, "store_process_unreachable") == []
    _stored_once_each(cluster, {event["id"] for event in events})
    cluster.stop_all()


def test_a_store_process_killed_during_a_stream_of_webhooks_loses_and_doubles_nothing_and_is_restarted(
        make_cluster):
    cluster = make_cluster(EMBEDDED)
    started = _started(cluster)
    answers: dict[str, int] = {}
    answered = threading.Semaphore(0)
    after_restart = threading.Event()  # set with the number answered by then
    finished = threading.Event()
    answered_at_restart = [0]

    def stream():
        # Until well after the restart: some deliveries meet the dead process, some the new one.
        while not finished.is_set():
            if after_restart.is_set() and len(answers) >= answered_at_restart[0] + 200:
                return
            event = event_for("payment_intent.succeeded")
            answers[event["id"]] = cluster.post_event(event).status_code
            answered.release()

    streams = [threading.Thread(target=stream, daemon=True) for _ in range(4)]
    try:
        for thread in streams:
            thread.start()
        for _ in range(100):
            assert answered.acquire(timeout=WAIT)
        os.kill(started["pid"], signal.SIGKILL)
        cluster.wait_until(lambda: _lines(cluster, "store_process_restarted"), timeout=WAIT,
                           what="the master restarts the store process")
        answered_at_restart[0] = len(answers)
        after_restart.set()
        for thread in streams:
            thread.join(120)
            assert not thread.is_alive()
    finally:
        finished.set()

    assert set(answers.values()) <= {200, 503}, answers
    accepted = {event_id for event_id, code in answers.items() if code == 200}
    assert len(accepted) >= len(answers) - len(streams)  # at most the requests in flight at the kill
    _stored_once_each(cluster, accepted)
    # The web processes stored some themselves meanwhile, and said so (a line per change, not per event).
    assert _lines(cluster, "store_process_connection_lost") or _lines(cluster, "store_process_unreachable")

    (restart,) = _lines(cluster, "store_process_restarted")
    assert restart["previous_pid"] == started["pid"] and _alive(restart["pid"])
    cluster.wait_until(lambda: len(_lines(cluster, "store_process_started")) == 2, timeout=WAIT,
                       what="the new store process listens")
    the_new_store_process_serves_until_gunicorn_stops(cluster, restart["pid"])


def test_the_store_process_dies_with_a_killed_gunicorn_master(make_cluster):
    cluster = make_cluster(EMBEDDED)
    started = _started(cluster)
    cluster.stop("web", signal.SIGKILL)
    cluster.wait_until(lambda: not _alive(started["pid"]), timeout=WAIT, what="the store process exits")
    assert not os.path.exists(started["socket"])  # it stopped cleanly, on the SIGTERM its parent's death sent
    cluster.stop_all()
