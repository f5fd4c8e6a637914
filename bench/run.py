"""The service's benchmarks, each against a baseline measured in the same run: `python -m bench.run [--quick]`.

Prints the machine, then per benchmark the median, min and max of N repetitions and the
ratio to its baseline. What each one measures and how to read it: bench/README.md.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import runpy
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import stripe

from tests.e2e.cluster import Cluster
from tests.support import CATALOG, WEBHOOK_SECRET, env_for, free_port, stripe_fixture, wait_for_port
from webhook_app.signing import refresh, sign

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WEBHOOK_PATH = "/webhooks/stripe"
FIXTURE = "localstripe_payment_intent.succeeded"
# Nothing in these benchmarks calls Stripe (no checkout; events match no order): a closed port.
NO_STRIPE = "http://127.0.0.1:9"
# The production redelivery wait (120 s): a shorter one makes the relay re-publish every
# message of a backlog that takes longer than that to drain, and the workers then spend their
# time skipping copies (10 s did that to a 2,000-order backlog here).
SERVICE_ENV = {"REDELIVERY_SECONDS": 120, "WEB_CONCURRENCY": 2, "GUNICORN_LOG_LEVEL": "info"}


@dataclass(frozen=True)
class Profile:
    repetitions: int
    ingest_seconds: float     # wrk load per repetition and target
    burst: int                # orders per consumer repetition
    consumer_repetitions: int
    micro_events: int         # verify+store calls per repetition
    e2e_seconds: float        # wrk load per end-to-end rate step
    embedded_rates: tuple     # end-to-end rate steps, events/s
    servers_rates: tuple
    fill: int                 # events bulk-inserted into the inbox for the scale figures
    target_pairs: int         # end-to-end steps at the target rate, empty and full inbox in turn


FULL = Profile(repetitions=5, ingest_seconds=3.0, burst=1000, consumer_repetitions=3, micro_events=2000,
               e2e_seconds=5.0, embedded_rates=(100, 150, 200, 250, 300, 400, 500, 600),
               servers_rates=(250, 300, 350, 400, 450, 500, 750, 1000, 1250), fill=1_000_000, target_pairs=5)
QUICK = Profile(repetitions=3, ingest_seconds=2.0, burst=600, consumer_repetitions=2, micro_events=1000,
                e2e_seconds=3.0, embedded_rates=(150, 300, 450), servers_rates=(250, 500, 750), fill=100_000,
                target_pairs=3)


@dataclass
class Figure:
    benchmark: str
    metric: str
    unit: str
    service: list[float]
    baseline: list[float]
    baseline_name: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return statistics.median(self.service) / statistics.median(self.baseline)


_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"  {time.monotonic() - _STARTED:5.0f} s  {message}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------

def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not left in time; never raises."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def stop_cluster(cluster: Cluster) -> None:
    # Not Cluster.stop_all: that gives up on a process that does not stop in 30 s and leaks it.
    for proc in reversed(list(cluster.procs.values())):
        stop_process(proc)
    cluster.procs.clear()
    for log in cluster._logs:
        log.close()
    cluster._logs.clear()
    cluster.engine.dispose()


def start_baseline_web(workdir: Path) -> tuple[subprocess.Popen, int]:
    """The bare Flask app under the service's own gunicorn.conf.py and worker count."""
    workdir.mkdir(parents=True)
    port = free_port()
    env = env_for(workdir, GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY=2)
    with open(workdir / "web.log", "ab") as log:
        proc = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "--pythonpath", str(ROOT),
             "bench.baseline_app:create_app()"],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc, port


# --- backends -----------------------------------------------------------------------------

class Backend:
    """Where the service keeps its data: the embedded default, or PostgreSQL + RabbitMQ (--servers).

    For --servers each cluster gets a fresh database on the server in TEST_POSTGRES_URL (dropped
    at the end) and the broker in TEST_AMQP_URL, which `make bench BENCH_ARGS=--servers` takes
    from `.ci/services.sh` as `.ci/run` does.
    """

    def __init__(self, servers: bool):
        self.servers = servers
        self.name = "PostgreSQL + RabbitMQ" if servers else "embedded (SQLite WAL + file broker)"
        self._databases: list[str] = []
        if servers:
            missing = [name for name in ("TEST_POSTGRES_URL", "TEST_AMQP_URL") if not os.environ.get(name)]
            if missing:
                raise SystemExit(f"--servers needs {' and '.join(missing)}: run `make bench BENCH_ARGS=--servers` "
                                 "(it sources .ci/services.sh) or `source .ci/services.sh` first")
            self.admin_url = os.environ["TEST_POSTGRES_URL"]
            self.broker_url = os.environ["TEST_AMQP_URL"]

    def cluster(self, workdir: Path, **env) -> Cluster:
        workdir.mkdir(parents=True)
        if not self.servers:
            return Cluster(workdir, stripe_base=NO_STRIPE, **{**SERVICE_ENV, **env})
        from sqlalchemy import create_engine

        name = f"shop_bench_{secrets.token_hex(4)}"
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        admin.dispose()
        self._databases.append(name)
        url = self.admin_url.rsplit("/", 1)[0] + "/" + name
        return Cluster(workdir, stripe_base=NO_STRIPE, database_url=url, broker_url=self.broker_url,
                       **{**SERVICE_ENV, **env})

    def durability(self) -> str:
        """The PostgreSQL server's settings a 2xx's durability rests on, as the figures were measured."""
        if not self.servers:
            return ""
        from sqlalchemy import create_engine

        admin = create_engine(self.admin_url)
        try:
            with admin.connect() as conn:
                shown = [f"{name}={conn.exec_driver_sql(f'SHOW {name}').scalar()}"
                         for name in ("fsync", "full_page_writes", "synchronous_commit")]
        finally:
            admin.dispose()
        return f" (server: {', '.join(shown)})"

    def purge_queues(self) -> None:
        """Messages a crashed earlier run left on the shared broker name outbox rows of a dropped database."""
        if not self.servers:
            return
        from consumers.broker import connect
        from models.settings import Settings

        with connect(Settings(broker_url=self.broker_url)) as conn:
            channel = conn.default_channel
            for queue in QUEUES_TO_PURGE():
                try:
                    queue(channel).declare()
                    queue(channel).purge()
                except Exception:  # noqa: BLE001 - a queue that does not exist yet holds nothing
                    channel = conn.channel()

    def drop_all(self) -> None:
        if not self._databases:
            return
        from sqlalchemy import create_engine

        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in self._databases:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
        self._databases.clear()


def QUEUES_TO_PURGE():
    from consumers.broker import QUEUES

    return list(QUEUES.values())


# --- load generator: wrk with a Lua script ------------------------------------------------

WRK_THREADS, WRK_CONNECTIONS = 2, 16
# At a fixed rate each connection waits connections/rate between an answer and its next request,
# so a slow answer slows the offered rate; more connections keep it up when the service lags.
RATE_CONNECTIONS = 64
LUA_SCRIPT = ROOT / "bench" / "post.lua"


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed. It is the load generator of these benchmarks (Debian package "
                         "`wrk`): `sudo apt-get install wrk`, then run the benchmarks again. Nothing was run.")
    return path


def event_payloads(count: int, intents: list[tuple[str, str, int]] | None = None) -> list[str]:
    """Distinct payment_intent.succeeded events (about 2.1 KB each), as Stripe would send them.

    With `intents` ((payment intent id, order id, amount) per event) each event pays that order;
    without, each names a PaymentIntent no order holds.
    """
    template = stripe_fixture(FIXTURE)
    base = template["data"]["object"]
    payloads = []
    for i in range(count):
        event = refresh(template)
        if intents is None:
            intent = {**base, "id": f"pi_bench_{secrets.token_hex(8)}", "metadata": {}}
        else:
            intent_id, order_id, amount = intents[i]
            intent = {**base, "id": intent_id, "amount": amount, "amount_received": amount,
                      "metadata": {"order_id": order_id}}
        event["data"] = {**template["data"], "object": intent}
        payloads.append(json.dumps(event))
    return payloads


def write_bodies(path: Path, payloads: list[str]) -> Path:
    """One signed delivery a line, for bench/post.lua: signed now, before wrk's clock starts."""
    with open(path, "w") as out:
        for payload in payloads:
            out.write(f"{sign(payload, WEBHOOK_SECRET)}\t{payload}\n")
    return path


@dataclass
class WrkRun:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_share: float          # wrk's CPU time / (wall time x cores): its share of the machine

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def run_wrk(port: int, bodies: Path, seconds: float, *, rate: float = 0, allow_repeats: bool = False) -> WrkRun:
    """wrk -t2 -c16 for `seconds`; at most `rate` requests/s if given. Every answer must be a 2xx."""
    connections = RATE_CONNECTIONS if rate else WRK_CONNECTIONS
    command = [require_wrk(), f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
               "-s", str(LUA_SCRIPT), f"http://127.0.0.1:{port}", "--", str(bodies), f"{rate:g}",
               str(WRK_THREADS)]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        text = out.read()
    lines = [line for line in text.splitlines() if line.startswith("WRK_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{text}")
    result = json.loads(lines[-1].removeprefix("WRK_RESULT "))
    failed = {key: result[key] for key in ("status_errors", "connect_errors", "read_errors", "write_errors",
                                           "timeouts") if result[key]}
    if failed:
        raise RuntimeError(f"wrk to :{port}: not every answer was a 2xx: {failed}")
    if result["wrapped"] and not allow_repeats:
        raise RuntimeError(f"wrk to :{port} ran out of distinct events ({bodies}): make more")
    wall = result["duration_us"] / 1e6
    return WrkRun(result["requests"], wall, result["p50_us"] / 1000, result["p99_us"] / 1000,
                  (usage.ru_utime + usage.ru_stime) / (wall * (os.cpu_count() or 1)))


# Distinct events made for each second of a wrk run. At 5,000 the bare endpoint on a quiet 2-core
# machine used them all up and the run stopped ("ran out of distinct events"); 12,000 take about a
# second to make.
EVENTS_PER_SECOND = 12_000


def fresh_bodies(path: Path, seconds: float, per_second: int = EVENTS_PER_SECOND) -> Path:
    return write_bodies(path, event_payloads(int(seconds * per_second)))


# --- a. webhook ingest, and d. the same with a full inbox ---------------------------------

def prefill_inbox(cluster: Cluster, count: int) -> float:
    """Bulk-insert `count` finished events (and their done outbox rows) as one INSERT … SELECT each."""
    from sqlalchemy import bindparam, text

    from models.base import UTCDateTime, utcnow

    started = time.monotonic()
    now = bindparam("now", utcnow(), type_=UTCDateTime)
    payload = json.dumps(stripe_fixture(FIXTURE))
    if cluster.database_url.startswith("sqlite"):
        numbers = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
        source = "n"
        concat = "'{prefix}' || i"
    else:
        numbers = ""
        source = "generate_series(1, :count) AS n(i)"
        concat = "'{prefix}' || i"
    with cluster.engine.begin() as conn:
        conn.execute(text(
            numbers + "INSERT INTO inbox_events (event_id, type, api_version, livemode, payload, object_id, status, "
            "attempts, outcome, received_at, processed_at) SELECT " + concat.format(prefix="evt_fill_") +
            ", 'payment_intent.succeeded', '2020-08-27', false, :payload, " + concat.format(prefix="pi_fill_") +
            ", 'ignored', 1, 'benchmark fill', :now, :now FROM " + source).bindparams(now),
            {"count": count, "payload": payload})
        conn.execute(text(
            "INSERT INTO outbox (topic, payload, inbox_event_id, status, attempts, deliveries, available_at, "
            "created_at, published_at, done_at) SELECT 'stripe_event', '{}', id, 'done', 0, 1, :now, :now, :now, :now "
            "FROM inbox_events WHERE outcome = 'benchmark fill'").bindparams(now))
    if not cluster.database_url.startswith("sqlite"):
        with cluster.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE inbox_events")
            conn.exec_driver_sql("VACUUM ANALYZE outbox")
    return time.monotonic() - started


def finish_stored_events(cluster: Cluster) -> None:
    """Ingest stores events no worker handled: close them, so the pipeline benchmarks start clean."""
    from sqlalchemy import text

    with cluster.engine.begin() as conn:
        conn.execute(text("UPDATE outbox SET status = 'done' WHERE status != 'done'"))
        conn.execute(text("UPDATE inbox_events SET status = 'ignored', outcome = 'benchmark ingest' "
                          "WHERE status = 'received'"))


def bench_ingest(workdir: Path, profile: Profile, backend: Backend, full: Cluster | None) -> list[Figure]:
    """Bare Flask vs the service (and vs the service with a full inbox), interleaved, wrk -t2 -c16."""
    cluster = backend.cluster(workdir / "service")
    baseline_proc = None
    try:
        cluster.start("web")
        baseline_proc, baseline_port = start_baseline_web(workdir / "baseline")
        targets = {"baseline": baseline_port, "service": cluster.port}
        if full is not None:
            targets["full inbox"] = full.port
        warm = fresh_bodies(workdir / "warm.txt", 1, 1000)
        for port in targets.values():  # first requests import lazily and open the database
            run_wrk(port, warm, 1, allow_repeats=True)
        runs: dict[str, list[WrkRun]] = {name: [] for name in targets}
        for rep in range(profile.repetitions):
            # Interleaved, so that drift in the machine's speed hits all alike; fresh events for each.
            for name, port in targets.items():
                bodies = fresh_bodies(workdir / f"bodies-{name.replace(' ', '-')}.txt", profile.ingest_seconds)
                runs[name].append(run_wrk(port, bodies, profile.ingest_seconds))
            progress(f"ingest {rep + 1}/{profile.repetitions}: " + ", ".join(
                f"{name} {r[-1].rate:.0f} req/s p99 {r[-1].p99_ms:.1f} ms wrk cpu {r[-1].cpu_share:.0%}"
                for name, r in runs.items()))
        stored = cluster.engine.connect().exec_driver_sql("SELECT count(*) FROM inbox_events").scalar()
    finally:
        if baseline_proc is not None:
            stop_process(baseline_proc)
        stop_cluster(cluster)
    answered = sum(r.requests for r in runs["service"])
    if stored < answered:  # every 2xx must be in the inbox: a benchmark that loses events measures nothing
        raise RuntimeError(f"ingest: {answered:,} events answered 2xx but only {stored:,} rows in the inbox")
    bare = "bare Flask, same gunicorn"
    figures = [
        Figure("webhook ingest", "throughput", "req/s", [r.rate for r in runs["service"]],
               [r.rate for r in runs["baseline"]], bare,
               note=f"ingest: {answered:,} events answered 2xx, {stored:,} rows in the inbox (warm-up included)"),
        Figure("webhook ingest", "latency p50", "ms", [r.p50_ms for r in runs["service"]],
               [r.p50_ms for r in runs["baseline"]], bare),
        Figure("webhook ingest", "latency p99", "ms", [r.p99_ms for r in runs["service"]],
               [r.p99_ms for r in runs["baseline"]], bare),
        Figure("load generator", "wrk CPU, service run", "% of machine", [100 * r.cpu_share for r in runs["service"]],
               [100 * r.cpu_share for r in runs["baseline"]], "wrk CPU, bare run"),
    ]
    if full is not None:
        filled = f"service, empty inbox"
        figures += [
            Figure(f"ingest, {profile.fill:,} in inbox", "throughput", "req/s",
                   [r.rate for r in runs["full inbox"]], [r.rate for r in runs["service"]], filled),
            Figure(f"ingest, {profile.fill:,} in inbox", "latency p99", "ms",
                   [r.p99_ms for r in runs["full inbox"]], [r.p99_ms for r in runs["service"]], filled),
        ]
    return figures


# --- b. consumer and c. end to end, with real orders ---------------------------------------

def create_orders(cluster: Cluster, count: int, prefix: str = "pi_bench_") -> list[tuple[str, str, int]]:
    """`count` orders as checkout leaves them (cart, lines, active reservation, a payment intent),
    in one transaction; returns (payment intent id, order id, total) for each."""
    from models.carts import Cart, CartStatus
    from models.catalog import Reservation, Stock
    from models.orders import Order, OrderLine
    from models.base import new_id, utcnow

    product = CATALOG["products"][0]
    until = utcnow() + timedelta(hours=2)
    made = []
    with cluster.sessions() as session, session.begin():
        for _ in range(count):
            cart = Cart(id=new_id("cart"), status=CartStatus.CHECKED_OUT)
            session.add(cart)
            intent = f"{prefix}{secrets.token_hex(10)}"
            subtotal = product["unit_amount"]
            order = Order(cart_id=cart.id, email="bench@example.com", currency="jpy", subtotal=subtotal, shipping_fee=900,
                          total=subtotal + 900, ship_name="Bench", ship_postal_code="100-0001",
                          ship_prefecture="Tokyo", ship_address="1-1 Chiyoda", reserved_until=until,
                          payment_intent_id=intent)
            order.lines.append(OrderLine(sku=product["sku"], name=product["name"], quantity=1,
                                         unit_amount=product["unit_amount"]))
            order.reservations.append(Reservation(sku=product["sku"], quantity=1, expires_at=until))
            session.add(order)
            made.append((intent, order, subtotal + 900))
        stock = session.get(Stock, product["sku"])
        stock.on_hand += count
        stock.reserved += count
        session.flush()
        return [(intent, order.id, total) for intent, order, total in made]


class Watch:
    """Reads counts while the service runs: on SQLite through a read-only connection outside
    SQLAlchemy (the service's engine takes the write lock on every BEGIN)."""

    def __init__(self, cluster: Cluster):
        self.sqlite = cluster.database_url.startswith("sqlite")
        if self.sqlite:
            self.conn = sqlite3.connect(f"file:{cluster.database_url.removeprefix('sqlite:///')}?mode=ro", uri=True)
        else:
            self.conn = cluster.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def rows(self, sql: str, params: dict | None = None) -> list[tuple]:
        if self.sqlite:
            return self.conn.execute(sql, params or {}).fetchall()
        from sqlalchemy import text

        return [tuple(row) for row in self.conn.execute(text(sql), params or {}).all()]

    def value(self, sql: str, params: dict | None = None):
        return self.rows(sql, params)[0][0]

    def close(self) -> None:
        self.conn.close()


def _as_datetime(value) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def stage_events(cluster: Cluster, intents: list[tuple[str, str, int]], later: datetime) -> None:
    """Store the orders' succeeded events as the webhook does, held back until `release_events`."""
    from sqlalchemy import update

    from consumers.handlers import HANDLED_EVENT_TYPES
    from models.db import transaction
    from models.events import OutboxMessage, OutboxStatus, store_event

    with transaction(cluster.sessions) as session:
        for payload in event_payloads(len(intents), intents):
            store_event(session, json.loads(payload), payload, handled_types=HANDLED_EVENT_TYPES)
        session.execute(update(OutboxMessage).where(OutboxMessage.status == OutboxStatus.PENDING)
                        .values(available_at=later))


def release_events(cluster: Cluster, later: datetime) -> None:
    from sqlalchemy import update

    from models.db import transaction
    from models.base import utcnow
    from models.events import OutboxMessage

    with transaction(cluster.sessions) as session:
        session.execute(update(OutboxMessage).where(OutboxMessage.available_at == later)
                        .values(available_at=utcnow()))


def wait_until_paid(watch: Watch, prefix: str, expected: int, timeout: float) -> float | None:
    """Seconds until `expected` orders whose intent starts with `prefix` are paid, or None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if watch.value("SELECT count(*) FROM orders WHERE status = 'paid' AND payment_intent_id LIKE :p",
                       {"p": prefix + "%"}) >= expected:
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def bare_transport(broker_url: str, messages: int) -> float:
    """Seconds to publish `messages` small messages on the service's broker, then consume and ack them.

    On a queue of its own (the service's workers keep running). For the file transport, always
    the same folder: kombu keeps queue bindings in process-wide state.
    """
    from kombu import Consumer, Queue

    from consumers.broker import EXCHANGE, ConfirmedPublisher, connect
    from models.settings import Settings

    queue = Queue("bench.bare", EXCHANGE, routing_key="bench.bare", durable=True)
    received = 0

    def on_message(_body, message) -> None:
        nonlocal received
        message.ack()
        received += 1

    with connect(Settings(broker_url=broker_url)) as conn:
        # As the relay publishes: persistent messages, the broker's confirms awaited once per 200.
        publisher = ConfirmedPublisher(conn)
        started = time.perf_counter()
        for i in range(messages):
            publisher.publish({"outbox_id": i}, queue)
            if i % 200 == 199:
                publisher.confirm()
        publisher.confirm()
        deadline = time.monotonic() + 120
        with Consumer(conn, queues=[queue], callbacks=[on_message], accept=["json"], prefetch_count=10):
            while received < messages and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except (socket.timeout, TimeoutError):
                    continue
        elapsed = time.perf_counter() - started
    if received < messages:
        raise TimeoutError(f"bare transport: {received} of {messages} messages consumed in 120 s")
    return elapsed


def bench_consumer(workdir: Path, profile: Profile, backend: Backend, cluster: Cluster, watch: Watch) -> list[Figure]:
    """Orders finalised per second by 2 workers (and the relay) from events already stored."""
    broker = cluster.env["BROKER_URL"] if backend.servers else f"filesystem://{workdir / 'bare-broker'}"
    service, baseline = [], []
    for rep in range(profile.consumer_repetitions):
        baseline.append(profile.burst / bare_transport(broker, profile.burst))
        prefix = f"pi_bench_c{rep}_"
        intents = create_orders(cluster, profile.burst, prefix)
        later = datetime(2999, 1, 1, tzinfo=timezone.utc)
        stage_events(cluster, intents, later)
        release_events(cluster, later)
        took = wait_until_paid(watch, prefix, profile.burst, 300)
        if took is None:
            raise TimeoutError(f"{profile.burst} orders not paid in 300 s")
        service.append(profile.burst / took)
        progress(f"consumer {rep + 1}/{profile.consumer_repetitions}: {service[-1]:.0f} orders/s, "
                 f"bare transport {baseline[-1]:.0f} msg/s")
    return [Figure("consumer, 2 workers", f"{profile.burst} orders paid", "orders/s", service, baseline,
                   "bare broker publish+consume")]


@dataclass
class Step:
    offered: float
    sent: int
    achieved: float
    p50_ms: float
    p99_ms: float
    drained: bool

    @property
    def keeps_up(self) -> bool:
        # The webhook must take what is offered too: a slow answer throttles wrk's connections,
        # and a rate that never got in is not kept up, however fast what did get in was paid.
        return self.drained and self.p99_ms <= 1000 and self.achieved >= 0.9 * self.offered


def e2e_step(workdir: Path, cluster: Cluster, watch: Watch, rate: float, seconds: float, tag: str) -> Step:
    """wrk at `rate` events/s for `seconds`, each event paying an order made beforehand; latency is
    the order's paid_at minus its event's received_at (the webhook's store), per order."""
    prefix = f"pi_bench_{tag}_"
    # wrk's run lasts a little longer than `seconds` (5.08-5.1 s for -d5s), and its timetable sends
    # on through it: a second's events to spare (at 1,250/s, 2 x 64 spare ran out).
    count = int(rate * (seconds + 1)) + 2 * RATE_CONNECTIONS
    intents = create_orders(cluster, count, prefix)
    bodies = write_bodies(workdir / f"e2e-{tag}.txt", event_payloads(count, intents))
    load = run_wrk(cluster.port, bodies, seconds, rate=rate)
    sent = watch.value("SELECT count(*) FROM inbox_events WHERE object_id LIKE :p", {"p": prefix + "%"})
    if sent < load.requests:  # a 2xx whose event is not stored is a lost event, not a slow one
        raise RuntimeError(f"end to end at {rate}/s: {load.requests} events answered 2xx, {sent} in the inbox")
    drained = wait_until_paid(watch, prefix, sent, 10) is not None
    if not drained:
        wait_until_paid(watch, prefix, sent, 120)  # let it finish before the next step starts
    # Requests still in flight when wrk stopped may be stored after the first count: count again,
    # and every event stored must have paid its order for the step to keep up (within the same wait:
    # one stored just after the count is paid a moment later, not at once).
    counted, sent = sent, watch.value("SELECT count(*) FROM inbox_events WHERE object_id LIKE :p", {"p": prefix + "%"})
    if sent > counted and wait_until_paid(watch, prefix, sent, 10) is None:
        drained = False
    rows = watch.rows("SELECT o.paid_at, i.received_at FROM orders o JOIN inbox_events i "
                      "ON i.object_id = o.payment_intent_id WHERE o.payment_intent_id LIKE :p AND o.status = 'paid'",
                      {"p": prefix + "%"})
    latencies = sorted((_as_datetime(paid) - _as_datetime(received)).total_seconds() * 1000
                       for paid, received in rows)
    if len(latencies) < 2:
        raise RuntimeError(f"end to end at {rate}/s: only {len(latencies)} of {sent} orders paid")
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    if len(latencies) < sent:
        q[98] = float("inf")  # some never got paid in time
        drained = False
    return Step(rate, sent, load.rate, q[49], q[98], drained)


def target_rate(backend: Backend) -> int:
    return 500 if backend.servers else 300


def bench_end_to_end(workdir: Path, profile: Profile, backend: Backend, cluster: Cluster, watch: Watch) -> list[str]:
    """Rate steps, one each, up to the first at or past the target that is not kept up; the lines that report them."""
    target = target_rate(backend)
    rates = profile.servers_rates if backend.servers else profile.embedded_rates
    steps: list[Step] = []
    for i, rate in enumerate(rates):
        step = e2e_step(workdir, cluster, watch, rate, profile.e2e_seconds, f"e{i}")
        steps.append(step)
        progress(f"end to end at {rate}/s: achieved {step.achieved:.0f}/s, p50 {step.p50_ms:.0f} ms, "
                 f"p99 {step.p99_ms:.0f} ms, {'keeps up' if step.keeps_up else 'does NOT keep up'}")
        if not step.keeps_up and rate >= target:
            break
    lines = ["end to end, one step a rate (webhook store -> order paid; 1 relay, 2 workers; keeps up = the webhook "
             "took at least 90 % of the offered rate, every order was paid within 10 s of the load's end, and p99 "
             "<= 1 s):"]
    lines += [f"  offered {s.offered:>5g}/s  achieved {s.achieved:6.0f}/s  events {s.sent:6d}  p50 {s.p50_ms:8.0f} ms"
              f"  p99 {s.p99_ms:8.0f} ms  {'keeps up' if s.keeps_up else 'does NOT keep up'}" for s in steps]
    kept = [s.offered for s in steps if s.keeps_up]
    highest = max(kept, default=0)
    # Where it stops is the first miss above the highest rate kept up; a miss below it is one step's
    # noise, said apart.
    first_failure = next((s.offered for s in steps if not s.keeps_up and s.offered > highest), None)
    below = [f"{s.offered:g}/s" for s in steps if not s.keeps_up and s.offered < highest]
    lines.append(f"  highest rate kept up: {highest if kept else 'none'}/s; stops keeping up at: "
                 f"{first_failure if first_failure else 'not reached'}" + ("/s" if first_failure else "")
                 + (f" (also missed, below it: {', '.join(below)})" if below else ""))
    return lines


WARM_RATE, WARM_SECONDS = 100, 2.0


def bench_at_target(workdir: Path, profile: Profile, backend: Backend, clusters: dict[str, Cluster],
                    ramp: list[str]) -> list[Figure]:
    """At the target rate, the empty inbox and the full one in turn, `profile.target_pairs` steps each:
    the end-to-end figure and its scale figure are medians of those, measured side by side.

    Only one cluster's processes run at a time (both use the broker's queues by the same names),
    each started afresh and warmed up with a short step at a low rate before its measured step.
    """
    target = target_rate(backend)
    steps: dict[str, list[Step]] = {name: [] for name in clusters}
    for rep in range(profile.target_pairs):
        for name, each in clusters.items():
            backend.purge_queues()
            each.start_all(workers=2, relays=1)
            watch = Watch(each)
            try:
                # Not measured: the first requests and batches of a process import, connect and compile
                # (the first steps after a start were 1.3-1.4 s at 300/s embedded, the ramp's 0.34 s).
                e2e_step(workdir, each, watch, WARM_RATE, WARM_SECONDS, f"w{rep}-{name}")
                step = e2e_step(workdir, each, watch, target, profile.e2e_seconds, f"t{rep}-{name}")
            finally:
                watch.close()
                stop_cluster(each)
            steps[name].append(step)
            progress(f"end to end at {target}/s, {name} inbox {rep + 1}/{profile.target_pairs}: achieved "
                     f"{step.achieved:.0f}/s, p50 {step.p50_ms:.0f} ms, p99 {step.p99_ms:.0f} ms, "
                     f"{'keeps up' if step.keeps_up else 'does NOT keep up'}")
    empty, full = (steps[name] for name in clusters)
    lines = [*ramp, f"end to end at {target}/s, empty and full inbox in turn ({profile.target_pairs} steps each; "
                    "p99 of each step, ms):"]
    lines += [f"  {name:<5} inbox  " + "  ".join(f"{s.p99_ms:6.0f}" + ("" if s.keeps_up else " (not kept up)")
                                                for s in runs) for name, runs in steps.items()]
    empty_p99 = [s.p99_ms for s in empty]
    return [
        Figure("end to end", f"p99 at {target}/s", "ms", empty_p99, [1000.0], "target: 1 s", note="\n".join(lines)),
        Figure(f"end to end, {profile.fill:,} in inbox", f"p99 at {target}/s", "ms", [s.p99_ms for s in full],
               empty_p99, "same, empty inbox"),
    ]


# --- c. signature verification + store ----------------------------------------------------

def bench_verify_and_store(workdir: Path, profile: Profile) -> list[Figure]:
    from models.db import make_engine, make_session_factory, transaction
    from consumers.handlers import HANDLED_EVENT_TYPES
    from models.events import store_event
    from models.migrations import upgrade

    workdir.mkdir(parents=True)
    url = f"sqlite:///{workdir / 'micro.db'}"
    upgrade(url)
    engine = make_engine(url)  # the service's own: WAL, synchronous=NORMAL, BEGIN IMMEDIATE
    factory = make_session_factory(engine)
    verify = stripe.WebhookSignature.verify_header
    verify_loops = 10  # verify_header alone is ~100x faster: more calls for a readable figure

    def verify_only(bodies) -> float:
        started = time.perf_counter()
        for _ in range(verify_loops):
            for payload, header in bodies:
                verify(payload, header, WEBHOOK_SECRET, 300)
        return (time.perf_counter() - started) / (verify_loops * len(bodies))

    def verify_and_store(bodies) -> float:
        started = time.perf_counter()
        for payload, header in bodies:
            verify(payload, header, WEBHOOK_SECRET, 300)
            event = json.loads(payload)
            with transaction(factory) as session:
                store_event(session, event, payload, handled_types=HANDLED_EVENT_TYPES)
        return (time.perf_counter() - started) / len(bodies)

    def fresh(n: int) -> list[tuple[str, str]]:
        return [(payload, sign(payload, WEBHOOK_SECRET)) for payload in event_payloads(n)]

    service, baseline = [], []
    try:
        verify_and_store(fresh(100))
        for rep in range(profile.repetitions):
            bodies = fresh(profile.micro_events)  # new event ids: every store is an insert, not a duplicate
            baseline.append(verify_only(bodies) * 1e6)
            service.append(verify_and_store(bodies) * 1e6)
            progress(f"verify+store {rep + 1}/{profile.repetitions}: {service[-1]:.0f} µs, "
                     f"verify alone {baseline[-1]:.1f} µs")
    finally:
        engine.dispose()
    return [Figure("verify + json + store_event", "time per event", "µs", service, baseline,
                   "verify_header alone")]


# --- report -------------------------------------------------------------------------------

def _first_line(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_block(profile: Profile, quick: bool, backend: "Backend") -> list[str]:
    cpu = _first_line("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = _first_line("/proc/meminfo", "MemTotal")
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}"
                         for name in ("flask", "gunicorn", "sqlalchemy", "kombu", "stripe", "structlog"))
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain"):
        commit += " + uncommitted changes"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [
        ("date", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("cpu", f"{cpu}; {os.cpu_count()} cores, {usable} usable"),
        ("memory", memory or "unknown"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("sqlite", sqlite3.sqlite_version),
        ("platform", platform.platform()),
        ("packages", versions),
        ("commit", commit),
        ("load avg", f"{load} (1, 5, 15 min, at start)"),
        ("backend", backend.name + backend.durability()),
        ("load", f"wrk {_wrk_version()} -t{WRK_THREADS} -c{WRK_CONNECTIONS}, bench/post.lua (pre-signed bodies)"),
        ("web", f"gunicorn.conf.py, WEB_CONCURRENCY=2, worker class {_worker_class()}"),
        ("run", f"{'--quick, ' if quick else ''}N={profile.repetitions} repetitions, "
                f"{profile.ingest_seconds:g} s ingest load, {profile.burst} orders per consumer repetition, "
                f"{profile.e2e_seconds:g} s per end-to-end step, {profile.fill:,} events in the full inbox"),
    ]
    return ["machine"] + [f"  {key:<9} {value}" for key, value in rows]


def _worker_class() -> str:
    """The worker class gunicorn.conf.py gives both web servers, as they read it (with its threads)."""
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    worker_class = config["worker_class"]
    return f"{worker_class}, {config['threads']} threads" if worker_class == "gthread" else worker_class


def _wrk_version() -> str:
    try:
        out = subprocess.run([require_wrk(), "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    words = (out.stdout + out.stderr).split()
    return words[1] if len(words) > 1 else "?"


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def table(figures: list[Figure]) -> list[str]:
    def row(benchmark: str, metric: str, measured: str, samples: list[float], ratio: str) -> str:
        values = (_fmt(statistics.median(samples)), _fmt(min(samples)), _fmt(max(samples)))
        return (f"{benchmark:<28} {metric:<24} {measured:<34} "
                + " ".join(f"{x:>9}" for x in values) + f" {ratio:>7}").rstrip()

    header = f"{'benchmark':<28} {'metric':<24} {'measured':<34} {'median':>9} {'min':>9} {'max':>9} {'ratio':>7}"
    lines = [header, "-" * len(header)]
    for fig in figures:
        lines.append(row(fig.benchmark, f"{fig.metric} ({fig.unit})", "service", fig.service, f"{fig.ratio:.3g}"))
        lines.append(row("", "", f"baseline: {fig.baseline_name}", fig.baseline, ""))
    lines.append("ratio = median(service) / median(baseline), both measured in this run")
    lines += [fig.note for fig in figures if fig.note]
    return lines


def _exit_on_sigterm(_signum, _frame) -> None:
    raise SystemExit(143)  # unwinds through every `finally`, which stops what this run started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=3 and smaller loads")
    parser.add_argument("--servers", action="store_true",
                        help="PostgreSQL + RabbitMQ (TEST_POSTGRES_URL, TEST_AMQP_URL) instead of the embedded default")
    parser.add_argument("--keep", action="store_true", help="keep the temporary databases and process logs")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    require_wrk()
    backend = Backend(args.servers)

    print("\n".join(machine_block(profile, args.quick, backend)), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="shop-bench-"))
    started = time.monotonic()
    keep = args.keep
    full = cluster = watch = None
    try:
        figures: list[Figure] = []
        phase = time.monotonic()
        full = backend.cluster(workdir / "full")
        took = prefill_inbox(full, profile.fill)
        progress(f"bulk-inserted {profile.fill:,} events into a second service's inbox in {took:.0f} s")
        full.start("web")
        figures += bench_ingest(workdir / "ingest", profile, backend, full)
        full.stop("web")
        progress(f"ingest took {time.monotonic() - phase:.0f} s")

        phase = time.monotonic()
        backend.purge_queues()
        cluster = backend.cluster(workdir / "pipeline")
        cluster.start_all(workers=2, relays=1)
        watch = Watch(cluster)
        figures += bench_consumer(workdir / "pipeline", profile, backend, cluster, watch)
        progress(f"consumer took {time.monotonic() - phase:.0f} s")
        phase = time.monotonic()
        ramp = bench_end_to_end(workdir / "pipeline", profile, backend, cluster, watch)
        watch.close()
        watch = None
        stop_cluster(cluster)
        progress(f"end to end, one step a rate, took {time.monotonic() - phase:.0f} s")

        # A service of its own for the empty side: the pipeline's has paid the consumer's and the
        # steps' orders by now, while the full inbox's service holds only finished events.
        phase = time.monotonic()
        finish_stored_events(full)
        cluster = backend.cluster(workdir / "empty")
        figures += bench_at_target(workdir / "pipeline", profile, backend, {"empty": cluster, "full": full}, ramp)
        progress(f"end to end at the target rate, empty and full inbox, took {time.monotonic() - phase:.0f} s")
        cluster = full = None

        if not args.servers:
            phase = time.monotonic()
            figures += bench_verify_and_store(workdir / "micro", profile)
            progress(f"micro took {time.monotonic() - phase:.0f} s")
    except Exception:
        keep = True  # a failed run's process logs say why
        raise
    finally:
        if watch is not None:
            watch.close()
        for each in (cluster, full):
            if each is not None:
                stop_cluster(each)
        backend.drop_all()
        if keep:
            print(f"databases and process logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("\n".join(table(figures)))
    print(f"total {time.monotonic() - started:.0f} s; load avg at the end "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
