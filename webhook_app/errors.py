"""Every error that crosses the HTTP boundary has one shape: {"error": {"code", "message", "field"?}};
a browser asking for HTML on the shop's screens or the console gets that part's error page instead."""
from __future__ import annotations

import json

import structlog
from flask import Flask, current_app, jsonify, request
from sqlalchemy.exc import DataError, OperationalError, ProgrammingError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from consumers.checkout import PaymentProviderBusy, PaymentProviderUnavailable
from models.errors import Conflict, DomainError, IllegalTransition, InvalidInput, NotFound
from models.db import schema_problem
from models.logs import describe_error

log = structlog.get_logger(__name__)

STATUS_FOR = {NotFound: 404, InvalidInput: 422, Conflict: 409, IllegalTransition: 409,
              PaymentProviderUnavailable: 502, PaymentProviderBusy: 503}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def error_response(status: int, code: str, message: str, field: str | None = None, details: dict | None = None):
    error = {"code": code, "message": message}
    if field:
        error["field"] = field
    # Figures the client needs to act on the error (e.g. a cart's new prices), beside the
    # code, as Stripe puts `param` and `decline_code` in its error object.
    error.update(details or {})
    return jsonify({"error": error}), status


# A 500: a bug of the service, not of the request (the Flask app's and the webhook's own answer).
INTERNAL_ERROR_MESSAGE = "the service failed to handle this request; it was logged"


def error_body(code: str, message: str) -> bytes:
    """The same error as error_response's body, bytes for a plain WSGI answer (the webhook's): compact,
    sorted and ending in a newline, as jsonify writes it outside debug mode."""
    return (json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"), sort_keys=True)
            + "\n").encode()


# Outside the shop's and the console's blueprints, the endpoints that answer a browser with a page
# (the order's URL is the buyer's "my page" in a browser: webhook_app.shop_api.show_order, whose
# blueprint is named "shop"). A test checks that each is a route of the app.
PAGE_ENDPOINTS = frozenset({"shop.show_order"})


def _site_with_pages() -> str | None:
    """"console" or "shop" when a browser asked for HTML on one of their pages (or on an address no
    route matches), so an error is answered with that part's page; None for everyone else, who keeps
    the JSON shape: API clients, the page's own script (it asks for JSON), any /products, /carts,
    /checkout, /orders API route, /healthz and the rest, whoever asks."""
    from webhook_app.shop_pages import wants_page

    if not wants_page():
        return None
    if request.path == "/admin" or request.path.startswith("/admin/"):
        return "console"
    endpoint = request.endpoint or _endpoint_for_another_method()
    if endpoint is None or "." not in endpoint:
        return "shop"  # an address no route matches (or a missing static file): the shop's, as always
    if endpoint.partition(".")[0] == "shop_pages" or endpoint in PAGE_ENDPOINTS:
        return "shop"
    return None


def _endpoint_for_another_method() -> str | None:
    """For a 405 (the URL exists, not for this method), the endpoint at the URL: which part of the
    site the address belongs to. None for an address no route matches."""
    exc = request.routing_exception
    if not isinstance(exc, MethodNotAllowed) or not exc.valid_methods:
        return None
    try:
        endpoint, _ = current_app.create_url_adapter(request).match(method=sorted(exc.valid_methods)[0])
    except HTTPException:  # werkzeug's routing answers (a redirect to the slashed URL, say) are exceptions
        return None
    return endpoint


def _error_page(status: int):
    """The page of the part of the site the browser is in, or None (then the JSON shape)."""
    site = _site_with_pages()
    if site is None:
        return None
    try:
        if site == "console":
            from webhook_app.admin import error_page
        else:
            from webhook_app.shop_pages import error_page
        return error_page(status)
    except Exception:
        # An error page that fails (a broken template, the session unreadable) must not turn the
        # answer into a bare 500 from the server: the JSON shape still says what happened.
        log.exception("error_page_failed", status=status)
        return None


def error_answer(status: int, code: str, message: str, field: str | None = None, details: dict | None = None):
    """An error for the client that asked: a browser on the shop's or the console's pages gets the
    page (status, a sentence, a way home; the message stays out of it), everyone else the JSON shape."""
    page = _error_page(status)
    if page is not None:
        return page, status
    return error_response(status, code, message, field, details)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_answer(exc.status, exc.code, exc.message, exc.field)

    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError):
        status = next((s for cls, s in STATUS_FOR.items() if isinstance(exc, cls)), 400)
        details = exc.details() if hasattr(exc, "details") else None
        return error_answer(status, exc.code, exc.message, exc.field, details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # A browser on the shop's or the console's pages (an address no route matches too) gets the
        # page of that part of the site: the console's, or the shop's in the buyer's language.
        code = (exc.name or "error").lower().replace(" ", "_")
        body, status = error_answer(exc.code or 500, code, exc.description or exc.name)
        # A 405 says which methods the URL takes (RFC 9110 requires Allow), on the page too; sorted,
        # since werkzeug's order comes from a set and differs between processes.
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            body.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return body, status

    def _schema_behind(exc: Exception):
        """A table or column the code names that the database lacks: this release's code runs before its
        migration (`shop db upgrade`), or on a database downgraded since. 503, as for a database down: the
        operator's migration is what the client waits for, and the log line says to run it."""
        problem = schema_problem(exc)
        if not problem:
            return None
        log.error("database_schema_behind", error=describe_error(exc), **problem)
        return error_answer(503, "storage_unavailable", "the database is not ready for this release; please retry")

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError):
        answer = _schema_behind(exc)  # SQLite says a missing table or column with an OperationalError
        if answer is not None:
            return answer
        log.error("database_unavailable", error=str(exc.orig)[:200])
        return error_answer(503, "storage_unavailable", "the database is unavailable; please retry")

    @app.errorhandler(ProgrammingError)
    def _database_refused_statement(exc: ProgrammingError):
        answer = _schema_behind(exc)  # PostgreSQL's undefined table or column
        return answer if answer is not None else _unexpected(exc)

    @app.errorhandler(DataError)
    def _unstorable_value(exc: DataError):
        # The database refused a value itself (PostgreSQL's class 22: NUL in text, a string over its
        # column, an integer out of range). Every value we write comes from the request or from our
        # own typed, bounded code, so this is a request value that validation let through: the
        # client's input, hence 422, not a 500 that says we are broken and not the 503 of a database
        # that is down. The transaction has rolled back, nothing was written. Logged as an error,
        # without the bound parameters, so that the missed validation gets added where it belongs.
        log.error("unstorable_input", error=describe_error(exc))
        return error_answer(422, "invalid_input", "a value in this request cannot be stored (too long, out of "
                                                  "range, or holding characters text may not contain)")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("request_failed")
        return error_answer(500, "internal_error", INTERNAL_ERROR_MESSAGE)
