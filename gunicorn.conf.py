"""gunicorn settings for the web process (read from the working directory by `gunicorn`)."""
import multiprocessing
import os

# A setting outside its range stops gunicorn with one line naming it: for any other error here gunicorn
# prints a traceback, and 0 processes or threads would start a server that listens and never answers.
from models.settings import int_in_range

bind = os.environ.get("GUNICORN_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# Webhook requests are short and I/O-bound (one commit): a few processes per core.
workers = int_in_range(os.environ, "WEB_CONCURRENCY", min(8, multiprocessing.cpu_count() * 2 + 1), 1, 1000)
# Threads, so that a checkout waiting on a slow Stripe holds one thread, not a whole process:
# each process lets at most STRIPE_MAX_CONCURRENT_CALLS (default 6) checkouts wait on Stripe
# and as many wait for a turn, and keeps its other threads for webhooks and health checks
# (docs/deploy.md, "Web server").
worker_class = "gthread"
# More than twice STRIPE_MAX_CONCURRENT_CALLS, too: checked in on_starting.
threads = int_in_range(os.environ, "GUNICORN_THREADS", 16, 1, 1000)
# Stripe waits up to 10 s for an answer; a request that takes longer is stuck, not slow.
# (With threads this is the process's heartbeat; checkout's own deadline is STRIPE_DEADLINE_SECONDS.)
# At least 1: 0 is gunicorn's "never", and a stuck process would never be restarted.
timeout = int_in_range(os.environ, "GUNICORN_TIMEOUT", 20, 1, 3600)
graceful_timeout = 20
keepalive = 5
# Bound what one request may carry; the webhook endpoint enforces its own smaller body limit.
limit_request_line = 8190
limit_request_fields = 100
# Several services (and test clusters) may run on one host: no shared control socket.
control_socket_disable = True
# One structured line per request (GUNICORN_ACCESS_LOG=0 turns it off), through structlog. The
# webhook writes its own line with the same fields (webhook_received / webhook_rejected) instead.
if os.environ.get("GUNICORN_ACCESS_LOG", "1") not in ("0", "1"):  # read per request (gunicorn_logging)
    raise SystemExit(f"GUNICORN_ACCESS_LOG must be 1 (a line per request) or 0 (none), "
                     f"got {os.environ['GUNICORN_ACCESS_LOG']!r}")
logger_class = "webhook_app.gunicorn_logging.StructlogLogger"
accesslog = "-"
errorlog = "-"
# gunicorn's own lines (starting, stopping, a process restarted or timed out); the requests' lines are the app's.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
loglevel = os.environ.get("GUNICORN_LOG_LEVEL") or "info"
if loglevel.lower() not in LOG_LEVELS:  # gunicorn itself would take a misspelt level as info, saying nothing
    raise SystemExit(f"GUNICORN_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {loglevel!r}")


def child_exit(server, worker):
    # Prometheus multiprocess mode: a web worker that exited leaves no live values behind.
    from consumers.metrics import process_exited

    process_exited(worker.pid)


def on_starting(server):
    # A setting the service refuses stops gunicorn itself, with its one-line message: raised in a
    # worker instead, it would make the master start a new worker forever.
    from consumers.broker import refuse_unknown_transport, refuse_unshared_transport
    from models.settings import Settings

    settings = Settings.from_env()
    refuse_unknown_transport(settings.broker_url)  # the web answers /readyz from the broker
    refuse_unshared_transport(settings.broker_url)
    settings.require_secret_key()  # one key for every web process, or none starts
    if server.cfg.threads <= 2 * settings.stripe_max_concurrent_calls:
        # Checkouts waiting on a slow Stripe (and as many waiting for a turn) would hold every thread:
        # no webhook, /readyz or /healthz answered (docs/deploy.md, "Web server").
        raise SystemExit(f"GUNICORN_THREADS must be more than twice STRIPE_MAX_CONCURRENT_CALLS "
                         f"({settings.stripe_max_concurrent_calls}), got {server.cfg.threads}: raise it or lower "
                         "STRIPE_MAX_CONCURRENT_CALLS")
    # On SQLite, one store process stores the webhook events of every web process (one writer, not
    # one per process taking turns); it dies with this master, is restarted if it exits, and is
    # replaced (kill -9, then a new one) if its heartbeat stops while it is alive.
    from webhook_app.store_process import StoreProcessSupervisor

    server.store_process = StoreProcessSupervisor.for_database(settings.database_url)
    if server.store_process is not None:
        server.store_process.start()


def post_fork(server, worker):
    # A web process does not read the store process's heartbeat: the master does.
    if getattr(server, "store_process", None) is not None:
        server.store_process.forget_in_worker()


def on_reload(server):
    # SIGHUP (a release's code, or changed settings): the new web processes run the code now installed, and
    # so must the store process that stores their events.
    if getattr(server, "store_process", None) is not None:
        server.store_process.replace()


def on_exit(server):
    # After the web processes have finished their requests: stop the store process (it removes its socket).
    if getattr(server, "store_process", None) is not None:
        server.store_process.stop()
