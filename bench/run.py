"""The service's benchmarks, each against a baseline measured in the same run: `python -m bench.run [--quick]`.

Prints the machine, then per benchmark the median, min and max of N repetitions and the
ratio to its baseline. What each one measures and how to read it: bench/README.md.
"""
from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import multiprocessing
import os
import platform
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
from datetime import datetime, timezone
from pathlib import Path

import stripe

from tests.e2e.cluster import Cluster
from tests.support import WEBHOOK_SECRET, env_for, free_port, stripe_fixture, wait_for_port
from webhook_app.signing import refresh, sign

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WEBHOOK_PATH = "/webhooks/stripe"
FIXTURE = "localstripe_payment_intent.succeeded"
# Nothing in these benchmarks calls Stripe (no checkout; events match no order): a closed port.
NO_STRIPE = "http://127.0.0.1:9"
# The file transport now and then loses a message (its consumer can read a file before the
# publisher has written it); the relay re-publishes it after REDELIVERY_SECONDS. At the
# production 120 s one loss would stall a burst for two minutes; 10 s is still far above
# how long a message waits in the queue here. The run counts and prints re-publications.
SERVICE_ENV = {"REDELIVERY_SECONDS": 10, "WEB_CONCURRENCY": 2}


@dataclass(frozen=True)
class Profile:
    repetitions: int
    ingest_seconds: float     # load per repetition and target
    clients: int              # concurrent load-generator processes
    burst: int                # events per end-to-end repetition
    micro_events: int         # verify+store calls per repetition


FULL = Profile(repetitions=5, ingest_seconds=3.0, clients=4, burst=500, micro_events=2000)
QUICK = Profile(repetitions=3, ingest_seconds=1.5, clients=4, burst=300, micro_events=1000)


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


def service_cluster(workdir: Path) -> Cluster:
    workdir.mkdir(parents=True)
    return Cluster(workdir, stripe_base=NO_STRIPE, **SERVICE_ENV)


# --- load generator -----------------------------------------------------------------------

def signed_bodies(count: int, *, no_order: bool) -> list[tuple[bytes, dict]]:
    """Distinct signed payment_intent.succeeded deliveries, as Stripe would send them."""
    template = stripe_fixture(FIXTURE)
    bodies = []
    for _ in range(count):
        event = refresh(template)
        if no_order:
            intent = {**template["data"]["object"], "id": f"pi_bench_{secrets.token_hex(8)}", "metadata": {}}
            event["data"] = {**template["data"], "object": intent}
        payload = json.dumps(event)
        bodies.append((payload.encode(), {"Content-Type": "application/json",
                                          "Stripe-Signature": sign(payload, WEBHOOK_SECRET)}))
    return bodies


def _client(port: int, count: int, seconds: float, no_order: bool, barrier, results) -> None:
    """One load-generator process: at most `count` POSTs, for at most `seconds`, one at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it reaps us
    bodies = signed_bodies(count, no_order=no_order)
    barrier.wait(timeout=120)
    start = time.monotonic()
    deadline = start + seconds
    latencies: list[float] = []
    errors = 0
    # HTTP/1.1 keep-alive (gunicorn's gthread workers keep it); if a server closes after an
    # answer, http.client reconnects on the next request, as it would for the service.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for body, headers in bodies:
            if time.monotonic() >= deadline:
                break
            sent = time.perf_counter()
            try:
                conn.request("POST", WEBHOOK_PATH, body, headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                ok = False
            if ok:
                latencies.append(time.perf_counter() - sent)
            else:
                errors += 1
    finally:
        conn.close()
    results.put({"latencies": latencies, "errors": errors, "start": start, "end": time.monotonic()})


@dataclass
class Load:
    ok: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def percentile_ms(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000


class LoadRun:
    """`clients` processes POSTing signed events to 127.0.0.1:port; always reaped on exit."""

    def __init__(self, port: int, *, counts: list[int], seconds: float, no_order: bool = False):
        ctx = multiprocessing.get_context("fork")
        self.seconds = seconds
        self.barrier = ctx.Barrier(len(counts) + 1)
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_client, args=(port, n, seconds, no_order, self.barrier, self.results),
                                  daemon=True) for n in counts]

    def __enter__(self) -> "LoadRun":
        return self

    def start(self) -> float:
        for proc in self.procs:
            proc.start()
        self.barrier.wait(timeout=120)  # every client has its signed bodies ready
        return time.monotonic()

    def collect(self) -> Load:
        outs = [self.results.get(timeout=self.seconds + 60) for _ in self.procs]
        latencies = [lat for out in outs for lat in out["latencies"]]
        elapsed = max(out["end"] for out in outs) - min(out["start"] for out in outs)
        return Load(len(latencies), sum(out["errors"] for out in outs), elapsed, latencies)

    def __exit__(self, *_exc) -> None:
        self.barrier.abort()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def run_load(port: int, profile: Profile, seconds: float) -> Load:
    # A cap of 2,500 requests/s per client bounds the loop by count as well as by time.
    per_client = int(seconds * 2500)
    with LoadRun(port, counts=[per_client] * profile.clients, seconds=seconds) as load:
        load.start()
        result = load.collect()
    if result.errors:
        raise RuntimeError(f"{result.errors} of {result.ok + result.errors} requests to :{port} failed")
    return result


# --- a. webhook ingest --------------------------------------------------------------------

def bench_ingest(workdir: Path, profile: Profile) -> list[Figure]:
    cluster = service_cluster(workdir / "service")
    baseline_proc = None
    try:
        cluster.start("web")
        baseline_proc, baseline_port = start_baseline_web(workdir / "baseline")
        targets = {"baseline": baseline_port, "service": cluster.port}
        for port in targets.values():  # first requests import lazily and open the database
            run_load(port, profile, 0.5)
        runs: dict[str, list[Load]] = {"baseline": [], "service": []}
        for rep in range(profile.repetitions):
            # Interleaved, so that drift in the machine's speed hits both alike.
            for name, port in targets.items():
                runs[name].append(run_load(port, profile, profile.ingest_seconds))
            progress(f"ingest {rep + 1}/{profile.repetitions}: service {runs['service'][-1].rate:.0f} req/s, "
                     f"baseline {runs['baseline'][-1].rate:.0f} req/s")
    finally:
        if baseline_proc is not None:
            stop_process(baseline_proc)
        stop_cluster(cluster)
    name = "bare Flask, same gunicorn"
    return [
        Figure("webhook ingest", "throughput", "req/s",
               [r.rate for r in runs["service"]], [r.rate for r in runs["baseline"]], name),
        Figure("webhook ingest", "latency p50", "ms",
               [r.percentile_ms(50) for r in runs["service"]], [r.percentile_ms(50) for r in runs["baseline"]], name),
        Figure("webhook ingest", "latency p99", "ms",
               [r.percentile_ms(99) for r in runs["service"]], [r.percentile_ms(99) for r in runs["baseline"]], name),
    ]


# --- b. end-to-end processing -------------------------------------------------------------

def outbox_counts(watch: sqlite3.Connection) -> tuple[int, int]:
    total, pending = watch.execute("SELECT count(*), coalesce(sum(status != 'done'), 0) FROM outbox").fetchone()
    return total, pending


def republished(watch: sqlite3.Connection) -> int:
    return watch.execute("SELECT count(*) FROM outbox WHERE deliveries > 1").fetchone()[0]


def burst(cluster: Cluster, watch: sqlite3.Connection, profile: Profile, events: int) -> float:
    """Seconds from the first POST of `events` new events until every outbox row is done."""
    before, _ = outbox_counts(watch)
    counts = [events // profile.clients + (1 if i < events % profile.clients else 0) for i in range(profile.clients)]
    with LoadRun(cluster.port, counts=counts, seconds=120, no_order=True) as load:
        started = load.start()
        deadline = started + 180
        while True:
            total, pending = outbox_counts(watch)
            if total >= before + events and pending == 0:
                elapsed = time.monotonic() - started
                break
            if time.monotonic() > deadline:
                statuses = dict(watch.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall())
                raise TimeoutError(f"burst of {events} not done after 180 s: outbox {statuses}")
            time.sleep(0.02)
        posted = load.collect()
    if posted.errors:
        raise RuntimeError(f"{posted.errors} of {events} webhook POSTs failed")
    return elapsed


def bare_transport(folder: Path, messages: int) -> float:
    """Seconds to publish `messages` small messages on the embedded file transport, then consume and ack them.

    Always the same folder: kombu keeps queue bindings in process-wide state, so a second
    folder in one process would get no binding file and its messages would go nowhere.
    """
    from kombu import Consumer, Producer

    from consumers.broker import EXCHANGE, QUEUES, connect
    from models.events import Topic
    from models.settings import Settings

    queue = QUEUES[Topic.STRIPE_EVENT]
    received = 0

    def on_message(_body, message) -> None:
        nonlocal received
        message.ack()
        received += 1

    with connect(Settings(broker_url=f"filesystem://{folder}")) as conn:
        producer = Producer(conn.default_channel)
        started = time.perf_counter()
        for i in range(messages):
            producer.publish({"outbox_id": i}, exchange=EXCHANGE, routing_key=queue.routing_key, declare=[queue],
                             serializer="json", delivery_mode=2)
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


def bench_pipeline(workdir: Path, profile: Profile) -> list[Figure]:
    cluster = service_cluster(workdir / "service")
    watch = None
    service, baseline = [], []
    try:
        cluster.start_all(workers=1, relays=1)
        db = cluster.database_url.removeprefix("sqlite:///")
        # Read-only and outside SQLAlchemy: the service's engine takes the write lock on every BEGIN.
        watch = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        burst(cluster, watch, profile, 20)  # worker and relay connected, first messages through
        lost = []
        for rep in range(profile.repetitions):
            baseline.append(profile.burst / bare_transport(workdir / "bare-broker", profile.burst))
            already = republished(watch)
            service.append(profile.burst / burst(cluster, watch, profile, profile.burst))
            lost.append(republished(watch) - already)
            progress(f"end-to-end {rep + 1}/{profile.repetitions}: service {service[-1]:.0f} events/s, "
                     f"bare transport {baseline[-1]:.0f} msg/s"
                     + (f", {lost[-1]} message(s) re-published after {SERVICE_ENV['REDELIVERY_SECONDS']} s"
                        if lost[-1] else ""))
        unreadable = cluster.log_of("worker.1").count("JSONDecodeError")
        statuses = dict(watch.execute("SELECT status, count(*) FROM inbox_events GROUP BY status").fetchall())
        if set(statuses) != {"ignored"}:
            raise RuntimeError(f"expected every event ignored (no matching order), got {statuses}")
    finally:
        if watch is not None:
            watch.close()
        stop_cluster(cluster)
    note = (f"end-to-end: messages re-published after the {SERVICE_ENV['REDELIVERY_SECONDS']} s redelivery wait, "
            f"per repetition: {lost}; the worker read {unreadable} message file(s) before they were written")
    return [Figure("end-to-end processing", f"burst of {profile.burst}", "events/s", service, baseline,
                   "bare kombu file transport", note)]


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
        return [(body.decode(), headers["Stripe-Signature"]) for body, headers in signed_bodies(n, no_order=False)]

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


def machine_block(profile: Profile, quick: bool) -> list[str]:
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
        ("run", f"{'--quick, ' if quick else ''}N={profile.repetitions} repetitions, {profile.clients} clients, "
                f"{profile.ingest_seconds:g} s ingest load, bursts of {profile.burst}, "
                f"{profile.micro_events} store calls"),
    ]
    return ["machine"] + [f"  {key:<9} {value}" for key, value in rows]


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
    parser.add_argument("--quick", action="store_true", help="N=3 and smaller loads (under a minute)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary databases and process logs")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    print("\n".join(machine_block(profile, args.quick)), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="shop-bench-"))
    started = time.monotonic()
    keep = args.keep
    try:
        figures: list[Figure] = []
        for name, bench in (("ingest", bench_ingest), ("pipeline", bench_pipeline),
                            ("micro", bench_verify_and_store)):
            phase = time.monotonic()
            figures += bench(workdir / name, profile)
            progress(f"{name} took {time.monotonic() - phase:.0f} s")
    except Exception:
        keep = True  # a failed run's process logs say why
        raise
    finally:
        if keep:
            print(f"databases and process logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("\n".join(table(figures)))
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
