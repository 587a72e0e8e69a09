"""Runs of tactics, their step journal, tactic settings and copies, cursors, sales tasks."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from emma.db import Base, JSONType, UTCDateTime, utcnow

RUN_STATUSES = ("active", "waiting", "done", "converted", "exited", "failed")
LIVE = ("active", "waiting")


class TacticSetting(Base):
    """A library tactic's enabled flag, or a user's copy with its full definition."""

    __tablename__ = "automation_tactics"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # None for a library tactic; the edited definition (as loaded from YAML) for a copy.
    definition: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    based_on: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Run(Base):
    """One customer's way through one tactic; durable, so a restarted worker carries on where it stopped."""

    __tablename__ = "automation_runs"
    __table_args__ = (
        # One live run per customer, tactic and key: active_key is the key while live and NULL afterwards
        # (NULLs never collide in a unique constraint).
        UniqueConstraint("tactic_id", "customer_id", "active_key"),
        # The same trigger occurrence (event id, schedule date, price change) never starts two runs.
        UniqueConstraint("tactic_id", "customer_id", "dedupe"),
        Index("ix_automation_runs_status_due", "status", "due_at"),
        Index("ix_automation_runs_customer_status", "customer_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tactic_id: Mapped[str] = mapped_column(String(64))
    tactic_version: Mapped[int] = mapped_column(Integer)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    key: Mapped[str] = mapped_column(String(255), default="")
    active_key: Mapped[str | None] = mapped_column(String(255))
    dedupe: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="active")
    node_id: Mapped[str | None] = mapped_column(String(64))
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # What a waiting node waits for: {"node", "until", "events", "match", "matched"}.
    wait: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Entry inputs (event properties), visit counts per node, split choices.
    state: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    holdout: Mapped[bool] = mapped_column(Boolean, default=False)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    entered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(Text)


class RunStep(Base):
    """The journal: every step of every run with its reason and the inputs it used."""

    __tablename__ = "automation_steps"
    __table_args__ = (Index("ix_automation_steps_customer_at", "customer_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("automation_runs.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    tactic_id: Mapped[str] = mapped_column(String(64))
    node_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    # entered | next | waiting | resumed | sent | suppressed | holdout | converted | done | exited | failed ...
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Cursor(Base):
    """A persisted read position (events.id, price_history.id, schedule dates), so nothing is missed on restart."""

    __tablename__ = "automation_cursors"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    value: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PredictionMark(Base):
    """Customers currently past a tactic's prediction threshold: crossing it again is what starts a run."""

    __tablename__ = "automation_prediction_marks"

    tactic_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True)
    crossed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class SalesTask(Base):
    """A task for the sales team that a tactic created (call a VIP, follow up a lead)."""

    __tablename__ = "automation_tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("automation_runs.id", ondelete="SET NULL"))
    tactic_id: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(255))
    detail: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")
    due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class BanditArm(Base):
    """One variant of a bandit node: how many runs it was chosen for and how many of them reached the goal."""

    __tablename__ = "automation_bandit_arms"

    tactic_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    variant: Mapped[str] = mapped_column(String(64), primary_key=True)
    trials: Mapped[int] = mapped_column(Integer, default=0)
    conversions: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
