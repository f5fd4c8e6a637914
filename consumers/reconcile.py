"""`shop reconcile`: ask Stripe for the events it sent (or meant to) and store any that never arrived.

Webhooks can be lost for good: Stripe stops retrying after three days, and an endpoint that
answered 4xx/5xx meanwhile (no secret configured, a bad deploy) has nothing stored. Stripe's
event list is the source of truth; the inbox's unique event id makes this safe to run at
any time, as often as wanted.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import structlog
from sqlalchemy.orm import Session, sessionmaker

from consumers.handlers import HANDLED_EVENT_TYPES
from consumers.payments import events_since
from models.db import transaction
from models.events import store_event

log = structlog.get_logger(__name__)

_SPAN = re.compile(r"^(\d+)([dhms])$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_span(text: str) -> int:
    """'3d', '12h', '30m', '90s' as seconds."""
    match = _SPAN.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a span like 3d, 12h, 30m or 90s")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass
class Reconciled:
    seen: int = 0
    stored: int = 0


def reconcile(factory: sessionmaker[Session], since_seconds: int) -> Reconciled:
    result = Reconciled()
    since = int(time.time()) - since_seconds
    for data in events_since(since):
        with transaction(factory) as session:
            stored = store_event(session, data, json.dumps(data), handled_types=HANDLED_EVENT_TYPES)
        result.seen += 1
        if not stored.duplicate:
            result.stored += 1
            log.info("event_reconciled", event_id=data["id"], event_type=data["type"], status=stored.status.value)
    return result
