"""Predictions per customer, scoring runs, and the model registry."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, Date, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from emma.db import Base, JSONType, UTCDateTime, utcnow


class ScoreRun(Base):
    """One `emma score` run: as-of date, horizon, progress (restartable), the model versions it used."""

    __tablename__ = "score_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    as_of: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    horizon_days: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed
    customers_done: Mapped[int] = mapped_column(Integer, default=0)
    last_customer_id: Mapped[int] = mapped_column(Integer, default=0)
    models: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Prediction(Base):
    """The latest predictions for one customer, with the reasons that explain them."""

    __tablename__ = "predictions"

    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("score_runs.id"), index=True)
    as_of: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # False when the customer gave no `personalization` consent: only generic values are stored.
    personalized: Mapped[bool] = mapped_column(Boolean, default=True)
    p_alive: Mapped[float | None] = mapped_column(Float)
    expected_orders: Mapped[float | None] = mapped_column(Float)
    expected_revenue: Mapped[float | None] = mapped_column(Float)
    clv: Mapped[float | None] = mapped_column(Float)
    churn_probability: Mapped[float | None] = mapped_column(Float)
    next_order_date: Mapped[dt.date | None] = mapped_column(Date)
    lifecycle_stage: Mapped[str | None] = mapped_column(String(16), index=True)
    propensity_30d: Mapped[float | None] = mapped_column(Float)
    best_send_hour: Mapped[int | None] = mapped_column(Integer)
    preferred_channel: Mapped[str | None] = mapped_column(String(16))
    top_affinities: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    # [{sku, score, reason}, ...] best first, under the business rules as of scoring
    recommendations: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    next_best_offer: Mapped[str | None] = mapped_column(String(128))
    incentive_uplift: Mapped[float | None] = mapped_column(Float)
    early_adopter: Mapped[float | None] = mapped_column(Float)
    reasons: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class ModelVersion(Base):
    """A fitted model: parameters, training window, backtest metrics and the baseline it had to beat."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    trained_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    train_from: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    train_to: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    baseline: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    chosen: Mapped[str | None] = mapped_column(String(64))


class ItemRelation(Base):
    """Precomputed item-to-item relations for in-session recommendations, and the popularity fallback.

    kind: also_bought (co-purchase), accessory (catalog relation), popular (sku is "*": the generic list).
    """

    __tablename__ = "item_relations"
    __table_args__ = (Index("ix_item_relations_sku_rank", "sku", "rank"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(128))
    related_sku: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int] = mapped_column(ForeignKey("score_runs.id"))
