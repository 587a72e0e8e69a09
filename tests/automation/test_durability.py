"""Durability: a worker killed with SIGKILL at any point and restarted produces each message exactly once
(real subprocesses, on SQLite and PostgreSQL); concurrent workers on PostgreSQL never share a run."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from emma.automation import engine, jobs, library
from emma.automation.models import Run, TacticSetting
from emma.channels.models import OutboxMessage
from emma.consent import service as consent
from emma.db import make_engine, make_sessionmaker, session_scope, utcnow
from emma.ingest import service as ingest
from emma.profiles.models import Customer, Identity

N = 60
FAST = {"id": "fast_cart", "version": 1, "names": {"de": "Schnell", "en": "Fast"}, "channels": ["email"],
        "entry": {"kind": "event", "event": "Product Added", "key": "cart_id"}, "holdout": 0.0,
        "content": {"a": {"channel": "email", "template": "cart_abandoned"},
                    "b": {"channel": "email", "template": "cart_reminder"}},
        "nodes": [{"id": "idle", "kind": "wait_for_event", "events": ["Checkout Started"], "match": {"cart_id": "$key"},
                   "timeout": "1s", "on_event": "stop", "on_timeout": "first"},
                  {"id": "first", "kind": "message", "content": "a", "next": "pause"},
                  {"id": "pause", "kind": "wait", "duration": "1s", "next": "second"},
                  {"id": "second", "kind": "message", "content": "b"},
                  {"id": "stop", "kind": "exit"}],
        "scenario": {"expect": {}}}


def _prepare(url: str, n: int = N) -> None:
    eng = make_engine(url)
    sessions = make_sessionmaker(eng)
    now = utcnow()
    with session_scope(sessions) as s:
        for tid in library.library():
            s.add(TacticSetting(id=tid, enabled=False))
        t = library.parse(FAST, source="test")
        s.add(TacticSetting(id=t.id, enabled=True, definition=t.model_dump(mode="json", by_alias=True)))
        for i in range(n):
            c = Customer(external_id=f"k-{i}", email=f"k{i}@example.com", is_anonymous=False, created_at=now,
                         attributes={}, timezone="UTC")
            s.add(c)
            s.flush()
            s.add(Identity(customer_id=c.id, kind="user_id", value=f"k-{i}", created_at=now))
            consent.record(session=s, customer_id=c.id, purpose="email_marketing", status="granted", source="t",
                           recorded_at=now)
        ingest.ingest(session=s, received_at=now, raw_messages=[
            {"type": "track", "userId": f"k-{i}", "event": "Product Added", "messageId": f"pa-{i}",
             "timestamp": now.isoformat(), "properties": {"cart_id": f"cart-{i}", "sku": "K-1"}} for i in range(n)])
    eng.dispose()


def _worker(url: str) -> subprocess.Popen:
    env = {**os.environ, "EMMA_DATABASE_URL": url, "EMMA_WORKER_BATCH_SIZE": "7", "EMMA_WORKER_POLL_SECONDS": "0.02",
           "EMMA_QUIET_HOURS": "", "EMMA_FREQUENCY_CAPS": "{}"}
    return subprocess.Popen([sys.executable, "-c", "from emma.cli.main import app; app()", "worker", "--no-deliver"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _counts(url: str) -> tuple[int, int]:
    eng = make_engine(url)
    with make_sessionmaker(eng)() as s:
        msgs = s.scalar(select(func.count()).select_from(OutboxMessage)) or 0
        live = s.scalar(select(func.count()).select_from(Run).where(Run.status.in_(("active", "waiting")))) or 0
    eng.dispose()
    return msgs, live


def _kill_and_restart(url: str, kills: int = 4) -> list[int]:
    rng = random.Random(7)
    at_kill = []
    for _ in range(kills):
        before = _counts(url)[0]
        p = _worker(url)
        deadline = time.monotonic() + 30
        while _counts(url)[0] == before and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        p.send_signal(signal.SIGKILL)
        p.wait()
        at_kill.append(_counts(url)[0])
    p = _worker(url)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            msgs, live = _counts(url)
            if msgs >= 2 * N and live == 0:
                break
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    return at_kill


def _assert_exactly_once(url: str) -> None:
    eng = make_engine(url)
    with make_sessionmaker(eng)() as s:
        per = s.execute(select(OutboxMessage.customer_id, OutboxMessage.template, func.count())
                        .group_by(OutboxMessage.customer_id, OutboxMessage.template)).all()
        runs = s.execute(select(Run.customer_id, func.count()).group_by(Run.customer_id)).all()
        statuses = set(s.scalars(select(Run.status)))
    eng.dispose()
    assert len(per) == 2 * N, f"{len(per)} distinct (customer, template) pairs, want {2 * N}"
    assert all(n == 1 for _, _, n in per), [row for row in per if row[2] != 1][:5]
    assert len(runs) == N and all(n == 1 for _, n in runs)
    assert statuses == {"done"}


def test_sigkill_restart_exactly_once(db_url):
    _prepare(db_url)
    at_kill = _kill_and_restart(db_url)
    _assert_exactly_once(db_url)
    assert any(0 < n < 2 * N for n in at_kill), f"no kill landed mid-run: {at_kill}"


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_two_workers_share_the_work_on_postgres(db_url):
    _prepare(db_url)
    workers = [_worker(db_url), _worker(db_url)]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            msgs, live = _counts(db_url)
            if msgs >= 2 * N and live == 0:
                break
            time.sleep(0.1)
    finally:
        for p in workers:
            p.send_signal(signal.SIGKILL)
            p.wait()
    _assert_exactly_once(db_url)


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_skip_locked_claims_are_disjoint(db_url):
    _prepare(db_url, n=20)
    eng = make_engine(db_url)
    sessions = make_sessionmaker(eng)
    with session_scope(sessions) as s:  # consume the events: 20 runs due now
        jobs.consume_events(session=s, tactics=library.enabled(session=s), settings=_settings(db_url), now=utcnow())
    later = utcnow() + dt.timedelta(seconds=5)
    a, b = sessions(), sessions()
    try:
        first = {r.id for r in engine.due_runs(session=a, now=later, limit=12)}
        second = {r.id for r in engine.due_runs(session=b, now=later, limit=12)}
        assert len(first) == 12 and len(second) == 8 and not first & second
        # The event cursor is held by one worker at a time as well.
        assert jobs.cursor(session=a, name="events", lock=True) is not None
        assert jobs.cursor(session=b, name="events", lock=True) is None
    finally:
        a.rollback()
        b.rollback()
        a.close()
        b.close()
        eng.dispose()


def _settings(url: str):
    from emma.config import Settings

    return Settings(database_url=url, worker_embedded=False)
