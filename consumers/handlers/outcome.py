"""What a handler reports back to the worker: the event's final status, why, and who to alert."""
from __future__ import annotations

from dataclasses import dataclass

from models.events import EventStatus


@dataclass(frozen=True)
class Outcome:
    status: EventStatus
    reason: str
    order_id: str | None = None
    alert: str | None = None  # set when a person must look (flagged order, money taken, a dispute)
    alert_id: int | None = None  # the StaffAlert row written for it, delivered after the commit

    @classmethod
    def processed(cls, reason: str, order_id: str, alert: str | None = None) -> "Outcome":
        return cls(EventStatus.PROCESSED, reason, order_id, alert)

    @classmethod
    def ignored(cls, reason: str, order_id: str | None = None, alert: str | None = None) -> "Outcome":
        return cls(EventStatus.IGNORED, reason, order_id, alert)

    def followed_by(self, then: "Outcome") -> "Outcome":
        """What one event did in two steps (a payment, then the refunds found made on it before), said as one;
        the status is the last step's, and staff get one alert carrying each step's."""
        alerts = [alert for alert in (self.alert, then.alert) if alert]
        return Outcome(then.status, f"{self.reason}; then: {then.reason}", then.order_id or self.order_id,
                       "\n".join(alerts) or None)
