"""Coupons issued to customers."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from emma.db import Base, UTCDateTime, utcnow


class Coupon(Base):
    """One code for one customer in one campaign; redeemed by the order that used it."""

    __tablename__ = "coupons"
    __table_args__ = (UniqueConstraint("customer_id", "campaign"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    campaign: Mapped[str] = mapped_column(String(64))
    value: Mapped[str | None] = mapped_column(String(64))  # shown to the customer: "10 %", "5 €"
    message_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    redeemed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    order_id: Mapped[str | None] = mapped_column(String(128))
