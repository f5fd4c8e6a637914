"""Sign a Stripe event the way Stripe does (`t=…,v1=HMAC-SHA256(secret, "t.payload")`) and POST it."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request


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
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
