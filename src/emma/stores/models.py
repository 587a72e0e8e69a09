"""Stores with their location and stock per sku, and scheduled events (at a store or elsewhere)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, Date, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from emma.db import Base, UTCDateTime, utcnow


class Store(Base):
    __tablename__ = "stores"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    store_id: Mapped[str] = mapped_column(String(128), unique=True)  # the shop's own id
    name: Mapped[str] = mapped_column(String(255))
    street: Mapped[str | None] = mapped_column(String(255))
    postal_code: Mapped[str | None] = mapped_column(String(32), index=True)
    city: Mapped[str | None] = mapped_column(String(255))
    country: Mapped[str | None] = mapped_column(String(2))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    opens_on: Mapped[dt.date | None] = mapped_column(Date)  # a future date: the store is about to open
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoreStock(Base):
    """How many of a sku a store has on its shelves now."""

    __tablename__ = "store_stock"
    __table_args__ = (UniqueConstraint("store_pk", "sku"), Index("ix_store_stock_sku", "sku"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    store_pk: Mapped[int] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(String(128))
    quantity: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoreEvent(Base):
    """A scheduled event (a tasting, a workshop, a sale evening): at a store or at its own location."""

    __tablename__ = "store_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    store_pk: Mapped[int | None] = mapped_column(ForeignKey("stores.id", ondelete="SET NULL"))
    location: Mapped[str | None] = mapped_column(String(512))  # address or venue as shown to customers
    postal_code: Mapped[str | None] = mapped_column(String(32))
    city: Mapped[str | None] = mapped_column(String(255))
    country: Mapped[str | None] = mapped_column(String(2))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    starts_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    ends_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
