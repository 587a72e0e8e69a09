"""Automation engine benchmarks; each part is bounded in time and prints its figures.

    .venv/bin/python bench/automation.py                        # all parts; latency and steps on SQLite and PG
    .venv/bin/python bench/automation.py --only steps --db postgres
    EMMA_BENCH_PG_URL=postgresql+psycopg://user@host/db .venv/bin/python bench/automation.py --db postgres

PostgreSQL is a throwaway server started like the test suite's (fsync off), unless EMMA_BENCH_PG_URL names one
(a database is created in it and dropped afterwards).

1. latency: events arrive at a fixed rate (default 1,000/s for 10 s) through ingestion while the worker runs
   in another thread of the same process (as embedded in `emma serve`, woken by the commits); for each event,
   the time from its commit to its message in the outbox (p50, p99).
2. birthdays: 1,000,000 customers (SQLite), the daily birthday scan (customers whose birthday is today in their
   own time zone enter happy_birthday) and the steps of the runs it starts.
3. steps: sustained engine throughput, steps per second (journal entries), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import func, insert, select

from emma.automation import engine, jobs, library, triggers
from emma.automation.models import Run, RunStep, TacticSetting
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.consent.models import Consent
from emma.db import make_engine, make_sessionmaker, session_scope, upgrade, utcnow
from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.profiles.models import Customer, Identity

INSTANT = {"id": "bench_instant", "version": 1, "names": {"de": "Sofort", "en": "Instant"}, "channels": ["email"],
           "entry": {"kind": "event", "event": "Bench Ping", "key": "ping"}, "holdout": 0.0,
           "content": {"m": {"channel": "email", "template": "welcome"}},
           "nodes": [{"id": "c", "kind": "condition", "when": {"field": "consent.email_marketing", "value": "granted"},
                      "then": "m", "else": "x"},
                     {"id": "m", "kind": "message", "content": "m"}, {"id": "x", "kind": "exit"}],
           "scenario": {"expect": {}}}
STEPS = {**INSTANT, "id": "bench_steps",
         "nodes": [{"id": "b", "kind": "branch", "cases": [{"when": {"field": "customer.country", "value": "DE"},
                                                           "next": "p"}], "default": "p"},
                   {"id": "p", "kind": "add_points", "points": 1, "next": "m"},
                   {"id": "m", "kind": "message", "content": "m", "next": "w"},
                   {"id": "w", "kind": "wait", "duration": "1d", "next": "x"},
                   {"id": "x", "kind": "exit"}]}
ZONES = ["Europe/Berlin", "Europe/London", "America/New_York", "Asia/Tokyo", "Europe/Vienna", None]


def _settings(url: str) -> Settings:
    return Settings(database_url=url, worker_embedded=False, quiet_hours="", frequency_caps={},
                    worker_batch_size=500)


def _only(sessions, definition: dict) -> None:
    with session_scope(sessions) as s:
        for tid in library.library():
            s.merge(TacticSetting(id=tid, enabled=False))
        t = library.parse(definition, source="bench")
        s.merge(TacticSetting(id=t.id, enabled=True, definition=t.model_dump(mode="json", by_alias=True)))


def _customers(sessions, n: int, *, birthdays: bool = False, consent: bool = True, identities: bool = True,
               chunk: int = 50_000) -> None:
    rng = random.Random(1)
    now = utcnow()
    with session_scope(sessions) as s:
        start = (s.scalar(select(func.max(Customer.id))) or 0) + 1
    for lo in range(start, start + n, chunk):
        hi = min(lo + chunk, start + n)
        rows = [{"id": i, "external_id": f"b-{i}", "email": f"b{i}@example.com", "is_anonymous": False,
                 "timezone": ZONES[i % len(ZONES)], "locale": "de", "country": "DE", "attributes": {},
                 "created_at": now,
                 "birthday": (dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(365 * 50))) if birthdays else None}
                for i in range(lo, hi)]
        with session_scope(sessions) as s:
            s.execute(insert(Customer), rows)
            if identities:
                s.execute(insert(Identity), [{"customer_id": r["id"], "kind": "user_id", "value": r["external_id"],
                                              "created_at": now} for r in rows])
            if consent:
                s.execute(insert(Consent), [{"customer_id": r["id"], "purpose": "email_marketing",
                                             "status": "granted", "source": "bench", "recorded_at": now}
                                            for r in rows])


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def _database(kind: str, workdir: Path) -> Iterator[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ingest import fresh_database  # bench/ingest.py: a migrated SQLite file or PostgreSQL database

    with fresh_database(kind, workdir) as url:
        yield url


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def latency(url: str, label: str, rate: int, seconds: float) -> None:
    eng = make_engine(url)
    sessions = make_sessionmaker(eng)
    settings = _settings(url)
    n = int(rate * seconds)
    _customers(sessions, min(n, 20_000))
    _only(sessions, INSTANT)
    with session_scope(sessions) as s:  # start the cursor at the present
        jobs.consume_events(session=s, tactics=library.enabled(session=s), settings=settings, now=utcnow())
    stop = threading.Event()
    worker = threading.Thread(target=jobs.run, kwargs={"sessions": sessions, "settings": settings, "stop": stop},
                              daemon=True)
    worker.start()
    committed: dict[str, float] = {}
    batch = max(1, rate // 50)  # 50 batches a second, as an HTTP API under load would commit them
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    sent = 0
    customers = min(n, 20_000)
    while sent < n:
        due = t0 + sent / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        msgs = [{"type": "track", "userId": f"b-{(sent + k) % customers + 1}", "event": "Bench Ping",
                 "messageId": f"ping-{sent + k}", "properties": {"ping": sent + k + 1}} for k in range(batch)]
        with session_scope(sessions) as s:
            ingest.ingest(session=s, raw_messages=msgs, settings=settings)
        at = time.time()
        for m in msgs:
            committed[m["messageId"]] = at
        sent += batch
    behind = time.perf_counter() - t0 - seconds
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        with session_scope(sessions) as s:
            done = s.scalar(select(func.count()).select_from(OutboxMessage)) or 0
        if done >= n:
            break
        time.sleep(0.05)
    stop.set()
    worker.join(timeout=10)
    cpu = time.process_time() - cpu0
    with session_scope(sessions) as s:
        runs = s.execute(select(Run.dedupe, OutboxMessage.created_at).join(OutboxMessage,
                                                                           OutboxMessage.run_id == Run.id)).all()
        ids = {int(d.split(":")[1]): c for d, c in runs}
        mids = dict(s.execute(select(Event.id, Event.message_id).where(Event.id.in_(list(ids)))).all()) if ids else {}
    lat = [(ids[i].timestamp() - committed[mids[i]]) * 1000 for i in ids if mids.get(i) in committed]
    print(f"latency ({label}): {n} events at {rate}/s for {seconds:g} s (producer {behind * 1000:+.0f} ms behind "
          f"schedule); {len(lat)} messages; load average {_load()}")
    if lat:
        print(f"  event committed -> message in outbox: p50 {_pct(lat, 50):.1f} ms, p99 {_pct(lat, 99):.1f} ms, "
              f"max {max(lat):.1f} ms, mean {statistics.mean(lat):.1f} ms")
    print(f"  CPU of this process (the producer's ingestion and the worker): {cpu:.1f} s, "
          f"{cpu / n * 1000:.2f} ms per event")
    eng.dispose()


def birthdays(workdir: Path, customers: int) -> None:
    url = f"sqlite:///{workdir / 'birthdays.db'}"
    upgrade(url)
    eng = make_engine(url)
    sessions = make_sessionmaker(eng)
    settings = _settings(url)
    t = time.perf_counter()
    _customers(sessions, customers, birthdays=True, identities=False)
    print(f"birthdays: {customers:,} customers created in {time.perf_counter() - t:.1f} s")
    tactic = library.library()["happy_birthday"]
    now = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    t = time.perf_counter()
    with session_scope(sessions) as s:
        entered = triggers.scan(session=s, tactics={tactic.id: tactic}, settings=settings, now=now)
    scan = time.perf_counter() - t
    t = time.perf_counter()
    steps = 0
    while True:
        with session_scope(sessions) as s:
            n = engine.process_due(session=s, tactics={tactic.id: tactic}, settings=settings, now=now, limit=1000)
        steps += n
        if n < 1000:
            break
    first = time.perf_counter() - t
    later = now + dt.timedelta(days=1)
    t = time.perf_counter()
    while True:  # the morning waits are over: the greetings go into the outbox
        with session_scope(sessions) as s:
            n = engine.process_due(session=s, tactics={tactic.id: tactic}, settings=settings, now=later, limit=1000)
        if n < 1000:
            break
    send = time.perf_counter() - t
    with session_scope(sessions) as s:
        msgs = s.scalar(select(func.count()).select_from(OutboxMessage))
    print(f"  daily scan: {entered:,} birthdays today (in each customer's time zone) entered in {scan:.2f} s; "
          f"first steps {first:.2f} s; greetings queued {msgs:,} in {send:.2f} s; "
          f"total {scan + first + send:.2f} s; load average {_load()}")
    eng.dispose()


def steps(url: str, label: str, customers: int) -> None:
    eng = make_engine(url)
    sessions = make_sessionmaker(eng)
    settings = _settings(url)
    _customers(sessions, customers)
    _only(sessions, STEPS)
    tactics = {"bench_steps": library.parse(STEPS, source="bench")}
    now = utcnow()
    with session_scope(sessions) as s:
        ext = list(s.scalars(select(Customer.external_id).order_by(Customer.id.desc()).limit(customers)))
    for lo in range(0, len(ext), 1000):
        with session_scope(sessions) as s:
            ingest.ingest(session=s, settings=settings, received_at=now, raw_messages=[
                {"type": "track", "userId": e, "event": "Bench Ping", "messageId": f"st-{e}",
                 "properties": {"ping": e}, "timestamp": now.isoformat()} for e in ext[lo:lo + 1000]])
    t, cpu = time.perf_counter(), time.process_time()
    while True:
        with session_scope(sessions) as s:
            n = jobs.consume_events(session=s, tactics=tactics, settings=settings, now=now, limit=1000)
        if not n:
            break
    consumed, consumed_cpu = time.perf_counter() - t, time.process_time() - cpu
    with session_scope(sessions) as s:
        before = s.scalar(select(func.count()).select_from(RunStep))
    t, cpu = time.perf_counter(), time.process_time()
    while True:
        with session_scope(sessions) as s:
            n = engine.process_due(session=s, tactics=tactics, settings=settings, now=now, limit=500)
        if n < 500:
            break
    took, took_cpu = time.perf_counter() - t, time.process_time() - cpu
    with session_scope(sessions) as s:
        after = s.scalar(select(func.count()).select_from(RunStep))
        msgs = s.scalar(select(func.count()).select_from(OutboxMessage))
    done = after - before
    print(f"steps ({label}): {customers:,} runs entered from events in {consumed:.2f} s "
          f"({customers / consumed:,.0f} entries/s); {done:,} steps in {took:.2f} s = {done / took:,.0f} steps/s "
          f"({customers / took:,.0f} runs/s, {msgs:,} messages); load average {_load()}")
    print(f"  CPU of this process: entries {consumed_cpu:.2f} s ({customers / consumed_cpu:,.0f} per CPU-s), "
          f"steps {took_cpu:.2f} s ({done / took_cpu:,.0f} per CPU-s; the database server's CPU not included)")
    eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--customers", type=int, default=1_000_000, help="for the birthday scan")
    ap.add_argument("--step-runs", type=int, default=20_000)
    ap.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both",
                    help="for latency and steps (birthdays: SQLite)")
    ap.add_argument("--only", choices=["latency", "birthdays", "steps"])
    args = ap.parse_args()
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    labels = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "latency"):
            for kind in kinds:
                with _database(kind, work) as url:
                    latency(url, labels[kind], args.rate, args.seconds)
        if args.only in (None, "birthdays"):
            birthdays(work, args.customers)
        if args.only in (None, "steps"):
            for kind in kinds:
                with _database(kind, work) as url:
                    steps(url, labels[kind], args.step_runs)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
