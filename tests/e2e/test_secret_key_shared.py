"""Every web process under gunicorn signs sessions and CSRF tokens with one key: without SECRET_KEY and with no
instance/ folder to keep a generated key in, gunicorn stops at start with one line naming SECRET_KEY instead
of letting each web process sign with its own (forms then refused at random with 400)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest
import requests

from tests.backends import SERVERS, backends, create_postgres_database, drop_postgres_database
from tests.e2e.cluster import ROOT
from tests.support import BIN, CATALOG, env_for, free_port, wait_for_port

pytestmark = pytest.mark.e2e


@pytest.fixture(params=backends())
def workdir_env(request, tmp_path):
    """A working directory whose instance/ can hold nothing (a read-only image, or the name taken), with the
    database and broker elsewhere; the environment every process there is started with, SECRET_KEY unset."""
    database_url = f"sqlite:///{tmp_path / 'data' / 'shop.db'}"
    broker_url = f"filesystem://{tmp_path / 'data' / 'broker'}"
    if request.param == SERVERS:
        database_url, broker_url = create_postgres_database(), os.environ["TEST_AMQP_URL"]
    workdir = tmp_path / "app"
    workdir.mkdir()
    (workdir / "instance").write_text("not a folder")  # as unwritable as it gets, even for root
    port = free_port()
    env = env_for(workdir, DATABASE_URL=database_url, BROKER_URL=broker_url, GUNICORN_BIND=f"127.0.0.1:{port}",
                  WEB_CONCURRENCY=3)
    env.pop("SECRET_KEY", None)
    yield workdir, env, port
    if request.param == SERVERS:
        drop_postgres_database(database_url)


def gunicorn(workdir, env, log_path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "webhook_app:create_app()"],
                            cwd=workdir, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_no_secret_key_and_nowhere_to_keep_one_stops_gunicorn_at_start_naming_secret_key(workdir_env, tmp_path):
    workdir, env, port = workdir_env
    server = gunicorn(workdir, env, tmp_path / "gunicorn.log")
    try:
        exit_code = server.wait(30)
    except subprocess.TimeoutExpired:
        exit_code = None
    finally:
        stop(server)
    output = (tmp_path / "gunicorn.log").read_text()
    assert exit_code not in (None, 0), f"gunicorn still serving after 30 s, each web process with its own key:\n" \
                                       f"{output[-600:]}"
    # gunicorn's "Starting" line, then the one line naming the variable, the folder and what to do; no web
    # process was started.
    assert output.strip().splitlines()[-1].startswith(
        f"SECRET_KEY is not set and {workdir / 'instance' / 'secret_key'} cannot be made ("), output[-600:]
    assert output.strip().endswith("set SECRET_KEY to one random value shared by every web process "
                                   "(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"), output[-600:]
    assert "Traceback" not in output and "Booting worker" not in output, output[-600:]


def test_with_secret_key_set_every_web_process_accepts_a_form_another_one_rendered(workdir_env, tmp_path):
    workdir, env, port = workdir_env
    env["SECRET_KEY"] = "one-key-for-every-web-process-" + "k" * 20
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    for verb in (["db", "upgrade"], ["catalog", "load", str(tmp_path / "catalog.json")]):
        done = subprocess.run([str(BIN / "shop"), *verb], cwd=workdir, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-600:]
    server = gunicorn(workdir, env, tmp_path / "gunicorn.log")
    try:
        wait_for_port(port, proc=server)
        answers = []
        for _ in range(15):
            # A new connection for each request: gunicorn's three web processes take them as they come.
            page = requests.get(f"http://127.0.0.1:{port}/?lang=en", headers={"Connection": "close"}, timeout=10)
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            sku = re.search(r'name="sku" value="([^"]+)"', page.text).group(1)
            added = requests.post(f"http://127.0.0.1:{port}/cart/items", cookies=page.cookies, timeout=10,
                                  data={"csrf_token": token, "sku": sku, "quantity": "1"},
                                  headers={"Connection": "close"}, allow_redirects=False)
            answers.append(added.status_code)
        assert answers == [303] * 15
    finally:
        stop(server)
    assert "secret_key_per_process" not in (tmp_path / "gunicorn.log").read_text()
