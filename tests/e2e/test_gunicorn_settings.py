"""gunicorn.conf.py's own variables: a value the web server cannot run with stops gunicorn at start with
one line naming the variable, and GUNICORN_LOG_LEVEL sets what gunicorn itself logs."""
from __future__ import annotations

import signal
import subprocess

import pytest
import requests

from models.migrations import upgrade
from tests.backends import SERVERS, backends, create_postgres_database, drop_postgres_database
from tests.e2e.cluster import ROOT
from tests.support import BIN, env_for, free_port, wait_for_port

GUNICORN = [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "webhook_app:create_app()"]


def _start(workdir, **env) -> subprocess.Popen:
    return subprocess.Popen(GUNICORN, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env_for(workdir, **{"WEB_CONCURRENCY": 1, **env}))


def _output_after_stop(proc: subprocess.Popen, timeout: float = 30) -> str:
    """What gunicorn printed, once it is stopped (SIGTERM: it finishes as in a deployment)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=timeout)
    return output


# Each refused before gunicorn listens: none of them reaches the database or the broker.
@pytest.mark.parametrize("name, value, said", [
    # 0 processes: gunicorn used to listen and never answer (Stripe's webhooks time out).
    ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be an integer from 1 to 1000, got '0'"),
    ("GUNICORN_THREADS", "abc", "GUNICORN_THREADS must be an integer from 1 to 1000, got 'abc'"),
    ("GUNICORN_THREADS", "0", "GUNICORN_THREADS must be an integer from 1 to 1000, got '0'"),
    ("GUNICORN_TIMEOUT", "20s", "GUNICORN_TIMEOUT must be an integer from 1 to 3600, got '20s'"),
    ("GUNICORN_TIMEOUT", "0", "GUNICORN_TIMEOUT must be an integer from 1 to 3600, got '0'"),  # gunicorn's "never"
    ("GUNICORN_LOG_LEVEL", "loud", "GUNICORN_LOG_LEVEL must be one of debug, info, warning, error, critical, "
                                   "got 'loud'"),
    ("GUNICORN_ACCESS_LOG", "off", "GUNICORN_ACCESS_LOG must be 1 (a line per request) or 0 (none), got 'off'"),
    # Two checkouts' waits per slot would hold all 12 threads: no webhook answered while Stripe is slow.
    ("GUNICORN_THREADS", "12", "GUNICORN_THREADS must be more than twice STRIPE_MAX_CONCURRENT_CALLS (6), got 12: "
                               "raise it or lower STRIPE_MAX_CONCURRENT_CALLS"),
])
def test_a_gunicorn_setting_it_cannot_run_with_stops_it_at_start_with_one_line_naming_it(tmp_path, name, value, said):
    proc = _start(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/shop.db", BROKER_URL=f"filesystem://{tmp_path}/b",
                  GUNICORN_BIND=f"127.0.0.1:{free_port()}", **{name: value})
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}={value}: gunicorn still running after 20 s: {_output_after_stop(proc)[-600:]}")
    output = _output_after_stop(proc)
    assert proc.returncode == 1, output
    assert output.strip().splitlines()[-1] == said, output[-600:]
    assert "Traceback" not in output and "Booting worker" not in output, output[-600:]


@pytest.fixture(params=backends())
def database_url(request, tmp_path):
    if request.param != SERVERS:
        yield f"sqlite:///{tmp_path}/shop.db"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.mark.parametrize("level, logs_its_start", [("info", True), ("warning", False), ("ERROR", False)])
def test_gunicorn_log_level_sets_what_gunicorn_itself_logs(tmp_path, database_url, level, logs_its_start):
    upgrade(database_url)
    port = free_port()
    proc = _start(tmp_path, DATABASE_URL=database_url, BROKER_URL=f"filesystem://{tmp_path}/b",
                  GUNICORN_BIND=f"127.0.0.1:{port}", GUNICORN_LOG_LEVEL=level)
    try:
        wait_for_port(port, proc=proc)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=20).status_code == 200
    finally:
        output = _output_after_stop(proc)
    assert proc.returncode == 0, output[-600:]
    started = [line for line in output.splitlines() if "Listening at" in line or "Booting worker" in line]
    assert bool(started) == logs_its_start, output[-600:]
    assert '"http_request"' in output  # the requests' own lines are the app's, whatever gunicorn's level
