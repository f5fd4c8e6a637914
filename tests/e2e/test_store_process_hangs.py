"""A store process that hangs while alive, under gunicorn on the embedded default (SQLite): stopped
(SIGSTOP) during a stream of webhooks, the master replaces it once its heartbeat stops, the requests
it held are answered then (not after the web's full 10 s wait), and nothing accepted is lost or
doubled; one that is only waiting for SQLite's writer, longer than that threshold, is left alone.
"""
from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
import signal
import sqlite3
import threading
import time

import pytest
import requests

from tests.backends import EMBEDDED
from tests.e2e.test_store_process_faults import (_alive, _lines, _started, _stored_once_each,
                                                 the_new_store_process_serves_until_gunicorn_stops)
from tests.support import WEBHOOK_SECRET, event_for, signed_headers
from webhook_app.store_process import HEARTBEAT_INTERVAL_SECONDS, HUNG_AFTER_SECONDS, WATCH_INTERVAL_SECONDS

pytestmark = pytest.mark.e2e

WAIT = 30.0
WEB_WAIT_SECONDS = 10.0  # what a web thread waits for the store process's answer (webhooks._QUEUE_TIMEOUT)
# The master notices the silence within a look (once a second) after the threshold; the kill, the
# new process's start (a second of CPU, more on a busy machine) and the web's retry come on top.
REPLACED_WITHIN = HUNG_AFTER_SECONDS + HEARTBEAT_INTERVAL_SECONDS + WATCH_INTERVAL_SECONDS + 15.0


def _post(cluster, event: dict) -> tuple[int, float]:
    """(status, seconds): a client that waits longer than the web ever makes it wait."""
    payload = json.dumps(event)
    began = time.monotonic()
    response = requests.post(f"{cluster.base}/webhooks/stripe", data=payload,
                             headers=signed_headers(payload, WEBHOOK_SECRET), timeout=60)
    return response.status_code, time.monotonic() - began


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def test_a_store_process_stopped_during_a_stream_of_webhooks_is_replaced_and_nothing_is_lost_or_doubled(
        make_cluster):
    cluster = make_cluster(EMBEDDED)
    started = _started(cluster)
    answers: dict[str, tuple[int, float, float]] = {}  # event id -> (status, seconds, posted at)
    answered = threading.Semaphore(0)
    after_restart = threading.Event()
    finished = threading.Event()
    answered_at_restart = [0]

    def stream():
        while not finished.is_set():
            if after_restart.is_set() and len(answers) >= answered_at_restart[0] + 200:
                return
            event = event_for("payment_intent.succeeded")
            posted_at = time.monotonic()
            status, seconds = _post(cluster, event)
            answers[event["id"]] = (status, seconds, posted_at)
            answered.release()

    streams = [threading.Thread(target=stream, daemon=True) for _ in range(4)]
    try:
        for thread in streams:
            thread.start()
        for _ in range(100):
            assert answered.acquire(timeout=WAIT)
        os.kill(started["pid"], signal.SIGSTOP)
        stopped_at = time.monotonic()
        cluster.wait_until(lambda: len(_lines(cluster, "store_process_started")) == 2, timeout=REPLACED_WITHIN,
                           what="the master replaces the stopped store process and the new one listens")
        answered_at_restart[0] = len(answers)
        after_restart.set()
        for thread in streams:
            thread.join(120)
            assert not thread.is_alive()
    finally:
        finished.set()
        _continue(started["pid"])  # if it was never replaced, let gunicorn stop it

    (hung,) = _lines(cluster, "store_process_hung")
    assert hung["pid"] == started["pid"] and hung["silent_seconds"] >= HUNG_AFTER_SECONDS
    (restart,) = _lines(cluster, "store_process_restarted")
    assert restart["previous_pid"] == started["pid"] and _alive(restart["pid"])
    assert not _alive(started["pid"])  # killed: SIGTERM would wait on the very loop that hangs

    assert {status for status, _, _ in answers.values()} <= {200, 503}, answers
    accepted = {event_id for event_id, (status, _, _) in answers.items() if status == 200}
    _stored_once_each(cluster, accepted)
    # The requests the stopped process held were answered when it was killed: their connections
    # closed, and they went to the new process or were stored by their web process, never waiting
    # out the web's 10 s (which answers 503).
    held = [seconds for _, seconds, posted_at in answers.values() if posted_at >= stopped_at - 1]
    assert held and max(held) < WEB_WAIT_SECONDS, sorted(held)[-8:]
    assert len(accepted) == len(answers), [a for a in answers.values() if a[0] != 200]

    the_new_store_process_serves_until_gunicorn_stops(cluster, restart["pid"])


# Longer than the threshold, shorter than the writers' turn and busy_timeout (10 s each), so the
# waiting groups end stored.
HOLD_SECONDS = HUNG_AFTER_SECONDS + 2.0
assert HOLD_SECONDS < WEB_WAIT_SECONDS - 1.0


def test_a_store_process_waiting_for_the_writers_turn_or_sqlites_lock_longer_than_the_threshold_is_not_killed(
        make_cluster):
    cluster = make_cluster(EMBEDDED)
    started = _started(cluster)
    database = cluster.database_url.removeprefix("sqlite:///")
    assert [_post(cluster, event_for("payment_intent.succeeded"))[0] for _ in range(3)] == [200] * 3

    def hold_while_posting(hold, release) -> list[tuple[int, float]]:
        events = [event_for("payment_intent.succeeded") for _ in range(8)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            hold()
            try:
                futures = [pool.submit(_post, cluster, event) for event in events]
                time.sleep(HOLD_SECONDS)
            finally:
                release()
            answers = [future.result() for future in futures]
        _stored_once_each(cluster, {event["id"] for event in events})
        return answers

    # The writers' turn, held by another process as a long transaction of the relay or a worker would.
    turn = os.open(database + "-writer", os.O_RDWR)
    try:
        answers = hold_while_posting(lambda: fcntl.flock(turn, fcntl.LOCK_EX), lambda: fcntl.flock(turn, fcntl.LOCK_UN))
    finally:
        os.close(turn)
    assert [status for status, _ in answers] == [200] * len(answers)
    assert max(seconds for _, seconds in answers) > HUNG_AFTER_SECONDS  # they did wait that long for it

    # SQLite's own write lock, taken outside the turn (the sqlite3 shell, say): the group waits in
    # SQLite's busy handler, in C.
    other = sqlite3.connect(database, isolation_level=None)
    try:
        answers = hold_while_posting(lambda: other.execute("BEGIN IMMEDIATE"), lambda: other.execute("ROLLBACK"))
    finally:
        other.close()
    assert [status for status, _ in answers] == [200] * len(answers)
    assert max(seconds for _, seconds in answers) > HUNG_AFTER_SECONDS

    assert _lines(cluster, "store_process_hung") == [] and _lines(cluster, "store_process_restarted") == []
    assert len(_lines(cluster, "store_process_started")) == 1 and _alive(started["pid"])
    assert cluster.stop("web") == 0
    (stopped,) = _lines(cluster, "store_process_stopped")
    assert stopped["events"] >= 3 + 16  # every one of them went through it, the waiting ones too
    cluster.stop_all()


def _web_processes(cluster, master: int, store_pid: int) -> list[int]:
    """gunicorn's web processes, once its master has forked them: it answers on its port before that."""
    return cluster.wait_until(lambda: [pid for pid in _children_of(master) if pid != store_pid],
                              what="gunicorn's web processes")


def _pipes_of(pid: int) -> set[str]:
    """The pipes a process holds open, as the kernel names them ("pipe:[inode]")."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("pipe:"):
            held.add(target)
    return held


def _children_of(parent: int) -> list[int]:
    """The processes whose parent is `parent` (gunicorn's master: its web processes and the store process)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except FileNotFoundError:  # ended since the listing: another test's, or this machine's
            continue
        if stat.rsplit(")", 1)[1].split()[1] == str(parent):
            found.append(int(pid))
    return found


def test_only_the_master_holds_the_heartbeat_pipe_not_the_web_processes(make_cluster):
    cluster = make_cluster(EMBEDDED)
    started = _started(cluster)
    store_pid = started["pid"]
    arguments = open(f"/proc/{store_pid}/cmdline").read().split("\0")
    pipe = os.readlink(f"/proc/{store_pid}/fd/{arguments[arguments.index('--heartbeat-fd') + 1]}")
    master = cluster.procs["web"].pid
    web_processes = _web_processes(cluster, master, store_pid)
    assert pipe in _pipes_of(master)  # the master reads the beats: a web process that held the pipe
    for pid in web_processes:         # too would keep it open past a master that died
        assert pipe not in _pipes_of(pid), f"web process {pid} holds the store process's heartbeat pipe"


def test_a_stop_sent_to_gunicorns_process_group_leaves_the_store_process_to_the_master(make_cluster):
    """Ctrl-C in `make run`, or honcho's stop, signals gunicorn's whole process group. The store process
    is not in it: it serves until the web processes have finished (here one is held stopped for a few
    looks of the watch), then the master stops it, and it is never restarted during the stop."""
    cluster = make_cluster(EMBEDDED)
    cluster.stop("web")
    master = cluster.start("web", own_group=True)
    # Its port answers before its store process has said it serves, and before its web processes are forked.
    cluster.wait_until(lambda: len(_lines(cluster, "store_process_started")) == 2, what="the new store process")
    store_pid = _lines(cluster, "store_process_started")[-1]["pid"]
    assert os.getpgid(store_pid) != os.getpgid(master.pid)
    web_processes = _web_processes(cluster, master.pid, store_pid)
    os.kill(web_processes[0], signal.SIGSTOP)  # finishing its requests, as far as the master can tell
    try:
        os.killpg(master.pid, signal.SIGTERM)
        time.sleep(3 * WATCH_INTERVAL_SECONDS + 1)
        assert _alive(store_pid), "the group's stop ended the store process while a web process was still up"
        assert _lines(cluster, "store_process_restarted") == []
    finally:
        _continue(web_processes[0])
    assert cluster.stop("web") == 0
    assert not _alive(store_pid)
    assert _lines(cluster, "store_process_restarted") == []
    assert len(_lines(cluster, "store_process_stopped")) == len(_lines(cluster, "store_process_started"))
