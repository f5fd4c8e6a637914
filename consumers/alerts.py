"""Staff alerts: a StaffAlert row (kept in the order's story), then a JSON POST (Slack-compatible
`text`) to STAFF_ALERT_URL, or a log line without it.

The row is written in the transaction that found the problem, so an alert can never be lost
to a crash; the POST happens after the commit, and a failed POST never undoes the work. A failed
POST is made again by the relay (`redeliver_alerts`) with back-off, for a day
(StaffAlert.next_attempt_after_failure). Texts carry ids, amounts and reasons, never a customer's
e-mail, name or address.
"""
from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.db import transaction
from models.history import ALERT_RETRY_SECONDS, StaffAlert
from models.logs import redact
from models.settings import Settings

log = structlog.get_logger(__name__)
ALERT_SWEEP_SECONDS = 15  # how often the relay looks for alerts to POST again
BATCH = 50


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
    # With STAFF_ALERT_URL: due for the relay only once the caller has had time to POST it after its
    # commit (the relay POSTs it if the caller died first). Without it the alert is only logged:
    # nothing for the relay to POST, ever.
    due = utcnow() + timedelta(seconds=ALERT_RETRY_SECONDS) if settings.staff_alert_url else None
    alert = StaffAlert(order_id=order_id, event_id=event_id, outbox_id=outbox_id, text=redact(text),
                       url=alert_url(settings, order_id=order_id, outbox_id=outbox_id), next_attempt_at=due)
    session.add(alert)
    session.flush()
    return alert


def deliver_alert(factory: sessionmaker[Session], settings: Settings, alert_id: int) -> bool:
    """POST a recorded alert after the commit that recorded it (or log it); True when the POST succeeded.
    A failed POST is made again by the relay (`redeliver_alerts`)."""
    if not settings.staff_alert_url:
        with factory() as session:
            log.warning("staff_alert", alert_id=alert_id, **_fields(session.get(StaffAlert, alert_id)))
        return False
    return _post(factory, settings, alert_id) is True


def redeliver_alerts(factory: sessionmaker[Session], settings: Settings, *, now: datetime | None = None) -> int:
    """The relay's chore: POST each alert whose next attempt has come (after a failed POST, or one its
    process never made). Returns how many were delivered.

    Each alert is claimed before its POST (`_post`), so two relays never POST the same one. A failed
    POST ends the turn: the hook is likely still down, each POST may wait out its timeout, and a long
    turn would hold up the relay's shutdown; the others are tried at the next turn.

    A relay without STAFF_ALERT_URL POSTs nothing and leaves every alert due, still counted by
    `shop_staff_alerts_undelivered`, for a relay that has it (its start says so in its log)."""
    if not settings.staff_alert_url:
        return 0
    now = now or utcnow()
    with factory() as session:
        due = session.scalars(select(StaffAlert.id).where(StaffAlert.next_attempt_at <= now)
                              .order_by(StaffAlert.next_attempt_at, StaffAlert.id).limit(BATCH)).all()
    delivered = 0
    for alert_id in due:
        posted = _post(factory, settings, alert_id, due_by=now)
        if posted is False:
            break
        delivered += posted is True
    return delivered


def _fields(alert: StaffAlert) -> dict:
    fields = {"text": alert.text, "url": alert.url, "order_id": alert.order_id, "event_id": alert.event_id,
              "outbox_id": alert.outbox_id}
    return {k: v for k, v in fields.items() if v is not None}


def _post(factory: sessionmaker[Session], settings: Settings, alert_id: int, *,
          due_by: datetime | None = None) -> bool | None:
    """Claim the alert, then POST it to STAFF_ALERT_URL: True when the POST succeeded, False when it
    failed, None when nothing was POSTed (not this caller's).

    The claim clears next_attempt_at in a short transaction of its own, where it is still set (and,
    for the relay, come): of two callers only one takes it, and one that finds it delivered or in
    another's hands does nothing. The outcome is written after the POST: delivered, or the next
    attempt. A process that dies between the two leaves the alert claimed and not delivered, never
    POSTed again: a second copy of an alert whose POST succeeded would be worse than none."""
    claim = (update(StaffAlert)
             .where(StaffAlert.id == alert_id, StaffAlert.delivered.is_(False), StaffAlert.next_attempt_at.is_not(None))
             .values(next_attempt_at=None, attempts=StaffAlert.attempts + 1)
             .execution_options(synchronize_session=False))
    if due_by is not None:
        claim = claim.where(StaffAlert.next_attempt_at <= due_by)
    with transaction(factory) as session:
        if session.execute(claim).rowcount != 1:
            return None
        alert = session.get(StaffAlert, alert_id)
        attempt, fields = alert.attempts, _fields(alert)
    if attempt <= 1:
        log.warning("staff_alert", alert_id=alert_id, **fields)
    else:
        log.info("staff_alert_retried", alert_id=alert_id, attempt=attempt)
    body = json.dumps({**fields, "text": f"{fields['text']}\n{fields['url']}" if "url" in fields else fields["text"]})
    request = urllib.request.Request(settings.staff_alert_url, data=body.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5):
            pass
    except Exception as exc:  # noqa: BLE001 - an alert must never undo or repeat the work it reports
        # The row stays undelivered and the problem stays visible in the order's story and the DLQ.
        with transaction(factory) as session:
            alert = session.get(StaffAlert, alert_id)
            alert.next_attempt_at = alert.next_attempt_after_failure(due_by or utcnow())
            next_attempt_at = alert.next_attempt_at
        if next_attempt_at is None:
            log.error("staff_alert_abandoned", alert_id=alert_id, attempts=attempt, error=redact(str(exc)))
        else:
            log.error("staff_alert_failed", alert_id=alert_id, attempt=attempt, error=redact(str(exc)),
                      next_attempt_at=next_attempt_at.isoformat())
        return False
    with transaction(factory) as session:
        session.get(StaffAlert, alert_id).delivered = True
    if attempt > 1:
        log.info("staff_alert_delivered", alert_id=alert_id, attempt=attempt)
    return True


def alert_staff(factory: sessionmaker[Session], settings: Settings, text: str, *, order_id: str | None = None,
                event_id: str | None = None, outbox_id: int | None = None) -> int:
    """Record and deliver an alert at once, for callers outside a transaction. Returns its id."""
    with transaction(factory) as session:
        alert_id = record_alert(session, settings, text, order_id=order_id, event_id=event_id,
                                outbox_id=outbox_id).id
    deliver_alert(factory, settings, alert_id)
    return alert_id
