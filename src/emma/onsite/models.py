"""On-site decisions: every answer of /v1/decide is kept as an impression, with what it showed and why."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from emma.db import Base, JSONType, UTCDateTime, utcnow


class Decision(Base):
    """One decision shown to one visitor: placement, items per block, the coupon, the reasons."""

    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_placement_created", "placement", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Public id: the snippet sends it back with clicks ("Product Clicked" properties.decision_id).
    decision_id: Mapped[str] = mapped_column(String(32), unique=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    # Only for visitors Tante Emma does not know yet (no profile to link the impression to).
    anonymous_id: Mapped[str | None] = mapped_column(String(255))
    placement: Mapped[str] = mapped_column(String(32))
    locale: Mapped[str] = mapped_column(String(8))
    personalized: Mapped[bool] = mapped_column(Boolean, default=False)
    # {"co_purchase": ["SKU", ...], "accessories": [...]} in the order shown.
    items: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    coupon_id: Mapped[int | None] = mapped_column(ForeignKey("coupons.id"))
    reasons: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    context: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
