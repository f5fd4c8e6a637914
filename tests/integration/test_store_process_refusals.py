"""What the store process refuses without harm to anyone else: a crafted or bad frame closes only its own
connection, a request that breaks the webhook's rules fails only itself, running out of descriptors turns
new clients away at once (they store their events themselves) without spinning, and a restart that fails
does not end the master's watch."""
from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

from models.db import make_engine
from models.events import InboxEvent
from tests.integration.test_store_process import (SQLITE_ONLY, StoreProcess, _answer, _connected, _count,
                                                  _wait_until, store)  # noqa: F401 (store: a fixture)
from tests.support import event_for
from webhook_app.store_process import frame, request_for

WAIT = 20.0
ROOT = Path(__file__).resolve().parents[2]


class LimitedStoreProcess(StoreProcess):
    """The store process with resource limits, as a small container or a busy host gives it."""

    def __init__(self, database_url, log_file, limits):
        super().__init__(database_url, log_file)
        self.limits = limits

    def start(self):
        env = {**os.environ, "DATABASE_URL": self.database_url, "LOG_FORMAT": "json",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        limits = self.limits

        def apply():
            for which, value in limits:
                resource.setrlimit(which, (value, resource.getrlimit(which)[1]))

        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "webhook_app.store_process"], env=env,
                                         stdout=log, stderr=subprocess.STDOUT, preexec_fn=apply)
        _wait_until(lambda: self.log_file.exists() and self.lines("store_process_started") or self.proc.poll() is not None,
                    "it started")
        assert self.proc.poll() is None, self.log_file.read_text()
        return self


def _raw_frame(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


# A 133-byte marshal code object that CPython 3.11 refuses with SystemError (found by mutating a valid one).
_SYSTEM_ERROR_BODY = bytes.fromhex(
    "6300000000840000000000000002000000a9000000f316000000970064005a006500679a64017a0500005a0164024b002903e9"
    "01000000e9030000004e2902da0161da0162a900f300000000da0178fa083c6d6f64756c653e72080000000100000073190000"
    "00f003010101d802038001d803048023806181258001800180017206000000")


@SQLITE_ONLY
def test_a_frame_that_marshal_refuses_with_systemerror_closes_only_its_connection(settings, store):
    good = _connected(store.path)
    with _connected(store.path) as bad:
        # Opens as the tuple of 6 a request is, so it reaches marshal, which raises SystemError on its first value.
        bad.sendall(_raw_frame(b")\x06" + _SYSTEM_ERROR_BODY))
        bad.settimeout(WAIT)
        assert bad.recv(100) == b""
    time.sleep(0.5)
    assert store.proc.poll() is None, store.log_file.read_text()[-2000:]  # the whole loop died
    assert any("SystemError" in line["reason"] for line in store.lines("store_process_bad_frame"))
    event = event_for("localstripe_payment_intent.succeeded")
    with good:
        good.sendall(request_for(event, json.dumps(event)))
        assert _answer(good).duplicate is False


@SQLITE_ONLY
def test_a_9_byte_frame_declaring_a_huge_tuple_does_not_kill_a_memory_limited_store_process(settings, tmp_path):
    running = LimitedStoreProcess(settings.database_url, tmp_path / "sp.log",
                                  [(resource.RLIMIT_AS, 1 << 30)]).start()
    try:
        good = _connected(running.path)
        with _connected(running.path) as bad:
            bad.sendall(_raw_frame(b"(" + struct.pack("<i", 2 ** 31 - 1)))  # tuple of 2^31-1 items
            bad.settimeout(WAIT)
            assert bad.recv(100) == b""
        time.sleep(0.5)
        assert running.proc.poll() is None, running.log_file.read_text()[-2000:]
        event = event_for("localstripe_payment_intent.succeeded")
        with good:
            good.sendall(request_for(event, json.dumps(event)))
            assert _answer(good).duplicate is False
    finally:
        running.kill()


@SQLITE_ONLY
def test_one_unencodable_request_does_not_fail_the_other_clients_events_of_its_group(settings, store):
    goods = [event_for("localstripe_payment_intent.succeeded") for _ in range(5)]
    bad = event_for("localstripe_payment_intent.succeeded")
    holder = make_engine(settings.database_url)
    socks = []
    try:
        with holder.begin():  # the writers' turn: everything sent now lands in one group
            for event in goods:
                sock = _connected(store.path)
                sock.sendall(request_for(event, json.dumps(event)))
                socks.append(sock)
            bad_sock = _connected(store.path)
            bad_sock.sendall(frame((bad["id"], bad["type"], None, False, None, '{"x": "\ud800"}')))
            time.sleep(0.5)
    finally:
        holder.dispose()
    answers = [_answer(sock) for sock in socks]
    assert all(not isinstance(answer, str) and not answer.duplicate for answer in answers), answers  # each stored
    bad_sock.settimeout(WAIT)
    assert bad_sock.recv(100) == b""  # the bad one alone is refused: its connection closed
    assert any("lone surrogate" in line["reason"] for line in store.lines("store_process_bad_frame"))
    assert _count(settings, InboxEvent) == len(goods)


@SQLITE_ONLY
def test_out_of_descriptors_the_loop_does_not_spin_and_a_new_client_is_turned_away_at_once(settings, tmp_path):
    running = LimitedStoreProcess(settings.database_url, tmp_path / "sp.log",
                                  [(resource.RLIMIT_NOFILE, 40)]).start()
    held = []
    try:
        for _ in range(45):
            held.append(_connected(running.path))
        newcomer = held[-1]
        event = event_for("localstripe_payment_intent.succeeded")
        newcomer.settimeout(3.0)
        try:
            newcomer.sendall(request_for(event, json.dumps(event)))
            got = newcomer.recv(100)
        except (BrokenPipeError, ConnectionResetError):  # closed by the store process already: turned away
            got = b""
        except TimeoutError:
            got = None
        spins = len(running.lines("store_process_accept_failed"))
        assert spins < 50, f"{spins} accept_failed lines in ~3 s: the loop spins on the ready listener"
        assert got == b"", "the newcomer got neither a close nor an answer (it could only time out: 503)"
        assert len(running.lines("store_process_out_of_descriptors")) == 1  # once for the episode
    finally:
        for sock in held:
            sock.close()
        running.kill()


@SQLITE_ONLY
def test_the_masters_watch_survives_a_failed_restart(settings, monkeypatch):
    from webhook_app.store_process import StoreProcessSupervisor

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("LOG_FORMAT", "json")
    supervisor = StoreProcessSupervisor.for_database(settings.database_url)
    supervisor.start()
    try:
        first = supervisor.proc
        _wait_until(lambda: os.path.exists(supervisor.socket), "it listens")
        real = sys.executable
        monkeypatch.setattr(sys, "executable", "/nonexistent/python3")  # the venv replaced by a deploy
        first.kill()
        time.sleep(3.0)  # the watch tries, and fails, to restart it
        monkeypatch.setattr(sys, "executable", real)  # the deploy is over
        _wait_until(lambda: supervisor.proc not in (None, first) and supervisor.proc.poll() is None,
                    "the watch restarts it once it can")
    finally:
        supervisor.stop()
