"""A running copy of the service for end-to-end tests: gunicorn, workers and relays as real processes."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import requests

from models.db import make_engine, make_session_factory
from tests.support import BIN, CATALOG, WEBHOOK_SECRET, env_for, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


class Cluster:
    def __init__(self, workdir: Path, *, stripe_base: str, database_url: str | None = None,
                 broker_url: str | None = None, **env):
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url or f"sqlite:///{workdir / 'instance' / 'shop.db'}"
        self.env = env_for(
            workdir,
            DATABASE_URL=self.database_url,
            BROKER_URL=broker_url or f"filesystem://{workdir / 'instance' / 'broker'}",
            STRIPE_API_BASE=stripe_base,
            STRIPE_WEBHOOK_SECRETS=WEBHOOK_SECRET,
            GUNICORN_BIND=f"127.0.0.1:{self.port}",
            # Web, workers and relays count into one folder, as `make run` and a deployment do.
            PROMETHEUS_MULTIPROC_DIR=workdir / "metrics",
            **{"WEB_CONCURRENCY": 2, "REDELIVERY_SECONDS": 3, "RETRY_BASE_SECONDS": 0.2, **env},
        )
        (workdir / "metrics").mkdir(exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs = []
        (workdir / "catalog.json").write_text(json.dumps(CATALOG))
        self.shop("db", "upgrade")
        self.shop("catalog", "load", str(workdir / "catalog.json"))
        self.engine = make_engine(self.database_url)
        self.sessions = make_session_factory(self.engine)

    def shop(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "shop"), *args], cwd=self.workdir, env=self.env, check=check,
                              capture_output=True, text=True, timeout=60)

    def start(self, name: str, *, own_group: bool = False) -> subprocess.Popen:
        """`own_group`: in a process group of its own, as honcho starts each process of `make run`,
        so a test can signal the group as a terminal's Ctrl-C or honcho's stop does."""
        kind = name.split(".")[0]
        command = {
            "web": [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "webhook_app:create_app()"],
            "worker": [str(BIN / "shop"), "worker"],
            "relay": [str(BIN / "shop"), "relay"],
        }[kind]
        log = open(self.workdir / f"{name}.log", "ab")
        self._logs.append(log)
        proc = subprocess.Popen(command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=own_group)
        self.procs[name] = proc
        if kind == "web":
            wait_for_port(self.port, proc=proc)
        return proc

    def start_all(self, workers: int = 1, relays: int = 1) -> "Cluster":
        self.start("web")
        for i in range(workers):
            self.start(f"worker.{i + 1}")
        for i in range(relays):
            self.start(f"relay.{i + 1}")
        return self

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for log in self._logs:
            log.close()
        self._logs.clear()
        self.engine.dispose()

    def log_of(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    # --- the shop's API, as a front end uses it ----------------------------------
    def get(self, path: str) -> dict:
        response = requests.get(self.base + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def stock(self, sku: str) -> dict:
        return self.get(f"/products/{sku}")

    def cart(self, items) -> str:
        cart = requests.post(f"{self.base}/carts", timeout=10).json()
        for sku, quantity in items:
            r = requests.post(f"{self.base}/carts/{cart['id']}/items", json={"sku": sku, "quantity": quantity},
                              timeout=10)
            assert r.status_code == 200, r.text
        return cart["id"]

    def checkout_cart(self, cart_id: str, *, key: str | None = None) -> dict:
        from tests.support import SHIPPING

        headers = {"Idempotency-Key": key} if key else {}
        r = requests.post(f"{self.base}/checkout", json={"cart_id": cart_id, "email": "buyer@example.com",
                                                         "shipping": SHIPPING}, headers=headers, timeout=30)
        return {"status": r.status_code, **r.json()}

    def checkout(self, items, *, key: str | None = None) -> dict:
        return self.checkout_cart(self.cart(items), key=key)

    def wait_for_order(self, order_id: str, statuses, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        order = {}
        while time.monotonic() < deadline:
            order = self.get(f"/orders/{order_id}")
            if order["status"] in statuses:
                return order
            time.sleep(0.1)
        raise AssertionError(f"order {order_id} is {order.get('status')}, expected one of {statuses}")

    def wait_until(self, predicate, timeout: float = 30, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def post_event(self, event: dict, secret: str = WEBHOOK_SECRET) -> requests.Response:
        from tests.support import signed_headers

        payload = json.dumps(event)
        return requests.post(f"{self.base}/webhooks/stripe", data=payload, headers=signed_headers(payload, secret),
                             timeout=10)

