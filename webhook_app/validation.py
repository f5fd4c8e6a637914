"""Reading and validating JSON request bodies, with a 422 that names the field."""
from __future__ import annotations

import re

from flask import request

from webhook_app.errors import ApiError

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
POSTAL_CODE = re.compile(r"^\d{3}-?\d{4}$")


def json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_input", "the request body must be a JSON object", "body")
    return body


def require_string(data: dict, key: str, *, field: str | None = None, max_length: int = 500) -> str:
    field = field or key
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "invalid_input", f"{field} is required and must be a non-empty string", field)
    if len(value) > max_length:
        raise ApiError(422, "invalid_input", f"{field} must be at most {max_length} characters", field)
    return value.strip()


def require_int(data: dict, key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(422, "invalid_input", f"{key} must be an integer", key)
    return value
