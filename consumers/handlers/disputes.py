"""charge.dispute.*: a chargeback opened or decided; the order is flagged and staff are told."""
from __future__ import annotations

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from consumers.handlers.lookup import flag_or_note, lock_order_paid_on
from consumers.handlers.outcome import Outcome
from consumers.handlers.registry import HandlerContext, handles
from models.base import utcnow
from models.orders import Order
from models.refunds import Dispute

log = structlog.get_logger(__name__)


def _order_and_row(session: Session, dispute: dict) -> tuple[Order | None, Dispute | None]:
    intent_id = dispute.get("payment_intent")
    order = lock_order_paid_on(session, intent_id) if isinstance(intent_id, str) else None
    row = session.scalars(select(Dispute).where(Dispute.stripe_dispute_id == dispute["id"]).with_for_update()
                          ).one_or_none()
    return order, row


def _new_row(session: Session, order: Order, dispute: dict) -> Dispute:
    row = Dispute(stripe_dispute_id=dispute["id"], order_id=order.id, charge_id=dispute.get("charge"),
                  payment_intent_id=dispute.get("payment_intent"), amount=int(dispute.get("amount") or 0),
                  currency=dispute.get("currency") or order.currency, reason=dispute.get("reason"),
                  status=dispute.get("status") or "needs_response")
    session.add(row)
    return row


@handles("charge.dispute.created")
def on_dispute_created(session: Session, event: dict, context: HandlerContext) -> Outcome:
    dispute = event["data"]["object"]
    order, row = _order_and_row(session, dispute)
    if order is None:
        return Outcome.ignored(f"no order of ours for dispute {dispute['id']}")
    if row is not None:
        return Outcome.processed(f"dispute {dispute['id']} already recorded", order.id)
    row = _new_row(session, order, dispute)
    log.warning("dispute_opened", dispute_id=row.stripe_dispute_id, amount=row.amount, reason=row.reason)
    return flag_or_note(order, f"dispute {row.stripe_dispute_id} opened ({row.reason or 'no reason given'}): "
                               f"{row.amount} {row.currency} contested")


def _record_status(session: Session, event: dict, closed: bool) -> tuple[Order | None, Dispute | None]:
    dispute = event["data"]["object"]
    order, row = _order_and_row(session, dispute)
    if order is None:
        return None, None
    if row is None:  # the closing event overtook the opening one
        row = _new_row(session, order, dispute)
    row.status = dispute.get("status") or row.status
    if closed and row.closed_at is None:
        row.closed_at = utcnow()
    return order, row


@handles("charge.dispute.updated")
def on_dispute_updated(session: Session, event: dict, context: HandlerContext) -> Outcome:
    order, row = _record_status(session, event, closed=False)
    if order is None:
        return Outcome.ignored(f"no order of ours for dispute {event['data']['object']['id']}")
    return Outcome.processed(f"dispute {row.stripe_dispute_id} is {row.status}", order.id)


@handles("charge.dispute.closed")
def on_dispute_closed(session: Session, event: dict, context: HandlerContext) -> Outcome:
    order, row = _record_status(session, event, closed=True)
    if order is None:
        return Outcome.ignored(f"no order of ours for dispute {event['data']['object']['id']}")
    log.warning("dispute_closed", dispute_id=row.stripe_dispute_id, dispute_status=row.status)
    return Outcome.processed(f"dispute {row.stripe_dispute_id} closed: {row.status}", order.id,
                             alert=f"Order {order.id}: dispute {row.stripe_dispute_id} closed: {row.status} "
                                   f"({row.amount} {row.currency})")
