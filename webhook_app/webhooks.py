"""POST /webhooks/stripe: verify, store once (inbox + outbox in one transaction), answer at once.

No business logic runs here; the worker does it. A 2xx tells Stripe the event is safely
stored, so anything that stops us storing it answers 503 and Stripe delivers it again. The
stores of a process are a group commit (`GroupCommit`): events that arrive while one is in
flight are stored together by the next, in one transaction, and each request answers after it.
On SQLite under gunicorn, the web processes send their events to one store process instead
(`StoreProcessClient`, webhook_app.store_process), which stores what arrives from all of them
together; a web process that cannot reach it stores the event itself, through its GroupCommit.

The path is served by a plain WSGI callable in front of the Flask app (`WebhookDispatcher`,
installed as the app's `wsgi_app` by create_app), not by a Flask view: Flask's request context,
routing, hooks and response object cost more CPU than the webhook's own work (docs/benchmarks.md).
The endpoint answers as the Flask app would, byte for byte: the error shape of
webhook_app.errors, the X-Request-Id header, the 405 of a method other than POST.
"""
from __future__ import annotations

import hmac
import json
import math
import os
import re
import socket
import struct
import threading
import time

import stripe
import structlog
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_content_length, get_input_stream

from consumers import metrics
from consumers.handlers import HANDLED_EVENT_TYPES
from models.db import writer_turn
from models.events import StoredEvent, store_events_pg, store_events_sqlite, why_not_storable
from models.base import new_id
from models.logs import describe_error
from webhook_app import store_process
from webhook_app.errors import INTERNAL_ERROR_MESSAGE, error_body
from webhook_app.gunicorn_logging import REQUEST_LOGGED

log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/webhooks/stripe"


class MalformedSignatureHeader(ValueError):
    """The Stripe-Signature header is not `t=<seconds>,v1=<hex>[,v1=…][,v0=…]` (says which part is wrong)."""


# Stripe's header is about 150 characters; several v1 signatures during a secret rotation fit many times over.
SIGNATURE_HEADER_LIMIT = 2048
_HEADER_CHARACTERS = re.compile(r"[\x21-\x7e]+")  # printable ASCII: no space, control or non-ASCII character
_V1_SIGNATURE = re.compile(r"[0-9a-f]{64}")  # hex of an HMAC-SHA256, as Stripe writes it
_SIGNATURE_SCHEME = stripe.WebhookSignature.EXPECTED_SCHEME


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and v1 signatures of a Stripe-Signature header, read ONCE, as Stripe's SDK reads them.

    Items are split on "," and each on its first two "=" (`WebhookSignature._get_timestamp_and_signatures`),
    so `t=<n>=x` means `t=<n>`, as the SDK has it. Stricter than the SDK where it would guess: exactly one
    `t` (two let a check and the HMAC read different timestamps), only ASCII digits in it, every v1 a
    64-digit hex HMAC, no empty or key-less part, no space, control or non-ASCII character.
    """
    if len(header) > SIGNATURE_HEADER_LIMIT:
        raise MalformedSignatureHeader(f"the Stripe-Signature header is over {SIGNATURE_HEADER_LIMIT} characters")
    if not _HEADER_CHARACTERS.fullmatch(header):
        raise MalformedSignatureHeader("the Stripe-Signature header holds a space, a control or a non-ASCII character")
    timestamps, signatures = [], []
    for item in header.split(","):
        parts = item.split("=", 2)
        if len(parts) < 2 or not parts[0]:
            raise MalformedSignatureHeader("the Stripe-Signature header has a part that is not key=value")
        if parts[0] == "t":
            timestamps.append(parts[1])
        elif parts[0] == _SIGNATURE_SCHEME:
            signatures.append(parts[1])
    if not timestamps:
        raise MalformedSignatureHeader("the Stripe-Signature header has no t= timestamp")
    if len(timestamps) > 1:
        raise MalformedSignatureHeader("the Stripe-Signature header has more than one t= timestamp; "
                                       "Stripe sends exactly one")
    timestamp = timestamps[0]
    if not (timestamp.isdigit() and len(timestamp) <= 12):
        raise MalformedSignatureHeader("the t= timestamp of the Stripe-Signature header is not a number of seconds")
    if not signatures:
        raise MalformedSignatureHeader(f"the Stripe-Signature header has no {_SIGNATURE_SCHEME}= signature")
    if not all(_V1_SIGNATURE.fullmatch(signature) for signature in signatures):
        raise MalformedSignatureHeader(f"a {_SIGNATURE_SCHEME}= signature of the Stripe-Signature header is not "
                                       "64 lowercase hex digits")
    return int(timestamp), signatures


def is_signed_by(payload: str, timestamp: int, signatures: list[str], secrets: tuple[str, ...]) -> bool:
    """Whether any of `signatures` is Stripe's HMAC of `<timestamp>.<payload>` under any of `secrets`.

    The HMAC is the SDK's own (`WebhookSignature._compute_signature`), so the scheme stays Stripe's; the
    comparison is constant-time on bytes (the header is ASCII by now, so nothing can make it raise).
    """
    signed_payload = f"{timestamp}.{payload}"
    candidates = [signature.encode("ascii") for signature in signatures]
    for secret in secrets:
        expected = stripe.WebhookSignature._compute_signature(signed_payload, secret).encode("ascii")
        if any(hmac.compare_digest(expected, candidate) for candidate in candidates):
            return True
    return False


class InvalidJson(ValueError):
    pass


def _refuse_constant(name: str):
    raise InvalidJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidJson("a number is too large for a float")
    return value


def object_with_unique_keys(pairs: list) -> dict:
    """A JSON object's pairs as a dict, or InvalidJson if a key repeats: the webhook's rule, and the
    shop API's (webhook_app.validation), so both read a body the same way."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidJson("an object repeats a key")  # which value counts would depend on the parser
    return obj


# Strict JSON (RFC 8259): no NaN/Infinity, no number that overflows to inf, no repeated key. The
# database must store what this process read, and other readers of the payload must read the same.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=object_with_unique_keys, parse_float=_finite_float,
                                parse_constant=_refuse_constant)


def parse_event_json(payload: str):
    """The body's JSON value, strictly; raises InvalidJson saying what is wrong."""
    if payload.startswith("\ufeff"):
        raise InvalidJson("the body starts with a byte-order mark")
    try:
        return _STRICT_JSON.decode(payload)
    except InvalidJson:
        raise
    except RecursionError:
        raise InvalidJson("the JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer over Python's digit limit
        raise InvalidJson(str(exc)[:200]) from None


class StoreBusy(Exception):
    """This process could not get its turn to write in time."""


# SQLite has one write lock per database file, and a connection that finds it taken waits in
# SQLite's busy handler, which sleeps between tries (up to 100 ms a try). With gthread workers
# every thread of every process asks at once and most requests sleep: p99 went to hundreds of
# ms. One store at a time per process (the group commit's leader) under this lock; only the
# processes, not their threads, meet in the busy handler. Bounded, like busy_timeout, so a
# request still gets a clean 503 under gunicorn's timeout.
_SQLITE_WRITER = threading.Lock()
_SQLITE_WRITER_TIMEOUT = 10.0

# How long a request waits in the group queue before a leader takes its event; then 503.
_QUEUE_TIMEOUT = 10.0


class StoreFailed(Exception):
    """The database driver refused or failed the store (the message says why, without the payload)."""


class ConnectionLost(StoreFailed):
    """The pooled connection was found closed by the server; it has been thrown away."""


class _Arrival:
    """One request's event in the group queue, and what its group's store did with it."""

    __slots__ = ("event", "payload", "woken", "taken", "group", "stored", "error")

    def __init__(self, event: dict, payload: str):
        self.event, self.payload = event, payload
        self.woken = threading.Event()  # set once: its group's store is over, or it leads the next group
        self.taken = False  # in a group (no longer only queued)
        self.group: list[_Arrival] | None = None  # the group it leads
        self.stored: StoredEvent | None = None
        self.error: BaseException | None = None


class GroupCommit:
    """The webhook's stores in one process, as a group commit: one store in flight at a time, and
    the events that arrive meanwhile are stored together by the next, in one statement
    (PostgreSQL) or one BEGIN IMMEDIATE … COMMIT (SQLite): one commit for the group.

    Leader and followers, no thread of its own: a request that finds no store in flight stores
    its event at once; one that finds a store in flight queues. When a store is over, the
    first queued request leads the next group (everything queued by then), and every request
    of the group that was stored is woken with its answer. A group never waits for more
    requests to come, so an idle endpoint stores each event alone, at once. Each request
    answers only after the commit that holds its event. A group whose store fails fails every
    request in it (each answers 503 and Stripe delivers each again); none of it is stored, since
    it was one transaction.
    """

    def __init__(self, engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._queued: list[_Arrival] = []
        self._leading = False  # a store is in flight, or about to be
        self.groups = 0  # groups stored (or failed) by this process, and the events in them
        self.events = 0

    def store(self, event: dict, payload: str) -> StoredEvent:
        arrival = _Arrival(event, payload)
        with self._lock:
            if self._leading:
                self._queued.append(arrival)
            else:
                self._leading = True
                arrival.group = [arrival]
        if arrival.group is None:
            if not arrival.woken.wait(_QUEUE_TIMEOUT):
                with self._lock:
                    if not arrival.taken:
                        self._queued.remove(arrival)
                        raise StoreBusy(f"no turn to store within {_QUEUE_TIMEOUT:g} s")
                arrival.woken.wait()  # in a group already: its answer comes with that group's commit
        if arrival.group is not None:
            self._lead(arrival.group)  # raises the store's own error, if it fails
        elif arrival.error is not None:  # the leader's error, as it was raised to the leader
            if isinstance(arrival.error, (StoreBusy, StoreFailed)):
                raise type(arrival.error)(str(arrival.error)) from arrival.error
            raise StoreFailed(describe_error(arrival.error)) from arrival.error
        return arrival.stored

    def _lead(self, group: list[_Arrival]) -> None:
        try:
            stored = _store_group(self.engine, [(member.event, member.payload) for member in group])
            for member, outcome in zip(group, stored):
                member.stored = outcome
        except BaseException as exc:
            for member in group:
                member.error = exc
            raise
        finally:
            with self._lock:
                self.groups += 1
                self.events += len(group)
                following, self._queued = self._queued, []
                for member in following:
                    member.taken = True
                if following:
                    following[0].group = following
                else:
                    self._leading = False
            for member in group[1:]:  # group[0] is this thread
                member.woken.set()
            if following:
                following[0].woken.set()


class StoreProcessClient:
    """The web process's side of the store process (webhook_app.store_process): one connection per
    thread, a request frame out, the answer back within _QUEUE_TIMEOUT (else StoreBusy: 503).

    The store process is an optimisation, never a single point of failure: when it cannot be reached
    (no socket, connection refused or lost, a malformed answer), the event is stored by `fallback`,
    this process's GroupCommit, under the same writers' turn. A connection kept from an earlier
    request that fails is first replaced once (the store process may have been restarted since).
    The store is idempotent by event id, so an event stored by the store process whose answer was
    lost is answered as a duplicate. After a failed connect, the store process is tried again at
    most once a second, not per request. A database error from the store process means the
    database refused: StoreFailed (503), as here.
    """

    RETRY_SECONDS = 1.0

    def __init__(self, path: str, fallback: GroupCommit):
        self.path, self.fallback = path, fallback
        self._local = threading.local()
        self._retry_at = 0.0  # time.monotonic() before which a new connection is not tried
        self._reachable = True  # for one log line per change, not one per request

    def store(self, event: dict, payload: str) -> StoredEvent:
        request = store_process.request_for(event, payload)
        while True:
            sock, kept = self._connection()
            if sock is None:
                return self.fallback.store(event, payload)
            try:
                sock.sendall(request)
                answer = store_process.answer_of(store_process.read_frame(sock))
            except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO / SO_SNDTIMEO ran out
                self._forget(sock)  # its answer may still come: it must not be read as the next request's
                raise StoreBusy(f"no answer from the store process within {_QUEUE_TIMEOUT:g} s") from None
            except (OSError, store_process.MalformedFrame) as exc:
                self._forget(sock)
                if kept:  # made for an earlier request: perhaps to a store process since restarted
                    continue
                log.warning("store_process_connection_lost", error=describe_error(exc))
                return self.fallback.store(event, payload)
            if isinstance(answer, str):
                raise StoreFailed(f"the store process: {answer}")
            return answer

    def _connection(self) -> tuple[socket.socket | None, bool]:
        """This thread's connection and whether it was kept from an earlier request, or (None, False)
        while the store process cannot be reached."""
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            return sock, True
        if time.monotonic() < self._retry_at:
            return None, False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.RETRY_SECONDS)  # a full listen queue: do not wait long, store here
            sock.connect(self.path)
            # Then blocking, with the kernel's timeouts: Python's own would poll() before every
            # send and recv, a system call more each on the webhook's hot path.
            sock.settimeout(None)
            wait = struct.pack("ll", int(_QUEUE_TIMEOUT), int(_QUEUE_TIMEOUT % 1 * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, wait)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, wait)
        except OSError as exc:
            sock.close()
            self._retry_at = time.monotonic() + self.RETRY_SECONDS
            if self._reachable:
                self._reachable = False
                log.warning("store_process_unreachable", socket=self.path, error=describe_error(exc),
                            hint="each web process stores its own events until it is back")
            return None, False
        if not self._reachable:
            self._reachable = True
            log.info("store_process_reachable", socket=self.path)
        self._local.sock = sock
        return sock, False

    def _forget(self, sock: socket.socket) -> None:
        self._local.sock = None
        sock.close()


def _store_group(engine, arrivals: list[tuple[dict, str]]) -> list[StoredEvent]:
    if engine.dialect.name == "postgresql":
        try:
            return _store_raw(engine, store_events_pg, arrivals)
        except ConnectionLost as exc:
            # The pool keeps no pre-ping: a connection the server closed (a restart, a failover)
            # is found here. The store is idempotent by event id, so once more on a fresh one.
            log.info("webhook_store_reconnecting", error=str(exc), events=len(arrivals))
            return _store_raw(engine, store_events_pg, arrivals)
    if not _SQLITE_WRITER.acquire(timeout=_SQLITE_WRITER_TIMEOUT):
        raise StoreBusy(f"no turn to write within {_SQLITE_WRITER_TIMEOUT:g} s")
    try:
        return _store_raw(engine, _store_sqlite, arrivals)
    finally:
        _SQLITE_WRITER.release()


def _store_sqlite(connection, arrivals: list[tuple[dict, str]], *, handled_types: frozenset[str]):
    # Under the turn every SQLite writer of every process takes (models.db), its rows made ready before.
    return store_events_sqlite(connection, arrivals, handled_types=handled_types, turn=writer_turn)


def _store_raw(engine, store, arrivals: list[tuple[dict, str]]) -> list[StoredEvent]:
    """Store through the driver's own connection from the pool: no ORM Session and none of
    SQLAlchemy's per-statement machinery, which was most of the request's CPU time."""
    try:
        connection = engine.raw_connection()  # the pool raises the driver's own error here, unwrapped
    except engine.dialect.loaded_dbapi.Error as exc:
        raise StoreFailed(describe_error(exc)) from exc
    try:
        return store(connection.dbapi_connection, arrivals, handled_types=HANDLED_EVENT_TYPES)
    except engine.dialect.loaded_dbapi.Error as exc:
        if engine.dialect.is_disconnect(exc, connection.dbapi_connection, None):
            connection.invalidate(exc)
            raise ConnectionLost(describe_error(exc)) from exc
        raise StoreFailed(describe_error(exc)) from exc
    finally:
        connection.close()  # back to the pool (or closed, if invalidated)


# The two answers to a stored event, serialised once (as jsonify would, compact and sorted).
_ANSWERS = {duplicate: json.dumps({"duplicate": duplicate, "received": True}, separators=(",", ":")).encode()
            for duplicate in (False, True)}


# Status lines as Flask's response object writes them ("405 METHOD NOT ALLOWED").
_STATUS_LINES = {code: f"{code} {HTTP_STATUS_CODES[code].upper()}" for code in (200, 400, 405, 413, 500, 503)}


# What the Flask app answered a method other than POST on this path (its HTTPException handler).
_METHOD_NOT_ALLOWED = error_body("method_not_allowed", "The method is not allowed for the requested URL.")
_INTERNAL_ERROR = error_body("internal_error", INTERNAL_ERROR_MESSAGE)


class WebhookDispatcher:
    """The app's WSGI entry (Flask's `app.wsgi_app`): Stripe's webhook path to `endpoint`, every other
    path to Flask. Tests (`app.test_client()`) and gunicorn (`webhook_app:create_app()`) both go through it."""

    def __init__(self, flask_wsgi_app, endpoint):
        self.flask_wsgi_app = flask_wsgi_app
        self.endpoint = endpoint

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        # Werkzeug's routing ignores repeated leading slashes ("//webhooks/stripe"); so does this.
        if path == WEBHOOK_PATH or (path.startswith("//") and "/" + path.lstrip("/") == WEBHOOK_PATH):
            return self.endpoint(environ, start_response)
        return self.flask_wsgi_app(environ, start_response)


class StripeWebhookEndpoint:
    """POST /webhooks/stripe as a plain WSGI callable, given the app's state (webhook_app.AppState).

    Does what the request machinery did for the webhook and nothing more: the request id (the
    caller's X-Request-Id or a new one, bound for every log line and echoed), contextvars cleared
    before and after, and an unexpected error logged as `request_failed`, counted (reason `internal_error`)
    and answered 500.
    """

    def __init__(self, shop):
        self.shop = shop
        self.group_commit = GroupCommit(shop.store_engine)
        # Under gunicorn on SQLite, the master runs one store process for every web process and
        # names its socket in the environment; only its own database's socket is used. Otherwise
        # (PostgreSQL, the test client, another server) this process stores its events itself.
        self.store_process: StoreProcessClient | None = None
        engine = shop.store_engine
        announced = os.environ.get(store_process.SOCKET_ENV)
        if (announced and engine.dialect.name == "sqlite"
                and announced == store_process.socket_path(engine.url.database)):
            self.store_process = StoreProcessClient(announced, self.group_commit)
        self.events_store = self.store_process or self.group_commit

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        request_id = environ.get("HTTP_X_REQUEST_ID") or new_id("req")
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            method = environ.get("REQUEST_METHOD", "GET").upper()
            if method == "OPTIONS":  # as Flask answers it for a POST-only route
                start_response(_STATUS_LINES[200], [("Content-Type", "text/html; charset=utf-8"),
                                                    ("Allow", "POST, OPTIONS"), ("X-Request-Id", request_id),
                                                    ("Content-Length", "0")])
                return [b""]
            headers = [("Content-Type", "application/json")]
            if method != "POST":
                status, body = 405, _METHOD_NOT_ALLOWED
                headers.append(("Allow", "OPTIONS, POST"))  # as Flask's 405 says it for a POST-only route
            else:
                try:
                    status, body = _Delivery(self.shop, self.events_store, environ, started).answer()
                except Exception:
                    log.exception("request_failed")
                    # A bug, not bad input: counted, so rates do not miss it and an alert sees it. Under the
                    # event's type once it was read (bound for the log lines; looked up here only, on failure).
                    metrics.observe_webhook(structlog.contextvars.get_contextvars().get("event_type"),
                                            "rejected", "internal_error")
                    status, body = 500, _INTERNAL_ERROR
            start_response(_STATUS_LINES[status], [*headers, ("Content-Length", str(len(body))),
                                                   ("X-Request-Id", request_id)])
            return [b""] if method == "HEAD" else [body]
        finally:
            structlog.contextvars.clear_contextvars()


class _Delivery:
    """One POST: size limit, signature, strict JSON, event checks, then the store; answer() gives (status, body)."""

    def __init__(self, shop, events_store: GroupCommit | StoreProcessClient, environ, started: float):
        self.shop, self.events_store, self.environ, self.started = shop, events_store, environ, started

    def fields(self, status: int) -> dict:
        """What gunicorn's access line would say; the webhook's own line says it instead (one line a request)."""
        self.environ[REQUEST_LOGGED] = True
        return {"method": "POST", "path": WEBHOOK_PATH, "http_status": status,
                "duration_ms": round((time.perf_counter() - self.started) * 1000, 2),
                "remote_addr": self.environ.get("REMOTE_ADDR")}

    def reject(self, status: int, code: str, message: str) -> tuple[int, bytes]:
        log.warning("webhook_rejected", code=code, reason=message, **self.fields(status))
        metrics.observe_webhook(None, "rejected", code)
        return status, error_body(code, message)

    def answer(self) -> tuple[int, bytes]:
        settings, environ = self.shop.settings, self.environ
        if not settings.webhook_secrets:
            log.error("webhook_secrets_missing", hint="set STRIPE_WEBHOOK_SECRETS to the endpoint's whsec_ secret(s)")
            metrics.observe_webhook(None, "rejected", "webhook_not_configured")  # every delivery refused: alert on it
            return 500, error_body("webhook_not_configured",
                                   "STRIPE_WEBHOOK_SECRETS is not set on this service; the event was not stored")
        limit = settings.max_webhook_bytes
        content_length = get_content_length(environ)
        if content_length is not None and content_length > limit:
            return self.reject(413, "payload_too_large", f"the body is over the {limit}-byte limit")
        # Werkzeug's guarded stream: never past Content-Length, and empty without one unless the
        # server ends the body itself (gunicorn does, for chunked requests).
        raw = get_input_stream(environ).read(limit + 1)
        if len(raw) > limit:
            return self.reject(413, "payload_too_large", f"the body is over the {limit}-byte limit")

        header = environ.get("HTTP_STRIPE_SIGNATURE")
        if not header:
            return self.reject(400, "missing_signature", "the Stripe-Signature header is missing")
        try:
            signed_at, signatures = parse_signature_header(header)
        except MalformedSignatureHeader as exc:
            return self.reject(400, "invalid_signature", f"signature verification failed: {exc}")
        try:
            payload = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self.reject(400, "invalid_payload", "the body is not UTF-8")
        if not is_signed_by(payload, signed_at, signatures, settings.webhook_secrets):
            return self.reject(400, "invalid_signature", "signature verification failed: no v1 signature matches "
                               "the body under this endpoint's secret(s)")
        # One parse decides both directions: the SDK refuses only a stale timestamp; one far ahead is as suspect.
        tolerance = settings.webhook_tolerance_seconds
        now = time.time()
        if signed_at < now - tolerance:
            return self.reject(400, "invalid_signature", f"signature verification failed: timestamp {signed_at} is "
                               f"older than the {tolerance}-second tolerance")
        if signed_at > now + tolerance:
            return self.reject(400, "invalid_signature", f"signature verification failed: timestamp {signed_at} is "
                               f"in the future, outside the {tolerance}-second tolerance")

        try:
            event = parse_event_json(payload)
        except InvalidJson as exc:
            return self.reject(400, "invalid_payload", f"the body is not valid JSON: {exc}")
        problem = why_not_storable(event)
        if problem:
            return self.reject(400, "not_an_event", problem)

        structlog.contextvars.bind_contextvars(event_id=event["id"], event_type=event["type"])
        try:
            stored = self.events_store.store(event, payload)
        except (SQLAlchemyError, StoreBusy, StoreFailed) as exc:
            log.error("webhook_store_failed", error=describe_error(exc), **self.fields(503))
            # In the ingest latency too: a store that hangs before it fails is the slowest request of all.
            metrics.observe_webhook(event["type"], "rejected", "storage_unavailable",
                                    seconds=time.perf_counter() - self.started)
            return 503, error_body("storage_unavailable", "the event could not be stored; please retry")
        log.info("webhook_received", duplicate=stored.duplicate, status=stored.status.value, **self.fields(200))
        metrics.observe_webhook(event["type"], "duplicate" if stored.duplicate else "accepted",
                                seconds=time.perf_counter() - self.started)
        return 200, _ANSWERS[stored.duplicate]
