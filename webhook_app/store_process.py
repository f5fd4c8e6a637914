"""The store process: on SQLite, one process stores the webhook events of every web process.

Each web process used to store its own events as a group commit, and the web processes took turns
for SQLite's one writer: each re-read the pages the other had just written, stored small groups,
and the hand-over of the turn left the machine idle. One process that every web process sends its
events to over a Unix socket stores everything that arrived as one group, in one transaction
(docs/benchmarks.md). It is an optimisation, never a single point of failure: a web process that
cannot reach it stores the event itself (webhook_app.webhooks.StoreProcessClient).

gunicorn's master starts it (`StoreProcessSupervisor`, from gunicorn.conf.py) as
`python -m webhook_app.store_process`, restarts it when it exits, replaces it (kill -9, then a new
one) when it hangs while alive (its heartbeat, below, stops), and stops it at exit; it also dies
with the master. The socket is `<database>-store.sock`, next to the database, so two services
with different databases never meet, and only the service's user may connect to it.

Heartbeat: a thread of the store process writes a byte every HEARTBEAT_INTERVAL_SECONDS to a pipe
that the master reads. It is not the serving loop, so a loop that waits for SQLite's writer (the
writers' turn and busy_timeout are 10 s each) beats on; the thread stops beating only when the
whole process stops (SIGSTOP, a thread holding the GIL) or when the loop has been inside one turn
longer than LOOP_STUCK_SECONDS, far over every bounded wait a group makes (a deadlock, stuck I/O).
The master replaces it after HUNG_AFTER_SECONDS without a byte.

Frames, both ways: a 4-byte big-endian length, then `marshal` of plain values (never pickle).
marshal is not made for untrusted data: only the service's user can reach the socket, a request
must open as a tuple of 6 before marshal reads it, and whatever marshal or the checks raise refuses
that frame alone (its connection is closed), never the loop.
  request  (event_id, type, api_version | None, livemode, object_id | None, payload)
  answer   ("stored", inbox id, status, duplicate) or ("failed", what the database said)
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import marshal
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import structlog

from models.events import API_VERSION, EVENT_ID, EVENT_TYPE, OBJECT_ID, EventStatus, StoredEvent

log = structlog.get_logger(__name__)

# Set by gunicorn's master (StoreProcessSupervisor) for its web processes: the socket of the store
# process it runs. A web process uses it only if it is its own database's socket (`socket_path`).
SOCKET_ENV = "SHOP_STORE_SOCKET"

# Events stored in one transaction at most, so one huge burst does not hold the others' answers.
BATCH_LIMIT = 256
# Room in a frame for the event's other fields beside its payload (at most the webhook's body limit).
_FRAME_OVERHEAD = 64 * 1024
_LENGTH = struct.Struct("!I")
_STATUSES = frozenset(status.value for status in EventStatus)
# A Unix socket's path is at most 107 bytes (sun_path, with its NUL); the temporary name is longer.
_SUN_PATH_LIMIT = 107
_TEMPORARY_SUFFIX = ".tmp"

STARTUP_WAIT_SECONDS = 10.0
WATCH_INTERVAL_SECONDS = 1.0
STOP_WAIT_SECONDS = 5.0
# A store process that exits within this long of its start is restarted after a pause that doubles
# up to RESTART_PAUSE_LIMIT_SECONDS: each start costs a second of CPU, and the web stores meanwhile.
SHORT_LIFE_SECONDS = 10.0
RESTART_PAUSE_LIMIT_SECONDS = 60.0

# The heartbeat (module docstring). A healthy process beats ten times within HUNG_AFTER_SECONDS:
# silence that long is not load (the beating thread waits for nothing but the GIL, which every
# wait of the loop releases, and the scheduler runs a runnable thread within milliseconds), and it
# is under the web's 10 s wait, so the requests held by a hung process are answered (their
# connections close at the kill; they go to the new process or are stored by the web) before
# they time out with 503.
HEARTBEAT_INTERVAL_SECONDS = 0.5
HUNG_AFTER_SECONDS = 5.0
# Before its first beat a new process imports the service (about a second of CPU, more when busy).
FIRST_BEAT_SECONDS = 30.0
# One turn of the loop (one group) waits at most for the writers' turn (10 s), then for SQLite's
# lock on connecting and at BEGIN IMMEDIATE (busy_timeout, 10 s each), then its own I/O: a turn
# that lasts twice that long never ends.
LOOP_STUCK_SECONDS = 60.0


class MalformedFrame(ValueError):
    """A frame that is not what the protocol says (the message says what is wrong)."""


def socket_path(database: str | None) -> str | None:
    """The store process's socket for a SQLite database file, or None when there can be none
    (an in-memory database, or a path too long for a Unix socket)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = os.path.abspath(database) + "-store.sock"
    if len(os.fsencode(path + _TEMPORARY_SUFFIX)) > _SUN_PATH_LIMIT:
        return None
    return path


def frame(value) -> bytes:
    body = marshal.dumps(value)
    return _LENGTH.pack(len(body)) + body


def request_for(event: dict, payload: str) -> bytes:
    """The request frame of a verified event: only what store_events_sqlite reads, and the raw payload."""
    object_id = (event.get("data", {}).get("object") or {}).get("id")
    return frame((event["id"], event["type"], event.get("api_version"), bool(event.get("livemode", False)),
                  object_id if isinstance(object_id, str) else None, payload))


# marshal's code for a tuple of fewer than 256 items, with or without its "referenced" flag (0x80).
_SMALL_TUPLE = ord(")")


def _decoded_request(body: bytes):
    """A request frame's body decoded; MalformedFrame before marshal reads it if it does not open as a
    tuple of 6 (marshal would otherwise build whatever the frame declares, a tuple of 2**31 items say)."""
    if len(body) < 2 or body[0] & 0x7F != _SMALL_TUPLE or body[1] != 6:
        raise MalformedFrame("a request is a tuple of 6 values")
    return marshal.loads(body)


def event_of_request(value) -> tuple[dict, str]:
    """(event, payload) as store_events_sqlite takes them, from a decoded request; MalformedFrame if it is not one."""
    if not (isinstance(value, tuple) and len(value) == 6):
        raise MalformedFrame("a request is a tuple of 6 values")
    event_id, event_type, api_version, livemode, object_id, payload = value
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str) and event_type):
        raise MalformedFrame("the event id and type must be non-empty strings")
    if not (api_version is None or isinstance(api_version, str)) or not isinstance(livemode, bool):
        raise MalformedFrame("api_version must be a string or None, livemode true or false")
    if not (object_id is None or isinstance(object_id, str)) or not isinstance(payload, str):
        raise MalformedFrame("the object id must be a string or None, the payload a string")
    # The webhook's own rules for what goes into columns (models.events): a request that breaks them would
    # fail its whole group at the database (a lone surrogate cannot be encoded), so it is refused alone.
    if not (EVENT_ID.fullmatch(event_id) and EVENT_TYPE.fullmatch(event_type)
            and (api_version is None or API_VERSION.fullmatch(api_version))
            and (object_id is None or OBJECT_ID.fullmatch(object_id))):
        raise MalformedFrame("the event id, type, api_version or object id breaks the webhook's rules for them")
    try:
        payload.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedFrame("the payload is not encodable as UTF-8 (a lone surrogate)") from None
    event = {"id": event_id, "type": event_type, "api_version": api_version, "livemode": livemode,
             "data": {"object": {"id": object_id}}}
    return event, payload


def answer_of(body: bytes) -> StoredEvent | str:
    """A decoded answer: the stored event, or the database's refusal as a message; MalformedFrame otherwise."""
    try:
        value = marshal.loads(body)
    except (ValueError, EOFError, TypeError) as exc:
        raise MalformedFrame(f"the answer is not marshal data: {exc}") from None
    if isinstance(value, tuple) and len(value) == 4 and value[0] == "stored":
        _tag, stored_id, status, duplicate = value
        if type(stored_id) is int and status in _STATUSES and isinstance(duplicate, bool):
            return StoredEvent(stored_id, EventStatus(status), duplicate)
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "failed" and isinstance(value[1], str):
        return value[1]
    raise MalformedFrame("the answer is neither stored nor failed")


def read_frame(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """The body of the one frame the peer sends back, read from a socket in blocking mode with the
    caller's timeout (Python's or the kernel's SO_RCVTIMEO); usually one recv. ConnectionError if the
    peer closes, MalformedFrame if the length is over `limit` or more than one frame came."""
    received = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the store process closed the connection")
        received += chunk
        if len(received) < _LENGTH.size:
            continue
        (size,) = _LENGTH.unpack_from(received)
        if size > limit:
            raise MalformedFrame(f"a frame of {size} bytes is over the {limit}-byte limit")
        if len(received) > _LENGTH.size + size:
            raise MalformedFrame("more than the one frame asked for")
        if len(received) == _LENGTH.size + size:
            return received[_LENGTH.size:]


# --- the store process ---------------------------------------------------------------------------


class _Client:
    __slots__ = ("sock", "received", "closed")

    def __init__(self, sock: socket.socket):
        self.sock, self.received, self.closed = sock, bytearray(), False


class StoreServer:
    """One thread: a selector over the listening socket and its clients. Each turn reads every
    complete request that arrived (up to BATCH_LIMIT), stores them all in one transaction under the
    writers' turn (the relay and workers take it too), answers each client, and loops."""

    def __init__(self, engine, listener: socket.socket, *, max_frame: int):
        self.engine, self.listener, self.max_frame = engine, listener, max_frame
        self.groups = 0  # transactions (stored or failed) and the events in them, for the stop line
        self.events = 0
        self.stopping = False
        # time.monotonic() when the loop's current turn began; 0.0 while it waits in select (idle
        # is never stuck). Read by the heartbeat's thread.
        self.busy_since = 0.0
        self._connection = None
        self._clients: list[_Client] = []
        self._selector = selectors.DefaultSelector()
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        for end in (self.listener, self._wakeup_read, self._wakeup_write):
            end.setblocking(False)
        self._selector.register(self.listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wakeup_read, selectors.EVENT_READ, "wakeup")
        # One descriptor held in reserve: out of descriptors, it is let go to accept a waiting client and
        # close it at once (its web thread then stores the event itself), instead of leaving the client
        # waiting for an answer and the listener readable, which would spin the loop.
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY)
        self._out_of_descriptors = False  # logged once per episode, not once per waiting client
        self._listen_again_at = 0.0  # time.monotonic() to watch the listener again, when it was set aside

    def stop_on_signals(self) -> None:
        """SIGTERM and SIGINT end the loop after the batch in hand (its clients get their answers)."""
        def stop(_signum, _frame):
            self.stopping = True

        signal.set_wakeup_fd(self._wakeup_write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def serve(self) -> None:
        try:
            while not self.stopping:
                self.busy_since = time.monotonic()
                batch = self._take_requests()
                if batch:
                    self._store(batch)
                    continue  # more may be complete already: take them before waiting again
                self.busy_since = 0.0
                ready = self._selector.select(self._listener_pause())
                self.busy_since = time.monotonic()
                for key, _mask in ready:
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wakeup":
                        self._drain_wakeup()
                    else:
                        self._receive(key.data)
        finally:
            for client in list(self._clients):
                self._close(client)
            self._selector.close()
            if self._spare is not None:
                os.close(self._spare)
            if self._connection is not None:
                self._connection.close()

    def _listener_pause(self) -> float | None:
        """select()'s timeout: None, unless the listener was set aside (`_accept`); watched again once due."""
        if not self._listen_again_at:
            return None
        left = self._listen_again_at - time.monotonic()
        if left > 0:
            return left
        self._listen_again_at = 0.0
        self._selector.register(self.listener, selectors.EVENT_READ, "listener")
        return None

    def _accept(self) -> None:
        while True:
            try:
                sock, _address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self._turn_away():
                    continue
                # Another failure, or no spare descriptor: the listener is set aside for a second, so a
                # readable listener does not spin the loop; waiting clients time out or fall back.
                log.error("store_process_accept_failed", error=str(exc))
                self._selector.unregister(self.listener)
                self._listen_again_at = time.monotonic() + 1.0
                return
            if self._out_of_descriptors:
                self._out_of_descriptors = False
                log.info("store_process_accepting_again")
            sock.setblocking(False)
            client = _Client(sock)
            self._clients.append(client)
            self._selector.register(sock, selectors.EVENT_READ, client)

    def _turn_away(self) -> bool:
        """Out of descriptors: accept one waiting client with the spare descriptor and close it at once, so
        it stores its event itself (StoreProcessClient's fallback); False if there is no spare to let go."""
        if self._spare is None:
            return False
        if not self._out_of_descriptors:
            self._out_of_descriptors = True
            log.error("store_process_out_of_descriptors",
                      reason="new connections are closed at once; their web processes store the events themselves")
        os.close(self._spare)
        self._spare = None
        try:
            sock, _address = self.listener.accept()
            sock.close()
        except OSError:
            pass
        try:
            self._spare = os.open(os.devnull, os.O_RDONLY)
        except OSError:  # taken meanwhile: accept failures set the listener aside instead
            pass
        return True

    def _drain_wakeup(self) -> None:
        try:
            while self._wakeup_read.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _receive(self, client: _Client) -> None:
        try:
            data = client.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the web process closed it (its thread timed out, or the process exited)
            self._close(client)
            return
        client.received += data
        if len(client.received) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(client.received)
            if size > self.max_frame:  # refused before it is read: no client makes us hold a huge frame
                self._refuse(client, f"a frame of {size} bytes is over the {self.max_frame}-byte limit")

    def _take_requests(self) -> list[tuple[_Client, dict, str]]:
        batch: list[tuple[_Client, dict, str]] = []
        for client in list(self._clients):
            buffer = client.received
            while len(batch) < BATCH_LIMIT and len(buffer) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(buffer)
                if size > self.max_frame:
                    self._refuse(client, f"a frame of {size} bytes is over the {self.max_frame}-byte limit")
                    break
                if len(buffer) < _LENGTH.size + size:
                    break
                body = bytes(buffer[_LENGTH.size:_LENGTH.size + size])
                del buffer[:_LENGTH.size + size]
                try:
                    event, payload = event_of_request(_decoded_request(body))
                # MalformedFrame is a ValueError; marshal raises others too (SystemError, MemoryError, …) on
                # crafted data: every one refuses this frame and closes its connection, never the loop.
                except Exception as exc:  # noqa: BLE001
                    self._refuse(client, f"{type(exc).__name__}: {exc}"[:200])
                    break
                batch.append((client, event, payload))
        return [request for request in batch if not request[0].closed]

    def _store(self, batch: list[tuple[_Client, dict, str]]) -> None:
        from consumers.handlers import HANDLED_EVENT_TYPES
        from models.db import writer_turn
        from models.events import store_events_sqlite
        from models.logs import describe_error

        try:
            if self._connection is None:
                self._connection = self.engine.raw_connection()
            stored = store_events_sqlite(self._connection.dbapi_connection,
                                         [(event, payload) for _client, event, payload in batch],
                                         handled_types=HANDLED_EVENT_TYPES, turn=writer_turn)
            answers = [frame(("stored", outcome.id, outcome.status.value, outcome.duplicate)) for outcome in stored]
        except Exception as exc:  # the database refused the group: every member answers 503, Stripe retries each
            error = describe_error(exc)
            log.error("store_process_store_failed", error=error, events=len(batch))
            answers = [frame(("failed", error))] * len(batch)
            self._forget_connection()
        self.groups += 1
        self.events += len(batch)
        for (client, _event, _payload), answer in zip(batch, answers):
            if client.closed:
                continue
            try:
                client.sock.sendall(answer)  # a few bytes to a client waiting for them: never blocks
            except (BlockingIOError, InterruptedError):
                self._refuse(client, "it does not read its answers")
            except OSError:
                self._close(client)  # gone: its web thread stores the event itself

    def _forget_connection(self) -> None:
        # A fresh connection for the next group: SQLite's are cheap, and this one may be the problem.
        if self._connection is not None:
            try:
                self._connection.invalidate()
            except Exception:  # noqa: BLE001 -- it is being thrown away
                pass
            self._connection = None

    def _refuse(self, client: _Client, reason: str) -> None:
        log.warning("store_process_bad_frame", reason=reason)
        self._close(client)

    def _close(self, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        self._selector.unregister(client.sock)
        self._clients.remove(client)
        client.sock.close()


class Heartbeat:
    """The store process's side of the heartbeat: a daemon thread writing a byte to the master's
    pipe every HEARTBEAT_INTERVAL_SECONDS while the loop is not stuck (module docstring)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.server: StoreServer | None = None  # until it serves, waiting (for the lock) is not stuck
        self._stuck_logged = False
        os.set_blocking(fd, False)

    def start(self) -> None:
        threading.Thread(target=self._run, name="store-process-heartbeat", daemon=True).start()

    def beat(self) -> bool:
        """One beat, unless the loop is stuck; False once the master is gone (nothing to beat for)."""
        server = self.server
        busy_since = server.busy_since if server is not None else 0.0
        stuck_for = time.monotonic() - busy_since if busy_since else 0.0
        if stuck_for > LOOP_STUCK_SECONDS:
            if not self._stuck_logged:
                self._stuck_logged = True
                log.error("store_process_stuck", seconds=round(stuck_for, 1),
                          reason="one turn of the serving loop outlasted every wait it makes; heartbeat stopped")
            return True
        try:
            os.write(self.fd, b".")
        except BlockingIOError:  # the pipe is full: the master has not read for hours, yet beats were sent
            pass
        except OSError:  # the master closed its end: it replaced this process, or is gone
            return False
        return True

    def _run(self) -> None:
        while self.beat():
            time.sleep(HEARTBEAT_INTERVAL_SECONDS)


def _listen(path: str) -> tuple[socket.socket, os.stat_result]:
    """Bound under a temporary name and renamed into place: a client never finds a socket that does
    not listen yet. Owner-only, so only the service's user can send events to be stored."""
    temporary = path + _TEMPORARY_SUFFIX
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mask = os.umask(0o077)
    try:
        listener.bind(temporary)
    finally:
        os.umask(mask)
    os.chmod(temporary, 0o600)
    listener.listen(512)
    os.rename(temporary, path)  # replaces what a killed store process left behind
    return listener, os.stat(path)


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: SIGTERM when gunicorn's master dies, however it dies (kill -9 included)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        sys.exit(0)  # the master died before the line above: nobody would stop this process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m webhook_app.store_process",
        description="Store the webhook events of every web process in one process (SQLite only). "
                    "gunicorn.conf.py starts it; it listens on <database>-store.sock. Configured by "
                    "DATABASE_URL, LOG_FORMAT and WEBHOOK_MAX_BYTES, as the web processes are.")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process (gunicorn's master) is gone")
    parser.add_argument("--heartbeat-fd", type=int, default=None,
                        help="write a byte to this inherited pipe every "
                             f"{HEARTBEAT_INTERVAL_SECONDS:g} s while serving is not stuck (the master "
                             f"replaces a process silent for {HUNG_AFTER_SECONDS:g} s)")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)
    heartbeat = Heartbeat(args.heartbeat_fd) if args.heartbeat_fd is not None else None
    if heartbeat is not None:
        heartbeat.start()  # already while it waits for the lock below: waiting is not hanging

    from models.db import make_engine
    from models.logs import configure_logging
    from models.settings import Settings

    settings = Settings.from_env()
    configure_logging(settings.log_format)
    if not settings.database_url.startswith("sqlite"):
        log.error("store_process_not_started", reason="the store process is for SQLite only")
        return 2
    engine = make_engine(settings.database_url)
    path = socket_path(engine.url.database)
    if path is None:
        log.error("store_process_not_started", reason="the database has no path a Unix socket can be made next to",
                  database=engine.url.database)
        return 2
    # One store process per database, even if two masters serve it: a second one waits its turn here.
    lock = os.open(path.removesuffix(".sock") + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("store_process_waiting", reason="another store process serves this database", socket=path)
        fcntl.flock(lock, fcntl.LOCK_EX)
    listener, bound = _listen(path)
    server = StoreServer(engine, listener, max_frame=settings.max_webhook_bytes + _FRAME_OVERHEAD)
    if heartbeat is not None:
        heartbeat.server = server
    server.stop_on_signals()
    log.info("store_process_started", socket=path, pid=os.getpid())
    try:
        server.serve()
    finally:
        try:
            if os.stat(path).st_ino == bound.st_ino:  # still ours
                os.unlink(path)
        except FileNotFoundError:
            pass
        listener.close()
        engine.dispose()
        log.info("store_process_stopped", groups=server.groups, events=server.events)
        os.close(lock)
    return 0


# --- in gunicorn's master ------------------------------------------------------------------------


class StoreProcessSupervisor:
    """Runs the store process for gunicorn's master: started in on_starting, restarted when it exits
    and replaced (kill -9, then a new one) when its heartbeat stops (a daemon thread looks once a
    second), replaced when gunicorn reloads (on_reload), stopped in on_exit. The web processes learn its socket from SOCKET_ENV, which they
    inherit from the master."""

    def __init__(self, socket: str, database: str):
        self.socket, self.database = socket, database
        self.proc: subprocess.Popen | None = None
        self._started_at = 0.0
        self._pause = 0.0  # before restarting a store process that died young (doubles each time)
        self._retry_at = 0.0  # time.monotonic() before which a start that failed is not tried again
        self._beats: int | None = None  # the read end of the running store process's heartbeat pipe
        self._last_beat = 0.0  # time.monotonic() when a beat was last read (or the process started)
        self._beating = False  # a beat was read from this process: it is past its start
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @classmethod
    def for_database(cls, database_url: str) -> "StoreProcessSupervisor | None":
        """A supervisor when the database is a SQLite file, else None (PostgreSQL stores as before)."""
        if not database_url.startswith("sqlite"):
            return None
        from sqlalchemy.engine import make_url

        database = make_url(database_url).database
        path = socket_path(database)
        if path is None:
            log.warning("store_process_not_started", database=database,
                        reason="no Unix socket can be made next to this database; each web process stores its own")
            return None
        return cls(path, os.path.abspath(database))

    def start(self) -> None:
        os.environ[SOCKET_ENV] = self.socket  # the web processes are forked after this
        with self._lock:
            if os.path.exists(self.database):
                self._spawn()
            else:  # not migrated yet (or not the service's app): started by the watch once it exists
                log.info("store_process_waiting_for_database", database=self.database)
        # Not required (a web process that finds no socket stores the event itself), but the first
        # requests then go through it.
        deadline = time.monotonic() + STARTUP_WAIT_SECONDS
        while (self.proc is not None and self.proc.poll() is None and not os.path.exists(self.socket)
               and time.monotonic() < deadline):
            time.sleep(0.02)
        threading.Thread(target=self._watch, name="store-process-watch", daemon=True).start()

    def _spawn(self) -> None:
        env = dict(os.environ)
        # The same code as the master runs, wherever it was imported from.
        code_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [code_root, env.get("PYTHONPATH")]))
        self._close_beats()
        beats, beat_end = os.pipe()
        os.set_blocking(beats, False)
        try:
            # A session of its own: a stop meant for gunicorn's process group (Ctrl-C in `make run`, honcho's
            # or a supervisor's signal to the group) reaches the master, which stops this process after its
            # web processes have answered their last requests (`stop`), instead of ending it first and
            # seeing it exit, restarting it, while those requests are still being answered. The master's
            # death still ends it (`_die_with_parent`).
            self.proc = subprocess.Popen([sys.executable, "-m", "webhook_app.store_process",
                                          "--parent-pid", str(os.getpid()), "--heartbeat-fd", str(beat_end)],
                                         env=env, pass_fds=(beat_end,), start_new_session=True)
        except BaseException:
            os.close(beats)
            raise
        finally:
            os.close(beat_end)  # the child's copy only: its death is then seen as the end of the pipe
        self._beats = beats
        self._started_at = self._last_beat = time.monotonic()
        self._beating = False

    def forget_in_worker(self) -> None:
        """In a web process just forked from the master: close its copy of the heartbeat pipe's read
        end (fork copies every descriptor), which only the master reads. Without the lock, which a
        thread of the master may have held at the fork and nobody would let go of here."""
        beats, self._beats = self._beats, None
        if beats is not None:
            try:
                os.close(beats)
            except OSError:
                pass

    def _close_beats(self) -> None:
        if self._beats is not None:
            os.close(self._beats)
            self._beats = None

    def _silent_for(self, now: float) -> float | None:
        """How long the running store process has been silent, if that is past its allowance
        (HUNG_AFTER_SECONDS, or FIRST_BEAT_SECONDS before its first beat); else None. The pipe is
        read first: a master that looks late is never the reason for a kill."""
        try:
            while os.read(self._beats, 4096):  # b"" at the end: the process is gone, poll() says so
                self._last_beat, self._beating = now, True
        except BlockingIOError:
            pass
        silent = now - self._last_beat
        allowed = HUNG_AFTER_SECONDS if self._beating else FIRST_BEAT_SECONDS
        return silent if silent > allowed else None

    def _kill_hung(self, silent: float) -> None:
        """kill -9: SIGTERM would wait on the very loop that hangs. Its connections close, so the
        requests waiting on it go to the new process or are stored by their web process at once."""
        proc = self.proc
        log.error("store_process_hung", pid=proc.pid, silent_seconds=round(silent, 1),
                  reason="no heartbeat: stopped, deadlocked or stuck in I/O; killed and replaced")
        proc.kill()
        try:
            proc.wait(STOP_WAIT_SECONDS)
        except subprocess.TimeoutExpired:  # in uninterruptible I/O: the new one waits for its lock
            log.error("store_process_not_dead", pid=proc.pid,
                      reason=f"still there {STOP_WAIT_SECONDS:g} s after SIGKILL; starting the next one anyway")
            proc.returncode = -signal.SIGKILL  # the kernel ends it when its I/O returns

    def _watch(self) -> None:
        exited_at = None
        while not self._stopping.wait(WATCH_INTERVAL_SECONDS):
            try:
                exited_at = self._look(exited_at)
            except Exception as exc:  # noqa: BLE001 -- the watch must outlive any one failure
                # A start that failed (the interpreter gone in a deploy, fork or pipe out of resources):
                # no store process meanwhile (the web processes store their events themselves); the
                # next look starts one, after the same doubling pause as a process that died young.
                log.error("store_process_restart_failed", error=f"{type(exc).__name__}: {exc}")
                with self._lock:
                    if self.proc is not None and self.proc.poll() is None:
                        continue  # failed after it started: it runs, and is watched as ever
                    self.proc = None
                    self._pause = min(max(self._pause * 2, WATCH_INTERVAL_SECONDS), RESTART_PAUSE_LIMIT_SECONDS)
                    self._retry_at = time.monotonic() + self._pause
                exited_at = None

    def _look(self, exited_at: float | None) -> float | None:
        """One look of the watch: start, restart or replace the store process as needed; gives the time
        the running one was found exited (for its restart pause), or None."""
        with self._lock:
            if self._stopping.is_set():
                return None
            if self.proc is None:
                if os.path.exists(self.database) and time.monotonic() >= self._retry_at:
                    self._spawn()
                    log.info("store_process_starting", pid=self.proc.pid)
                return None
            # gunicorn's master reaps every child it did not fork itself too; poll() then says 0.
            code = self.proc.poll()
            now = time.monotonic()
            if code is None:
                silent = self._silent_for(now)
                if silent is None:
                    return exited_at
                self._kill_hung(silent)
                code = self.proc.poll()
            if exited_at is None:
                exited_at = now
                died_young = now - self._started_at < SHORT_LIFE_SECONDS
                self._pause = (min(max(self._pause * 2, WATCH_INTERVAL_SECONDS), RESTART_PAUSE_LIMIT_SECONDS)
                               if died_young else 0.0)
            if now - exited_at < self._pause:
                return exited_at
            previous = self.proc.pid
            self._spawn()
        log.warning("store_process_restarted", previous_pid=previous, exit_code=code, pid=self.proc.pid)
        return None

    def replace(self) -> None:
        """Stop the running store process and start a new one at once: after gunicorn reloads (SIGHUP),
        events are stored by the code now installed, as the new web processes run it, not by a process
        that imported the code of before (a release that handles a new event type would otherwise see
        those events stored as not handled). In between, the web processes store their events themselves."""
        with self._lock:
            if self._stopping.is_set() or self.proc is None:
                return  # none running: the watch starts one, with the code now installed
            previous = self.proc
            self._close_beats()
            self._end(previous)
            self._spawn()
        log.info("store_process_replaced", previous_pid=previous.pid, pid=self.proc.pid, reason="gunicorn reloaded")

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._close_beats()
            if self.proc is not None:
                self._end(self.proc)

    @staticmethod
    def _end(proc: subprocess.Popen) -> None:
        """SIGTERM (it answers the group in hand first), then SIGKILL if it has not ended in time."""
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("store_process_killed", pid=proc.pid,
                      reason=f"not stopped {STOP_WAIT_SECONDS:g} s after SIGTERM")
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
