"""gunicorn settings for the web process (read from the working directory by `gunicorn`)."""
import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# Webhook requests are short and I/O-bound (one commit): a few sync workers per core.
workers = int(os.environ.get("WEB_CONCURRENCY") or min(8, multiprocessing.cpu_count() * 2 + 1))
worker_class = "sync"
# Stripe waits up to 10 s for an answer; a request that takes longer is stuck, not slow.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "20"))
graceful_timeout = 20
keepalive = 5
# Bound what one request may carry; the webhook endpoint enforces its own smaller body limit.
limit_request_line = 8190
limit_request_fields = 100
# Several services (and test clusters) may run on one host: no shared control socket.
control_socket_disable = True
# One structured line per request (GUNICORN_ACCESS_LOG=0 turns it off), through structlog.
logger_class = "webhook_app.gunicorn_logging.StructlogLogger"
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
