"""What a new user does: `make run`'s program in a fresh directory, then `shop demo` from the same one."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys

import re

import pytest
import requests

from tests.support import BIN, env_for, free_port, wait_for_port

pytestmark = pytest.mark.e2e


def test_make_run_then_shop_demo_takes_an_order_from_cart_to_paid(tmp_path):
    web, stripe_port = free_port(), free_port()
    env = env_for(tmp_path, WEB_PORT=web, LOCALSTRIPE_PORT=stripe_port, WEB_CONCURRENCY=2)
    # The demo catalog has 40 teas; each paid demo sells 2, each declined one holds 2 until expiry.
    _run_and_demo(tmp_path, env, web, stripe_port, stock_after="on hand 38, reserved 0")
    # A second `make run` in the same directory works as well (a new localstripe) and keeps the
    # stock as it was: the demo catalog is loaded only into an empty database.
    _run_and_demo(tmp_path, env, web, stripe_port, stock_after="on hand 36, reserved 2")


def _run_and_demo(tmp_path, env, web, stripe_port, stock_after):
    log = open(tmp_path / "run.log", "wb")
    run = subprocess.Popen([sys.executable, "-m", "webhook_app.devserver"], cwd=tmp_path, env=env, stdout=log,
                           stderr=subprocess.STDOUT)
    try:
        wait_for_port(web, timeout=60, proc=run)
        demo = subprocess.run([str(BIN / "shop"), "demo", "--url", f"http://127.0.0.1:{web}"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)
        declined = subprocess.run([str(BIN / "shop"), "demo", "--url", f"http://127.0.0.1:{web}", "--card",
                                   "4000000000000341"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=60)
        confirmation = _shop_confirmation_screen(f"http://127.0.0.1:{web}")
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(30)
        log.close()
    # Stopped means every process it started is gone, localstripe too: a `make run` started next binds its ports.
    for port in (web, stripe_port):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after make run stopped"
    output = (tmp_path / "run.log").read_text()
    assert f"http://127.0.0.1:{web}" in output and f"http://127.0.0.1:{stripe_port}" in output
    assert f"shop        http://127.0.0.1:{web}/" in output
    # The shop's screens load localstripe's Stripe.js: a purchase can be clicked through offline.
    assert f'<script src="http://127.0.0.1:{stripe_port}/js.stripe.com/v3/"></script>' in confirmation
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "order is paid" in demo.stdout
    assert stock_after in demo.stdout
    assert declined.returncode == 0, declined.stdout + declined.stderr
    assert "order is payment_failed (card_declined)" in declined.stdout
    assert (tmp_path / "instance" / "shop.db").is_file() and (tmp_path / "instance" / "dev.env").is_file()


def _shop_confirmation_screen(base: str) -> str:
    """A buyer's way to the confirmation screen over plain HTTP: add a tea, give an address."""
    browser = requests.Session()

    def token(html: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)

    products = browser.get(f"{base}/", timeout=10)
    assert products.status_code == 200
    browser.post(f"{base}/cart/items", data={"csrf_token": token(products.text), "sku": "TEA-01", "quantity": "1"},
                 timeout=10).raise_for_status()
    info = browser.get(f"{base}/checkout/info", timeout=10)
    browser.post(f"{base}/checkout/info", timeout=10, data={
        "csrf_token": token(info.text), "name": "Hanako Yamada", "email": "hanako@example.com",
        "postal_code": "060-0001", "prefecture": "Hokkaido", "address": "Kita 1-jo Nishi 2-chome, Sapporo"},
    ).raise_for_status()
    confirmation = browser.get(f"{base}/checkout/confirm", timeout=10)
    assert confirmation.status_code == 200 and confirmation.url.endswith("/checkout/confirm"), confirmation.url
    return confirmation.text
