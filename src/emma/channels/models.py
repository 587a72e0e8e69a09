"""The outbox (messages waiting for or past delivery) and the delivery log."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, Numeric, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from emma.db import Base, JSONType, UTCDateTime, utcnow

MESSAGE_STATUSES = ("queued", "sending", "sent", "failed", "bounced", "suppressed", "held")


class OutboxMessage(Base):
    """One message to one customer on one channel; idempotency_key makes every enqueue happen once."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_due", "status", "due_at"),
                      Index("ix_outbox_customer_created", "customer_id", "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    channel: Mapped[str] = mapped_column(String(16))  # email | sms | push | webhook | onsite | ads
    purpose: Mapped[str | None] = mapped_column(String(32))  # consent purpose; None = transactional
    transactional: Mapped[bool] = mapped_column(default=False)
    tactic_id: Mapped[str | None] = mapped_column(String(64), index=True)
    run_id: Mapped[int | None] = mapped_column(Integer)
    template: Mapped[str | None] = mapped_column(String(255))
    locale: Mapped[str | None] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # template data, reason
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class DeliveryEvent(Base):
    """queued, sent, failed, bounced, opened, clicked, converted: the life of one message."""

    __tablename__ = "delivery_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Conversion(Base):
    """An order attributed to the message that led to it: once per order (the unique key makes a resent
    Order Completed, or two workers at once, attribute it only once)."""

    __tablename__ = "conversions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_pk: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), unique=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"), index=True)
    touch: Mapped[str] = mapped_column(String(16))  # coupon | click | open | delivery
    touched_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revenue: Mapped[Decimal] = mapped_column(Numeric(14, 2), default=Decimal("0"))
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
