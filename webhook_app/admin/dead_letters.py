"""Dead letters in the console: a filtered, paged list, one page per message, retry, resolve,
reopen, and a bulk retry that shows what it will re-drive before it does.

Every decision is the function the CLI calls (consumers/staff_actions.py), with the logged-in
staff member as the actor; this module only reads the form, calls, and redirects to the page
that shows the effect.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy import or_, select

from consumers.staff_actions import (
    DeadLetterFilter,
    dead_letter_kinds,
    find_dead_letters,
    get_dead_letter,
    order_id_of_message,
    reopen_dead_letter,
    resolve_dead_letter,
    retry_dead_letter,
)
from models.base import LARGEST_ID, utcnow
from models.errors import DomainError, NotFound
from models.events import OutboxMessage, OutboxStatus, Topic
from models.history import EventAttempt, StaffAction
from models.orders import Order
from webhook_app import state
from webhook_app.admin import actor, bp, page_arg
from webhook_app.admin.auth import safe_next
from webhook_app.admin.masking import mask_error, pretty_masked

PAGE_SIZE = 25
BULK_LIMIT = 200  # one confirming form re-drives at most this many; the page says when more match
_ID_DIGITS = len(str(LARGEST_ID))  # a longer number is past every id: never converted to an int
_RELATIVE = re.compile(r"(\d+)\s*([mhd])")


class BadFilter(ValueError):
    pass


def parse_since(text: str, now: datetime | None = None) -> datetime | None:
    """`2026-11-25`, `2026-11-25 14:00` (UTC), or an age: `30m`, `6h`, `3d`."""
    text = text.strip()
    if not text:
        return None
    if match := _RELATIVE.fullmatch(text):
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        try:
            return (now or utcnow()) - timedelta(**{unit: int(match.group(1))})
        except (OverflowError, ValueError):  # further back than year 1 (or digits past int's limit)
            raise BadFilter(f"“{text}” reaches back before the calendar starts: write a smaller age "
                            f"or a date") from None
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        raise BadFilter(f"“{text}” is not a date: write 2026-11-25, 2026-11-25 14:00 (UTC), 30m, 6h or 3d") from None
    try:
        # In UTC, as stored: 9999-12-31T23:59:59-10:00 is past the calendar's end there.
        return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except OverflowError:
        raise BadFilter(f"“{text}” is not a date the calendar holds in UTC: write one between 0001-01-02 "
                        f"and 9999-12-30") from None


def _filter_args(source) -> dict[str, str]:
    """The filter as query parameters: only the fields that are set."""
    return {key: source.get(key, "").strip() for key in ("type", "error", "since") if source.get(key, "").strip()}


def _filter_of(args: dict[str, str]) -> DeadLetterFilter:
    return DeadLetterFilter(kind=args.get("type") or None, error_text=args.get("error") or None,
                            since=parse_since(args.get("since", "")))


def _what(message: OutboxMessage) -> str:
    """A dead letter in a few words: its event, or for a mail its kind (never the recipient)."""
    if message.inbox_event is not None:
        return f"{message.inbox_event.type} {message.inbox_event.event_id}"
    body = message.body
    if message.topic is Topic.MAIL:
        return f"mail “{body.get('kind', '?')}”"
    return message.topic.value.replace("_", " ")


def _first_line(text: str | None) -> str:
    return mask_error(text.strip().splitlines()[0])[:160] if text and text.strip() else ""


def _row(session, message: OutboxMessage) -> dict:
    return {"id": message.id, "what": _what(message), "attempts": message.attempts,
            "created_at": message.created_at, "error": _first_line(message.last_error),
            "order_id": order_id_of_message(session, message)}


@bp.route("/dead-letters", methods=["GET", "POST"])
def dead_letters():
    if request.method == "POST":  # the filter form: posted (it carries the CSRF token), then a plain GET
        return redirect(url_for("admin.dead_letters", **_filter_args(request.form)), 303)
    args = _filter_args(request.args)
    page = page_arg(PAGE_SIZE)
    error = None
    with state().sessions() as session:
        kinds = dead_letter_kinds(session)
        try:
            which = _filter_of(args)
        except BadFilter as exc:
            error, which, rows, total = str(exc), None, [], 0
        if which is not None:
            messages, total = find_dead_letters(session, which, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
            rows = [_row(session, message) for message in messages]
    pages = max(-(-total // PAGE_SIZE), 1)
    return render_template("admin/dead_letters.html", title="Dead letters", rows=rows, total=total, page=page,
                           pages=pages, args=args, page_args=args, kinds=kinds, error=error), \
        (422 if error else 200)


def _attempts(session, message: OutboxMessage) -> list[EventAttempt]:
    match = [EventAttempt.outbox_id == message.id]
    if message.inbox_event_id:
        match.append(EventAttempt.inbox_event_id == message.inbox_event_id)
    return list(session.scalars(select(EventAttempt).where(or_(*match)).order_by(EventAttempt.id)))


def _private_values(order: Order | None) -> tuple[str, ...]:
    if order is None:
        return ()
    return tuple(v for v in (order.email, order.ship_name, order.ship_postal_code, order.ship_address,
                             order.access_token) if v)


@bp.get("/dead-letters/<int:message_id>")
def dead_letter(message_id: int):
    """One message (a dead letter, or what became of it): its payload, every attempt, the decisions."""
    with state().sessions() as session:
        try:
            message = get_dead_letter(session, message_id, for_update=False)
        except NotFound:
            abort(404)
        order_id = order_id_of_message(session, message)
        order = session.get(Order, order_id) if order_id else None
        private = _private_values(order)
        event = message.inbox_event
        page = {
            "id": message.id, "what": _what(message), "topic": message.topic.value, "status": message.status.value,
            "is_dead": message.status is OutboxStatus.DEAD, "is_resolved": message.status is OutboxStatus.RESOLVED,
            "attempts": message.attempts, "created_at": message.created_at,
            "last_error": mask_error(message.last_error, private) if message.last_error else None,
            "resolution_note": message.resolution_note, "resolved_at": message.resolved_at,
            "order_id": order_id, "order_status": order.status.value if order else None,
            "event": ({"event_id": event.event_id, "type": event.type, "status": event.status.value,
                       "received_at": event.received_at, "outcome": event.outcome} if event else None),
            "payload": pretty_masked(event.payload if event else message.body, private),
            "attempt_rows": [{"at": a.started_at, "runner": a.runner, "outcome": a.outcome.value,
                              "reason": a.reason, "error": mask_error(a.error, private) if a.error else None,
                              "traceback": mask_error(a.traceback, private) if a.traceback else None}
                             for a in _attempts(session, message)],
            "actions": list(session.scalars(select(StaffAction).where(StaffAction.target == f"dead letter {message.id}")
                                            .order_by(StaffAction.id))),
        }
    return render_template("admin/dead_letter.html", title=f"Dead letter {message_id}", m=page)


def _decide(message_id: int, decision, done: str):
    try:
        decision()
    except NotFound:
        abort(404)
    except DomainError as exc:
        flash(f"Not done: {exc.message}", "error")
    else:
        flash(done, "ok")
    # A decision taken from the order's page answers with the order's page; else (or if `next` is
    # unusable, e.g. holds a line break) with the message's own.
    return redirect(safe_next(request.form.get("next"), url_for("admin.dead_letter", message_id=message_id)), 303)


@bp.post("/dead-letters/<int:message_id>/retry")
def retry(message_id: int):
    note = request.form.get("note", "").strip() or None
    return _decide(message_id, lambda: retry_dead_letter(state().sessions, message_id, actor=actor(), note=note),
                   f"Dead letter {message_id} is queued again with fresh attempts: the worker runs it within "
                   f"seconds. Reload the page to see the outcome.")


@bp.post("/dead-letters/<int:message_id>/resolve")
def resolve(message_id: int):
    note = request.form.get("note", "").strip()
    if not note:
        flash("Not done: resolving needs a note saying what was done about it.", "error")
        return redirect(url_for("admin.dead_letter", message_id=message_id), 303)
    return _decide(message_id, lambda: resolve_dead_letter(state().sessions, message_id, actor=actor(), note=note),
                   f"Dead letter {message_id} is resolved with your note; it will not run unless reopened.")


@bp.post("/dead-letters/<int:message_id>/reopen")
def reopen(message_id: int):
    note = request.form.get("note", "").strip()
    if not note:
        flash("Not done: reopening needs a note saying why.", "error")
        return redirect(url_for("admin.dead_letter", message_id=message_id), 303)
    return _decide(message_id, lambda: reopen_dead_letter(state().sessions, message_id, actor=actor(), note=note),
                   f"Dead letter {message_id} is reopened: a dead letter again, to retry or resolve.")


@bp.route("/dead-letters/bulk-retry", methods=["GET", "POST"])
def bulk_retry():
    """GET: how many dead letters the filter matches and which; POST: re-drive exactly those."""
    args = _filter_args(request.args)
    if request.method == "POST":
        return _bulk_retry_confirmed(args)
    try:
        which = _filter_of(args)
    except BadFilter as exc:
        flash(f"Not done: {exc}", "error")
        return redirect(url_for("admin.dead_letters", **args), 303)
    with state().sessions() as session:
        messages, total = find_dead_letters(session, which, limit=BULK_LIMIT)
        rows = [_row(session, message) for message in messages]
    return render_template("admin/bulk_retry.html", title="Retry dead letters", rows=rows, total=total,
                           args=args, limit=BULK_LIMIT)


def _bulk_retry_confirmed(args: dict[str, str]):
    ids, unknown = set(), set()
    for value in request.form.getlist("id"):
        value = value.strip()
        # All checked before any is re-driven: past the id column is no dead letter (see LARGEST_ID).
        if value.isascii() and value.isdigit() and len(value) <= _ID_DIGITS and 0 < int(value) <= LARGEST_ID:
            ids.add(int(value))
        elif value:
            unknown.add(value if len(value) <= 24 else f"{value[:24]}…")
    note = request.form.get("note", "").strip() or None
    if not ids and not unknown:
        flash("Not done: no dead letters were selected.", "error")
        return redirect(url_for("admin.dead_letters", **args), 303)
    done, not_done = [], [f"{value} (no dead letter {value})" for value in sorted(unknown)]
    for message_id in sorted(ids):
        try:
            retry_dead_letter(state().sessions, message_id, actor=actor(), note=note)
            done.append(message_id)
        except DomainError as exc:  # e.g. retried or resolved by a colleague since the list was shown
            not_done.append(f"{message_id} ({exc.message})")
    if done:
        flash(f"{len(done)} dead letter{'s' if len(done) != 1 else ''} queued again: "
              f"{', '.join(map(str, done))}. The worker runs them within seconds.", "ok")
    if not_done:
        flash(f"Not retried: {'; '.join(not_done)}", "error")
    return redirect(url_for("admin.dead_letters", **args), 303)
