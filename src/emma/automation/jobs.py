"""The worker: consume new events by a persisted cursor, scan scheduled triggers, advance due runs.

Each phase is its own transaction. Events move the cursor in the same transaction that records their effects,
so a worker killed at any point either did all of a batch or none of it; due runs are claimed with
FOR UPDATE SKIP LOCKED on PostgreSQL so any number of workers can share the work.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session, sessionmaker

from emma.automation import engine, library, triggers
from emma.automation import schemas as S
from emma.automation.clock import Clock, SystemClock
from emma.automation.models import LIVE, Cursor, Run, TacticSetting
from emma.config import Settings
from emma.db import among, insert_ignoring_conflicts, session_scope, utcnow
from emma.ingest import service as ingest
from emma.ingest.models import Event

log = logging.getLogger(__name__)
EVENT_CURSOR = "events"


def cursor(*, session: Session, name: str, lock: bool = False) -> Cursor | None:
    """The named cursor (created at 0); with lock, None when another worker holds it right now."""
    postgres = session.get_bind().dialect.name == "postgresql"
    stmt = select(Cursor).where(Cursor.name == name)
    if lock and postgres:
        stmt = stmt.with_for_update(skip_locked=True)
        found = session.scalar(stmt)  # the usual case: it exists (one statement instead of two)
        if found is not None:
            return found
    # SQLite: the insert comes first, so the transaction holds the write lock before it reads the position.
    session.execute(insert_ignoring_conflicts(session, Cursor, ["name"]).values(name=name, position=0,
                                                                                updated_at=utcnow()))
    return session.scalar(stmt)


def relevant_events(tactics: dict[str, S.Tactic]) -> set[str]:
    """Event names any enabled tactic reacts to (entry, goal, wait-for-event)."""
    names = engine.entry_events(tactics.values())
    for t in tactics.values():
        if t.goal:
            names.add(t.goal.event)
        for n in t.nodes:
            if isinstance(n, S.WaitForEventNode):
                names.update(n.events)
    return names


class GapWatch:
    """PostgreSQL hands out ids before commit, so id 7 can become visible after id 8. A gap is waited for a
    short grace period (it may be a transaction still committing) and then skipped (a rolled-back insert)."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.first_seen: dict[int, float] = {}

    def cut(self, position: int, ids: list[int]) -> list[int]:
        """The prefix of ids that may be processed now."""
        out: list[int] = []
        expected = position + 1
        now = time.monotonic()
        for i in ids:
            if i != expected:
                seen = self.first_seen.setdefault(expected, now)
                if now - seen < self.grace:
                    break
                self.first_seen.pop(expected, None)
            out.append(i)
            expected = i + 1
        if len(self.first_seen) > 1000:
            self.first_seen.clear()
        return out


def consume_events(*, session: Session, tactics: dict[str, S.Tactic], settings: Settings, now: dt.datetime,
                   limit: int | None = None, gaps: GapWatch | None = None, step: bool = True,
                   segments: bool = True) -> int:
    """Handle the next batch of events after the cursor and move the cursor, in the caller's transaction; with
    step, the runs the events started or woke are advanced in it too (their first messages go out with the
    commit that consumes the events, without a second transaction claiming them). segments=False: a look just
    before found no active segment, so memberships need no refresh."""
    cur = cursor(session=session, name=EVENT_CURSOR, lock=True)
    if cur is None:
        return 0  # another worker is on it
    limit = limit or settings.worker_batch_size
    rows = session.execute(select(Event.id, Event.name, Event.type, Event.customer_id).where(Event.id > cur.position)
                           .order_by(Event.id).limit(limit)).all()
    if not rows:
        return 0
    ids = [r.id for r in rows]
    if gaps is not None and session.get_bind().dialect.name == "postgresql":
        ids = gaps.cut(cur.position, ids)
        if not ids:
            return 0
    wanted = relevant_events(tactics)
    rows = [r for r in rows if r.id <= ids[-1]]
    pick = [r.id for r in rows if (r.name if r.type != "identify" else "identify") in wanted]
    events: list[Event] = []
    for i in range(0, len(pick), 500):
        events.extend(session.scalars(select(Event).where(among(session, Event.id, pick[i:i + 500]))))
    events.sort(key=lambda e: e.id)
    ready: list[Run] = []
    engine.handle_events(session=session, events=events, tactics=tactics, settings=settings, now=now, ready=ready)
    if step:
        engine.step(session=session, runs=[r for r in ready if r.status in LIVE and r.due_at is not None
                                           and r.due_at <= now], tactics=tactics, settings=settings, now=now)
    if segments:
        _refresh_segments(session, {r.customer_id for r in rows if r.customer_id is not None
                                    and r.name not in SEGMENT_EVENTS}, now)
    cur.position, cur.updated_at = ids[-1], utcnow()
    return len(ids)


SEGMENT_EVENTS = ("Segment Entered", "Segment Exited")


def _refresh_segments(session: Session, customer_ids: set[int], now: dt.datetime) -> None:
    """Keep segment membership current as events arrive; the enter / exit events it records are read by the
    next batch (and start the tactics that wait for them)."""
    if not customer_ids:
        return
    from emma.segments import service as segments

    if not segments.list_segments(session=session, active_only=True):
        return
    segments.refresh_membership(session=session, customer_ids=customer_ids, now=now)


@dataclass
class Pending:
    """What a worker would find now, read with one cheap statement that writes nothing: the newest event id,
    the event cursor's position, when the next live run falls due, a mark of the tactic settings (it changes
    when a tactic is added, enabled, disabled or edited) and the number of active segments."""

    last_event: int
    position: int | None
    next_due: dt.datetime | None
    tactics: tuple[Any, ...] = ()
    segments: int = 1

    def events(self) -> bool:
        """Events after the cursor (or none consumed yet)."""
        return self.last_event > (self.position or 0) or (self.position is None and self.last_event > 0)

    def due(self, now: dt.datetime) -> bool:
        """A run is due at now."""
        return self.next_due is not None and self.next_due <= now


def pending(*, session: Session | Connection) -> Pending:
    """Look for work without taking a lock (on SQLite a pass that finds nothing must not take the write lock,
    which ingestion in other processes waits for)."""
    from emma.segments.models import Segment

    last, position, due, n_tactics, n_enabled, changed, n_segments = session.execute(select(
        select(func.max(Event.id)).scalar_subquery(),
        select(Cursor.position).where(Cursor.name == EVENT_CURSOR).scalar_subquery(),
        select(func.min(Run.due_at)).where(Run.status.in_(LIVE)).scalar_subquery(),
        select(func.count()).select_from(TacticSetting).scalar_subquery(),
        select(func.count()).select_from(TacticSetting).where(TacticSetting.enabled.is_(True)).scalar_subquery(),
        select(func.max(TacticSetting.updated_at)).scalar_subquery(),
        select(func.count()).select_from(Segment).where(Segment.active.is_(True)).scalar_subquery())).one()
    if isinstance(due, str):  # a scalar subquery's value comes back unconverted on SQLite
        due = dt.datetime.fromisoformat(due)
    if due is not None and due.tzinfo is None:
        due = due.replace(tzinfo=dt.UTC)
    return Pending(last_event=int(last or 0), position=position, next_due=due,
                   tactics=(n_tactics, n_enabled, str(changed)), segments=int(n_segments or 0))


def look(*, sessions: sessionmaker[Session]) -> Pending:
    """pending() in a statement of its own: on PostgreSQL without a transaction around it (one round trip
    instead of three: BEGIN, the look, ROLLBACK)."""
    bind = sessions.kw.get("bind")
    if bind is not None and bind.dialect.name == "postgresql":
        with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return pending(session=conn)
    with session_scope(sessions) as s:
        return pending(session=s)


def tick(*, sessions: sessionmaker[Session], settings: Settings, now: dt.datetime, gaps: GapWatch | None = None,
         scan: bool = True, max_rounds: int = 100, tactics: dict[str, S.Tactic] | None = None,
         work: Pending | None = None) -> Counter[str]:
    """One pass of the worker: events, scheduled triggers, due runs (each committed on its own). work: what a
    look just before found; phases it shows nothing for are skipped (they would lock for nothing)."""
    counts: Counter[str] = Counter()
    if tactics is None:
        with session_scope(sessions) as s:
            tactics = library.enabled(session=s)
    for _ in range(max_rounds if work is None or work.events() else 0):
        with session_scope(sessions) as s:
            n = consume_events(session=s, tactics=tactics, settings=settings, now=now, gaps=gaps,
                               segments=work is None or work.segments > 0)
        counts["events"] += n
        if n < settings.worker_batch_size:
            break
    if scan:
        with session_scope(sessions) as s:
            counts["entered"] += triggers.scan(session=s, tactics=tactics, settings=settings, now=now)
    if work is not None and not (work.due(now) or counts["entered"]):
        return counts  # the runs the events started or woke were stepped with them
    for _ in range(max_rounds):
        with session_scope(sessions) as s:
            n = engine.process_due(session=s, tactics=tactics, settings=settings, now=now,
                                   limit=settings.worker_batch_size)
        counts["steps"] += n
        if n < settings.worker_batch_size:
            break
    return counts


class Waker:
    """Wakes the worker loops of this process: new events were committed (or, on PostgreSQL, announced by
    NOTIFY from another process)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        """Wake every waiting loop."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float, stop: threading.Event) -> int:
        """Wait until woken after generation seen, timeout passed or stop is set; returns the generation."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._generation == seen and not stop.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, STOP_CHECK_SECONDS))
            return self._generation


STOP_CHECK_SECONDS = 0.25
TACTICS_RELOAD_SECONDS = 5.0
WAKE = Waker()
ingest.on_new_events(WAKE.notify)


def _listen(url: str, stop: threading.Event) -> None:
    """Turn PostgreSQL notifications of new events (sent by ingestion in any process) into wake-ups."""
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"LISTEN {ingest.EVENTS_CHANNEL}")
                while not stop.is_set():
                    for _ in conn.notifies(timeout=STOP_CHECK_SECONDS * 4, stop_after=1):
                        WAKE.notify()
        except Exception:  # noqa: BLE001 - the database restarting: poll meanwhile, listen again soon
            if stop.is_set():
                return
            log.warning("listening for new events failed; polling until it works again", exc_info=True)
            stop.wait(5.0)


class Commits:
    """SQLite: notices commits by other connections (PRAGMA data_version on a connection of its own), so the
    worker goes on as soon as ingestion in another process committed, instead of sleeping a fixed time."""

    POLL_SECONDS = 0.002

    def __init__(self, url: str) -> None:
        import sqlite3

        from sqlalchemy.engine import make_url

        path = make_url(url).database
        self._conn = None
        if path and path != ":memory:" and not path.startswith("file:"):
            self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False)

    @property
    def usable(self) -> bool:
        return self._conn is not None

    def version(self) -> int:
        """Changes whenever another connection commits."""
        assert self._conn is not None
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def wait(self, since: int, timeout: float, stop: threading.Event, seen: int | None = None) -> bool:
        """Wait until another connection committed after version since (or this process woke the worker
        after generation seen), at most timeout; True when that happened."""
        end = time.monotonic() + timeout
        while not stop.is_set():
            if self.version() != since or (seen is not None and WAKE.generation != seen):
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            stop.wait(min(left, self.POLL_SECONDS))
        return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def run(*, sessions: sessionmaker[Session], settings: Settings, stop: threading.Event | None = None,
        clock: Clock | None = None, scan_every: float = 30.0, watch_commits: bool = True) -> None:
    """Work until stopped; a failing pass is logged and the loop goes on (e.g. while the database restarts).

    Before each pass the worker looks for work with one read (`pending`) and passes only when there is some.
    Idle, it sleeps longer and longer (worker_poll_seconds doubling up to worker_idle_seconds, never past the
    next due run) and wakes at once when new events are committed: by this process (the worker embedded in
    `emma serve`) or, on PostgreSQL, by any process (LISTEN / NOTIFY). SQLite has no notifications between
    processes: there the worker watches for commits of other connections (`Commits`, every 2 ms) and looks
    again at least every worker_probe_seconds. watch_commits=False leaves the watch out (the worker embedded in
    `emma serve`, which is woken by its own ingestion: 500 looks a second cost the server's requests CPU).
    """
    stop = stop or threading.Event()
    clock = clock or SystemClock()
    gaps = GapWatch(settings.event_gap_grace_seconds)
    postgres = settings.database_url.startswith("postgresql")
    if postgres:
        threading.Thread(target=_listen, args=(settings.database_url, stop), name="emma-listen", daemon=True).start()
    commits = None if postgres or not watch_commits else Commits(settings.database_url)
    if commits is not None and not commits.usable:
        commits = None
    try:
        _loop(sessions=sessions, settings=settings, stop=stop, clock=clock, scan_every=scan_every, gaps=gaps,
              postgres=postgres, commits=commits)
    finally:
        if commits is not None:
            commits.close()


def _loop(*, sessions: sessionmaker[Session], settings: Settings, stop: threading.Event, clock: Clock,
          scan_every: float, gaps: GapWatch, postgres: bool, commits: Commits | None) -> None:
    longest = max(settings.worker_idle_seconds, settings.worker_poll_seconds)
    last_scan = -scan_every
    idle = settings.worker_poll_seconds
    tactics: dict[str, S.Tactic] | None = None
    mark: tuple[Any, ...] = ()
    loaded = 0.0
    while not stop.is_set():
        seen = WAKE.generation
        scan = time.monotonic() - last_scan >= scan_every
        now = clock.now()
        try:
            version = commits.version() if commits is not None else 0  # before the look: no commit is missed
            work = look(sessions=sessions)
            if scan or work.events() or work.due(now):
                began = time.monotonic()
                # The enabled tactics are read again when the look's mark of their settings changed (and
                # every few seconds anyway), not in a transaction of their own before every pass.
                if tactics is None or work.tactics != mark or began - loaded > TACTICS_RELOAD_SECONDS:
                    with session_scope(sessions) as s:
                        tactics = library.enabled(session=s)
                    mark, loaded = work.tactics, began
                counts = tick(sessions=sessions, settings=settings, now=now, gaps=gaps, scan=scan, work=work,
                              tactics=tactics)
                if scan:
                    last_scan = time.monotonic()
                    if counts["entered"]:
                        last_scan = -scan_every  # a scan that started runs may have more to start: go on
                if counts["events"] or counts["steps"] or counts["entered"]:
                    idle = settings.worker_poll_seconds
                    full = counts["entered"] or max(counts["events"], counts["steps"]) >= settings.worker_batch_size
                    if postgres and not full:
                        stop.wait(settings.worker_poll_seconds)  # let more events gather: less work per event
                    elif not postgres:
                        # SQLite: other processes waiting for the write lock retry after sleeps (their busy
                        # handler), so a worker that took it again at once would starve ingestion. It waits
                        # until another connection committed (ingestion had its turn; its events are then the
                        # next pass's) or at most as long as the pass took.
                        took = time.monotonic() - began
                        cap = min(max(settings.worker_poll_seconds, took), settings.worker_probe_seconds)
                        if commits is not None:
                            commits.wait(commits.version(), cap, stop)
                        else:
                            stop.wait(cap)
                    continue
        except Exception:  # noqa: BLE001 - keep working; the failed transaction was rolled back
            log.exception("automation pass failed")
            stop.wait(1.0)
            continue
        pause = idle if postgres else min(idle, settings.worker_probe_seconds)
        if work.next_due is not None:  # due runs another worker holds right now: look again soon, not at once
            pause = min(pause, max(settings.worker_poll_seconds, (work.next_due - now).total_seconds()))
        if commits is not None:
            woken = commits.wait(version, pause, stop, seen=seen)
        else:
            woken = WAKE.wait(seen, pause, stop) != seen
        idle = settings.worker_poll_seconds if woken else min(idle * 2, longest)


def start_background(*, sessions: sessionmaker[Session], settings: Settings,
                     deliver: bool = True) -> tuple[threading.Event, list[threading.Thread]]:
    """Run the worker (and the delivery loop) in daemon threads; set the returned event to stop them."""
    from emma.channels import jobs as delivery

    stop = threading.Event()
    threads = [threading.Thread(target=run, kwargs={"sessions": sessions, "settings": settings, "stop": stop,
                                                    "watch_commits": False},
                                name="emma-automation", daemon=True)]
    if deliver:
        threads.append(threading.Thread(target=delivery.run, kwargs={"sessions": sessions, "settings": settings,
                                                                     "stop": stop},
                                        name="emma-delivery", daemon=True))
    for t in threads:
        t.start()
    return stop, threads
