"""GET /metrics while PostgreSQL goes silent (a network partition: a proxy in front of the real server that stops
moving bytes) answers within Prometheus's scrape timeout with every counter and shop_metrics_database_up 0, holds
one stuck read at most, and reads the gauges again once the database answers."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from sqlalchemy.engine import make_url

from tests.backends import servers_available
from tests.integration.test_metrics_review_fixes import _post, _scrape
from tests.stripe_proxy import _Server
from tests.support import rendered_logs

SCRAPE_TIMEOUT = 10  # Prometheus's default scrape_timeout: a scrape slower than this loses every counter


class FreezingProxy(_Server):
    """Forwards TCP to the real PostgreSQL; while frozen, no byte moves either way and no answer comes, as when
    the network between them drops every packet. `connections` counts the connections made through it."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.frozen = threading.Event()
        self.connections = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        self.connections += 1
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            conn.close()
            return
        self._track(upstream)
        threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()
        self._pump(upstream, conn)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            while self.frozen.is_set() and not self._closed:
                time.sleep(0.05)
            try:
                sink.sendall(data)
            except OSError:
                break
        for sock in (source, sink):
            try:
                sock.close()
            except OSError:
                pass


def _scrape_within(client, seconds: float) -> tuple[int | None, dict[str, float], float]:
    """A scrape from a thread of its own, given up after `seconds` (status None), as Prometheus gives up."""
    answer: list = []
    started = time.monotonic()
    scraping = threading.Thread(target=lambda: answer.append(_scrape(client)), daemon=True)
    scraping.start()
    scraping.join(seconds)
    took = time.monotonic() - started
    return (*answer[0], took) if answer else (None, {}, took)


def _counters(samples: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in samples.items()
            if name.startswith(("shop_webhooks_received_total", "shop_events_processed_total", "shop_retries_total",
                                "shop_dead_letters_total"))}


if servers_available():
    @pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
    def test_metrics_answer_with_every_counter_and_database_down_while_postgresql_is_silent(settings, make_client):
        real = make_url(settings.database_url)
        proxy = FreezingProxy(real.host, real.port)
        try:
            silent = make_client(database_url=real.set(host="127.0.0.1", port=proxy.port)
                                 .render_as_string(hide_password=False))
            assert _post(silent, "evt_before_the_partition").status_code == 200
            status, before, _ = _scrape_within(silent, SCRAPE_TIMEOUT)
            assert status == 200 and before["shop_metrics_database_up"] == 1
            assert before['shop_webhooks_received_total{outcome="accepted",reason="",type="payment_intent.succeeded"}']
            connections = proxy.connections

            proxy.frozen.set()
            with rendered_logs() as lines:
                # The second scrape finds the first one's read still stuck: it waits for that one, starts no other.
                for scrape in (1, 2):
                    status, during, took = _scrape_within(silent, SCRAPE_TIMEOUT)
                    assert status == 200, f"scrape {scrape}: no answer in {took:.1f} s, Prometheus loses every counter"
                    assert during["shop_metrics_database_up"] == 0
                    assert _counters(during) == _counters(before)
                    assert "shop_outbox_backlog" not in " ".join(during)
            assert proxy.connections == connections, "a second read of the database was started while one was stuck"
            assert sum("metrics_database_unanswered" in line for line in lines) == 2, lines

            proxy.frozen.clear()
            deadline = time.monotonic() + 60
            while True:
                status, after, _ = _scrape_within(silent, SCRAPE_TIMEOUT)
                if status == 200 and after["shop_metrics_database_up"] == 1:
                    break
                assert time.monotonic() < deadline, (status, after.get("shop_metrics_database_up"))
                time.sleep(0.5)
            assert after['shop_inbox_events_open{status="received"}'] == 1
        finally:
            proxy.frozen.clear()
            proxy.close()
