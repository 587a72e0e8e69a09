"""Segments (a named rule with a version) and their memberships."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from emma.db import Base, JSONType, UTCDateTime, utcnow


class Segment(Base):
    __tablename__ = "segments"
    # Ids are never reused (SQLite would reuse the highest after a delete): transition event ids contain them.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    rule: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # Raised on every change of the rule; memberships follow on the next refresh.
    version: Mapped[int] = mapped_column(Integer, default=1)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SegmentMembership(Base):
    """One row per segment and customer ever seen in it; `entries` numbers the stays (for event ids)."""

    __tablename__ = "segment_memberships"
    __table_args__ = (UniqueConstraint("segment_id", "customer_id"),
                      Index("ix_segment_memberships_customer_id", "customer_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"))
    member: Mapped[bool] = mapped_column(Boolean, default=True)
    since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    left_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    entries: Mapped[int] = mapped_column(Integer, default=0)
