"""Sign a Stripe event the way Stripe does (`t=…,v1=HMAC-SHA256(secret, "t.payload")`) and POST it."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request

# How long `shop events send` waits for the service's answer. Longer than the service's own
# bounded waits (10 s for a turn to store an event, 10 s for the SQLite write lock), so that a
# busy service's 503 is shown, not a time-out of our own at the very moment it answers.
ANSWER_TIMEOUT_SECONDS = 30.0


class NoAnswer(TimeoutError):
    """The service took the connection (or never completed it) but sent no answer in time."""


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def refresh(event: dict) -> dict:
    """A copy of the event with a new id and created time, as a new delivery from Stripe would have."""
    return {**event, "id": f"evt_{secrets.token_hex(12)}", "created": int(time.time())}


def post_signed_event(url: str, event: dict, secret: str, *, fresh_id: bool = False) -> tuple[int, str]:
    if fresh_id:
        event = refresh(event)
    payload = json.dumps(event)
    request = urllib.request.Request(url, data=payload.encode(), method="POST", headers={
        "Content-Type": "application/json", "Stripe-Signature": sign(payload, secret)})
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_SECONDS) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:  # a time-out while connecting comes wrapped
        if isinstance(exc.reason, TimeoutError):
            raise NoAnswer(f"no answer within {ANSWER_TIMEOUT_SECONDS:g} s") from exc
        raise
    except TimeoutError as exc:  # connected, request sent, no answer
        raise NoAnswer(f"no answer within {ANSWER_TIMEOUT_SECONDS:g} s") from exc
