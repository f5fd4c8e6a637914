"""The store process's heartbeat (webhook_app.store_process.Heartbeat), on the test's SQLite file: it
beats while the process waits for SQLite's writer, so a busy process never looks hung; it stops
when the process is stopped, and when one turn of the serving loop outlasts every wait it makes.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import structlog

from models.db import make_engine
from tests.support import event_for
from webhook_app.store_process import (HEARTBEAT_INTERVAL_SECONDS, HUNG_AFTER_SECONDS, LOOP_STUCK_SECONDS, Heartbeat,
                                       StoreServer, answer_of, read_frame, request_for, socket_path)

WAIT = 20.0
ROOT = Path(__file__).resolve().parents[2]
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _beats_within(beats: int, seconds: float) -> int:
    """The bytes the store process wrote to its heartbeat pipe in the next `seconds`."""
    time.sleep(seconds)
    count = 0
    try:
        while chunk := os.read(beats, 4096):
            count += len(chunk)
    except BlockingIOError:
        pass
    return count


@pytest.fixture
def beating(settings, tmp_path):
    """`python -m webhook_app.store_process --heartbeat-fd` as the master runs it: (process, the pipe's read end)."""
    path = socket_path(make_engine(settings.database_url).url.database)
    beats, beat_end = os.pipe()
    os.set_blocking(beats, False)
    env = {**os.environ, "DATABASE_URL": settings.database_url, "LOG_FORMAT": "json",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(tmp_path / "store-process.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "webhook_app.store_process", "--heartbeat-fd", str(beat_end)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(beat_end,))
    os.close(beat_end)
    deadline = time.monotonic() + WAIT
    while not os.path.exists(path):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "store-process.log").read_text()
        time.sleep(0.01)
    yield proc, beats, path
    proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait(WAIT)
    os.close(beats)


@SQLITE_ONLY
def test_the_heartbeat_goes_on_while_a_group_waits_for_the_writers_turn_and_stops_while_the_process_is_stopped(
        settings, beating):
    proc, beats, path = beating
    window = HUNG_AFTER_SECONDS / 2
    assert _beats_within(beats, window) >= 2  # idle

    # The writers' turn held by another process: the group waits for it, several seconds.
    database = make_engine(settings.database_url).url.database
    turn = os.open(database + "-writer", os.O_RDWR)
    answer: list = []
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.settimeout(WAIT)
    try:
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            event = event_for("localstripe_payment_intent.succeeded")
            client.sendall(request_for(event, json.dumps(event)))
            waiter = threading.Thread(target=lambda: answer.append(answer_of(read_frame(client))))
            waiter.start()
            # Beats all through the wait: as many as an idle process's, give or take.
            assert _beats_within(beats, window) >= window / HEARTBEAT_INTERVAL_SECONDS - 2
            assert _beats_within(beats, window) >= window / HEARTBEAT_INTERVAL_SECONDS - 2
            assert answer == []  # still waiting for the turn
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)
        waiter.join(WAIT)
        assert answer and not isinstance(answer[0], str) and answer[0].duplicate is False  # stored
    finally:
        client.close()
        os.close(turn)

    proc.send_signal(signal.SIGSTOP)
    _beats_within(beats, HEARTBEAT_INTERVAL_SECONDS)  # what it wrote before it stopped
    assert _beats_within(beats, window) == 0
    proc.send_signal(signal.SIGCONT)
    assert _beats_within(beats, window) >= 2


@SQLITE_ONLY
def test_the_heartbeat_stops_when_one_turn_of_the_serving_loop_outlasts_every_wait_it_makes(settings, tmp_path):
    engine = make_engine(settings.database_url)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s.sock"))
    server = StoreServer(engine, listener, max_frame=1 << 16)
    beats, beat_end = os.pipe()
    heartbeat = Heartbeat(beat_end)
    try:
        assert heartbeat.beat() and os.read(beats, 16) == b"."  # before it serves: waiting for the lock
        heartbeat.server = server
        server.busy_since = 0.0  # idle in select
        assert heartbeat.beat() and os.read(beats, 16) == b"."
        server.busy_since = time.monotonic() - (LOOP_STUCK_SECONDS - 5)  # a long, bounded wait
        assert heartbeat.beat() and os.read(beats, 16) == b"."
        server.busy_since = time.monotonic() - (LOOP_STUCK_SECONDS + 1)  # stuck
        with structlog.testing.capture_logs() as logs:
            assert heartbeat.beat() and heartbeat.beat()
        os.set_blocking(beats, False)
        with pytest.raises(BlockingIOError):
            os.read(beats, 16)  # no beat: the master replaces it
        assert [entry["event"] for entry in logs] == ["store_process_stuck"]  # once, not per beat
        server.busy_since = time.monotonic()  # the turn ended after all: beats again
        assert heartbeat.beat() and os.read(beats, 16) == b"."
        os.close(beats)
        assert heartbeat.beat() is False  # the master closed its end: the thread ends
    finally:
        os.close(beat_end)
        listener.close()
        engine.dispose()

