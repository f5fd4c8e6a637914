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
