"""structlog set-up shared by every process: JSON in production, readable lines on a terminal."""
from __future__ import annotations

import logging
import re
import sys

import structlog


# An e-mail address as checkout takes one (anything without a space around an @, with a dot after it), as a
# server or a library quotes it: a quoted local part, a domain literal ([192.0.2.7]), characters such as
# `'`, `}` or `|` in it. A quote, brace or bracket that opens the quoted text ({'…': in a dict's repr) is
# kept when it is first; the rest goes.
_EMAIL = re.compile(r"(?P<open>[{'`]*)(?:\"[^\"\n]*\"|[^\s<>()\[\]\",;:@]+)"
                    r"@(?:\[[^\]\s]*\]|[^\s<>()\[\]\",;:@'`/]+\.[^\s<>()\[\]\",;:@'`/]+)")
# The user:password of a URL (a broker or database URL quoted by a driver's error).
_URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/@:]+:[^\s/@]*@")
# PostgreSQL's DETAIL of a refused row quotes the whole row: an order's address and access token, a
# PaymentIntent's client secret, an event's payload. The row ends where the driver's message does (a
# row's text can span lines): before SQLAlchemy's [SQL: ...], its "(Background on ...)", the next
# field of the message (HINT:, CONTEXT:), a blank line (a chained traceback) or the end.
_FAILING_ROW = re.compile(r"Failing row contains \((?:.*?\)\.?(?=\n(?:\[SQL: |\(Background on |[A-Z]+:  |\n)|\n*\Z)"
                          r"|[^\n]*)", re.S)
# A statement's bound values in SQLAlchemy's error text, from an engine made without hide_parameters
# (every engine of the service hides them: models.db), and what those engines say instead: one form,
# `[parameters: <hidden>]`, for a reader of a log or a stored traceback (and the console's mask) to find.
# Values already masked (no letter or digit left, as the console's `•••`) are left as they are.
_BOUND_PARAMETERS = re.compile(r"\[(?:parameters: (?=[^\n]*[A-Za-z0-9])[^\n]*"
                               r"|SQL parameters hidden due to hide_parameters=True\])")
# A PaymentIntent's or SetupIntent's client secret: whoever holds it can confirm the payment in a
# browser. The intent's id before it is kept (it names the payment, and is no secret).
_CLIENT_SECRET = re.compile(r"\b((?:pi|seti)_[A-Za-z0-9]+)_secret_[A-Za-z0-9]+")
# A bearer credential: `Authorization: Bearer ...`, an order's `?token=` or `access_token` field.
_BEARER = re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/=-]+")
_TOKEN_FIELD = re.compile(r"(?<![A-Za-z0-9])((?:access_)?token[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9_-]{8,}")
# Stripe's secret and restricted API keys and a webhook endpoint's signing secret, wherever they turn up
# (a settings error quoting a value, a driver's or a library's message): the prefix stays, to say which.
_STRIPE_SECRET = re.compile(r"\b((?:sk|rk)_(?:live|test)_|whsec_)[A-Za-z0-9]+")


def redact(text: str) -> str:
    """Text fit for a log line, an error column or an alert: e-mail addresses, URL passwords, client
    secrets, bearer tokens and Stripe's API keys and webhook secrets masked, and neither a refused row
    nor a statement's bound values shown.

    Errors from SMTP (SMTPRecipientsRefused) and drivers quote the address they choked on; a database
    error quotes the row and the values it refused (models.db hides the values; the row is said here).
    """
    # Each pattern needs a fixed word; most text holds none, and this is on every log line.
    if "Failing row" in text:
        text = _FAILING_ROW.sub("Failing row contains (<row hidden>).", text)
    if "parameters" in text:
        text = _BOUND_PARAMETERS.sub("[parameters: <hidden>]", text)
    if "_secret_" in text:
        text = _CLIENT_SECRET.sub(r"\1 <client secret hidden>", text)
    if "oken" in text or "Bearer" in text:
        text = _TOKEN_FIELD.sub(r"\1<token>", _BEARER.sub(r"\1<token>", text))
    if "k_live_" in text or "k_test_" in text or "whsec_" in text:
        text = _STRIPE_SECRET.sub(r"\1<hidden>", text)
    if "@" in text:
        text = _EMAIL.sub(r"\g<open><email>", _URL_CREDENTIALS.sub("<credentials>@", text))
    return text


def _redacted(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(item) for item in value]
    return value


def redact_event_dict(_logger, _method_name: str, event_dict: dict) -> dict:
    """Last line of defence, after every other processor but the renderer: no field, traceback
    included, carries an e-mail address, a URL's password, a client secret, a bearer token, a Stripe
    API key or webhook secret, a refused row or a statement's bound values to a log line, whoever logged it (`redact`)."""
    for key, value in event_dict.items():
        if type(value) is str:  # the common case, kept cheap: most fields hold none of redact's words
            if ("@" in value or "oken" in value or "_secret_" in value or "Bearer" in value
                    or "Failing row" in value or "parameters" in value
                    or "k_live_" in value or "k_test_" in value or "whsec_" in value):
                event_dict[key] = redact(value)
        elif isinstance(value, (dict, list, tuple)):
            event_dict[key] = _redacted(value)
    return event_dict


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """An error for a log line: its type and message, without a database error's bound parameters
    or PostgreSQL's "Failing row contains (...)" (they can hold a whole event payload or a customer's
    address), and with addresses and secrets masked (`redact`). Other details stay, such as
    PostgreSQL's "Key (event_id)=(evt_...) already exists"."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
    message = str(orig) if orig is not None else str(exc)
    return redact(f"{type(exc).__name__}: {message}")[:limit]


# One list object for the life of the process, refilled in place by configure_logging: loggers
# cached on first use keep a reference to it, so a later configure_logging still reaches them.
_PROCESSORS: list = []


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if log_format == "console"
        else structlog.processors.JSONRenderer(sort_keys=True)
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    _PROCESSORS[:] = [*shared, structlog.processors.format_exc_info, redact_event_dict, renderer]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write() a line, newline included. print() writes the line and its newline apart, and
        # with PYTHONUNBUFFERED (set by many platforms) each is its own system call: the web processes
        # sharing one log then glued a line of one to a line of another.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the standard library (gunicorn, alembic, kombu) render the same way.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redact_event_dict, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
