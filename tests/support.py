"""Shared test plumbing: free ports, real servers started as subprocesses, signed webhook posts."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import stripe
from werkzeug.serving import make_server

from models.catalog_file import apply_catalog
from models.db import transaction
from models.settings import Settings
from webhook_app.signing import refresh, sign

FIXTURES = Path(__file__).parent / "fixtures"
BIN = Path(sys.executable).parent
WEBHOOK_SECRET = "whsec_test_secret_for_the_suite"

SHIPPING = {"name": "Hanako Yamada", "postal_code": "060-0001", "prefecture": "Hokkaido",
            "address": "Kita 1-jo Nishi 2-chome, Sapporo"}

CATALOG = {
    "currency": "jpy",
    "products": [
        {"sku": "TEA-01", "name": "Hokkaido black tea", "unit_amount": 1200, "stock": 40, "weight_grams": 250},
        {"sku": "CUP-01", "name": "Arita tea cup", "unit_amount": 3500, "stock": 3, "weight_grams": 300},
    ],
    "shipping": {"free_over": 8000, "rates": [{"prefectures": ["Hokkaido"], "fee": 700},
                                               {"prefectures": ["Okinawa"], "fee": 1500},
                                               {"prefectures": "default", "fee": 900}]},
}


def settings_for(database_url: str, *, broker_url: str, stripe_api_base: str) -> Settings:
    """The suite's Settings: our webhook secret, console logs, no retry back-off, three attempts."""
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        stripe_api_base=stripe_api_base,
        webhook_secrets=(WEBHOOK_SECRET,),
        log_format="console",
        retry_base_seconds=0.0,
        max_attempts=3,
    )


def load_catalog(sessions) -> dict:
    """Put CATALOG (a fresh copy, so nothing can change the constant) into a migrated database."""
    with transaction(sessions) as session:
        apply_catalog(session, json.loads(json.dumps(CATALOG)))
    return CATALOG


def let_the_hold_run_out(sessions, order_id: str) -> None:
    """The order's hold has passed its time (set on its rows, as the expiry sweep would find them)."""
    hold_ends_in(sessions, order_id, -1)


def hold_ends_in(sessions, order_id: str, seconds: float) -> None:
    """The order's hold ends `seconds` from now (set on its rows, as checkout and the expiry sweep read them)."""
    from datetime import timedelta

    from models.base import utcnow
    from models.orders import Order

    when = utcnow() + timedelta(seconds=seconds)
    with transaction(sessions) as session:
        order = session.get(Order, order_id)
        order.reserved_until = when
        for reservation in order.reservations:
            reservation.expires_at = when


def assert_error(response, status: int, code: str | None = None, field: str | None = None) -> dict:
    """The one error shape: {"error": {"code", "message", "field"?}}, with the field named where given."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message"} <= set(error) <= {"code", "message", "field"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if field is not None:
        assert error.get("field") == field, error
    return error


def stripe_fixture(name: str) -> dict:
    return json.loads((FIXTURES / "stripe" / f"{name}.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(wsgi_app):
    """A WSGI app on a real HTTP server for a fixture's lifetime: yields its base URL."""
    port = free_port()
    server = make_server("127.0.0.1", port, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(10)


@contextlib.contextmanager
def stripe_unreachable():
    """For the block, Stripe's API is an address nothing listens on (yielded, for a CLI's STRIPE_API_BASE);
    the SDK's address is put back after, also when a CLI run in this process moved it there."""
    working = stripe.api_base
    nowhere = f"http://127.0.0.1:{free_port()}"
    stripe.api_base = nowhere
    try:
        yield nowhere
    finally:
        stripe.api_base = working


def wait_for_port(port: int, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class LocalStripe:
    """A real localstripe server in a subprocess (the stateful fake of Stripe's API)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "localstripe.log", "wb")
        self.proc = subprocess.Popen([str(BIN / "localstripe"), "--port", str(self.port), "--from-scratch"],
                                     cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, proc=self.proc)

    def register_webhook(self, url: str, secret: str = WEBHOOK_SECRET, name: str = "shop") -> None:
        body = f"url={url}&secret={secret}".encode()
        urllib.request.urlopen(urllib.request.Request(f"{self.base}/_config/webhooks/{name}", data=body,
                                                      method="POST"), timeout=5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def use_stripe(base: str) -> None:
    stripe.api_key = "sk_test_local"
    stripe.api_base = base


def confirm_card(payment_intent_id: str, card: str) -> str:
    """What Stripe.js does in the browser: attach a card and confirm."""
    from webhook_app.demo import confirm_with_card

    return confirm_with_card(payment_intent_id, card)


def signed_headers(payload: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> dict:
    return {"Content-Type": "application/json", "Stripe-Signature": sign(payload, secret, timestamp)}


def event_for(name: str, *, intent_id: str | None = None, order_id: str | None = None, amount: int | None = None,
              currency: str | None = None, fresh: bool = True) -> dict:
    """A fixture event re-addressed to one of our PaymentIntents, with a new id as a new delivery."""
    event = copy.deepcopy(stripe_fixture(name))
    if fresh:
        event = refresh(event)
    obj = event["data"]["object"]
    if intent_id is not None:
        obj["id"] = intent_id
    if order_id is not None:
        obj["metadata"] = {"order_id": order_id}
    if amount is not None:
        obj["amount"] = amount
        if "amount_received" in obj and obj.get("status") == "succeeded":
            obj["amount_received"] = amount
    if currency is not None:
        obj["currency"] = currency
    return event


def env_for(workdir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DATABASE_URL", "BROKER_URL"))}
    env.update({"LOG_FORMAT": "json", "PATH": f"{BIN}:{env.get('PATH', '')}"})
    env.update({k: str(v) for k, v in extra.items()})
    if ("SMTP_URL" in extra or "STAFF_ALERT_URL" in extra) and not env.get("ADMIN_BASE_URL"):
        # Required with them (the base of the links mailed and alerted): the web server the test starts.
        env["ADMIN_BASE_URL"] = f"http://{env.get('GUNICORN_BIND', '127.0.0.1:8000')}"
    return env


@contextlib.contextmanager
def rendered_logs():
    """Every structlog line as it leaves the processors (redaction included), while the block runs.

    Start it after building the apps the block uses: configure_logging refills the processor list.
    """
    import structlog

    lines: list[str] = []

    def record(_logger, _method_name, rendered):
        lines.append(rendered if isinstance(rendered, str) else repr(rendered))
        return rendered

    processors = structlog.get_config()["processors"]
    processors.append(record)
    try:
        yield lines
    finally:
        if record in processors:
            processors.remove(record)
