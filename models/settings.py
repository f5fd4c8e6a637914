"""Configuration read from the environment once, into one small typed object."""
from __future__ import annotations

import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _int(env: dict, name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: dict, name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///instance/shop.db"
    broker_url: str = "filesystem://instance/broker"
    stripe_api_key: str = "sk_test_local"
    stripe_api_base: str | None = None
    webhook_secrets: tuple[str, ...] = ()
    reservation_ttl_seconds: int = 1800
    smtp_url: str | None = None
    staff_alert_url: str | None = None
    log_format: str = "json"
    admin_base_url: str = "http://127.0.0.1:8000"
    # The shop's screens load Stripe.js from here with this key; `make run` points the URL at
    # localstripe's copy, so a purchase can be clicked through offline.
    stripe_publishable_key: str = "pk_test_local"
    stripe_js_url: str = "https://js.stripe.com/v3/"
    # The catalog file the shop loads (`shop catalog load`): its screens take product names in the
    # buyer's language (`name_ja`) from it. None: every screen shows the catalog's `name`.
    catalog_file: str | None = None
    # Signs staff sessions and CSRF tokens. None only for a Settings built in code (tests):
    # the app then signs with a random key of its own process.
    secret_key: str | None = None
    # Not in the public contract: tuning knobs with safe defaults.
    max_webhook_bytes: int = 256 * 1024
    webhook_tolerance_seconds: int = 300
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    redelivery_seconds: float = 120.0
    # A message put on the broker this many times without finishing (it kills its worker) is
    # a dead letter, not a loop.
    max_deliveries: int = 10
    # One total deadline for checkout's call to Stripe, retries included, well inside the
    # web server's request timeout.
    stripe_deadline_seconds: float = 8.0
    # Checkouts one web process lets wait on Stripe at once (and as many more waiting for a
    # turn while Stripe is quick); twice this stays below the process's threads
    # (gunicorn.conf.py), so webhooks always find a free thread.
    stripe_max_concurrent_calls: int = 6
    # The relay's pause after a poll that found less than a full batch: 0.2 s here (SQLite);
    # from the environment, 0.05 s on PostgreSQL (RELAY_INTERVAL_POSTGRESQL) unless
    # RELAY_INTERVAL_SECONDS says.
    relay_interval_seconds: float = 0.2
    worker_prefetch: int = 10
    # Messages a worker runs in one database transaction (one savepoint each); 1 for one each.
    # 20 here (SQLite); from the environment, 100 on PostgreSQL (WORKER_BATCH_POSTGRESQL) unless
    # WORKER_BATCH says.
    worker_batch: int = 20
    db_pool_size: int = 5
    db_max_overflow: int = 10
    mail_from: str = "shop@example.com"

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        secrets = tuple(s.strip() for s in env.get("STRIPE_WEBHOOK_SECRETS", "").split(",") if s.strip())
        log_format = env.get("LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
        database_url = resolve_sqlite_path(env.get("DATABASE_URL") or cls.database_url)
        return cls(
            database_url=database_url,
            broker_url=env.get("BROKER_URL") or cls.broker_url,
            stripe_api_key=env.get("STRIPE_API_KEY") or cls.stripe_api_key,
            stripe_api_base=env.get("STRIPE_API_BASE") or None,
            webhook_secrets=secrets,
            reservation_ttl_seconds=_int(env, "RESERVATION_TTL_SECONDS", cls.reservation_ttl_seconds),
            smtp_url=env.get("SMTP_URL") or None,
            staff_alert_url=env.get("STAFF_ALERT_URL") or None,
            log_format=log_format,
            admin_base_url=(env.get("ADMIN_BASE_URL") or cls.admin_base_url).rstrip("/"),
            stripe_publishable_key=env.get("STRIPE_PUBLISHABLE_KEY") or cls.stripe_publishable_key,
            stripe_js_url=env.get("STRIPE_JS_URL") or cls.stripe_js_url,
            catalog_file=env.get("CATALOG_FILE") or None,
            secret_key=env.get("SECRET_KEY") or _instance_secret_key_or_none(),
            max_webhook_bytes=_int(env, "WEBHOOK_MAX_BYTES", cls.max_webhook_bytes),
            max_attempts=_int(env, "MAX_ATTEMPTS", cls.max_attempts),
            retry_base_seconds=_float(env, "RETRY_BASE_SECONDS", cls.retry_base_seconds),
            redelivery_seconds=_float(env, "REDELIVERY_SECONDS", cls.redelivery_seconds),
            max_deliveries=_int(env, "MAX_DELIVERIES", cls.max_deliveries),
            stripe_deadline_seconds=_float(env, "STRIPE_DEADLINE_SECONDS", cls.stripe_deadline_seconds),
            stripe_max_concurrent_calls=_int(env, "STRIPE_MAX_CONCURRENT_CALLS", cls.stripe_max_concurrent_calls),
            relay_interval_seconds=_float(env, "RELAY_INTERVAL_SECONDS", _on_postgresql(
                database_url, RELAY_INTERVAL_POSTGRESQL, cls.relay_interval_seconds)),
            worker_prefetch=_int(env, "WORKER_PREFETCH", cls.worker_prefetch),
            worker_batch=max(1, _int(env, "WORKER_BATCH", _on_postgresql(
                database_url, WORKER_BATCH_POSTGRESQL, cls.worker_batch))),
            db_pool_size=_int(env, "DB_POOL_SIZE", cls.db_pool_size),
            db_max_overflow=_int(env, "DB_MAX_OVERFLOW", cls.db_max_overflow),
            mail_from=env.get("MAIL_FROM") or cls.mail_from,
        )

    @property
    def broker_folder(self) -> Path | None:
        """The folder of the embedded file-backed transport, or None for a server broker."""
        if not self.broker_url.startswith("filesystem://"):
            return None
        rest = self.broker_url[len("filesystem://"):] or "instance/broker"
        return Path(rest).resolve()


def instance_secret_key(path: Path = Path("instance/secret_key")) -> str:
    """The local SECRET_KEY: read from `path`, or generated into it once (mode 0600).

    Every process started in one directory (gunicorn's workers, the CLI) must sign with the same
    key, so the file is written whole under a temporary name and linked into place: the first
    writer wins, and nobody ever reads a half-written key.
    """
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # created with mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    key = path.read_text().strip()
    if not key:
        raise SystemExit(f"{path} is empty: delete it (a new SECRET_KEY is generated) or set SECRET_KEY")
    return key


def _instance_secret_key_or_none() -> str | None:
    # A process started in a read-only directory (a worker, a CLI verb) needs no key; the web
    # app logs that it signs with a key of its own process instead.
    try:
        return instance_secret_key()
    except OSError:
        return None


def resolve_sqlite_path(url: str) -> str:
    """Make a relative SQLite path absolute against the working directory and create its folder."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == "sqlite:///:memory:":
        return url
    path = Path(url[len(prefix):].split("?")[0])
    query = url[len(prefix) + len(url[len(prefix):].split("?")[0]):]
    path = path if path.is_absolute() else Path.cwd() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}{path}{query}"


# A batch's fixed cost (its locks, one statement per table, its commit) is round trips on
# PostgreSQL: 100 orders cost about 1.9 ms of worker CPU each, 50 about 2.1, 10 about 3.4
# (docs/benchmarks.md). SQLite has no round trips, but a batch holds its one writer, which the
# webhook waits for: 20 there (Settings.worker_batch) cost a paid order 2.6-3.2 ms of worker CPU
# against 3.3-3.7 at 10, and at 250 events/s end to end kept up where 10 fell behind; at 25 the
# webhook, waiting longer for its turn, took less than was offered.
WORKER_BATCH_POSTGRESQL = 100


# On PostgreSQL + RabbitMQ end to end, a relay that polls every 0.2 s hands the workers a burst
# of up to a fifth of a second's events at a time, and they queue behind one another: at 400
# events/s the p99 was 1.2 and 1.4 s, at 0.05 s 1.0 and 0.8 s (two alternating pairs; 0.02 s did
# no better). An idle poll there is one indexed SELECT. On SQLite every poll takes the writers'
# turn, and 0.05 s did no better at 300 events/s (docs/benchmarks.md).
RELAY_INTERVAL_POSTGRESQL = 0.05


def _on_postgresql(database_url: str, postgresql, otherwise):
    """A default that depends on the database: `postgresql` there, `otherwise` on SQLite."""
    return postgresql if database_url.startswith("postgresql") else otherwise
