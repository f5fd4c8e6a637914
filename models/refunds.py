"""Money given back or contested: refunds (by staff here, or in Stripe's dashboard) and disputes.

Each row is keyed by Stripe's own id, so a refund or dispute is recorded once however many
times its event or the staff command runs.
"""
from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import ID_TYPE, Base, enum_column, utcnow


class RefundSource(str, enum.Enum):
    STAFF = "staff"      # `shop orders refund` / cancel --refund / the console
    STRIPE = "stripe"    # made elsewhere (Stripe's dashboard) and learnt from charge.refunded


class Refund(Base):
    __tablename__ = "refunds"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    stripe_refund_id: Mapped[str] = mapped_column(String(255), unique=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32))        # Stripe's: pending, succeeded, failed, canceled
    source: Mapped[RefundSource] = mapped_column(enum_column(RefundSource))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dispute(Base):
    __tablename__ = "disputes"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    stripe_dispute_id: Mapped[str] = mapped_column(String(255), unique=True)
    order_id: Mapped[str | None] = mapped_column(ForeignKey("orders.id"), index=True, default=None)
    charge_id: Mapped[str | None] = mapped_column(String(255), default=None)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), default=None)
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(64), default=None)   # Stripe's: fraudulent, …
    status: Mapped[str] = mapped_column(String(32))                        # Stripe's: needs_response, won, lost, …
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)


# Dispute statuses at Stripe that rule a refund out: while a formal dispute is open Stripe refuses
# to refund the charge (charge_disputed), and once it is lost the card network has given the
# customer the money back already, so a refund would pay them twice. An inquiry (warning_*) or a
# dispute won does not stand in the way.
REFUND_RULED_OUT = ("needs_response", "under_review", "lost")


def disputes_ruling_out_refund(session: Session, order_ids: list[str]) -> dict[str, Dispute]:
    """For each of the orders that has one, its latest dispute in a status that rules a refund out."""
    if not order_ids:
        return {}
    found = session.scalars(select(Dispute).where(Dispute.order_id.in_(order_ids),
                                                  Dispute.status.in_(REFUND_RULED_OUT)).order_by(Dispute.id))
    return {dispute.order_id: dispute for dispute in found}


def refund_ruled_out(dispute: Dispute) -> str:
    """Why a refund of the order is refused, said for staff."""
    if dispute.status == "lost":
        return (f"the customer disputed the payment of order {dispute.order_id} and the dispute "
                f"{dispute.stripe_dispute_id} was lost: the card network has given {dispute.amount} "
                f"{dispute.currency} back already, and a refund would pay it twice")
    return (f"the customer disputes the payment of order {dispute.order_id} (dispute {dispute.stripe_dispute_id} "
            f"is {dispute.status}): Stripe does not refund a disputed payment; answer the dispute in Stripe's "
            f"dashboard, and decide once it is closed")
