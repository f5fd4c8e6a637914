"""gunicorn's own log lines follow the app's LOG_FORMAT default: console on a terminal, JSON otherwise,
so that one process never prints two formats."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time

from tests.e2e.cluster import ROOT
from tests.support import BIN, env_for, free_port

GUNICORN = [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "webhook_app:create_app()"]


def _environment(workdir) -> dict:
    env = env_for(workdir, WEB_CONCURRENCY=1, DATABASE_URL=f"sqlite:///{workdir}/shop.db",
                  BROKER_URL=f"filesystem://{workdir}/b", GUNICORN_BIND=f"127.0.0.1:{free_port()}")
    del env["LOG_FORMAT"]  # the default is what is tested
    return env


def _starting_line(chunks, proc: subprocess.Popen, timeout: float = 30) -> str:
    """The line gunicorn's arbiter prints first ("Starting gunicorn <version>"), read as it comes."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += chunks()
        for line in seen.splitlines():
            if "Starting gunicorn" in line:
                return line
        if proc.poll() is not None:
            seen += chunks()
            break
    raise AssertionError(f"no 'Starting gunicorn' line: {seen[-800:]!r}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_on_a_terminal_without_log_format_gunicorn_logs_in_the_console_format(tmp_path):
    leader, follower = pty.openpty()
    proc = subprocess.Popen(GUNICORN, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                            env=_environment(tmp_path))
    os.close(follower)

    def chunks() -> str:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if not ready:
            return ""
        try:
            return os.read(leader, 65536).decode(errors="replace")
        except OSError:  # the terminal closed: gunicorn exited
            return ""

    try:
        line = _starting_line(chunks, proc)
    finally:
        _stop(proc)
        os.close(leader)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()  # the console renderer colours a terminal's lines
    assert not plain.startswith("{"), f"JSON on a terminal: {line!r}"
    assert re.match(r"\S+Z \[info\s*\] Starting gunicorn ", plain), plain


def test_without_a_terminal_or_log_format_gunicorn_logs_json(tmp_path):
    proc = subprocess.Popen(GUNICORN, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=_environment(tmp_path))
    os.set_blocking(proc.stdout.fileno(), False)

    def chunks() -> str:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        return (proc.stdout.read() or b"").decode(errors="replace") if ready else ""

    try:
        line = _starting_line(chunks, proc)
    finally:
        _stop(proc)
        proc.stdout.close()
    record = json.loads(line)
    assert record["event"].startswith("Starting gunicorn") and record["level"] == "info", record

