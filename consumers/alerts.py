"""Staff alerts: a JSON POST (Slack-compatible `text`) to STAFF_ALERT_URL, or a log line without it."""
from __future__ import annotations

import json
import urllib.request

import structlog

from models.settings import Settings

log = structlog.get_logger(__name__)


def alert_staff(settings: Settings, text: str, **fields) -> None:
    log.warning("staff_alert", text=text, **fields)
    if not settings.staff_alert_url:
        return
    body = json.dumps({"text": text, **fields}).encode()
    request = urllib.request.Request(settings.staff_alert_url, data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5):
            pass
    except Exception as exc:  # noqa: BLE001 - an alert must never undo or repeat the work it reports
        # The alert is also in the log and the problem stays visible in `shop dlq list`.
        log.error("staff_alert_failed", error=str(exc))
