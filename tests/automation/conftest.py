"""A small world for engine tests: a migrated database, customers, events in through ingestion, a virtual clock."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from sqlalchemy import select

from emma.automation import engine, jobs, library
from emma.automation.clock import VirtualClock
from emma.automation.models import Run, RunStep
from emma.catalog import service as catalog
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.consent import service as consent
from emma.db import session_scope
from emma.ingest import service as ingest
from emma.predict.models import Prediction, ScoreRun
from emma.profiles.models import Customer, Identity

START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)  # a Monday, 10:00 in Berlin


class World:
    def __init__(self, sessions: Any, url: str) -> None:
        self.sessions = sessions
        self.settings = Settings(database_url=url, worker_embedded=False)
        self.clock = VirtualClock(START)
        self.tactics: dict[str, Any] = {}
        self._ids = itertools.count(1)

    def tactic(self, data: dict[str, Any] | str, **over: Any) -> Any:
        t = library.library()[data] if isinstance(data, str) else library.parse(data, source="test")
        if over:
            t = t.model_copy(update=over)
        self.tactics[t.id] = t
        return t

    def customer(self, ext: str, *, email: str | None = "x@example.com", tz: str | None = "Europe/Berlin",
                 locale: str = "de", consent_email: str | None = "granted", **fields: Any) -> int:
        with session_scope(self.sessions) as s:
            fields.setdefault("attributes", {})
            c = Customer(external_id=ext, email=email, timezone=tz, locale=locale, first_name="Erika",
                         is_anonymous=False, created_at=self.clock.now(), **fields)
            s.add(c)
            s.flush()
            s.add(Identity(customer_id=c.id, kind="user_id", value=ext, created_at=self.clock.now()))
            if consent_email:
                consent.record(session=s, customer_id=c.id, purpose="email_marketing", status=consent_email,
                               source="test", recorded_at=self.clock.now())
            return c.id

    def track(self, ext: str, event: str, **props: Any) -> None:
        now = self.clock.now()
        with session_scope(self.sessions) as s:
            res = ingest.ingest(session=s, received_at=now, settings=self.settings, raw_messages=[{
                "type": "track", "userId": ext, "event": event, "properties": props, "timestamp": now.isoformat(),
                "messageId": f"m-{next(self._ids)}"}])
            assert not res.rejected, res.rejected

    def tick(self) -> None:
        jobs.tick(sessions=self.sessions, settings=self.settings, now=self.clock.now(), tactics=self.tactics)

    def run_until(self, delta: dt.timedelta) -> None:
        """Tick at every due time up to now + delta (and hourly, for scanned triggers)."""
        end = self.clock.now() + delta
        self.tick()
        while True:
            with session_scope(self.sessions) as s:
                due = engine.next_due(session=s)
            hour = (self.clock.now() + dt.timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
            nxt = min(t for t in (due, hour, end) if t is not None and t > self.clock.now())
            self.clock.set(nxt)
            self.tick()
            if nxt >= end:
                return

    def messages(self, customer_id: int | None = None) -> list[OutboxMessage]:
        with session_scope(self.sessions) as s:
            stmt = select(OutboxMessage).order_by(OutboxMessage.due_at, OutboxMessage.id)
            if customer_id is not None:
                stmt = stmt.where(OutboxMessage.customer_id == customer_id)
            return list(s.scalars(stmt))

    def runs(self, customer_id: int | None = None) -> list[Run]:
        with session_scope(self.sessions) as s:
            stmt = select(Run).order_by(Run.id)
            if customer_id is not None:
                stmt = stmt.where(Run.customer_id == customer_id)
            return list(s.scalars(stmt))

    def journal(self, customer_id: int | None = None) -> list[str]:
        with session_scope(self.sessions) as s:
            stmt = select(RunStep).order_by(RunStep.at, RunStep.id)
            if customer_id is not None:
                stmt = stmt.where(RunStep.customer_id == customer_id)
            return [f"{r.outcome}: {r.reason}" for r in s.scalars(stmt)]


@pytest.fixture
def world(session_factory: Any, db_url: str) -> World:
    return World(session_factory, db_url)


def simple(tid: str, entry: dict[str, Any], nodes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A minimal tactic definition for tests."""
    data = {"id": tid, "version": 1, "names": {"de": tid, "en": tid}, "channels": ["email", "webhook"],
            "entry": entry, "holdout": 0.0, "nodes": nodes,
            "content": {"mail": {"channel": "email", "template": "welcome"},
                        "mail2": {"channel": "email", "template": "cart_reminder"}},
            "scenario": {"expect": {}}}
    data.update(extra)
    return data


def products(world: Any, **rows: Any) -> None:
    """Upsert products by sku at the world's clock (name = sku)."""
    with session_scope(world.sessions) as s:
        catalog.upsert_products(session=s, at=world.clock.now(),
                                products=[{"sku": sku, "name": sku, **vals} for sku, vals in rows.items()])


def predictions(world: Any, values: dict[int, dict[str, Any]]) -> None:
    """Store prediction fields per customer id under a fresh score run."""
    with session_scope(world.sessions) as s:
        run = ScoreRun(as_of=world.clock.now(), horizon_days=365, status="done")
        s.add(run)
        s.flush()
        for cid, fields in values.items():
            p = s.get(Prediction, cid) or Prediction(customer_id=cid, run_id=run.id, as_of=world.clock.now())
            p.run_id = run.id
            for k, v in fields.items():
                setattr(p, k, v)
            s.add(p)
