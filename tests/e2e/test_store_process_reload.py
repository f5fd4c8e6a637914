"""gunicorn reloaded (SIGHUP, as a release or `systemctl reload` does) on the embedded default: the store
process is replaced along with the web processes, so the events that arrive afterwards are stored by the
code installed now (a release that handles a new event type must not see those stored as not handled by
the store process of before), and none is lost or doubled across the reload."""
from __future__ import annotations

import signal

import pytest

from tests.backends import EMBEDDED
from tests.e2e.test_store_process_faults import _alive, _lines, _started, _stored_once_each
from tests.support import event_for

pytestmark = pytest.mark.e2e


def test_a_reload_replaces_the_store_process_and_its_events_go_through_the_new_one(make_cluster):
    cluster = make_cluster(EMBEDDED)
    started = _started(cluster)
    before = [event_for("payment_intent.succeeded") for _ in range(10)]
    assert [cluster.post_event(event).status_code for event in before] == [200] * len(before)

    cluster.procs["web"].send_signal(signal.SIGHUP)
    cluster.wait_until(lambda: _lines(cluster, "store_process_replaced"), what="the store process replaced")
    (replaced,) = _lines(cluster, "store_process_replaced")
    assert replaced["previous_pid"] == started["pid"] and replaced["pid"] != started["pid"]
    assert not _alive(started["pid"]) and _alive(replaced["pid"])
    cluster.wait_until(lambda: len(_lines(cluster, "store_process_started")) == 2, what="the new one serving")
    assert _lines(cluster, "store_process_started")[1]["pid"] == replaced["pid"]

    after = [event_for("payment_intent.succeeded") for _ in range(20)]
    assert [cluster.post_event(event).status_code for event in after] == [200] * len(after)
    _stored_once_each(cluster, {event["id"] for event in before + after})
    assert _lines(cluster, "store_process_restarted") == []  # replaced once, on purpose, not seen as a crash

    assert cluster.stop("web") == 0
    first, second = _lines(cluster, "store_process_stopped")
    assert first["events"] == len(before)
    assert second["events"] == len(after)  # every event after the reload went through the new process
    assert not _alive(replaced["pid"])
