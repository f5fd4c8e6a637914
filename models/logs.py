"""structlog set-up shared by every process: JSON in production, readable lines on a terminal."""
from __future__ import annotations

import logging
import re
import sys

import structlog


_EMAIL = re.compile(r"[\w.!#$%&*+/=?^~-]+@[\w-]+(?:\.[\w-]+)+")
# The user:password of a URL (a broker or database URL quoted by a driver's error).
_URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/@:]+:[^\s/@]*@")


def redact(text: str) -> str:
    """Text fit for a log line, an error column or an alert: e-mail addresses and URL passwords masked.

    Errors from SMTP (SMTPRecipientsRefused) and drivers quote the address they choked on.
    """
    if "@" not in text:  # both patterns need one; most text has none, and this is on every log line
        return text
    return _EMAIL.sub("<email>", _URL_CREDENTIALS.sub("<credentials>@", text))


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
    included, carries an e-mail address or a URL's password to a log line, whoever logged it."""
    for key, value in event_dict.items():
        if type(value) is str:  # the common case, kept cheap: most fields hold no "@" at all
            if "@" in value:
                event_dict[key] = redact(value)
        elif isinstance(value, (dict, list, tuple)):
            event_dict[key] = _redacted(value)
    return event_dict


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """An error for a log line: its type and message, without a database error's bound parameters
    (they can hold a whole event payload or a customer's address), and with addresses masked."""
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
