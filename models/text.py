"""Text the service stores and shows: what a name, an e-mail, a sku or an id may hold, checked alike
by the HTTP side (webhook_app.validation) and the catalog file (models.catalog_file)."""
from __future__ import annotations

import re

# PostgreSQL refuses NUL in text outright (a DataError, a 500, once the request has reached the
# database) while SQLite stores it; the other C0 controls and DEL store anywhere but have no
# business in a name, an e-mail, a sku or an id, and corrupt logs, e-mails and labels. Multi-line
# text (an address, a staff note) keeps tab, line feed and carriage return.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
CONTROL_CHARACTERS_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# JSON's "\ud800" escape decodes to a lone UTF-16 surrogate, which no UTF-8 encoder (the database
# driver's, Stripe's, the one that writes a page) accepts.
LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def unstorable(value: str, *, multiline: bool = False) -> str | None:
    """Why `value` cannot be stored as text (to follow the field's name in a message), else None."""
    if (CONTROL_CHARACTERS_IN_TEXT if multiline else CONTROL_CHARACTERS).search(value):
        return "must not contain control characters"
    if LONE_SURROGATE.search(value):
        return "must be valid Unicode text (it holds a lone UTF-16 surrogate)"
    return None
