"""`shop demo`, `make run` and `shop events send` when something is down, refused or slow: one line
saying what failed and what to check, the right exit code, never a traceback; and a slow service's
own answer shown, not a time-out of the client's at the moment the service answers."""
from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from tests.support import BIN, WEBHOOK_SECRET, env_for, free_port, serve, stripe_fixture
from webhook_app import signing
from webhook_app.cli import shop


def _shop(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    """`shop ARGS…` as a user runs it: its own process, in a directory with no instance/dev.env."""
    full = env_for(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}", STRIPE_API_KEY="sk_test_local",
                   STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET, LOG_FORMAT="console", **env)
    return subprocess.run([str(BIN / "shop"), *map(str, args)], cwd=tmp_path, env=full, capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- shop demo ---------------------------------------------------------------------------------------------


@pytest.fixture
def service(app):
    """The service on a real HTTP port (checkout talks to the suite's localstripe); no worker runs."""
    yield from serve(app)


def test_demo_against_a_service_that_is_down_says_it_could_not_reach_it(tmp_path, localstripe):
    url = f"http://127.0.0.1:{free_port()}"
    result = _shop(tmp_path, "demo", "--url", url, STRIPE_API_BASE=localstripe.base)
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result)
    assert f"GET {url}/products: could not reach the service" in line
    assert "is `make run` up, and is --url its address?" in line


def test_demo_with_stripe_unreachable_says_so_at_the_confirm_step(tmp_path, service):
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = _shop(tmp_path, "demo", "--url", service, STRIPE_API_BASE=nowhere)
    assert result.returncode == 1, result.stderr
    assert "3. checkout  order ord_" in result.stdout  # the service's own steps went through
    line = _one_error_line(result)
    assert f"4. confirm failed: could not reach Stripe at {nowhere} (Connection refused); " in line
    assert "is localstripe running, and is STRIPE_API_BASE its address?" in line


def test_demo_with_a_card_stripe_refuses_says_which_card_and_why(tmp_path, service, localstripe):
    result = _shop(tmp_path, "demo", "--url", service, "--card", "1234", STRIPE_API_BASE=localstripe.base)
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result)
    # Which call Stripe refused, in Stripe's words: not the SDK's class name (InvalidRequestError).
    assert (f"4. confirm failed: Stripe at {localstripe.base} refused to make a PaymentMethod of card 1234…1234 "
            f"(400: Bad request); check --card (a test card such as 4242424242424242) and STRIPE_API_KEY") in line
    assert "Error:" not in line.removeprefix("Error: ")


def test_demo_when_no_product_has_two_units_says_what_the_service_answered(tmp_path, service, checkout):
    checkout(items=(("TEA-01", 39), ("CUP-01", 2)))  # held by an order: 1 of each left to sell
    result = _shop(tmp_path, "demo", "--url", service, STRIPE_API_BASE="http://127.0.0.1:9")
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result)
    assert "2. cart failed: POST " in line and "/items answered 409: out_of_stock: " in line
    assert "the demo buys 2 of the product with the most available" in line and "1 available" in line


def test_demo_whose_webhook_never_comes_says_so_and_is_exit_1(tmp_path, service, localstripe):
    # localstripe sends this service no webhook, and no worker runs: the order stays pending_payment.
    result = _shop(tmp_path, "demo", "--url", service, "--timeout", "1", STRIPE_API_BASE=localstripe.base)
    assert result.returncode == 1, result.stderr
    assert "4. confirm   card 4242…4242: succeeded" in result.stdout
    assert "received and processed" not in result.stdout
    line = _one_error_line(result)
    assert "5. webhook failed: no webhook processed within 1 s" in line and "still pending_payment" in line
    assert "is the worker running" in line and f"{service}/webhooks/stripe" in line


def test_demo_with_a_card_that_asks_for_3d_secure_says_a_browser_must_complete_it(tmp_path, service, localstripe):
    result = _shop(tmp_path, "demo", "--url", service, "--card", "4000002500003155", "--timeout", "1",
                   STRIPE_API_BASE=localstripe.base)
    assert result.returncode == 1, result.stderr
    assert "4. confirm   card 4000…3155: requires_action" in result.stdout
    line = _one_error_line(result)
    assert "asks for 3-D Secure, which only a browser can complete" in line and f"{service}/" in line


@pytest.mark.parametrize("timeout", ["0", "-1"])
def test_demo_timeout_must_be_more_than_zero(tmp_path, service, localstripe, timeout):
    result = _shop(tmp_path, "demo", "--url", service, "--timeout", timeout, STRIPE_API_BASE=localstripe.base)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "Invalid value for '--timeout'" in result.stderr
    assert result.stdout == ""  # refused before any step


# --- make run's ports --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["WEB_PORT", "LOCALSTRIPE_PORT"])
def test_make_run_with_a_port_that_is_not_a_number_stops_with_one_line_naming_it(tmp_path, name):
    result = subprocess.run([sys.executable, "-m", "webhook_app.devserver"], cwd=tmp_path,
                            env=env_for(tmp_path, **{name: "80x0"}), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"{name} must be an integer from 1 to 65535, got '80x0'"
    assert not (tmp_path / "instance").exists()  # stopped before writing anything


# --- shop events send --------------------------------------------------------------------------------------


class _SlowService:
    """A real HTTP server that answers a POST after `delay` seconds (or when released), with `answer`."""

    def __init__(self, delay: float, status: int = 503, answer: dict | None = None):
        self.release = threading.Event()
        self.received: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append({"signature": self.headers.get("Stripe-Signature"), "body": json.loads(body)})
                outer.release.wait(delay)
                payload = json.dumps(answer or {}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up first
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks/stripe"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _event_file(tmp_path):
    path = tmp_path / "event.json"
    path.write_text(json.dumps(stripe_fixture("payment_intent.succeeded")))
    return path


def test_events_send_shows_the_answer_of_a_service_slower_than_ten_seconds(tmp_path):
    # A busy service answers 503 after its own 10 s wait for a turn to store: the sender must still be listening.
    busy = {"error": {"code": "store_busy", "message": "no turn to store within 10 s"}}
    with _SlowService(delay=11, status=503, answer=busy) as service:
        result = _shop(tmp_path, "events", "send", _event_file(tmp_path), "--url", service.url)
    assert result.returncode == 1, result.stderr
    assert result.stdout.strip() == f"503 {json.dumps(busy)}"
    assert "Traceback" not in result.stderr and "could not reach" not in result.stderr
    [request] = service.received
    assert request["signature"].startswith("t=") and request["body"]["type"] == "payment_intent.succeeded"


def test_events_send_to_a_service_that_never_answers_says_no_answer_within_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(signing, "ANSWER_TIMEOUT_SECONDS", 1.0, raising=False)
    with _SlowService(delay=20) as service:
        result = CliRunner().invoke(shop, ["events", "send", str(_event_file(tmp_path)), "--url", service.url], env={
            "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET})
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert line.endswith("no answer within 1 s"), line
    assert len(service.received) == 1  # it was reached: the request went out, no answer came back
