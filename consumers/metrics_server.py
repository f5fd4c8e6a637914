"""`GET /metrics` served by `shop worker` and `shop relay` themselves (METRICS_PORT), for a host that runs no web
process: the web's /metrics shows the counters of its own host's folder only, so a worker on a machine of its own
would never be scraped (its events processed, retries, dead letters, lag).

Only the host's counters: the database-wide gauges (backlog, review, alerts) are the web's, as every host would
report the same database. With PROMETHEUS_MULTIPROC_DIR, every process counting into the host's folder is served
(one listener per host is enough); without it, this process's own counters.
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog

from consumers import metrics

log = structlog.get_logger(__name__)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(404, b"not found: this port serves GET /metrics only\n", "text/plain; charset=utf-8")
            return
        self._answer(200, metrics.render_counters(), metrics.CONTENT_TYPE)

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self):
        self._answer(405, b"method not allowed: GET /metrics\n", "text/plain; charset=utf-8")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature): scrapes are not logged
        pass


def serve_counters(port: int, process: str) -> ThreadingHTTPServer | None:
    """Serve the host's counters on `port` (every interface) from a daemon thread; None when `port` is 0, or
    when the port is taken (another worker or relay of the host serves them already: logged, and this process
    goes on without)."""
    if not port:
        return None
    try:
        server = ThreadingHTTPServer(("0.0.0.0", port), _Handler)
    except OSError as exc:
        log.warning("metrics_port_unavailable", port=port, process=process, error=exc.strerror or str(exc),
                    hint="another process of this host may serve its counters already; this one goes on without")
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    log.info("metrics_served", port=port, process=process)
    return server
