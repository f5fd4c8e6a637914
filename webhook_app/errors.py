"""Every error that crosses the HTTP boundary has one shape: {"error": {"code", "message", "field"?}}."""
from __future__ import annotations

import json

import structlog
from flask import Flask, jsonify, request
from sqlalchemy.exc import DataError, OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from consumers.checkout import PaymentProviderBusy, PaymentProviderUnavailable
from models.errors import Conflict, DomainError, IllegalTransition, InvalidInput, NotFound
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


def error_body(code: str, message: str) -> bytes:
    """The same error as error_response's body, bytes for a plain WSGI answer (the webhook's): compact,
    sorted and ending in a newline, as jsonify writes it outside debug mode."""
    return (json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"), sort_keys=True)
            + "\n").encode()


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError):
        status = next((s for cls, s in STATUS_FOR.items() if isinstance(exc, cls)), 400)
        details = exc.details() if hasattr(exc, "details") else None
        return error_response(status, exc.code, exc.message, exc.field, details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code == 404 and request.blueprint is None:
            # An address no route matches, asked for by a browser: the page of the part of the
            # site it is in (the console's, or the shop's in the buyer's language), not JSON.
            from webhook_app.shop_pages import not_found_page, wants_page

            if wants_page():
                if request.path == "/admin" or request.path.startswith("/admin/"):
                    from webhook_app.admin import not_found_page as console_not_found_page

                    return console_not_found_page()
                return not_found_page()
        code = (exc.name or "error").lower().replace(" ", "_")
        body, status = error_response(exc.code or 500, code, exc.description or exc.name)
        # A 405 says which methods the URL takes (RFC 9110 requires Allow); sorted, since werkzeug's
        # order comes from a set and differs between processes.
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            body.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return body, status

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError):
        log.error("database_unavailable", error=str(exc.orig)[:200])
        return error_response(503, "storage_unavailable", "the database is unavailable; please retry")

    @app.errorhandler(DataError)
    def _unstorable_value(exc: DataError):
        # The database refused a value itself (PostgreSQL's class 22: NUL in text, a string over its
        # column, an integer out of range). Every value we write comes from the request or from our
        # own typed, bounded code, so this is a request value that validation let through: the
        # client's input, hence 422, not a 500 that says we are broken and not the 503 of a database
        # that is down. The transaction has rolled back, nothing was written. Logged as an error,
        # without the bound parameters, so that the missed validation gets added where it belongs.
        log.error("unstorable_input", error=describe_error(exc))
        return error_response(422, "invalid_input", "a value in this request cannot be stored (too long, out of "
                                                    "range, or holding characters text may not contain)")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("request_failed")
        return error_response(500, "internal_error", "the service failed to handle this request; it was logged")
