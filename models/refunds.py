"""Money given back or contested: refunds (by staff here, or in Stripe's dashboard) and disputes.

Each row is keyed by Stripe's own id, so a refund or dispute is recorded once however many
times its event or the staff command runs.
"""
from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

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
