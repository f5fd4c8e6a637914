"""A worker on a host with no web process (a machine of its own, its own PROMETHEUS_MULTIPROC_DIR): the web's
/metrics never shows what it counts, so `shop worker` serves its host's counters on METRICS_PORT."""
from __future__ import annotations

import subprocess

import pytest
import requests
from sqlalchemy import select

from models.events import EventStatus, InboxEvent
from tests.support import BIN, event_for, free_port

pytestmark = pytest.mark.e2e

PROCESSED = 'shop_events_processed_total{outcome="ignored",type="payment_intent.succeeded"}'


def _count(text: str, series: str) -> float | None:
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(series + " ")]
    return float(values[0]) if values else None


def test_a_worker_on_a_host_of_its_own_serves_its_counters_on_metrics_port(start_cluster, localstripe, tmp_path):
    cluster = start_cluster(localstripe.base, "web", "relay")
    port = free_port()
    host = tmp_path / "worker-host"
    host.mkdir()
    env = {**cluster.env, "PROMETHEUS_MULTIPROC_DIR": str(host / "metrics"), "METRICS_PORT": str(port)}
    logs = [open(host / f"worker.{i}.log", "wb") for i in (1, 2)]
    # Two workers of that host: the second finds the port taken by the first, says so, and works on.
    workers = [subprocess.Popen([str(BIN / "shop"), "worker"], cwd=host, env=env, stdout=log,
                                stderr=subprocess.STDOUT) for log in logs]
    try:
        cluster.wait_until(lambda: "metrics_served" in (host / "worker.1.log").read_text()
                           + (host / "worker.2.log").read_text(), timeout=60, what="a worker serving its counters")
        cluster.wait_until(lambda: "metrics_port_unavailable" in (host / "worker.1.log").read_text()
                           + (host / "worker.2.log").read_text(), timeout=60, what="the other saying the port is taken")
        assert all(worker.poll() is None for worker in workers)

        events = [event_for("payment_intent.succeeded") for _ in range(3)]  # intents of no order of ours
        assert [cluster.post_event(event).status_code for event in events] == [200] * 3

        def handled() -> bool:
            with cluster.sessions() as session:
                return set(session.scalars(select(InboxEvent.status).where(
                    InboxEvent.event_id.in_([event["id"] for event in events])))) == {EventStatus.IGNORED}

        cluster.wait_until(handled, timeout=60, what="the host's workers handling the events")
        served = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert served.status_code == 200 and served.headers["Content-Type"].startswith("text/plain")
        assert _count(served.text, PROCESSED) == 3, served.text  # both workers' counts, from the host's folder
        assert "shop_outbox_backlog" not in served.text  # the database-wide gauges are the web's
        web = requests.get(f"{cluster.base}/metrics", timeout=10).text
        assert _count(web, PROCESSED) in (None, 0.0), web  # not this host's folder

        posted = requests.post(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert posted.status_code == 405 and "GET /metrics" in posted.text
        elsewhere = requests.get(f"http://127.0.0.1:{port}/orders", timeout=10)
        assert elsewhere.status_code == 404 and "GET /metrics only" in elsewhere.text
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)
        for log in logs:
            log.close()
