"""charge.refunded: a refund made at Stripe (its dashboard, or ours already recorded) shows on the order."""
from __future__ import annotations

import structlog
from sqlalchemy.orm import Session

from consumers.handlers.lookup import flag_or_note, lock_order_for_intent
from consumers.handlers.outcome import Outcome
from consumers.handlers.registry import HandlerContext, handles
from models.orders import OrderStatus, can_transition, record_refund, return_unshipped_units
from models.refunds import RefundSource

log = structlog.get_logger(__name__)


@handles("charge.refunded")
def on_charge_refunded(session: Session, event: dict, context: HandlerContext) -> Outcome:
    charge = event["data"]["object"]
    intent_id = charge.get("payment_intent")
    order = lock_order_for_intent(session, intent_id) if isinstance(intent_id, str) else None
    if order is None:
        return Outcome.ignored(f"no order of ours for charge {charge.get('id')} (payment intent {intent_id})")

    # Each refund once, keyed by Stripe's id: one staff made here is already recorded.
    recorded = []
    for refund in (charge.get("refunds") or {}).get("data") or []:
        if not isinstance(refund, dict) or not refund.get("id"):
            continue
        row = record_refund(session, order, stripe_refund_id=refund["id"], amount=int(refund.get("amount") or 0),
                            currency=(refund.get("currency") or charge.get("currency") or order.currency),
                            status=refund.get("status") or "succeeded", source=RefundSource.STRIPE,
                            reason=refund.get("reason"))
        if row is not None:
            recorded.append(row)
    amount, refunded = int(charge.get("amount") or 0), int(charge.get("amount_refunded") or 0)
    currency = charge.get("currency") or order.currency
    for row in recorded:
        log.info("refund_recorded", refund_id=row.stripe_refund_id, amount=row.amount, source="stripe")

    if refunded >= amount > 0:
        if order.status is OrderStatus.REFUNDED:
            return Outcome.processed(f"order already refunded; {len(recorded)} refund(s) recorded", order.id)
        if can_transition(order.status, OrderStatus.REFUNDED):
            refund_id = recorded[-1].stripe_refund_id if recorded else charge.get("id")
            order.mark_refunded(refund_id, "refunded in full at Stripe")
            # Refunded goods must not leave the warehouse; their units go back on the shelf.
            returned = return_unshipped_units(session, order)
            log.info("order_refunded", refund_id=refund_id, units_returned=returned, source="stripe")
            return Outcome.processed(f"order refunded at Stripe ({refunded} {currency})", order.id)
        return flag_or_note(order, f"refunded in full at Stripe ({refunded} {currency}) while the order is "
                                   f"{order.status.value}")
    if not recorded:
        return Outcome.processed("refunds already recorded", order.id)
    return flag_or_note(order, f"partially refunded at Stripe: {refunded} of {amount} {currency}")
