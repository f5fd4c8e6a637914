"""Reading and validating request input: JSON bodies with a 422 that names the field, and one check,
before every view, that no path segment, query value or form field holds text the database cannot store."""
from __future__ import annotations

import json
import re
import unicodedata

from flask import render_template, request
from flask_login import current_user

from models.errors import NotFound
from models.text import CONTROL_CHARACTERS, LONE_SURROGATE, unstorable
from webhook_app.errors import ApiError

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# ASCII digits: `\d` also takes every other script's (Arabic-Indic, Devanagari…), which no label
# printer or carrier reads as a Japanese postal code. Full-width input is made ASCII first.
POSTAL_CODE = re.compile(r"[0-9]{3}-?[0-9]{4}")


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


def _decode(raw: bytes):
    try:
        return json.loads(raw)
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
