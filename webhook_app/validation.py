"""Reading and validating request input: JSON bodies with a 422 that names the field, and two checks before
every view: that the body is not over MAX_REQUEST_BYTES, and that no path segment, query value or form field
holds text the database cannot store."""
from __future__ import annotations

import json
import re
import unicodedata

from flask import render_template, request
from flask_login import current_user

from models.errors import NotFound
from models.text import CONTROL_CHARACTERS, LONE_SURROGATE, unstorable
from webhook_app.errors import ApiError
from webhook_app.webhooks import InvalidJson, object_with_unique_keys

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# ASCII digits: `\d` also takes every other script's (Arabic-Indic, Devanagari…), which no label
# printer or carrier reads as a Japanese postal code. Full-width input is made ASCII first.
POSTAL_CODE = re.compile(r"[0-9]{3}-?[0-9]{4}")
# The largest request body the app reads (Flask's MAX_CONTENT_LENGTH, set by create_app): a checkout is
# under 10 KB, the console's and the shop's forms less. Each request thread holds its body in memory;
# 64 KiB of them is nothing, 32 MB of them is a way to exhaust it. Stripe's webhook is served in front
# of Flask with its own limit (WEBHOOK_MAX_BYTES, webhook_app.webhooks), which this does not reach.
MAX_REQUEST_BYTES = 64 * 1024


def postal_code(text: str) -> str | None:
    """A Japanese postal code as the buyer typed it (「１２３－４５６７」 too), in ASCII; None if it is not one."""
    ascii_text = unicodedata.normalize("NFKC", text).strip().replace("\u2212", "-").replace("\u30fc", "-")
    return ascii_text if POSTAL_CODE.fullmatch(ascii_text) else None


def json_body() -> dict:
    """The request's JSON object; a 422 that says what is wrong: the Content-Type, the JSON, or its shape."""
    if not request.is_json:
        raise ApiError(422, "invalid_input", "the request body must be a JSON object, sent with Content-Type: "
                                             "application/json", "body")
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError(422, "invalid_input", "the request body is empty: send a JSON object", "body")
    body = _decode(raw)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_input", "the request body must be a JSON object", "body")
    return body


def json_value_if_sent():
    """The request's JSON value, whatever its shape, for a view that checks the shape itself; None when
    no JSON was sent (another Content-Type, or an empty body); a 422 naming the body when it cannot be read."""
    if not request.is_json:
        return None
    raw = request.get_data(cache=True)
    return _decode(raw) if raw.strip() else None


def refuse_oversized_body():
    """Before every view: a body whose Content-Length is over MAX_REQUEST_BYTES is refused with 413 before
    any of it is read. A body sent without a length (chunked) is cut off at the same limit by Flask's
    MAX_CONTENT_LENGTH, with werkzeug's 413, when a view reads it."""
    length = request.content_length
    if length is not None and length > MAX_REQUEST_BYTES:
        # The code of werkzeug's own 413 (a form field over MAX_FORM_MEMORY_SIZE, a chunked body cut off).
        raise ApiError(413, "request_entity_too_large", f"the request body is {length} bytes, over the "
                                                        f"{MAX_REQUEST_BYTES}-byte limit", "body")


class _RepeatedKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _object_naming_a_repeated_key(pairs: list) -> dict:
    """The webhook's strict rule for objects (webhook_app.webhooks), saying which key was repeated."""
    try:
        return object_with_unique_keys(pairs)
    except InvalidJson:
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key) from None
            seen.add(key)
        raise


def _decode(raw: bytes):
    # As the webhook reads a body, a repeated key is refused: which of its values counts depends on the
    # parser (a line of 1 to us, of 30 to a proxy or a log reader that keeps the first).
    try:
        return json.loads(raw, object_pairs_hook=_object_naming_a_repeated_key)
    except _RepeatedKey as exc:
        name = _printable(exc.key)
        raise ApiError(422, "invalid_input", f"the request body repeats the key {name!r} in one object: send each "
                                             f"key once", name or "body") from None
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_input", f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} "
                                             f"column {exc.colno}): send a JSON object", "body") from None
    except ValueError:  # bytes that are not UTF-8, or an integer longer than Python converts
        raise ApiError(422, "invalid_input", "the request body could not be read as JSON (it is not UTF-8 text, or "
                                             "holds a number too long to read): send a JSON object", "body") from None
    except RecursionError:  # as the webhook's parse_event_json: a 2 KB body of "[[[…" is past Python's stack
        raise ApiError(422, "invalid_input", "the request body is JSON nested too deeply to read: send a JSON "
                                             "object a few levels deep", "body") from None


def require_string(data: dict, key: str, *, field: str | None = None, max_length: int = 500,
                   multiline: bool = False) -> str:
    field = field or key
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "invalid_input", f"{field} is required and must be a non-empty string", field)
    if problem := unstorable(value.strip(), multiline=multiline):
        raise ApiError(422, "invalid_input", f"{field} {problem}", field)
    if len(value) > max_length:
        raise ApiError(422, "invalid_input", f"{field} must be at most {max_length} characters", field)
    return value.strip()


def require_int(data: dict, key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(422, "invalid_input", f"{key} must be an integer", key)
    return value


def refuse_unstorable_input():
    """Before every view: a path segment, query value or form field the database cannot store is refused
    before any query runs, so SQLite and PostgreSQL answer alike (and nothing half-written is left).

    A path segment is an id that can match nothing: 404. A query value: 400. A form field: 422,
    except on the shop's screens, whose views check their own fields and show the message beside
    the field (webhook_app.shop_pages.validate_buyer) or answer an unknown sku.
    """
    if request.blueprint == "admin" and not _console_visitor_may_see(request.endpoint):
        return None  # the console's own guard sends a logged-out visitor to its login page first
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and (problem := unstorable(value)):
            return _refuse(404, name, f"{name} in the address {problem}: it matches nothing")
    for name, value in request.args.items(multi=True):
        if problem := unstorable(value):
            return _refuse(400, name, f"query parameter {_printable(name)} {problem}")
    if request.blueprint != "shop_pages":
        for name, value in request.form.items(multi=True):
            if problem := unstorable(value, multiline=True):
                return _refuse(422, name, f"{_printable(name)} {problem}")
    return None


def _console_visitor_may_see(endpoint: str | None) -> bool:
    from webhook_app.admin import PUBLIC_ENDPOINTS

    return endpoint in PUBLIC_ENDPOINTS or current_user.is_authenticated


def _printable(name: str) -> str:
    """A parameter's name fit to repeat in a message (the name, too, comes from the client)."""
    return CONTROL_CHARACTERS.sub("?", LONE_SURROGATE.sub("?", name))[:64]


def _refuse(status: int, name: str, message: str):
    field = _printable(name)
    if request.blueprint == "admin":
        title = "Not found" if status == 404 else "Not accepted: control characters"
        return render_template("admin/refused.html", title=title,
                               message=f"{message}. Nothing was looked up or changed.", reason=field), status
    if status == 404:
        # The API answers it in its JSON shape, the shop's screens with their "not found" page.
        raise NotFound(message, field=field)
    raise ApiError(status, "invalid_input", message, field)
