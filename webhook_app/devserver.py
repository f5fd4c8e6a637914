"""`make run`: migrate, load the demo catalog, start localstripe if needed, then every Procfile process.

Writes instance/dev.env (local Stripe base and the generated webhook secret) so that `shop`
commands run from this directory, such as `shop demo`, use the same settings.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from consumers.metrics import prepare_folder
from models.settings import int_in_range
from webhook_app.cli import DEV_ENV

# A port that is not a number from 1 to 65535 stops `make run` with one line naming it.
WEB_PORT = int_in_range(os.environ, "WEB_PORT", 8000, 1, 65535)
LOCALSTRIPE_PORT = int_in_range(os.environ, "LOCALSTRIPE_PORT", 8420, 1, 65535)
CATALOG = Path(__file__).parent / "data" / "demo_catalog.json"
ROOT = Path(__file__).resolve().parent.parent  # the Procfile and gunicorn.conf.py live here


def _wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


def _uses_localstripe() -> bool:
    """Whether this run starts localstripe. Decided from the real environment only: what an earlier
    run wrote to dev.env must not make this one skip starting it. An empty STRIPE_API_KEY is the default,
    as the processes (Settings) read it."""
    return (not os.environ.get("STRIPE_API_BASE")
            and (os.environ.get("STRIPE_API_KEY") or "sk_test_local") == "sk_test_local")


def _refuse_one_port_for_two() -> None:
    """localstripe would take the port first and gunicorn fail to bind it, or the webhooks go to the
    wrong server: stop before anything is written or started."""
    if _uses_localstripe() and WEB_PORT == LOCALSTRIPE_PORT:
        raise SystemExit(f"WEB_PORT and LOCALSTRIPE_PORT are both {WEB_PORT}: the web process and localstripe "
                         f"cannot listen on one port; set one of them to another")


def _dev_env() -> dict:
    """This run's Stripe settings (localstripe's, unless the environment names a Stripe)."""
    DEV_ENV.parent.mkdir(parents=True, exist_ok=True)
    values = {}
    if _uses_localstripe():
        values["STRIPE_API_BASE"] = f"http://127.0.0.1:{LOCALSTRIPE_PORT}"
        # The shop's screens load localstripe's fake Stripe.js (card inputs, a 3-D Secure dialog):
        # a purchase can be clicked through offline.
        if not os.environ.get("STRIPE_JS_URL"):
            values["STRIPE_JS_URL"] = f"http://127.0.0.1:{LOCALSTRIPE_PORT}/js.stripe.com/v3/"
    # The screens take product names in Japanese from the catalog file the shop was loaded from.
    values["CATALOG_FILE"] = os.environ.get("CATALOG_FILE") or str(CATALOG)
    values["STRIPE_WEBHOOK_SECRETS"] = os.environ.get("STRIPE_WEBHOOK_SECRETS") or f"whsec_{secrets.token_hex(24)}"
    DEV_ENV.write_text("# written by `make run`\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    os.environ.update(values)
    return values


def _has_products() -> bool:
    """Load the demo catalog into an empty database only: a second run keeps the stock it had."""
    from sqlalchemy import func, select

    from models.catalog import Product
    from models.db import make_engine
    from models.settings import Settings

    engine = make_engine(Settings.from_env().database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Product)).scalar_one() > 0
    finally:
        engine.dispose()


def main() -> int:
    bin_dir = Path(sys.executable).parent
    shop = str(bin_dir / "shop")
    _refuse_one_port_for_two()
    env_values = _dev_env()
    subprocess.run([shop, "db", "upgrade"], check=True)
    if not _has_products():
        subprocess.run([shop, "catalog", "load", str(CATALOG)], check=True)
    children = []
    if "STRIPE_API_BASE" in env_values:
        children.append(subprocess.Popen([str(bin_dir / "localstripe"), "--port", str(LOCALSTRIPE_PORT),
                                          "--from-scratch"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_port(LOCALSTRIPE_PORT)
        secret = env_values["STRIPE_WEBHOOK_SECRETS"].split(",")[0]
        body = f"url=http://127.0.0.1:{WEB_PORT}/webhooks/stripe&secret={secret}".encode()
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{LOCALSTRIPE_PORT}/_config/webhooks/shop", data=body, method="POST"), timeout=5)
    metrics_dir = Path("instance/metrics").resolve()
    prepare_folder(metrics_dir)
    env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{WEB_PORT}", "PATH": f"{bin_dir}:{os.environ['PATH']}",
           # The processes run in this directory (its instance/), with the repository's gunicorn config.
           "GUNICORN_CMD_ARGS": f"-c {ROOT / 'gunicorn.conf.py'}",
           # Web, worker and relay count into one folder, so /metrics shows them all.
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    if not os.environ.get("LOG_FORMAT") and sys.stdout.isatty():
        # honcho pipes each process's output, so they cannot see the terminal themselves.
        env["LOG_FORMAT"] = "console"
    print(f"shop        http://127.0.0.1:{WEB_PORT}/  (open it in a browser; card 4242 4242 4242 4242, "
          f"any future date and CVC; 3-D Secure: 4000 0025 0000 3155; declined: 4000 0000 0000 0341)")
    print(f"web         http://127.0.0.1:{WEB_PORT}  (POST /webhooks/stripe, GET /products, /readyz, /metrics)")
    if "STRIPE_API_BASE" in env_values:
        print(f"localstripe {env_values['STRIPE_API_BASE']}  (webhooks to the web process, secret in {DEV_ENV})")
    print(f"worker, relay on {os.environ.get('BROKER_URL') or 'the embedded file transport under instance/broker'}")
    print(f"try it:     {shop} demo --url http://127.0.0.1:{WEB_PORT}   (another terminal, this directory)")
    sys.stdout.flush()
    honcho = subprocess.Popen([str(bin_dir / "honcho"), "-f", str(ROOT / "Procfile"), "-d", os.getcwd(),
                               "start", "web", "worker", "relay"], env=env)
    children.append(honcho)
    signal.signal(signal.SIGTERM, lambda *_: honcho.send_signal(signal.SIGINT))
    try:
        return honcho.wait()
    except KeyboardInterrupt:
        return honcho.wait()
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:  # gone before this returns: a `make run` started next finds the ports free
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


if __name__ == "__main__":
    sys.exit(main())
