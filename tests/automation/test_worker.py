"""The worker: batches of due runs keep every rule, SQLite workers take turns, a late commit on PostgreSQL is not
skipped, and new events wake the worker instead of it polling."""

from __future__ import annotations

import datetime as dt
import threading
import time

import psycopg
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url

from emma.automation import engine, jobs, library
from emma.automation.models import Run, RunStep
from emma.channels.models import DeliveryEvent, OutboxMessage
from emma.config import Settings
from emma.db import make_engine, make_sessionmaker, session_scope, utcnow
from emma.ingest import service as ingest
from emma.profiles.models import TraitChange
from tests.automation.conftest import simple
from tests.automation.test_durability import _prepare

H = dt.timedelta(hours=1)


def test_one_batch_keeps_caps_and_priorities_between_its_own_messages(world):
    # Both runs are stepped in the same batch: the second one's cap check sees the first one's message,
    # which is not written yet, and displaces it (higher priority) before the batch is written.
    world.tactic(simple("low", {"kind": "event", "event": "Go"},
                        [{"id": "one", "kind": "message", "content": "mail"}], priority=10))
    world.tactic(simple("high", {"kind": "event", "event": "Go"},
                        [{"id": "one", "kind": "message", "content": "mail2"}], priority=90))
    world.tactic(simple("other", {"kind": "event", "event": "Go"},
                        [{"id": "one", "kind": "message", "content": "mail"}], priority=5))
    cid = world.customer("c-1")
    world.clock.set(dt.datetime(2026, 3, 2, 22, 0, tzinfo=dt.UTC))  # all wait for the morning: displaceable
    world.track("c-1", "Go")
    world.tick()
    status = {m.tactic_id: m.status for m in world.messages(cid)}
    assert status == {"low": "suppressed", "high": "queued"}  # "other" (lowest) was capped, never queued
    journal = world.journal(cid)
    assert any("displaced by a higher-priority tactic" in j for j in journal)
    assert any("frequency cap: at most 1 marketing email" in j for j in journal)
    with session_scope(world.sessions) as s:
        steps = {(r.tactic_id, r.outcome): r.inputs
                 for r in s.scalars(select(RunStep).where(RunStep.kind == "message"))}
        ids = {m.tactic_id: m.id for m in s.scalars(select(OutboxMessage))}
        logged = set(s.scalars(select(DeliveryEvent.message_id).where(DeliveryEvent.status == "queued")))
    # The journal names the message ids that were only known once the batch was written.
    assert steps[("high", "queued")]["message_id"] == ids["high"]
    assert steps[("low", "queued")]["message_id"] == ids["low"]
    assert logged == set(ids.values())


def test_points_added_twice_in_one_batch_count_twice(world):
    # Two tactics add points for the same customer in one batch: the second sees the first one's change.
    for tid in ("p1", "p2"):
        world.tactic(simple(tid, {"kind": "event", "event": "Bought"},
                            [{"id": "p", "kind": "add_points", "points": 5, "attribute": "points"}]))
    cid = world.customer("c-1", attributes={"points": 1})
    world.track("c-1", "Bought")
    world.tick()
    with session_scope(world.sessions) as s:
        from emma.profiles.models import Customer

        assert s.get(Customer, cid).attributes["points"] == 11
        history = [v for (v,) in s.execute(select(TraitChange.value).where(TraitChange.customer_id == cid,
                                                                          TraitChange.trait == "points")
                                           .order_by(TraitChange.id))]
    assert history == [6, 11]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_workers_take_turns_on_due_runs(db_url):
    _prepare(db_url, n=20)
    eng = make_engine(db_url)
    sessions = make_sessionmaker(eng)
    settings = Settings(database_url=db_url, worker_embedded=False, quiet_hours="", frequency_caps={})
    with session_scope(sessions) as s:
        tactics = library.enabled(session=s)
        jobs.consume_events(session=s, tactics=tactics, settings=settings, now=utcnow())  # 20 runs due now
    later = utcnow() + dt.timedelta(seconds=5)
    a, b = sessions(), sessions()
    got: dict[str, set[int]] = {}
    try:
        assert engine.process_due(session=a, tactics=tactics, settings=settings, now=later, limit=12) == 12
        mine = {r.id for r in a.scalars(select(Run).where(Run.due_at > later))}  # stepped on to the next wait
        other = threading.Thread(target=lambda: got.update(
            ids={r.id for r in engine.due_runs(session=b, now=later, limit=20)}))
        other.start()
        other.join(0.5)
        assert other.is_alive()  # the second worker waits for the first one's commit instead of reading stale runs
        a.commit()
        other.join(30)
        assert len(got["ids"]) == 8 and not got["ids"] & mine
    finally:
        a.close()
        b.rollback()
        b.close()
        eng.dispose()


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_event_committed_late_below_the_cursor_is_not_skipped(db_url):
    # PostgreSQL hands out ids at insert: an event that commits after a higher id was already visible must still
    # be handled, not jumped over by the cursor.
    _prepare(db_url, n=3)
    eng = make_engine(db_url)
    sessions = make_sessionmaker(eng)
    settings = Settings(database_url=db_url, worker_embedded=False, quiet_hours="", frequency_caps={})
    gaps = jobs.GapWatch(grace=60.0)
    with session_scope(sessions) as s:
        tactics = library.enabled(session=s)
        jobs.consume_events(session=s, tactics=tactics, settings=settings, now=utcnow(), gaps=gaps)

    def add(session, i: int) -> None:
        ingest.ingest(session=session, settings=settings, raw_messages=[
            {"type": "track", "userId": f"k-{i}", "event": "Product Added", "messageId": f"late-{i}",
             "properties": {"cart_id": f"late-{i}", "sku": "K-1"}}])

    slow = sessions()
    try:
        add(slow, 0)  # gets the lower id, commits last
        slow.flush()
        with session_scope(sessions) as s:
            add(s, 1)
        with session_scope(sessions) as s:
            assert jobs.consume_events(session=s, tactics=tactics, settings=settings, now=utcnow(), gaps=gaps) == 0
            assert s.scalar(select(func.count()).select_from(Run).where(Run.key.like("late-%"))) == 0
        slow.commit()
    finally:
        slow.close()
    with session_scope(sessions) as s:
        assert jobs.consume_events(session=s, tactics=tactics, settings=settings, now=utcnow(), gaps=gaps) == 2
    with session_scope(sessions) as s:
        assert set(s.scalars(select(Run.key).where(Run.key.like("late-%")))) == {"late-0", "late-1"}
    eng.dispose()


def test_commits_with_new_events_wake_the_worker(session_factory, db_url):
    settings = Settings(database_url=db_url, worker_embedded=False)
    msg = {"type": "track", "userId": "w-1", "event": "Ping", "messageId": "wake-1"}
    before = jobs.WAKE.generation
    with session_scope(session_factory) as s:
        ingest.ingest(session=s, settings=settings, raw_messages=[msg])
        assert jobs.WAKE.generation == before  # not before the events are visible
    assert jobs.WAKE.generation == before + 1
    with session_scope(session_factory) as s:  # a resend stores nothing new
        ingest.ingest(session=s, settings=settings, raw_messages=[msg])
    s = session_factory()
    ingest.ingest(session=s, settings=settings, raw_messages=[{**msg, "messageId": "wake-2"}])
    s.rollback()
    s.close()
    assert jobs.WAKE.generation == before + 1


def _start_worker(world, monkeypatch, watch_commits=True, **settings):
    world.tactic(simple("ping", {"kind": "event", "event": "Ping"},
                        [{"id": "one", "kind": "message", "content": "mail"}]))
    with session_scope(world.sessions) as s:
        from emma.automation.models import TacticSetting

        for tid in library.library():
            s.merge(TacticSetting(id=tid, enabled=False))
        for t in world.tactics.values():
            s.merge(TacticSetting(id=t.id, enabled=True, definition=t.model_dump(mode="json", by_alias=True)))
    world.customer("c-1")
    passes: list[float] = []  # looks for work (jobs.pending)
    real_pending = jobs.pending

    def counting_pending(**kw):
        passes.append(time.monotonic())
        return real_pending(**kw)

    monkeypatch.setattr(jobs, "pending", counting_pending)
    stop = threading.Event()
    worker = threading.Thread(target=jobs.run, daemon=True, kwargs={
        "sessions": world.sessions, "stop": stop, "watch_commits": watch_commits,
        "settings": world.settings.model_copy(update={"quiet_hours": "", **settings})})
    worker.start()
    return stop, worker, passes


def test_idle_worker_backs_off(world, monkeypatch):
    stop, worker, passes = _start_worker(world, monkeypatch, worker_poll_seconds=0.01, worker_idle_seconds=60.0,
                                         worker_probe_seconds=60.0)
    try:
        time.sleep(1.5)
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    # Doubling from 10 ms: 8 passes in the first 1.5 s; polling every 10 ms would have made about 150.
    assert 2 <= len(passes) <= 12


def test_new_events_wake_an_idle_worker(world, monkeypatch):
    # The worker's idle pause is 10 s; the event's message must not wait for it.
    stop, worker, passes = _start_worker(world, monkeypatch, worker_poll_seconds=5.0, worker_idle_seconds=60.0,
                                         worker_probe_seconds=60.0)
    try:
        time.sleep(0.5)
        assert len(passes) == 1
        now = utcnow()
        start = time.monotonic()
        with session_scope(world.sessions) as s:
            ingest.ingest(session=s, received_at=now, settings=world.settings, raw_messages=[{
                "type": "track", "userId": "c-1", "event": "Ping", "messageId": "p-1", "timestamp": now.isoformat()}])
        while time.monotonic() - start < 8 and not world.messages():
            time.sleep(0.02)
        assert world.messages(), "the worker slept through the new event"
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()


@pytest.mark.parametrize("watch_commits", [True, False], ids=["watching", "embedded"])
def test_events_committed_elsewhere_reach_an_idle_worker(world, monkeypatch, watch_commits):
    # Committed by another process: nothing in this one is woken. PostgreSQL announces them (NOTIFY); on SQLite
    # the idle worker looks every worker_probe_seconds, however long its back-off has grown (also the worker
    # embedded in the server, which does not watch for commits).
    stop, worker, passes = _start_worker(world, monkeypatch, watch_commits=watch_commits, worker_poll_seconds=5.0,
                                         worker_idle_seconds=60.0, worker_probe_seconds=0.05)
    try:
        time.sleep(0.3)
        now = utcnow()
        start = time.monotonic()
        with monkeypatch.context() as m:
            m.setattr(ingest, "_listeners", [])
            with session_scope(world.sessions) as s:
                ingest.ingest(session=s, received_at=now, settings=world.settings, raw_messages=[{
                    "type": "track", "userId": "c-1", "event": "Ping", "messageId": "p-1",
                    "timestamp": now.isoformat()}])
        while time.monotonic() - start < 8 and not world.messages():
            time.sleep(0.02)
        assert world.messages(), "the worker did not see the event committed elsewhere"
        with session_scope(world.sessions) as s:
            runs_before = s.scalar(select(func.count()).select_from(Run))
        looked = len(passes)
        time.sleep(0.3)
        # Idle again: on SQLite it keeps looking (cheaply, every 50 ms) but passes nothing that would write.
        if not world.settings.database_url.startswith("postgresql"):
            assert len(passes) >= looked + 3
        with session_scope(world.sessions) as s:
            assert s.scalar(select(func.count()).select_from(Run)) == runs_before
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_worker_wakes_on_a_commit_of_another_connection(world, monkeypatch):
    # SQLite cannot notify another process, but the worker watches for commits (PRAGMA data_version): it
    # goes on at once, not after its probe interval (here a minute).
    stop, worker, passes = _start_worker(world, monkeypatch, worker_poll_seconds=5.0, worker_idle_seconds=60.0,
                                         worker_probe_seconds=60.0)
    try:
        time.sleep(0.3)
        looked = len(passes)
        now = utcnow()
        start = time.monotonic()
        with monkeypatch.context() as m:
            m.setattr(ingest, "_listeners", [])  # as if committed by another process: nothing here is woken
            with session_scope(world.sessions) as s:
                ingest.ingest(session=s, received_at=now, settings=world.settings, raw_messages=[{
                    "type": "track", "userId": "c-1", "event": "Ping", "messageId": "p-1",
                    "timestamp": now.isoformat()}])
        while time.monotonic() - start < 8 and not world.messages():
            time.sleep(0.01)
        assert world.messages(), "the worker did not notice the commit"
        assert time.monotonic() - start < 2.0
        time.sleep(0.3)
        assert len(passes) <= looked + 4  # idle again: no looking in a loop after its own commit
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_new_events_are_announced_to_other_processes_on_postgres(session_factory, db_url):
    conninfo = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    settings = Settings(database_url=db_url, worker_embedded=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"LISTEN {ingest.EVENTS_CHANNEL}")
        with session_scope(session_factory) as s:
            ingest.ingest(session=s, settings=settings, raw_messages=[
                {"type": "track", "userId": "n-1", "event": "Ping", "messageId": "notify-1"}])
        got = [n.channel for n in conn.notifies(timeout=10, stop_after=1)]
    assert got == [ingest.EVENTS_CHANNEL]


def test_runs_started_and_stepped_in_one_pass_are_written_once(world):
    # Runs that events start are stepped in the transaction that consumes the events: each is inserted once,
    # in the state the step left it (one statement for all of them, no update), with its journal.
    world.tactic(simple("mail", {"kind": "event", "event": "Go"},
                        [{"id": "m", "kind": "message", "content": "mail", "next": "w"},
                         {"id": "w", "kind": "wait", "duration": "1d", "next": "x"}, {"id": "x", "kind": "exit"}]))
    world.tactic(simple("goal", {"kind": "event", "event": "Go"},
                        [{"id": "w", "kind": "wait", "duration": "1d", "next": "x"}, {"id": "x", "kind": "exit"}],
                        goal={"event": "Bought", "within": "7d"}))
    c1, c2 = world.customer("c-1"), world.customer("c-2")
    world.track("c-1", "Go")
    world.track("c-2", "Go")
    world.track("c-2", "Bought")  # the same batch: c-2's goal run converts before it was ever written
    writes: list[str] = []

    def count(conn, cursor, statement, *args):
        if "AUTOMATION_RUNS" in statement.upper().split("(")[0] and not statement.lstrip().upper().startswith("SELECT"):
            writes.append(statement.split()[0].upper())

    bind = world.sessions.kw["bind"]
    event.listen(bind, "before_cursor_execute", count)
    try:
        with session_scope(world.sessions) as s:
            assert jobs.consume_events(session=s, tactics=world.tactics, settings=world.settings,
                                       now=world.clock.now()) == 3
    finally:
        event.remove(bind, "before_cursor_execute", count)
    assert writes == ["INSERT"]
    runs = {(r.tactic_id, r.customer_id): r for r in world.runs()}
    tomorrow = world.clock.now() + dt.timedelta(days=1)
    for cid in (c1, c2):
        run = runs[("mail", cid)]
        assert (run.status, run.node_id, run.due_at, run.steps) == ("active", "w", tomorrow, 3)
        assert [m.run_id for m in world.messages(cid)] == [run.id]
    assert (runs[("goal", c1)].status, runs[("goal", c1)].due_at) == ("active", tomorrow)
    assert (runs[("goal", c2)].status, runs[("goal", c2)].active_key) == ("converted", None)
    with session_scope(world.sessions) as s:
        journal = {(r.run_id, r.outcome) for r in s.scalars(select(RunStep))}
    assert (runs[("goal", c2)].id, "converted") in journal and (runs[("goal", c2)].id, "entered") in journal
    assert {(runs[("mail", c1)].id, o) for o in ("entered", "queued", "waiting")} <= journal


def test_due_runs_are_written_with_one_update(world):
    # A batch of due runs is stepped and its changes written with one statement (an array of rows on
    # PostgreSQL), not by the ORM's flush, which writes one row at a time.
    world.tactic(simple("later", {"kind": "event", "event": "Go"},
                        [{"id": "w", "kind": "wait", "duration": "1h", "next": "m"},
                         {"id": "m", "kind": "message", "content": "mail", "next": "x"}, {"id": "x", "kind": "exit"}]))
    cids = [world.customer(f"c-{i}") for i in range(3)]
    for i in range(3):
        world.track(f"c-{i}", "Go")
    world.tick()
    world.clock.set(world.clock.now() + 2 * H)
    updates: list[bool] = []  # per UPDATE of runs: sent as an executemany
    flushed: list[int] = []  # runs the ORM's flush updated

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.split()[:2] == ["UPDATE", "automation_runs"] and "RETURNING" not in statement:  # not the
            updates.append(executemany)  # SQLite claim

    def orm(mapper, conn, run):
        flushed.append(run.id)

    bind = world.sessions.kw["bind"]
    event.listen(bind, "before_cursor_execute", count)
    event.listen(Run, "before_update", orm)
    try:
        with session_scope(world.sessions) as s:
            assert engine.process_due(session=s, tactics=world.tactics, settings=world.settings,
                                      now=world.clock.now()) == 3
    finally:
        event.remove(bind, "before_cursor_execute", count)
        event.remove(Run, "before_update", orm)
    assert flushed == []
    postgres = world.settings.database_url.startswith("postgresql")
    assert updates == [not postgres]
    for cid in cids:
        (run,) = world.runs(cid)
        assert (run.status, run.active_key, run.node_id, run.steps) == ("exited", None, "x", 5)
        assert [m.run_id for m in world.messages(cid)] == [run.id]


def test_the_worker_embedded_in_the_server_does_not_watch_for_commits(world, monkeypatch):
    # Its own ingestion wakes it; 500 looks a second for other processes' commits cost the server's requests CPU.
    made: list[str] = []
    real = jobs.Commits
    monkeypatch.setattr(jobs, "Commits", lambda url: made.append(url) or real(url))
    stop, threads = jobs.start_background(sessions=world.sessions, settings=world.settings, deliver=False)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(10)
    assert made == []
    stop = threading.Event()
    stop.set()
    jobs.run(sessions=world.sessions, settings=world.settings, stop=stop)  # `emma worker` does, on SQLite
    assert made == ([] if world.settings.database_url.startswith("postgresql") else [world.settings.database_url])
