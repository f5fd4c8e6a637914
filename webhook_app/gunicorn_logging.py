"""gunicorn's logger, rendered through structlog: one line per request and per server event, in LOG_FORMAT."""
from __future__ import annotations

import logging
import os

import structlog
from gunicorn.glogging import Logger

from models.logs import configure_logging
from models.settings import log_format_from


# Set in the WSGI environ by a view that logs its request in full itself (the webhook's
# webhook_received / webhook_rejected lines carry the status and duration), so that a request
# costs one log line, not two.
REQUEST_LOGGED = "shop.request_logged"


class StructlogLogger(Logger):
    def setup(self, cfg) -> None:
        super().setup(cfg)
        # The app's own rule (Settings), so that gunicorn's lines and the app's share one format.
        configure_logging(log_format_from(os.environ))
        # Server events (booting, worker timeouts) go through the root handler structlog renders.
        for name in ("gunicorn.error", "gunicorn.access"):
            logger = logging.getLogger(name)
            logger.handlers[:] = []
            logger.propagate = True
        # gunicorn.error keeps the level super().setup gave it (GUNICORN_LOG_LEVEL, gunicorn.conf.py).
        self._log = structlog.get_logger("gunicorn")

    def access(self, resp, req, environ, request_time) -> None:
        if os.environ.get("GUNICORN_ACCESS_LOG", "1") == "0":
            return
        if environ.get(REQUEST_LOGGED):
            return  # the app wrote this request's one line itself, with these fields (the webhook)
        status = getattr(resp, "status_code", None) or str(resp.status).split(" ")[0]
        headers = dict(getattr(resp, "headers", []) or [])
        self._log.info(
            "http_request",
            method=environ.get("REQUEST_METHOD"),
            path=environ.get("PATH_INFO"),
            status=int(status),
            duration_ms=round(request_time.total_seconds() * 1000, 2),
            request_id=headers.get("X-Request-Id"),
            user_agent=environ.get("HTTP_USER_AGENT"),
            remote_addr=environ.get("REMOTE_ADDR"),
        )
