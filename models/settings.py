"""Configuration read from the environment once, into one small typed object."""
from __future__ import annotations

import ipaddress
import math
import os
import re
import secrets
import ssl
import sys
import tempfile
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# A setting the processes cannot run with stops each of them at start, with one line that names the
# variable and what it must be (SystemExit: no traceback), rather than failing every checkout or
# every webhook once running. Each number has a range: finite, positive where zero or less breaks
# it, and bounded where a huge value overflows or stalls something.
RANGES: dict[str, tuple[float, float]] = {
    # A hold of 0 s is expired before the buyer sees the card form; past a week it is no longer a
    # checkout's hold but stock taken off sale (and Python's datetime overflows near 10**14 s).
    "RESERVATION_TTL_SECONDS": (1, 7 * 24 * 3600),
    # Under 1 KB refuses every event Stripe sends; each request thread reads the body into memory.
    "WEBHOOK_MAX_BYTES": (1024, 16 * 1024 * 1024),
    # 1: dead-lettered at the first failure; 100 attempts at the one-hour cap are four days.
    "MAX_ATTEMPTS": (1, 100),
    # 0: no back-off; the delay is capped at one hour whatever the base.
    "RETRY_BASE_SECONDS": (0, 3600),
    # Doubles up to 32 times this: a day's base is a month between copies.
    "REDELIVERY_SECONDS": (1, 24 * 3600),
    # A message's first run counts: 1 would dead-letter every message before it ran (OutboxMessage.start_copy).
    "MAX_DELIVERIES": (2, 100),
    # Under a second fails ordinary calls to Stripe; past a minute no buyer (or web server) still waits.
    "STRIPE_DEADLINE_SECONDS": (1, 60),
    # 0 or less lets no checkout through at all.
    "STRIPE_MAX_CONCURRENT_CALLS": (1, 1000),
    # Under 0.01 s the relay busy-polls the database; a minute apart delays every paid order by as much.
    "RELAY_INTERVAL_SECONDS": (0.01, 60),
    # RabbitMQ's basic.qos prefetch count is a 16-bit number.
    "WORKER_PREFETCH": (1, 65535),
    # 0: no port of their own (the web's /metrics serves them, on a host with a web process).
    "METRICS_PORT": (0, 65535),
    # 0 runs each message on its own, as 1 does.
    "WORKER_BATCH": (0, 1000),
    # SQLAlchemy reads a pool size of 0 and an overflow of -1 as "no limit".
    "DB_POOL_SIZE": (1, 1000),
    "DB_MAX_OVERFLOW": (0, 1000),
}
LOG_FORMATS = ("json", "console")


def _int(env: dict, name: str, default: int) -> int:
    return int_in_range(env, name, default, *RANGES[name])


def int_in_range(env, name: str, default: int, lowest: int, highest: int) -> int:
    """An integer setting; unset or empty, `default`; anything else outside lowest..highest stops the
    process with one line naming it (gunicorn.conf.py reads its own settings with it too)."""
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lowest <= value <= highest:
        raise SystemExit(f"{name} must be an integer from {_shown(lowest)} to {_shown(highest)}, got {raw!r}")
    return value


def _float(env: dict, name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    lowest, highest = RANGES[name]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and lowest <= value <= highest):  # nan and inf are never in range
        raise SystemExit(f"{name} must be a number from {_shown(lowest)} to {_shown(highest)}, got {raw!r}")
    return value


def _shown(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _choice(env: dict, name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    if raw not in allowed:
        raise SystemExit(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def log_format_from(env) -> str:
    """LOG_FORMAT, or when unset: console on a terminal, else json (gunicorn's logger reads it here too)."""
    return _choice(env, "LOG_FORMAT", "console" if sys.stderr.isatty() else "json", LOG_FORMATS)


# The databases the service runs on (its SQL has a PostgreSQL and a SQLite form), with the URL shape of each.
DATABASES = {"postgresql": "postgresql+psycopg://user:password@host/shop", "sqlite": "sqlite:///instance/shop.db"}


def database_url_from(raw: str) -> str:
    """DATABASE_URL as every process uses it (a relative SQLite path made absolute, its folder made);
    stops the process, naming the variable and what is wrong, when no engine could be made from it.
    Checked without connecting: a server that is down is the readiness check's business."""
    examples = " or ".join(DATABASES.values())
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):  # not a URL; a port that is not a number
        raise SystemExit(f"DATABASE_URL must be a database URL such as {examples}, got "
                         f"{hide_password(raw)!r}") from None
    if url.get_backend_name() not in DATABASES:
        raise SystemExit(f"DATABASE_URL must be a PostgreSQL or SQLite URL ({examples}), got "
                         f"{url.drivername!r}")
    try:
        url.get_dialect().import_dbapi()
    except (ArgumentError, ImportError) as exc:  # a driver SQLAlchemy does not know, or one not installed
        raise SystemExit(f"DATABASE_URL names the driver {url.drivername!r}, which cannot be loaded here ({exc}): "
                         f"use {examples}") from None
    if url.get_backend_name() == "sqlite" and (url.database in (None, "", ":memory:")
                                               or url.query.get("mode") == "memory"):
        # Each process (web, worker, relay, each `shop` verb) would have a database of its own, gone with it:
        # an event the webhook stores, no worker ever sees.
        raise SystemExit(f"DATABASE_URL must name a database every process shares: {raw!r} is an in-memory "
                         f"SQLite database, one per process and gone when it exits; use a file such as "
                         f"{DATABASES['sqlite']}")
    try:
        # No connection yet: this only hands the driver's options (SQLite's ?timeout=…) to the dialect.
        create_engine(raw).dispose()
    except (ArgumentError, TypeError, ValueError) as exc:
        options = ", ".join(sorted(url.query)) or "none"
        raise SystemExit(f"DATABASE_URL cannot be used (its options: {options}): {exc}") from None
    try:
        return resolve_sqlite_path(raw)
    except OSError as exc:
        raise SystemExit(f"DATABASE_URL: the folder {str(Path(url.database or '').parent)!r} for the SQLite database "
                         f"cannot be made ({exc.strerror or exc})") from None


# gunicorn's own default for FORWARDED_ALLOW_IPS (gunicorn.config.ForwardedAllowIPS): a proxy on the same host.
FORWARDED_ALLOW_IPS_DEFAULT = "127.0.0.1,::1"


def forwarded_allow_ips_from(raw: str) -> tuple[str, ...]:
    """FORWARDED_ALLOW_IPS read as gunicorn reads it (gunicorn.config.validate_string_to_addr_list), so the
    app trusts X-Forwarded-For from exactly the proxies gunicorn trusts X-Forwarded-Proto from: comma-
    separated addresses or networks (strict: 10.0.0.0/8, never 10.0.0.1/8), or * for every peer; empty
    trusts none. A value gunicorn would refuse stops the process here too."""
    entries = tuple(entry.strip() for entry in raw.split(",") if entry)
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry)
        except ValueError:
            raise SystemExit(f"FORWARDED_ALLOW_IPS must be * or comma-separated addresses or networks of the "
                             f"proxies in front of gunicorn (10.0.0.2, 10.0.0.0/8), got {raw!r}") from None
    return entries


def hide_password(url: str) -> str:
    """A URL fit for a message or a log line: the password between "user:" and "@" replaced by ***."""
    return re.sub(r"(//[^/@:]*:).*@", r"\1***@", url)


def _url_shown(raw: str) -> str:
    """A URL setting as a start-up message may quote it: scheme and host only, no password, and no
    path (a chat's incoming-webhook URL carries its token there)."""
    start, authority, rest = re.fullmatch(r"((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?([^/?#]*)(.*)", hide_password(raw),
                                          flags=re.DOTALL).groups()
    authority = re.sub(r"^([^:@]*):[^@]*@", r"\1:***@", authority)  # user:password@ without a scheme
    return f"{start or ''}{authority}" + ("/…" if rest else "")


def _url(env: dict, name: str, schemes: tuple[str, ...], shape: str) -> str | None:
    """A URL setting the service connects to or writes into links: one of `schemes`, a host, and a
    port that is a number, checked here so that a value without them stops the process at start
    instead of every mail or alert failing (or going to localhost) once running."""
    raw = env.get(name)
    if raw in (None, ""):
        return None
    try:
        url = urlsplit(raw)
        valid = url.scheme in schemes and bool(url.hostname) and url.port != 0
    except ValueError:  # a port that is not a number from 0 to 65535
        valid = False
    if not valid:
        raise SystemExit(f"{name} must be {shape}, got {_url_shown(raw)!r}")
    return raw


def _webhook_secrets(env: dict) -> tuple[str, ...]:
    """STRIPE_WEBHOOK_SECRETS, the endpoints' signing secrets, each `whsec_…` (the dashboard's, or the one
    `stripe listen` prints). Another value there (an API key pasted in the wrong place) would verify no
    event, so every webhook would be refused with 400: it stops the process at start instead."""
    secrets = tuple(s.strip() for s in env.get("STRIPE_WEBHOOK_SECRETS", "").split(",") if s.strip())
    for number, secret in enumerate(secrets, start=1):
        if not secret.startswith("whsec_"):
            kind = re.match(r"(?:sk|rk|pk)_(?:test|live)_", secret)
            what = f" (it starts {kind.group(0)!r}: an API key, not a signing secret)" if kind else ""
            raise SystemExit(f"STRIPE_WEBHOOK_SECRETS must be the webhook endpoints' signing secrets, each starting "
                             f"whsec_ (the endpoint's in Stripe's dashboard, or the one `stripe listen` prints), "
                             f"separated by commas: entry {number} of {len(secrets)} does not{what}")
    return secrets


_STRIPE_KEY_KIND = re.compile(r"(?:sk|rk|pk)_(?:test|live)_|whsec_")
_KEY_KINDS = {"sk_": "a secret API key", "rk_": "a restricted API key", "pk_": "a publishable key",
              "whsec_": "a webhook signing secret"}


def _stripe_key(env: dict, name: str, default: str, wanted: str, shape: str, secrets: tuple[str, ...]) -> str:
    """STRIPE_API_KEY (a secret or restricted key) or STRIPE_PUBLISHABLE_KEY (`pk_…`): one of Stripe's other
    kinds of key there stops the process at start. The publishable key is written into the pay step's page
    for every buyer: a secret key there would give anyone the shop's Stripe account, and the webhook's
    signing secret would let a buyer sign a `payment_intent.succeeded` for an order they never paid."""
    raw = env.get(name) or default
    kind = _STRIPE_KEY_KIND.match(raw)
    if kind is not None and not kind.group(0).startswith(wanted) or raw in secrets:
        said = next((what for prefix, what in _KEY_KINDS.items() if raw.startswith(prefix)), "")
        why = (" (it is one of STRIPE_WEBHOOK_SECRETS)" if raw in secrets
               else f" (it starts {kind.group(0)!r}: {said})")
        raise SystemExit(f"{name} must be {shape}{why}")
    return raw


def _mail_from(env: dict, smtp_url: str | None, default: str) -> str:
    """MAIL_FROM, the sender of the buyers' order mails: required once SMTP_URL sends them, since the
    default's example.com is no shop's domain (receivers junk or refuse it, and replies go nowhere)."""
    raw = env.get("MAIL_FROM")
    if raw in (None, ""):
        if smtp_url:
            raise SystemExit("MAIL_FROM must be set when SMTP_URL is: the address buyers' order mails come "
                             "from, such as shop@your-shop.example or 'Your Shop <shop@your-shop.example>'")
        return default
    if "@" not in parseaddr(raw)[1] or any(c in raw for c in "\r\n"):
        raise SystemExit(f"MAIL_FROM must be one e-mail address, such as shop@your-shop.example or "
                         f"'Your Shop <shop@your-shop.example>', got {raw!r}")
    return raw


def _admin_base_url(env: dict, default: str, needed_by: list[str]) -> str:
    """ADMIN_BASE_URL, the base of the links in buyers' mails and staff alerts: required once either is
    sent, since the default's 127.0.0.1 would reach no buyer's browser and no staff member's."""
    raw = _url(env, "ADMIN_BASE_URL", ("http", "https"), "the shop's address as buyers and staff reach it, "
               "http:// or https:// with a host (https://shop.example.com)")
    if raw is None and needed_by:
        raise SystemExit(f"ADMIN_BASE_URL must be set when {' or '.join(needed_by)} is: the shop's address as "
                         f"buyers and staff reach it, the base of the links in order mails and staff alerts, "
                         f"such as https://shop.example.com")
    return (raw or default).rstrip("/")


def _ca_file(env: dict, name: str) -> str | None:
    """A PEM file of CA certificates to trust (a private CA), checked to load at start rather than
    every mail failing its TLS handshake once running."""
    raw = env.get(name)
    if raw in (None, ""):
        return None
    path = Path(raw).resolve()
    if not path.is_file():
        raise SystemExit(f"{name} must be a PEM file of CA certificates, such as /etc/ssl/private-ca.pem: "
                         f"{str(path)!r} is not a file")
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise SystemExit(f"{name} must be a PEM file of CA certificates: {str(path)!r} cannot be read as one "
                         f"({exc.strerror or exc})") from None
    return str(path)


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///instance/shop.db"
    broker_url: str = "filesystem://instance/broker"
    stripe_api_key: str = "sk_test_local"
    stripe_api_base: str | None = None
    webhook_secrets: tuple[str, ...] = ()
    reservation_ttl_seconds: int = 1800
    smtp_url: str | None = None
    # CA certificates (PEM) the SMTP server's certificate is checked against instead of the system's.
    smtp_ca_file: str | None = None
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
    # gunicorn's FORWARDED_ALLOW_IPS: the proxies whose X-Forwarded-For names the client
    # (webhook_app.client_address); gunicorn trusts their X-Forwarded-Proto.
    forwarded_allow_ips: tuple[str, ...] = tuple(FORWARDED_ALLOW_IPS_DEFAULT.split(","))
    # Not in the public contract: tuning knobs with safe defaults.
    max_webhook_bytes: int = 256 * 1024
    webhook_tolerance_seconds: int = 300
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    redelivery_seconds: float = 120.0
    # A message a worker took this many times without finishing (it kills its worker) is a
    # dead letter, not a loop.
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
    # `shop worker` and `shop relay` serve their host's counters on this port (0: they do not; the web's
    # /metrics does, from the host's shared folder): for a host that runs no web process.
    metrics_port: int = 0
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
        secrets = _webhook_secrets(env)
        log_format = log_format_from(env)
        database_url = database_url_from(env.get("DATABASE_URL") or cls.database_url)
        smtp_url = _url(env, "SMTP_URL", ("smtp", "smtps"), "smtp://host:port or smtps://host:port "
                        "(user:password@host to log in)")
        staff_alert_url = _url(env, "STAFF_ALERT_URL", ("http", "https"),
                               "an http:// or https:// URL with a host (the chat's incoming webhook)")
        return cls(
            database_url=database_url,
            broker_url=env.get("BROKER_URL") or cls.broker_url,
            stripe_api_key=_stripe_key(env, "STRIPE_API_KEY", cls.stripe_api_key, ("sk_", "rk_"),
                                       "the shop's secret API key (sk_test_… / sk_live_…, or a restricted "
                                       "rk_… key)", secrets),
            stripe_api_base=_url(env, "STRIPE_API_BASE", ("http", "https"), "an http:// or https:// URL with a "
                                 "host, such as http://127.0.0.1:8420 for localstripe (unset: Stripe itself)"),
            webhook_secrets=secrets,
            reservation_ttl_seconds=_int(env, "RESERVATION_TTL_SECONDS", cls.reservation_ttl_seconds),
            smtp_url=smtp_url,
            smtp_ca_file=_ca_file(env, "SMTP_CA_FILE"),
            staff_alert_url=staff_alert_url,
            log_format=log_format,
            admin_base_url=_admin_base_url(env, cls.admin_base_url, [name for name, value in (
                ("SMTP_URL", smtp_url), ("STAFF_ALERT_URL", staff_alert_url)) if value]),
            stripe_publishable_key=_stripe_key(env, "STRIPE_PUBLISHABLE_KEY", cls.stripe_publishable_key, ("pk_",),
                                               "the shop's publishable key (pk_test_… / pk_live_…), which every "
                                               "buyer's pay step shows", secrets),
            stripe_js_url=_url(env, "STRIPE_JS_URL", ("http", "https"), "an http:// or https:// URL with a "
                               "host, where the shop's screens load Stripe.js (https://js.stripe.com/v3/)")
            or cls.stripe_js_url,
            catalog_file=env.get("CATALOG_FILE") or None,
            secret_key=env.get("SECRET_KEY") or _instance_secret_key_or_none(),
            # Unset, gunicorn's default; set but empty, no proxy is trusted (as gunicorn reads it).
            forwarded_allow_ips=forwarded_allow_ips_from(env.get("FORWARDED_ALLOW_IPS", FORWARDED_ALLOW_IPS_DEFAULT)),
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
            metrics_port=_int(env, "METRICS_PORT", cls.metrics_port),
            worker_batch=max(1, _int(env, "WORKER_BATCH", _on_postgresql(
                database_url, WORKER_BATCH_POSTGRESQL, cls.worker_batch))),
            db_pool_size=_int(env, "DB_POOL_SIZE", cls.db_pool_size),
            db_max_overflow=_int(env, "DB_MAX_OVERFLOW", cls.db_max_overflow),
            mail_from=_mail_from(env, smtp_url, cls.mail_from),
        )

    def require_secret_key(self) -> None:
        """For the web server, before it starts its web processes: without SECRET_KEY, and with no
        instance/secret_key it could read or make, each web process would sign sessions and CSRF tokens
        with a key of its own, and a form one of them rendered would be refused at random by another."""
        if self.secret_key:
            return
        path = Path.cwd() / "instance" / "secret_key"
        try:
            instance_secret_key(path)
        except OSError as exc:
            raise SystemExit(f"SECRET_KEY is not set and {path} cannot be made ({exc.strerror or exc}): set "
                             f"SECRET_KEY to one random value shared by every web process (python3 -c 'import "
                             f"secrets; print(secrets.token_urlsafe(48))')") from None

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
    # A worker or a CLI verb started in a read-only directory signs nothing and needs no key; the web
    # server does not start without one (`Settings.require_secret_key`, from gunicorn's master).
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
