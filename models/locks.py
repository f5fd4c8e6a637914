"""Named locks held across a slow call outside the database (a refund at Stripe) with no transaction open.

One holder at a time per name, across every process of the service, and never waited for: a caller
that finds the lock taken is told so at once. A holder that dies lets go with its connection (PostgreSQL)
or its open file (SQLite), so a lock is never left behind.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from contextlib import contextmanager
from typing import Iterator

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Engine

log = structlog.get_logger(__name__)


@contextmanager
def try_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Take the lock `name` if nobody holds it; yields whether this caller now holds it (until the block ends).

    PostgreSQL: a session advisory lock, on a connection of its own, so it spans the caller's
    transactions and every machine of the deployment. SQLite: its database lives on one machine, and
    its one write lock cannot be held across a call to Stripe without stopping every other writer,
    so an exclusive flock on a file beside the database (`<database>-locks/`), as the writer's turn is.
    """
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, name) as taken:
            yield taken
    else:
        with _file_lock(engine.url.database, name) as taken:
            yield taken


def _key(name: str, size: int) -> bytes:
    return hashlib.blake2b(name.encode(), digest_size=size).digest()


@contextmanager
def _advisory_lock(engine: Engine, name: str) -> Iterator[bool]:
    key = int.from_bytes(_key(name, 8), "big", signed=True)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")  # no transaction stays open while it is held
        taken = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}))
        try:
            yield taken
        finally:
            if taken:
                try:
                    conn.scalar(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                except Exception as exc:  # noqa: BLE001 - the lock must not go back to the pool with its connection
                    log.warning("advisory_unlock_failed", lock=name, error=str(exc))
                    conn.invalidate()  # closed: PostgreSQL lets go of a session's locks when it ends


_IN_THIS_PROCESS: dict[str, threading.Lock] = {}
_IN_THIS_PROCESS_GUARD = threading.Lock()


@contextmanager
def _file_lock(database: str | None, name: str) -> Iterator[bool]:
    if not database or database == ":memory:":  # a database only this process sees
        with _IN_THIS_PROCESS_GUARD:
            lock = _IN_THIS_PROCESS.setdefault(name, threading.Lock())
        taken = lock.acquire(blocking=False)
        try:
            yield taken
        finally:
            if taken:
                lock.release()
        return
    folder = f"{database}-locks"
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, _key(name, 16).hex())
    fd = _take_file(path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            # Removed while still held, so the folder keeps no file per order ever decided on; a caller
            # that opened it just before then finds it is no longer the file at the path (_take_file).
            try:
                os.unlink(path)
            finally:
                os.close(fd)  # and the flock goes with it


def _take_file(path: str) -> int | None:
    """An open descriptor of the file at `path`, exclusively flocked; None if someone else holds it.

    flock belongs to the open file, not to the process: two threads of one process exclude each other."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            at_path = os.stat(path)
        except FileNotFoundError:
            at_path = None
        mine = os.fstat(fd)
        if at_path is not None and (at_path.st_dev, at_path.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # the file a holder removed as it let go: take the one at the path now
