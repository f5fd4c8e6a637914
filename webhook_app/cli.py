"""The `shop` command: migrations, catalog, the long-running processes, and staff tools.

Exit codes: 0 success, 1 operation failed, 2 bad usage or unknown id.
"""
from __future__ import annotations

import http.client
import json
import os
import sys
import urllib.parse
from pathlib import Path

import click
from sqlalchemy import select

from models.base import LARGEST_ID
from models.settings import Settings
from webhook_app.staff_verbs import actor_name as _actor, staff_verb

DEV_ENV = Path("instance/dev.env")


def load_dev_env() -> None:
    """Pick up what `make run` generated (local Stripe base, webhook secret) when not set."""
    if not DEV_ENV.is_file():
        return
    for line in DEV_ENV.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            os.environ.setdefault(key.strip(), value.strip())


class UnknownId(click.ClickException):
    exit_code = 2


def _note_text(ctx, param, value: str | None) -> str | None:
    """A --note or --reason is kept in the audit trail and the order's story: blank says nothing,
    so it is refused (as the console refuses it) rather than stored."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("must not be blank (it is kept in the audit trail)")
    return value.strip()


def _dead_letter_ids(ctx, param, value):
    """Dead-letter ids, all checked before any is touched: a number past the outbox's id column
    names no message (and PostgreSQL refuses to compare it), so it is an unknown id."""
    for message_id in (value if isinstance(value, tuple) else (value,)):
        if not 0 < message_id <= LARGEST_ID:
            raise UnknownId(f"no dead letter {message_id}")
    return value


def _settings() -> Settings:
    from consumers.broker import refuse_unknown_transport
    from models.logs import configure_logging

    settings = Settings.from_env()
    refuse_unknown_transport(settings.broker_url)
    configure_logging(settings.log_format)
    return settings


def _sessions(settings: Settings):
    from models.db import engine_for, make_session_factory, missing_sqlite_file, no_database_file

    # Connecting would make an empty SQLite database at a mistyped path: only `shop db upgrade` makes one.
    database = missing_sqlite_file(settings.database_url)
    if database is not None:
        raise click.ClickException(no_database_file(database))
    return make_session_factory(engine_for(settings))


def _staff_call(call):
    """Run a staff use case: unknown id exits 2, a refusal or a failed Stripe call exits 1."""
    from sqlalchemy.exc import DBAPIError

    from consumers.payments import PaymentGatewayError
    from consumers.staff_actions import RefundPartlyDone
    from models.db import DECISION_ABORTED, aborted_by_a_conflict
    from models.errors import DomainError, NotFound

    try:
        return call()
    except NotFound as exc:
        raise UnknownId(exc.message)
    except DBAPIError as exc:
        if not aborted_by_a_conflict(exc):
            raise
        raise click.ClickException(DECISION_ABORTED) from None
    except DomainError as exc:
        raise click.ClickException(exc.message)
    except RefundPartlyDone as exc:  # Stripe made a refund: what went back and what did not, as it is
        raise click.ClickException(str(exc))
    except PaymentGatewayError as exc:
        raise click.ClickException(f"Stripe refused or could not be reached: {exc}")


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _database_unreachable(exc: BaseException) -> bool:
    """True for an error saying the database could not be reached: no connection could be made
    (refused, timed out, no such host, database or role, a password refused, a SQLite file that
    cannot be opened) or the one in use was lost. Not a statement the database refused (a missing
    table is said apart, `_NOT_MIGRATED`; a constraint is a bug, and keeps its traceback)."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, DBAPIError):
        # SQLAlchemy knows no statement when the connection itself failed, and marks a lost one.
        return exc.connection_invalidated or (isinstance(exc, OperationalError) and exc.statement is None)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the driver is installed with the package
        return False
    # The driver's own error, not wrapped by SQLAlchemy: a failed connection has no SQLSTATE
    # (the server never answered), or one of class 08 (connection exception).
    return isinstance(exc, psycopg.OperationalError) and (exc.sqlstate is None or exc.sqlstate.startswith("08"))


_NOT_MIGRATED = ("the database at DATABASE_URL has no table {table}: it is not migrated, or not the service's "
                 "database: run `shop db upgrade` (or correct DATABASE_URL)")


def _schema_behind() -> str | None:
    """Why the database lacks a table or column the code names, when its Alembic revision says so: it
    is at an older revision than this release's last (migrated before this release, or downgraded
    since), or at one this release does not know (a newer release's). Else None (no revision: never
    migrated, or not the service's database; or at this release's last). Asked only on that error's
    path: one read of alembic_version."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from models.migrations import alembic_config, database_revision

    database_url = Settings.from_env().database_url
    try:
        at = database_revision(database_url)
    except SQLAlchemyError:  # it answered the verb's statement a moment ago; if not now, say what we know
        return None
    script = ScriptDirectory.from_config(alembic_config(database_url))
    needed = script.get_current_head()
    if at is None or at == needed:
        return None
    try:
        script.get_revision(at)
    except CommandError:
        return (f"the database at DATABASE_URL is at revision {at}, which this release does not know (a newer "
                f"release migrated it), and this release needs {needed}: deploy that release (or a newer one) "
                f"again, or restore the database from before its migration")
    return (f"the database at DATABASE_URL is at revision {at}, and this release needs {needed}: its schema is "
            f"older than the code; run `shop db upgrade`")


class _ShopGroup(click.Group):
    """The `shop` group: a database that cannot be reached, that has not the service's tables, or whose
    schema is at another revision than the code's, is one line and exit 1, from any verb, instead of the
    driver's whole traceback (which names nothing more useful, and is long)."""

    def invoke(self, ctx):
        from models.db import missing_column, missing_table

        try:
            return super().invoke(ctx)
        except Exception as exc:
            if _database_unreachable(exc):
                from models.logs import describe_error

                # describe_error: the driver's message without bound parameters, URL passwords masked.
                raise click.ClickException(f"database unavailable: {_one_line(describe_error(exc))}") from exc
            table = missing_table(exc)
            if table is None and missing_column(exc) is None:
                raise
            behind = _schema_behind()
            if behind is not None:
                raise click.ClickException(behind) from exc
            if table is None:  # a column missing at this release's own revision: a bug, with its traceback
                raise
            raise click.ClickException(_NOT_MIGRATED.format(table=table)) from exc


@click.group(cls=_ShopGroup, context_settings={"help_option_names": ["-h", "--help"]})
def shop():
    """Order-payment service: Stripe webhooks in, paid orders and shipments out."""


@shop.group()
def db():
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True,
              help="Alembic revision to migrate to; a database already at or past it is left as it is.")
def db_upgrade(revision):
    """Migrate the database at DATABASE_URL to the latest schema, and say which revision it is at then."""
    from alembic.util import CommandError

    from models.migrations import RevisionNotApplied, UnknownDatabaseRevision, upgrade

    settings = _settings()
    try:
        done = upgrade(settings.database_url, revision)
    except UnknownDatabaseRevision as exc:  # the usual cause: the code was rolled back, the database was not
        raise click.ClickException(
            f"the database is at revision {exc.revision}, which this release does not know: a newer release "
            f"migrated it. Deploy that release (or a newer one) again, or restore the database from before its "
            f"migration; nothing done") from exc
    except RevisionNotApplied as exc:  # a table in use, say: the revisions before it are committed
        moved = f" (migrated from {exc.before or 'an empty database'})" if exc.at != exc.before else ""
        raise click.ClickException(
            f"the database is at {exc.at or 'no revision (an empty database)'}{moved}: revision "
            f"{exc.revision or 'after it'} was not applied: {exc.reason}") from exc
    except CommandError as exc:  # alembic names what is wrong with the revision asked for
        if click.get_current_context().get_parameter_source("revision") is click.core.ParameterSource.DEFAULT:
            raise click.ClickException(str(exc)) from exc
        raise click.BadParameter(str(exc), param_hint="--revision") from exc
    at = done.after or "no revision (an empty database)"
    asked = done.asked if done.asked == done.after else f"{done.asked} ({at})"
    if done.moved:
        click.echo(f"database migrated to {asked}, from {done.before or 'an empty database'}")
    elif done.target is None:  # "base", or a relative revision
        click.echo(f"database at {at}; nothing done")
    elif done.target != done.after:
        # Alembic's upgrade never goes down: a revision behind the database's is a no-op, not an error.
        click.echo(f"database already past {done.asked} (at {at}); nothing done: `shop db upgrade` never "
                   f"goes back to an older revision")
    else:
        click.echo(f"database already at {asked}; nothing done")


@shop.group()
def catalog():
    """Products, stock and shipping rates."""


@catalog.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def catalog_load(file):
    """Load products, stock and shipping rates from FILE (JSON or YAML); loading again updates by sku.

    A product's `stock` is its units on hand as of the load that brings that figure. Loading again
    adds the figure's difference from the one loaded last, the units to add since the last load (a
    lower figure takes units off): units sold since stay sold, and the same figure again changes
    nothing. A new sku starts at its figure. Nothing is loaded if a sku would be left with fewer
    units than checkouts hold, or fewer than none (exit 1), or if FILE does not parse or is not a
    catalog (bad usage, exit 2, naming the field).
    """
    from sqlalchemy.exc import IntegrityError

    from models.catalog_file import apply_catalog, read_catalog
    from models.db import transaction
    from models.errors import DomainError

    settings = _settings()
    try:
        data = read_catalog(file)
    except (DomainError, ValueError) as exc:  # a file that does not parse (or is not UTF-8), or a wrong shape
        # Bad usage (exit 2), as `shop events send` says of a file that is not JSON; a load the stock
        # refuses is a failed operation (exit 1), below.
        message = exc.message if isinstance(exc, DomainError) else str(exc)
        raise click.BadParameter(message if message.startswith(str(file)) else f"{file}: {message}",
                                 param_hint="FILE") from exc
    try:
        with transaction(_sessions(settings)) as session:
            counts = apply_catalog(session, data)
    except DomainError as exc:
        raise click.ClickException(f"{file}: {exc.message}") from exc
    except ValueError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    except IntegrityError as exc:
        # What the load's locks leave to the database: another load adding the same new sku meanwhile.
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
        raise click.ClickException(f"{file}: nothing was loaded: the database refused it ({reason}), "
                                   f"most likely another change to the same products at the same time; "
                                   f"load it again") from exc
    click.echo(f"catalog loaded: {counts['created']} created, {counts['updated']} updated, "
               f"{counts['shipping_rates']} shipping rates")


@shop.command()
def worker():
    """Consume the work queues and run each message through its handler (ack after commit).

    With METRICS_PORT set, also serves its host's counters on GET /metrics at that port (a host with no web
    process)."""
    from consumers.broker import refuse_unshared_transport
    from consumers.metrics_server import serve_counters
    from consumers.payments import configure_stripe
    from consumers.worker import run_worker

    settings = _settings()
    refuse_unshared_transport(settings.broker_url)
    configure_stripe(settings)
    serve_counters(settings.metrics_port, "worker")
    run_worker(settings)


@shop.command()
def relay():
    """Publish the outbox to the broker, re-publish lost messages, expire reservations, and POST again
    staff alerts whose POST to STAFF_ALERT_URL failed.

    With METRICS_PORT set, also serves its host's counters on GET /metrics at that port (a host with no web
    process)."""
    from consumers.broker import refuse_unshared_transport
    from consumers.metrics_server import serve_counters
    from consumers.relay import run_relay

    settings = _settings()
    refuse_unshared_transport(settings.broker_url)
    serve_counters(settings.metrics_port, "relay")
    run_relay(settings)


@shop.group()
def events():
    """Stripe events stored in the inbox."""


@events.command("list")
@click.option("--status", help="received, processed, ignored, retrying, dead or resolved")
@click.option("--type", "event_type", help="e.g. payment_intent.succeeded")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, LARGEST_ID),
              help="How many events to list at most, newest first.")
def events_list(status, event_type, limit):
    """List stored events, newest first."""
    from models.events import EventStatus, InboxEvent

    settings = _settings()
    query = select(InboxEvent).order_by(InboxEvent.id.desc()).limit(limit)
    if status:
        try:
            query = query.where(InboxEvent.status == EventStatus(status))
        except ValueError:
            raise click.BadParameter(f"unknown status {status!r}", param_hint="--status")
    if event_type:
        query = query.where(InboxEvent.type == event_type)
    with _sessions(settings)() as session:
        rows = session.scalars(query).all()
        for e in rows:
            click.echo(f"{e.event_id}  {e.type:<32} {e.status.value:<10} attempts={e.attempts} "
                       f"order={e.order_id or '-'}  {e.outcome or e.last_error or ''}")
        if not rows:
            click.echo("no events")


def _find_event(session, event_id: str):
    from models.events import InboxEvent

    event = session.scalars(select(InboxEvent).where(InboxEvent.event_id == event_id)).one_or_none()
    if event is None:
        raise UnknownId(f"no stored event {event_id}")
    return event


@events.command("show")
@click.argument("event_id")
def events_show(event_id):
    """Show one stored event: its status, outcome, payload, and each run of its handler (worker,
    replay) with its outcome, and a failed run's error and traceback."""
    from models.history import EventAttempt
    from models.logs import redact

    settings = _settings()
    with _sessions(settings)() as session:
        event = _find_event(session, event_id)
        runs = session.scalars(select(EventAttempt).where(EventAttempt.inbox_event_id == event.id)
                               .order_by(EventAttempt.id)).all()
        _echo_json({**event.to_dict(), "payload": event.data, "runs": [
            {"at": run.finished_at.isoformat(), "runner": run.runner, "outcome": run.outcome.value,
             "reason": run.reason, "error": redact(run.error) if run.error else None,
             "traceback": redact(run.traceback) if run.traceback else None} for run in runs]})


@events.command("replay")
@click.argument("event_id")
@click.option("--note", callback=_note_text, help="Why it is replayed (kept in the audit trail).")
@staff_verb
def events_replay(event_id, note, actor):
    """Run a stored event through its handler again, now (idempotent: a second run changes nothing).

    A resolved event is refused until its dead letter is reopened (shop dlq reopen). A run that
    fails applies nothing: it is kept as a failed attempt with its traceback (shop events show)
    and in the audit trail, and the command says so in one line and exits 1.
    """
    from consumers.payments import configure_stripe
    from consumers.staff_actions import ReplayFailed, replay_event

    settings = _settings()
    configure_stripe(settings)
    try:
        outcome = _staff_call(lambda: replay_event(_sessions(settings), settings, event_id, actor=_actor(actor),
                                                   note=note))
    except ReplayFailed as exc:
        where = f"shop events show {event_id}" + (f" or shop orders show {exc.order_id}" if exc.order_id else "")
        raise click.ClickException(f"{event_id}: replay failed, nothing was applied: {_one_line(exc.error)} "
                                   f"(kept as a failed attempt with its traceback: {where})") from exc
    click.echo(f"{event_id}: {outcome.status.value} ({outcome.reason})")


def _webhook_url(ctx, param, value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number from 0 to 65535)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL")
    return value


@events.command("send")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--url", default="http://127.0.0.1:8000/webhooks/stripe", show_default=True, callback=_webhook_url,
              help="The service's webhook endpoint (http:// or https://).")
@click.option("--fresh-id", is_flag=True, help="Give the event a new id and created time before sending.")
def events_send(file, url, fresh_id):
    """Sign a Stripe event from FILE with the configured secret and POST it to the service."""
    from webhook_app.signing import NoAnswer, post_signed_event

    settings = Settings.from_env()
    if not settings.webhook_secrets:
        raise click.UsageError("STRIPE_WEBHOOK_SECRETS is not set: there is no secret to sign with")
    try:
        event = json.loads(file.read_text())
    except ValueError as exc:
        raise click.UsageError(f"{file} is not JSON: {exc}")
    if not isinstance(event, dict):  # a Stripe event is always an object
        raise click.UsageError(f"{file} is not a JSON object (a Stripe event), but a {type(event).__name__}")
    try:
        status, body = post_signed_event(url, event, settings.webhook_secrets[0], fresh_id=fresh_id)
    except NoAnswer as exc:  # it took the request (or the connection) and said nothing in time
        raise click.ClickException(f"{url}: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, DNS, not HTTP
        reason = getattr(exc, "reason", exc)  # URLError wraps the socket's error
        raise click.ClickException(f"could not reach {url}: {getattr(reason, 'strerror', None) or reason}") from exc
    except ValueError as exc:  # a URL urllib cannot send to, though it parsed
        raise click.BadParameter(str(exc), param_hint="--url") from exc
    click.echo(f"{status} {body}")
    if status >= 300:
        sys.exit(1)


@shop.command()
@click.option("--since", default="3d", show_default=True, help="How far back to look: 3d, 12h, 30m, 90s.")
def reconcile(since):
    """Fetch events from Stripe's API that never arrived, and ingest them (safe to repeat).

    An event the webhook would refuse (an object id over 255 characters, say) or the database refuses is
    named with its reason, the others are still stored, and the exit status is 1; a database failing
    otherwise (unreachable, read-only, locked) stops the run."""
    from consumers.payments import PaymentGatewayError, configure_stripe
    from consumers.reconcile import DatabaseFailed, parse_span, reconcile as run_reconcile
    from models.db import missing_column, missing_table
    from models.logs import describe_error

    try:
        seconds = parse_span(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since")
    settings = _settings()
    configure_stripe(settings)
    try:
        result = run_reconcile(_sessions(settings), seconds)
    except PaymentGatewayError as exc:
        raise click.ClickException(f"could not list events at Stripe: {exc}")
    except DatabaseFailed as exc:
        _name_refused(exc.result.refused)
        cause = exc.__cause__
        if missing_table(cause) or missing_column(cause):
            raise cause  # the shop group says what to run
        what = "database unavailable" if _database_unreachable(cause) else "the database failed"
        raise click.ClickException(f"{what}: {_one_line(describe_error(cause))}; {exc} (running it again is safe)")
    click.echo(f"{result.seen} events at Stripe since {since} ago, {result.stored} were missing and are now stored"
               + (f"; {len(result.refused)} more could not be stored:" if result.refused else ""))
    _name_refused(result.refused)
    if result.refused:
        sys.exit(1)


def _name_refused(refused_events) -> None:
    """One line each: the event and why it was not stored (the webhook's rule it breaks, or the database's
    reason, redacted by describe_error)."""
    for refused in refused_events:
        click.echo(f"not stored: {refused.event_id} ({refused.event_type}): {_one_line(refused.reason)}", err=True)


@shop.group()
def dlq():
    """Dead letters: messages out of attempts, waiting for a person to retry or resolve them."""


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0][:120] if lines else ""


def _what(message) -> str:
    """A dead letter in one line: its event, or for a mail its kind and order (never the address)."""
    if message.inbox_event is not None:
        return f"{message.inbox_event.type} {message.inbox_event.event_id}"
    body = message.body
    if message.topic.value == "mail":
        return f"mail {body.get('kind', '?')} for order {body.get('order_id', '?')}"
    return f"{message.topic.value} for order {body.get('order_id', '?')}"


@dlq.command("list")
def dlq_list():
    """List dead letters: id, what it is, attempts and the last error."""
    from consumers.staff_actions import dead_letters
    from models.logs import redact

    with _sessions(_settings())() as session:
        rows = dead_letters(session)
        for m in rows:
            click.echo(f"{m.id:>6}  {_what(m):<60} attempts={m.attempts}  {redact(_first_line(m.last_error))}")
        if not rows:
            click.echo("no dead letters")


def _masked_message(session, message) -> dict:
    """A message's body for staff eyes: a mail's recipient, the customer's details and the order's
    access token (its my_page_path is a bearer link to those same details) masked."""
    from models.logs import redact
    from models.orders import Order

    body = message.body
    if message.topic.value != "mail":
        return body
    order = session.get(Order, body.get("order_id")) if body.get("order_id") else None
    private = [v for v in ((order.email, order.ship_name, order.ship_postal_code, order.ship_address,
                            order.access_token) if order else ()) if v]

    def mask(text: str) -> str:
        for value in private:
            text = text.replace(value, "***")
        return redact(text)

    lines = [("It will be shipped to ***." if line.startswith("It will be shipped to") else mask(line))
             for line in str(body.get("body", "")).splitlines()]
    masked = {**body, "to": "***", "subject": mask(str(body.get("subject", ""))), "body": "\n".join(lines)}
    if body.get("my_page_path"):
        masked["my_page_path"] = mask(str(body["my_page_path"]))
    return masked


@dlq.command("show")
@click.argument("message_id", type=int, callback=_dead_letter_ids)
def dlq_show(message_id):
    """Show one dead letter with its full last error (traceback) and the event it carries."""
    from consumers.staff_actions import get_dead_letter
    from models.logs import redact

    with _sessions(_settings())() as session:
        m = _staff_call(lambda: get_dead_letter(session, message_id, for_update=False))
        _echo_json({"id": m.id, "topic": m.topic.value, "status": m.status.value, "attempts": m.attempts,
                    "created_at": m.created_at, "last_error": redact(m.last_error) if m.last_error else None,
                    "resolution_note": m.resolution_note, "message": _masked_message(session, m),
                    "event": m.inbox_event.to_dict() if m.inbox_event else None})


@dlq.command("retry")
@click.argument("message_ids", type=int, nargs=-1, required=True, callback=_dead_letter_ids)
@click.option("--note", callback=_note_text, help="Why it is retried (kept in the audit trail).")
@staff_verb
def dlq_retry(message_ids, note, actor):
    """Re-drive dead letters through their handlers (the relay publishes them again now).

    Each id is tried on its own and gets a line: "N: queued again", or "N: not retried (why)"; a
    refused one does not stop the others, and the exit code is then 1. If an id names no message,
    nothing is done to any (exit 2).
    """
    from consumers.staff_actions import retry_dead_letter

    _each_dead_letter(message_ids, lambda f, i, who: retry_dead_letter(f, i, actor=who, note=note), actor,
                      "queued again", "not retried")


@dlq.command("resolve")
@click.argument("message_id", type=int, callback=_dead_letter_ids)
@click.option("--note", required=True, callback=_note_text,
              help="What was done about it (kept with the message).")
@staff_verb
def dlq_resolve(message_id, note, actor):
    """Close a dead letter without re-driving it, with a note saying why (its event can then not be replayed)."""
    from consumers.staff_actions import resolve_dead_letter

    _each_dead_letter([message_id], lambda f, i, who: resolve_dead_letter(f, i, actor=who, note=note), actor,
                      "resolved", "not resolved")


@dlq.command("reopen")
@click.argument("message_id", type=int, callback=_dead_letter_ids)
@click.option("--note", required=True, callback=_note_text,
              help="Why the resolution is taken back (kept in the audit trail).")
@staff_verb
def dlq_reopen(message_id, note, actor):
    """Reopen a resolved dead letter: it can then be retried or its event replayed."""
    from consumers.staff_actions import reopen_dead_letter

    _each_dead_letter([message_id], lambda f, i, who: reopen_dead_letter(f, i, actor=who, note=note), actor,
                      "reopened: a dead letter again", "not reopened")


def _each_dead_letter(message_ids, action, actor, done: str, not_done: str) -> None:
    """Carry out a decision on each dead letter, in the order given, each on its own: every id is
    tried and gets one line, "N: <done>" or "N: <not_done> (why)", and one refused never stops the
    next. An id no message has is refused before any is touched (exit 2, as a typo in the list
    should be); exit 1 once all were tried if any was refused."""
    from models.errors import DomainError
    from models.events import OutboxMessage

    factory = _sessions(_settings())
    who = _actor(actor)
    message_ids = list(dict.fromkeys(message_ids))  # the same id twice is tried once
    with factory() as session:
        known = set(session.scalars(select(OutboxMessage.id).where(OutboxMessage.id.in_(message_ids))))
    unknown = [message_id for message_id in message_ids if message_id not in known]
    if unknown:
        raise UnknownId(f"no dead letter {', '.join(map(str, unknown))}"
                        + ("; nothing was done to the others" if len(unknown) < len(message_ids) else ""))
    refused = 0
    for message_id in message_ids:
        try:
            action(factory, message_id, who)
        except DomainError as exc:  # refused (audited as such): say why, and go on with the next
            refused += 1
            click.echo(f"{message_id}: {not_done} ({exc.message})", err=True)
        else:
            click.echo(f"{message_id}: {done}")
    if refused:
        sys.exit(1)


@shop.group()
def orders():
    """Orders: their story, and the decisions on flagged ones."""


@orders.command("review")
def orders_review():
    """List orders flagged needs_review, with the reason."""
    from consumers.staff_actions import orders_needing_review

    with _sessions(_settings())() as session:
        rows = orders_needing_review(session)
        for o in rows:
            click.echo(f"{o.id}  {o.total:>8} {o.currency}  {o.email:<30} {o.review_reason}")
        if not rows:
            click.echo("no orders need review")


@orders.command("show")
@click.argument("order_id")
def orders_show(order_id):
    """The order's whole story, oldest first: lines, events and attempts, status changes, mails, staff actions."""
    from consumers.order_story import order_story

    with _sessions(_settings())() as session:
        story = _staff_call(lambda: order_story(session, order_id))
        click.echo(render_story(story))


def render_story(story) -> str:
    """The story as text for a terminal (the console renders the same data as HTML)."""
    customer = story.customer
    out = [f"order {story.order_id}  {story.status}",
           f"  customer {customer['email']}, {customer['name']}, {customer['postal_code']} "
           f"{customer['prefecture']} {customer['address']}",
           f"  total {story.total} {story.currency} (subtotal {story.subtotal} + shipping {story.shipping_fee}); "
           f"paid {story.paid_amount}, refunded {story.refunded_amount}"
           + (f", charged back {story.charged_back_amount} (a dispute lost)" if story.charged_back_amount else ""),
           f"  payment intent {story.payment_intent_id or '-'}",
           "lines:"]
    out += [f"  {line['quantity']} x {line['sku']} {line['name']} @ {line['unit_amount']} = {line['amount']}"
            for line in story.lines]
    out.append("reservations:")
    out += [f"  {r['quantity']} x {r['sku']} {r['status']} (until {r['expires_at'].isoformat()})"
            for r in story.reservations]
    shipment = story.shipment
    out.append(f"shipment: {shipment['id']} {shipment['status']}" if shipment else "shipment: none")
    out.append("story:")
    for entry in story.entries:
        out.append(f"  {entry.at.strftime('%Y-%m-%d %H:%M:%S')}  {entry.kind:<11} {entry.summary}")
        out += [f"  {'':19}  {'':<11}   {detail}" for detail in entry.details]
    return "\n".join(out)


@orders.command("refund")
@click.argument("order_id")
@click.option("--reason", required=True, callback=_note_text,
              help="Why the customer is refunded (kept on the order, not sent to Stripe).")
@staff_verb
def orders_refund(order_id, reason, actor):
    """Refund what an order holds at Stripe, payment by payment (a disputed payment is left out): a staff
    decision, never automatic."""
    from consumers.payments import configure_stripe
    from consumers.staff_actions import refund_order

    settings = _settings()
    configure_stripe(settings)
    decision = _staff_call(lambda: refund_order(_sessions(settings), order_id, actor=_actor(actor), reason=reason))
    click.echo(f"{order_id}: {decision.status_before} -> {decision.status_after} ({decision.detail})")


@orders.command("accept")
@click.argument("order_id")
@click.option("--note", required=True, callback=_note_text,
              help="Why the payment is kept and the order shipped (audit trail).")
@staff_verb
def orders_accept(order_id, note, actor):
    """Keep the payment of a flagged order and fulfil it; refused if its units cannot be covered."""
    from consumers.staff_actions import accept_order

    settings = _settings()
    decision = _staff_call(lambda: accept_order(_sessions(settings), order_id, actor=_actor(actor), note=note))
    click.echo(f"{order_id}: {decision.status_before} -> {decision.status_after} ({decision.detail})")


@orders.command("cancel")
@click.argument("order_id")
@click.option("--note", required=True, callback=_note_text, help="Why the order is cancelled (audit trail).")
@click.option("--refund", is_flag=True, help="Give back the money taken at Stripe first; the order ends refunded.")
@staff_verb
def orders_cancel(order_id, note, refund, actor):
    """Cancel an order and put its units back; refused if money was taken, unless --refund."""
    from consumers.payments import configure_stripe
    from consumers.staff_actions import cancel_order

    settings = _settings()
    configure_stripe(settings)
    decision = _staff_call(lambda: cancel_order(_sessions(settings), order_id, actor=_actor(actor), note=note,
                                                refund=refund))
    click.echo(f"{order_id}: {decision.status_before} -> {decision.status_after} ({decision.detail})")


@orders.command("ship")
@click.argument("order_id")
@click.option("--note", required=True, callback=_note_text,
              help="How it was sent: carrier, tracking number (audit trail).")
@staff_verb
def orders_ship(order_id, note, actor):
    """Record that the order's shipment left the warehouse: a refund or cancel after it no longer restocks its units."""
    from consumers.staff_actions import ship_order

    settings = _settings()
    decision = _staff_call(lambda: ship_order(_sessions(settings), order_id, actor=_actor(actor), note=note))
    click.echo(f"{order_id}: {decision.status_before} -> {decision.status_after} ({decision.detail})")


@shop.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The running service.")
@click.option("--card", default="4242424242424242", show_default=True,
              help="Test card; 4000000000000341 is declined.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for the webhook to be processed (more than 0).")
def demo(url, card, timeout):
    """A complete purchase against localstripe, step by step."""
    from webhook_app.demo import run_demo

    settings = Settings.from_env()
    ok = run_demo(url.rstrip("/"), settings, card=card, timeout=timeout, echo=click.echo)
    sys.exit(0 if ok else 1)


from webhook_app.staff_cli import staff  # noqa: E402  (after `shop` and the helpers it uses)
shop.add_command(staff)


def main() -> None:
    load_dev_env()
    shop()
