"""structlog set-up shared by every process: JSON in production, readable lines on a terminal."""
from __future__ import annotations

import logging
import re
import sys

import structlog


_EMAIL = re.compile(r"[\w.!#$%&*+/=?^~-]+@[\w-]+(?:\.[\w-]+)+")


def redact(text: str) -> str:
    """Text fit for a log line, an error column or an alert: e-mail addresses masked.

    Errors from SMTP (SMTPRecipientsRefused) and drivers quote the address they choked on.
    """
    return _EMAIL.sub("<email>", text)


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """An error for a log line: its type and message, without a database error's bound parameters
    (they can hold a whole event payload or a customer's address), and with addresses masked."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
    message = str(orig) if orig is not None else str(exc)
    return redact(f"{type(exc).__name__}: {message}")[:limit]


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
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the standard library (gunicorn, alembic, kombu) render the same way.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
