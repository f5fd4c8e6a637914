"""The Procfile as an operator runs it with honcho: release migrates, then web, worker and relay serve."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.backends import SERVERS, backends, create_postgres_database, drop_postgres_database, purge_rabbitmq
from tests.e2e.cluster import ROOT, Cluster
from tests.support import BIN, CATALOG, WEBHOOK_SECRET, confirm_card, env_for, free_port, use_stripe, wait_for_port

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", backends())
def test_procfile_processes_run_a_purchase_under_honcho(tmp_path, localstripe, backend):
    database_url = f"sqlite:///{tmp_path / 'shop.db'}"
    broker_url = f"filesystem://{tmp_path / 'broker'}"
    if backend == SERVERS:
        database_url, broker_url = create_postgres_database(), os.environ["TEST_AMQP_URL"]
        purge_rabbitmq()
    port = free_port()
    env = env_for(tmp_path, DATABASE_URL=database_url, BROKER_URL=broker_url, STRIPE_API_BASE=localstripe.base,
                  STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET, GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY=2)
    honcho = [str(BIN / "honcho"), "-f", str(ROOT / "Procfile")]
    try:
        release = subprocess.run([*honcho, "start", "release"], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=120)
        assert release.returncode == 0, release.stdout + release.stderr
        assert "database migrated to head" in release.stdout
        (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
        subprocess.run([str(BIN / "shop"), "catalog", "load", str(tmp_path / "catalog.json")], env=env, check=True,
                       cwd=tmp_path, capture_output=True)

        log = open(tmp_path / "honcho.log", "wb")
        running = subprocess.Popen([*honcho, "start", "web", "worker", "relay"], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, proc=running)
            localstripe.register_webhook(f"http://127.0.0.1:{port}/webhooks/stripe")
            use_stripe(localstripe.base)
            client = Cluster.__new__(Cluster)  # only its HTTP helpers: the processes are honcho's
            client.base = f"http://127.0.0.1:{port}"
            order = client.checkout([("TEA-01", 1)])
            assert order["status"] == 201
            assert confirm_card(order["payment_intent_id"], "4242424242424242") == "succeeded"
            assert client.wait_for_order(order["order_id"], {"paid"})["shipment"] is not None
        finally:
            running.send_signal(signal.SIGTERM)
            assert running.wait(30) is not None
            log.close()
        output = (tmp_path / "honcho.log").read_text()
        for process in ("web.1", "worker.1", "relay.1"):
            assert f"{process} started" in output
        assert '"event_processed"' in output and '"http_request"' in output
    finally:
        if backend == SERVERS:
            drop_postgres_database(database_url)
