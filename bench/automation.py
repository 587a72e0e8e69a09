"""Automation engine benchmarks; each part is bounded in time and prints its figures.

    .venv/bin/python bench/automation.py                        # all parts; latency and steps on SQLite and PG
    .venv/bin/python bench/automation.py --only steps --db postgres
    EMMA_BENCH_PG_URL=postgresql+psycopg://user@host/db .venv/bin/python bench/automation.py --db postgres

PostgreSQL is a throwaway server started like the test suite's (fsync off), unless EMMA_BENCH_PG_URL names one
(a database is created in it and dropped afterwards; EMMA_BENCH_PG_DATA=<its data directory> adds its CPU time,
and with pg_stat_statements in shared_preload_libraries and the extension in template1 the latency part prints
the statements that took the server's time).

1. latency: three processes, as a busy shop deploys them. `emma worker` (woken by NOTIFY on PostgreSQL, by the
   commits it watches for on SQLite); a producer into which events arrive at a steady rate (default 1,000/s
   for 10 s) and which commits what arrived every 10 ms tick with `ingest_many` (10 events; more after a slow
   commit), noting each event's commit time; and this process, the observer,
   which looks for new outbox rows every 2 ms and notes when each became visible. Both times are the machine's
   wall clock. For each event: commit -> its message visible in the outbox (p50, p99, max), the rate that
   actually arrived, and CPU per event of the worker, the producer, the observer and (throwaway server)
   PostgreSQL.
2. birthdays: 1,000,000 customers (SQLite, with predictions), the daily birthday scan (customers whose birthday
   is today in their own time zone enter happy_birthday) and the steps of the runs it starts.
   winback: the same shop; the library's win-back as a daily schedule over a segment that reads predictions
   (churn >= 0.6, CLV >= 300, email consent): the scans (5,000 entries each, as the worker repeats them), the
   first steps (wait for each customer's best send hour) and the messages at the send hour.
3. steps: sustained engine throughput, steps per second (journal entries), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from emma.automation import engine, jobs, library, triggers
from emma.automation.models import Run, RunStep, TacticSetting
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.consent.models import Consent
from emma.db import insert_rows, make_engine, make_sessionmaker, session_scope, upgrade, utcnow
from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.predict.models import Prediction, ScoreRun
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


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process used so far."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu() -> float | None:
    import ingest as bench_ingest  # bench/ingest.py: the throwaway PostgreSQL server's processes

    if os.environ.get("EMMA_BENCH_PG_DATA") and not bench_ingest._PG_DATA:  # an existing server's data directory
        bench_ingest._PG_DATA[:] = [Path(os.environ["EMMA_BENCH_PG_DATA"])]
    return bench_ingest.server_cpu_seconds()


def _statements(url: str, reset: bool) -> None:
    """With pg_stat_statements in the server (EMMA_BENCH_PG_URL): reset it, or print where its time went."""
    if not url.startswith("postgresql"):
        return
    from sqlalchemy import text

    eng = make_engine(url)
    try:
        with eng.connect() as c:
            if not c.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")).first():
                return
            if reset:
                c.execute(text("SELECT pg_stat_statements_reset()"))
                c.commit()
                return
            rows = c.execute(text(
                "SELECT calls, total_exec_time, total_plan_time, rows, query FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "ORDER BY total_exec_time + total_plan_time DESC")).all()
    finally:
        eng.dispose()
    calls = sum(r[0] for r in rows)
    busy = sum(r[1] + r[2] for r in rows)
    print(f"  pg_stat_statements: {calls:,} statements, {busy:,.0f} ms executing and planning; the top 15:")
    for r in rows[:15]:
        q = " ".join(r[4].split())
        print(f"    {r[0]:>8,} calls {r[1] + r[2]:>8,.0f} ms ({r[2]:,.0f} planning) {r[3]:>8,} rows  {q[:110]}")


def produce(url: str, rate: int, seconds: float, customers: int, out: str) -> None:
    """The producer process: events arrive at a steady rate and are ingested every 10 ms tick, each commit
    carrying the events that arrived since the last one (10 at 1,000/s; more when a commit was slow, as an
    HTTP API batches what queued up); each event's commit time is noted (wall clock, shared with the
    observer)."""
    eng = make_engine(url)
    sessions = make_sessionmaker(eng)
    settings = _settings(url)
    n = int(rate * seconds)
    tick = 0.01
    committed: dict[str, float] = {}
    late: list[float] = []  # per event: commit time minus arrival time
    commits = 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    sent = 0
    while sent < n:
        arrived = min(n, int((time.perf_counter() - t0) * rate))
        if arrived <= sent:
            time.sleep(max(0.0, t0 + (sent + max(1, round(rate * tick))) / rate - time.perf_counter()))
            continue
        k = min(arrived - sent, 1000)
        msgs = [{"type": "track", "userId": f"b-{(sent + j) % customers + 1}", "event": "Bench Ping",
                 "messageId": f"ping-{sent + j}", "properties": {"ping": sent + j + 1}} for j in range(k)]
        with session_scope(sessions) as s:
            ingest.ingest_many(session=s, requests=[msgs], settings=settings)
        at = time.time()
        done = time.perf_counter()
        for j, m in enumerate(msgs):
            committed[m["messageId"]] = at
            late.append(done - (t0 + (sent + j) / rate))
        sent += k
        commits += 1
    Path(out).write_text(json.dumps({"committed": committed, "behind": time.perf_counter() - t0 - seconds,
                                     "commits": commits, "late_p99": _pct(late, 99),
                                     "cpu": time.process_time() - cpu0}))
    eng.dispose()


def latency(url: str, label: str, rate: int, seconds: float, workdir: Path) -> None:
    """Producer, worker and observer in three processes; see the module docstring."""
    eng = make_engine(url)
    sessions = make_sessionmaker(eng)
    settings = _settings(url)
    n = int(rate * seconds)
    customers = min(n, 20_000)
    _customers(sessions, customers)
    _only(sessions, INSTANT)
    with session_scope(sessions) as s:  # start the cursor at the present
        jobs.consume_events(session=s, tactics=library.enabled(session=s), settings=settings, now=utcnow())
    env = {**os.environ, "EMMA_DATABASE_URL": url, "EMMA_QUIET_HOURS": "", "EMMA_FREQUENCY_CAPS": "{}",
           "EMMA_WORKER_BATCH_SIZE": str(settings.worker_batch_size)}
    worker = subprocess.Popen([sys.executable, "-c", "from emma.cli.main import app; app()", "worker",
                               "--no-deliver"], env=env, stdout=subprocess.PIPE, text=True)
    out = workdir / "produced.json"
    try:
        assert worker.stdout is not None
        worker.stdout.readline()  # "worker running": the worker process is up
        time.sleep(1.0)  # its first pass (trigger scan) is over
        seen: dict[int, float] = {}
        last = 0
        table = OutboxMessage.__table__
        _statements(url, reset=True)
        postgres = url.startswith("postgresql")
        load0, wcpu0, scpu0 = _load(), _cpu(worker.pid), _server_cpu() if postgres else None
        ocpu0 = time.process_time()
        producer = subprocess.Popen([sys.executable, __file__, "--produce", url, "--rate", str(rate),
                                     "--seconds", str(seconds), "--produce-customers", str(customers),
                                     "--produce-out", str(out)], env=env)
        # The observer: this process notes when each outbox row becomes visible (polling every 2 ms). Each
        # look is a statement of its own (autocommit: a new snapshot without BEGIN and ROLLBACK round trips).
        deadline = None
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while len(seen) < n:
                # The LIMIT keeps PostgreSQL's generic plan (prepared after five looks, made while the outbox was
                # new) on the primary key's index instead of a scan and sort of the whole outbox every 2 ms.
                rows = conn.execute(select(table.c.id, table.c.run_id).where(table.c.id > last)
                                    .order_by(table.c.id).limit(5000)).all()
                at = time.time()
                for mid, run_id in rows:
                    seen[run_id] = at
                    last = mid
                if deadline is None and producer.poll() is not None:
                    deadline = time.perf_counter() + 30
                if deadline is not None and time.perf_counter() > deadline:
                    break
                time.sleep(0.002)
        producer.wait()
        wcpu, scpu = _cpu(worker.pid) - wcpu0, _server_cpu() if postgres else None
        ocpu = time.process_time() - ocpu0
        load1 = _load()
    finally:
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
    produced = json.loads(out.read_text())
    committed: dict[str, float] = produced["committed"]
    with session_scope(sessions) as s:
        runs = dict(s.execute(select(Run.id, Run.dedupe).where(Run.tactic_id == INSTANT["id"])).all())
        events = dict(s.execute(select(Event.id, Event.message_id)).all())
    lat = []
    for run_id, at in seen.items():
        mid = events.get(int(runs[run_id].split(":")[1]))
        if mid in committed:
            lat.append((at - committed[mid]) * 1000)
    span = max(committed.values()) - min(committed.values())
    print(f"latency ({label}): {n:,} events arriving at {rate:,}/s for {seconds:g} s, ingested by a producer "
          f"process in {produced['commits']:,} commits ({n / produced['commits']:.1f} events each; arrival -> commit "
          f"p99 {produced['late_p99'] * 1000:.0f} ms); {len(committed) / span:,.0f} events/s committed; "
          f"{len(lat):,} messages; load average {load0} -> {load1}")
    if lat:
        print(f"  event committed -> message visible in the outbox: p50 {_pct(lat, 50):.1f} ms, "
              f"p99 {_pct(lat, 99):.1f} ms, max {max(lat):.1f} ms, mean {statistics.mean(lat):.1f} ms")
    server = f"; database server {(scpu - scpu0) / n * 1000:.2f} ms" if scpu is not None and scpu0 is not None else ""
    print(f"  CPU per event: worker process (`emma worker`) {wcpu / n * 1000:.2f} ms{server}; producer "
          f"(ingestion) {produced['cpu'] / n * 1000:.2f} ms; observer (this process, polling) "
          f"{ocpu / n * 1000:.2f} ms")
    _statements(url, reset=False)
    eng.dispose()


def _million(workdir: Path, customers: int) -> str:
    """The SQLite shop of the recurring parts (created once per bench run): customers with birthdays, email
    consent and predictions (churn risk, CLV, uplift, send hour) from one scoring run."""
    path = workdir / "recurring.db"
    url = f"sqlite:///{path}"
    if path.exists():
        return url
    upgrade(url)
    eng = make_engine(url)
    sessions = make_sessionmaker(eng)
    t = time.perf_counter()
    _customers(sessions, customers, birthdays=True, identities=False)
    rng = random.Random(2)
    now = utcnow()
    with session_scope(sessions) as s:
        run = ScoreRun(as_of=now, horizon_days=365, status="done", finished_at=now)
        s.add(run)
        s.flush()
        run_id = run.id
    for lo in range(1, customers + 1, 50_000):
        rows = [{"customer_id": i, "run_id": run_id, "as_of": now, "personalized": True,
                 "churn_probability": round(rng.random() ** 3, 4), "clv": round(rng.random() * 1000, 2),
                 "incentive_uplift": round(rng.random() * 0.1, 4), "best_send_hour": rng.randrange(7, 21),
                 "top_affinities": [], "recommendations": [], "reasons": {}}
                for i in range(lo, min(lo + 50_000, customers + 1))]
        with session_scope(sessions) as s:
            insert_rows(s, Prediction, rows)
    print(f"recurring: {customers:,} customers with birthdays, consent and predictions created in "
          f"{time.perf_counter() - t:.1f} s")
    eng.dispose()
    return url


def _drain(sessions, tactic: Any, settings: Settings, now: dt.datetime) -> int:
    steps = 0
    while True:
        with session_scope(sessions) as s:
            n = engine.process_due(session=s, tactics={tactic.id: tactic}, settings=settings, now=now, limit=1000)
        steps += n
        if n < 1000:
            return steps


def birthdays(workdir: Path, customers: int) -> None:
    url = _million(workdir, customers)
    eng = make_engine(url)
    sessions = make_sessionmaker(eng)
    settings = _settings(url)
    tactic = library.library()["happy_birthday"]
    now = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    t, cpu = time.perf_counter(), time.process_time()
    with session_scope(sessions) as s:
        entered = triggers.scan(session=s, tactics={tactic.id: tactic}, settings=settings, now=now)
    scan = time.perf_counter() - t
    t = time.perf_counter()
    _drain(sessions, tactic, settings, now)
    first = time.perf_counter() - t
    t = time.perf_counter()
    _drain(sessions, tactic, settings, now + dt.timedelta(days=1))  # the morning waits are over: greetings
    send = time.perf_counter() - t
    cpu = time.process_time() - cpu
    with session_scope(sessions) as s:
        msgs = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.tactic_id == tactic.id))
    print(f"birthdays: daily scan over {customers:,} customers: {entered:,} birthdays today (in each customer's "
          f"time zone) entered in {scan:.2f} s; first steps {first:.2f} s; greetings queued {msgs:,} in {send:.2f} s; "
          f"total {scan + first + send:.2f} s wall, {cpu:.2f} s CPU; load average {_load()}")
    eng.dispose()


CHURN_RISK = {"all": [{"prediction.churn_probability": {"gte": 0.6}}, {"prediction.clv": {"gte": 300}},
                      {"consent.email_marketing": "granted"}]}


def winback(workdir: Path, customers: int) -> None:
    """The library's win-back as a recurring tactic: every morning over the segment churn_risk (predicted churn
    >= 0.6, CLV >= 300, email consent), each member waits for their best send hour, then gets a coupon (where
    the uplift model says it pays) or the next best offer."""
    from emma.segments import service as segments

    url = _million(workdir, customers)
    eng = make_engine(url)
    sessions = make_sessionmaker(eng)
    settings = _settings(url)
    base = library.library()["win_back"].model_dump(mode="json", by_alias=True)
    tactic = library.parse({**base, "id": "win_back_daily",
                            "entry": {"kind": "schedule", "every": "day", "at": "06:00", "segment": "churn_risk"}},
                           source="bench")
    with session_scope(sessions) as s:
        segments.create(session=s, key="churn_risk", rule=CHURN_RISK, active=False)
    now = dt.datetime.now(dt.UTC).replace(hour=6, minute=5, second=0, microsecond=0)
    t, cpu = time.perf_counter(), time.process_time()
    with session_scope(sessions) as s:
        members = segments.count(session=s, segment="churn_risk", now=now)
    counted = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    entered = scans = 0
    while True:  # as the worker does: scan again at once while a scan starts runs
        with session_scope(sessions) as s:
            n = triggers.scan(session=s, tactics={tactic.id: tactic}, settings=settings, now=now)
        entered += n
        scans += 1
        if not n:
            break
    scan, scan_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    _drain(sessions, tactic, settings, now)
    first, first_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    sent = _drain(sessions, tactic, settings, now + dt.timedelta(hours=16))  # every send hour has come
    send, send_cpu = time.perf_counter() - t, time.process_time() - c
    cpu = time.process_time() - cpu
    with session_scope(sessions) as s:
        msgs = dict(s.execute(select(OutboxMessage.template, func.count()).where(OutboxMessage.tactic_id == tactic.id)
                              .group_by(OutboxMessage.template)).all())
    print(f"win-back: daily schedule over segment churn_risk ({members:,} of {customers:,} customers, counted in "
          f"{counted:.2f} s): {entered:,} entered in {scans} scans, {scan:.2f} s ({scan_cpu:.2f} s CPU); first steps "
          f"(wait for the send hour) {first:.2f} s ({first_cpu:.2f} s CPU); evaluated in {scan + first:.2f} s; "
          f"{sent:,} runs stepped at their send hour in {send:.2f} s ({send_cpu:.2f} s CPU), queued "
          + ", ".join(f"{n:,} {k}" for k, n in sorted(msgs.items()))
          + f" (10 % holdout); total {scan + first + send:.2f} s wall, {cpu:.2f} s CPU; load average {_load()}")
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
            n = jobs.consume_events(session=s, tactics=tactics, settings=settings, now=now, limit=1000,
                                      step=False)
        if not n:
            break
    consumed, consumed_cpu = time.perf_counter() - t, time.process_time() - cpu
    with session_scope(sessions) as s:
        before = s.scalar(select(func.count()).select_from(RunStep))
    postgres = url.startswith("postgresql")
    t, cpu, server0 = time.perf_counter(), time.process_time(), _server_cpu() if postgres else None
    while True:
        with session_scope(sessions) as s:
            n = engine.process_due(session=s, tactics=tactics, settings=settings, now=now, limit=500)
        if n < 500:
            break
    took, took_cpu, server1 = time.perf_counter() - t, time.process_time() - cpu, _server_cpu() if postgres else None
    with session_scope(sessions) as s:
        after = s.scalar(select(func.count()).select_from(RunStep))
        msgs = s.scalar(select(func.count()).select_from(OutboxMessage))
    done = after - before
    print(f"steps ({label}): {customers:,} runs entered from events in {consumed:.2f} s "
          f"({customers / consumed:,.0f} entries/s); {done:,} steps in {took:.2f} s = {done / took:,.0f} steps/s "
          f"({customers / took:,.0f} runs/s, {msgs:,} messages); load average {_load()}")
    server = (f"; the PostgreSQL server {server1 - server0:.2f} s more, {done / (took_cpu + server1 - server0):,.0f} "
              f"steps per CPU-s of both" if server0 is not None and server1 is not None else "")
    print(f"  CPU of this process: entries {consumed_cpu:.2f} s ({customers / consumed_cpu:,.0f} per CPU-s), "
          f"steps {took_cpu:.2f} s ({done / took_cpu:,.0f} per CPU-s{server})")
    eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--customers", type=int, default=1_000_000, help="for the birthday and win-back scans")
    ap.add_argument("--step-runs", type=int, default=20_000)
    ap.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both",
                    help="for latency and steps (birthdays: SQLite)")
    ap.add_argument("--only", choices=["latency", "birthdays", "winback", "steps"])
    ap.add_argument("--produce", metavar="URL", help=argparse.SUPPRESS)  # the latency part's producer process
    ap.add_argument("--produce-customers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--produce-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.produce:
        produce(args.produce, args.rate, args.seconds, args.produce_customers, args.produce_out)
        return
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    labels = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "latency"):
            for kind in kinds:
                with _database(kind, work) as url:
                    latency(url, labels[kind], args.rate, args.seconds, work)
        if args.only in (None, "birthdays"):
            birthdays(work, args.customers)
        if args.only in (None, "winback"):
            winback(work, args.customers)
        if args.only in (None, "steps"):
            for kind in kinds:
                with _database(kind, work) as url:
                    steps(url, labels[kind], args.step_runs)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
