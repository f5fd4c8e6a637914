"""`shop` and `make run` leftovers: a database migrated to an older revision than the code's is one line
naming both revisions and what to run (not a "no such column" traceback); `make run` with the web
process and localstripe on one port is refused before anything starts; `shop demo` confirms its card
through the service's one Stripe client, so a Stripe that never answers costs it that client's
deadline, not the SDK's two full timeouts."""
from __future__ import annotations

import inspect
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import text

from consumers.payments import confirm_payment_intent
from models.db import make_engine
from models.migrations import alembic_config, database_revision, upgrade
from tests.support import BIN, WEBHOOK_SECRET, env_for, free_port, serve
from webhook_app.cli import shop

HEAD = "0017"  # this release's last migration (alembic/versions)

# Verbs that read columns 0010 and 0011 added (orders.charged_back_amount, staff_members.session_generation).
VERBS = [("orders", "review"), ("orders", "show", "ord_x"), ("orders", "cancel", "ord_x", "--note", "asked"),
         ("staff", "list")]


def _invoke(*args, **env):
    return CliRunner().invoke(shop, [str(a) for a in args],
                              env={"LOG_FORMAT": "console", "SHOP_STAFF": "tester", **env})


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def _behind(at: str) -> str:
    return (f"Error: the database at DATABASE_URL is at revision {at}, and this release needs {HEAD}: its schema "
            f"is older than the code; run `shop db upgrade`")


@pytest.fixture
def older_url(database_url):
    """The test's database, migrated to head and then downgraded to 0009: what a deployment finds that
    starts the new code before its release ran (or after `alembic downgrade`)."""
    command.downgrade(alembic_config(database_url), "0009")
    assert database_revision(database_url) == "0009"
    return database_url


def test_this_release_needs_the_revision_the_tests_name():
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() == HEAD


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_a_verb_on_a_database_at_an_older_revision_names_both_revisions_in_one_line_and_exits_1(older_url, verb):
    result = _invoke(*verb, DATABASE_URL=older_url)
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert _error_lines(result.output) == [_behind("0009")]


def test_a_relay_started_before_the_releases_migration_says_what_to_run_while_it_waits(older_url, tmp_path):
    """`shop relay` (and `shop worker`) may start before `shop db upgrade` has run: they wait for the schema,
    and each line they log while they wait says what to run."""
    env = {**os.environ, "DATABASE_URL": older_url, "LOG_FORMAT": "json",
           "BROKER_URL": f"filesystem://{tmp_path / 'broker'}", "STAFF_ALERT_URL": ""}
    relay = subprocess.Popen([str(BIN / "shop"), "relay"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    lines: list[str] = []
    first_wait = threading.Event()

    def read() -> None:
        for line in relay.stdout:
            lines.append(line)
            if '"relay_paused"' in line or '_failed"' in line:
                first_wait.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Until the relay has said it waits (its start takes seconds on a loaded machine), at most a minute.
        first_wait.wait(60)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=30)
        reader.join(30)
    said = "".join(lines)
    waiting = [line for line in said.splitlines() if '"relay_paused"' in line or '_failed"' in line]
    assert waiting, said
    fix = "the database has not this release's schema: run `shop db upgrade` (or correct DATABASE_URL)"
    assert all(fix in line for line in waiting), said
    assert relay.returncode == 0, said


def test_the_web_on_an_older_revision_answers_503_and_logs_what_to_run(client, database_url):
    """A web process of this release started before its migration (or on a downgraded database): a request
    that reads what the migration adds is answered 503 (retry later), never a bare 500, and the log says
    what to run."""
    from tests.support import rendered_logs

    command.downgrade(alembic_config(database_url), "0009")  # the running web process's database, downgraded
    with rendered_logs() as lines:
        answer = client.get("/orders/ord_0123456789abcdef")  # reads orders.charged_back_amount (0010)
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.get_json()["error"] == {"code": "storage_unavailable",
                                          "message": "the database is not ready for this release; please retry"}
    said = [line for line in lines if "database_schema_behind" in line]
    assert said and "run `shop db upgrade`" in said[0], lines


def test_the_shop_command_on_an_older_revision_prints_one_line_and_works_once_upgraded(older_url, tmp_path):
    env = {**os.environ, "DATABASE_URL": older_url, "LOG_FORMAT": "console"}
    done = subprocess.run([str(BIN / "shop"), "orders", "review"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.splitlines() == [_behind("0009")], done.stderr
    upgrade(older_url)  # what the line says to do
    again = _invoke("orders", "review", DATABASE_URL=older_url)
    assert again.exit_code == 0 and again.output.strip() == "no orders need review", again.output


def test_a_table_an_older_revision_lacks_is_said_as_that_revision_not_as_a_database_never_migrated(
        settings, checkout):
    order = checkout()
    command.downgrade(alembic_config(settings.database_url), "0012")  # 0013 made order_payment_intents
    # A cancel first asks whether a payment on one of the order's intents is still to be applied.
    result = _invoke("orders", "cancel", order["order_id"], "--note", "asked", DATABASE_URL=settings.database_url,
                     STRIPE_API_BASE=settings.stripe_api_base)
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert _error_lines(result.output) == [_behind("0012")]


def test_a_database_a_newer_release_migrated_says_deploy_that_release_not_upgrade(older_url):
    engine = make_engine(older_url)
    try:
        with engine.begin() as conn:  # as a release with a 0099 that dropped columns would leave it
            conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    finally:
        engine.dispose()
    result = _invoke("orders", "review", DATABASE_URL=older_url)
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert _error_lines(result.output) == [
        f"Error: the database at DATABASE_URL is at revision 0099, which this release does not know (a newer "
        f"release migrated it), and this release needs {HEAD}: deploy that release (or a newer one) again, or "
        f"restore the database from before its migration"]


def test_a_verb_on_a_migrated_database_is_not_told_to_upgrade(database_url):
    result = _invoke("orders", "review", DATABASE_URL=database_url)
    assert result.exit_code == 0 and result.output.strip() == "no orders need review", result.output


# --- make run: one port for two servers ------------------------------------------------------------------


def test_make_run_with_web_port_equal_to_localstripe_port_is_refused_before_anything_starts(tmp_path):
    port = free_port()
    run = subprocess.Popen([sys.executable, "-m", "webhook_app.devserver"], cwd=tmp_path,
                           env=env_for(tmp_path, WEB_PORT=port, LOCALSTRIPE_PORT=port), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = run.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # it went on to start the servers: stop them all, it failed
        os.killpg(run.pid, signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=30)
        pytest.fail(f"make run with one port for both went on starting servers: {stdout[-1000:]} {stderr[-1000:]}")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 1, stdout + stderr
    assert stderr.strip() == (f"WEB_PORT and LOCALSTRIPE_PORT are both {port}: the web process and localstripe "
                              f"cannot listen on one port; set one of them to another")
    assert stdout == ""
    assert not (tmp_path / "instance").exists()  # stopped before writing (or migrating) anything
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing was started on it


# --- shop demo through the service's Stripe client -------------------------------------------------------


class _SilentStripe:
    """A server that takes connections and never answers; notes when each came."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.stopped = threading.Event()
        self.base = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connected: list[float] = []
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connected.append(time.monotonic())
            self.held.append(conn)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(10)
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def service(app):
    yield from serve(app)


def test_demo_gives_up_on_a_stripe_that_never_answers_within_the_services_confirm_deadline(tmp_path, service):
    deadline = inspect.signature(confirm_payment_intent).parameters["deadline_seconds"].default
    env = env_for(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}", STRIPE_API_KEY="sk_test_local",
                  STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET, LOG_FORMAT="console")
    with _SilentStripe() as stripe_server:
        env["STRIPE_API_BASE"] = stripe_server.base
        result = subprocess.run([str(BIN / "shop"), "demo", "--url", service], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
        ended = time.monotonic()
    assert result.returncode == 1, result.stderr
    assert "3. checkout  order ord_" in result.stdout  # the service's own steps went through
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert line.startswith(f"Error: 4. confirm failed: could not reach Stripe at {stripe_server.base} ("), line
    assert stripe_server.connected, "the demo never called Stripe"
    # The SDK's own client waits 6 s a try, twice; the service's gives up at its deadline, all tries in.
    waited = ended - stripe_server.connected[0]
    assert waited < deadline + 2, f"waited {waited:.1f} s for a Stripe that never answers (deadline {deadline} s)"
