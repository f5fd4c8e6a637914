"""gunicorn's binary upgrade on the embedded default (SQLite): `kill -USR2` starts a second master beside
the first, with the code installed now, and `kill -TERM` of the old one ends it. Both masters serve the
one database, and its store process is one at a time (its lock): the new master's waits while the old one
serves, and takes over when the old master stops. Every webhook answered 2xx through the hand-over is
stored once, and those that arrive after go through the new store process (its own count says so)."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from tests.backends import EMBEDDED
from tests.e2e.test_store_process_faults import _alive, _lines, _started, _stored_once_each
from tests.support import event_for

pytestmark = pytest.mark.e2e


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def test_a_binary_upgrade_hands_the_store_process_over_and_loses_or_doubles_no_event(make_cluster, tmp_path):
    pidfile = tmp_path / "web.pid"
    cluster = make_cluster(EMBEDDED, GUNICORN_CMD_ARGS=f"--pid {pidfile}")
    old_master = cluster.procs["web"].pid
    first = _started(cluster)
    before = [event_for("payment_intent.succeeded") for _ in range(10)]
    assert [cluster.post_event(event).status_code for event in before] == [200] * len(before)

    new_master = None
    try:
        cluster.procs["web"].send_signal(signal.SIGUSR2)
        # gunicorn's new master writes its pid to <pidfile>.2 until the old one is gone.
        new_master = cluster.wait_until(lambda: _pid_in(pidfile.with_name(pidfile.name + ".2")),
                                        what="the new master's pid file")
        assert new_master != old_master
        # The new master's store process waits for the old one's lock: one store process per database.
        cluster.wait_until(lambda: _lines(cluster, "store_process_waiting"), what="the new store process to wait")
        assert len(_lines(cluster, "store_process_started")) == 1

        # Webhooks meanwhile reach either master's web processes; all go to the one store process serving.
        during = [event_for("payment_intent.succeeded") for _ in range(20)]
        assert [cluster.post_event(event).status_code for event in during] == [200] * len(during)

        # Webhooks keep coming while the old master stops and the new store process takes over.
        handover = [event_for("payment_intent.succeeded") for _ in range(60)]
        answers: list[int] = []
        poster = threading.Thread(target=lambda: answers.extend(cluster.post_event(e).status_code for e in handover))
        poster.start()
        assert cluster.stop("web") == 0   # the old master: its web processes finish, then its store process
        poster.join(60)
        assert answers == [200] * len(handover)
        assert not _alive(first["pid"])
        cluster.wait_until(lambda: len(_lines(cluster, "store_process_started")) == 2,
                           what="the new master's store process to serve")
        second = _lines(cluster, "store_process_started")[1]
        assert _alive(second["pid"]) and second["pid"] != first["pid"]

        after = [event_for("payment_intent.succeeded") for _ in range(20)]
        assert [cluster.post_event(event).status_code for event in after] == [200] * len(after)
        _stored_once_each(cluster, {event["id"] for event in before + during + handover + after})

        os.kill(new_master, signal.SIGTERM)
        cluster.wait_until(lambda: not _alive(new_master), what="the new master to stop")
        new_master = None
        assert not _alive(second["pid"])
        old_stopped, new_stopped = _lines(cluster, "store_process_stopped")
        assert old_stopped["events"] >= len(before) + len(during)
        # Every event after the hand-over went through the new store process.
        assert new_stopped["events"] >= len(after)
    finally:
        # A new master left running (a failed assertion above) would outlive the test, serving its port.
        for pid in {new_master, _pid_in(pidfile.with_name(pidfile.name + ".2")), _pid_in(pidfile)} - {None, old_master}:
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
