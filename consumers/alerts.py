"""Staff alerts: a StaffAlert row (kept in the order's story), then a JSON POST (Slack-compatible
`text`) to STAFF_ALERT_URL, or a log line without it.

The row is written in the transaction that found the problem, so an alert can never be lost
to a crash; the POST happens after the commit, and a failed POST never undoes the work. Texts
carry ids, amounts and reasons, never a customer's e-mail, name or address.
"""
from __future__ import annotations

import json
import urllib.request

import structlog
from sqlalchemy.orm import Session, sessionmaker

from models.db import transaction
from models.history import StaffAlert
from models.logs import redact
from models.settings import Settings

log = structlog.get_logger(__name__)


def alert_url(settings: Settings, *, order_id: str | None = None, outbox_id: int | None = None) -> str | None:
    """Where staff act on it: the dead letter's page for a dead letter, else the order's."""
    if outbox_id is not None:
        return f"{settings.admin_base_url}/admin/dead-letters/{outbox_id}"
    if order_id:
        return f"{settings.admin_base_url}/admin/orders/{order_id}"
    return None


def record_alert(session: Session, settings: Settings, text: str, *, order_id: str | None = None,
                 event_id: str | None = None, outbox_id: int | None = None) -> StaffAlert:
    """Write the alert in the caller's transaction; deliver it with `deliver_alert` after the commit."""
    alert = StaffAlert(order_id=order_id, event_id=event_id, outbox_id=outbox_id, text=redact(text),
                       url=alert_url(settings, order_id=order_id, outbox_id=outbox_id))
    session.add(alert)
    session.flush()
    return alert


def deliver_alert(factory: sessionmaker[Session], settings: Settings, alert_id: int) -> bool:
    """POST a recorded alert (or log it); marks it delivered when the POST succeeded."""
    with factory() as session:
        alert = session.get(StaffAlert, alert_id)
        fields = {"text": alert.text, "url": alert.url, "order_id": alert.order_id, "event_id": alert.event_id,
                  "outbox_id": alert.outbox_id}
    fields = {k: v for k, v in fields.items() if v is not None}
    log.warning("staff_alert", alert_id=alert_id, **fields)
    if not settings.staff_alert_url:
        return False
    body = json.dumps({**fields, "text": f"{fields['text']}\n{fields['url']}" if "url" in fields else fields["text"]})
    request = urllib.request.Request(settings.staff_alert_url, data=body.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5):
            pass
    except Exception as exc:  # noqa: BLE001 - an alert must never undo or repeat the work it reports
        # The row stays undelivered and the problem stays visible in the order's story and the DLQ.
        log.error("staff_alert_failed", alert_id=alert_id, error=redact(str(exc)))
        return False
    with transaction(factory) as session:
        session.get(StaffAlert, alert_id).delivered = True
    return True


def alert_staff(factory: sessionmaker[Session], settings: Settings, text: str, *, order_id: str | None = None,
                event_id: str | None = None, outbox_id: int | None = None) -> int:
    """Record and deliver an alert at once, for callers outside a transaction. Returns its id."""
    with transaction(factory) as session:
        alert_id = record_alert(session, settings, text, order_id=order_id, event_id=event_id,
                                outbox_id=outbox_id).id
    deliver_alert(factory, settings, alert_id)
    return alert_id
