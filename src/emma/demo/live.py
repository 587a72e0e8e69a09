"""The demo shop's live days: tactics run on a virtual clock and their messages really go out.

Before the live days the shop's history is imported (nothing is sent for it). Then, hour by simulated hour:
the customers' events of that hour go in through ingest, the automation worker ticks at that moment, the
delivery loop sends what is due through the real adapters (SMTP to a local aiosmtpd server, webhook / SMS /
push to a local HTTP endpoint), and the simulated customers read what arrived and react through the
links in it (open pixel, click redirect, one-click unsubscribe, opt-in confirmation), served by the
product's own HTTP app on 127.0.0.1 running on the same virtual clock.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from emma.auth import service as auth
from emma.automation import jobs as automation
from emma.automation import library
from emma.automation import service as tactics_service
from emma.automation.clock import VirtualClock
from emma.catalog import service as catalog
from emma.channels import jobs as delivery
from emma.channels import service as channels
from emma.channels.adapters import configured_adapters
from emma.config import Settings
from emma.db import session_scope
from emma.demo.reactions import Behaviour, Counts, Recipients
from emma.demo.simulate import Simulation
from emma.demo.sinks import HookSink, MailSink, free_port
from emma.ingest import service as ingest
from emma.ingest.models import Event

SLICE = dt.timedelta(hours=1)
MAX_DELIVERY_PASSES = 50
SCAN_EVERY_HOURS = 6

Progress = Callable[[int, int, dict[str, int]], None]  # (live days done, live days, running counts)


@dataclass
class LiveRun:
    days: int = 0
    ticks: int = 0
    events: int = 0
    tactics: list[str] = field(default_factory=list)
    engine: Counter[str] = field(default_factory=Counter)
    delivery: Counter[str] = field(default_factory=Counter)
    discarded: int = 0
    smtp_received: int = 0
    hooks_received: int = 0
    reactions: Counts = field(default_factory=Counts)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rescored: list[dt.datetime] = field(default_factory=list)  # `emma score` as of these moments
    score_seconds: float = 0.0
    seconds: float = 0.0
    start: dt.datetime | None = None
    end: dt.datetime | None = None


class AppServer:
    """The HTTP app under uvicorn in a background thread on 127.0.0.1 (the links in the messages point here)."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        # The simulated customers' client keeps its connection between hours of work (scoring, a busy machine):
        # with uvicorn's 5 s idle timeout the server could close it just as a request goes out.
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    access_log=False, timeout_keep_alive=3600))
        self.thread = threading.Thread(target=self.server.run, name="emma-demo-app", daemon=True)

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo's HTTP app did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def live_settings(base: Settings, *, smtp_port: int, hooks: HookSink, app_port: int) -> Settings:
    """The settings with every channel pointed at the local receivers and links at the local app."""
    return base.model_copy(update={
        "smtp_host": "127.0.0.1", "smtp_port": smtp_port, "smtp_security": "none", "smtp_username": None,
        "smtp_password": None, "webhook_url": hooks.url("webhook"), "sms_provider_url": hooks.url("sms"),
        "push_provider_url": hooks.url("push"), "base_url": f"http://127.0.0.1:{app_port}",
        "worker_embedded": False, "channel_rate_limits": {}})


def start_at_present(*, session: Session, now: dt.datetime, reason: str) -> int:
    """The worker starts after the imported history: its event cursor at the last event, old mail discarded."""
    cur = automation.cursor(session=session, name=automation.EVENT_CURSOR)
    assert cur is not None
    cur.position = session.scalar(select(func.coalesce(func.max(Event.id), 0))) or 0
    return channels.discard_queued(session=session, before=now, reason=reason, now=now)


def rescore(*, sessions: sessionmaker[Session], live: LiveRun, at: dt.datetime) -> None:
    """`emma score` as of at, as a shop's nightly job would: the tactics and decisions read fresh predictions."""
    from emma.predict import service as predict

    t0 = time.perf_counter()
    with session_scope(sessions) as s:
        predict.score(session=s, as_of=at, horizon_days=365)
    live.rescored.append(at)
    live.score_seconds += time.perf_counter() - t0


def run_live(*, sessions: sessionmaker[Session], settings: Settings, sim: Simulation, enable: list[str] | None = None,
             progress: Progress | None = None, behaviour: Behaviour | None = None,
             rescore_days: int | None = None) -> LiveRun:
    """Simulate the remaining days of sim live: tactics, channels and the customers' reactions (by default as
    the simulator's hidden traits say; behaviour replaces that response model). With rescore_days, the
    predictions are scored afresh when the live days begin and then every rescore_days days."""
    config = sim.config
    live = LiveRun(start=config.day_start(sim.day), end=config.day_start(config.days))
    t0 = time.perf_counter()
    clock = VirtualClock(config.day_start(sim.day))
    with MailSink() as mail, HookSink() as hooks:
        port = free_port()
        settings = live_settings(settings, smtp_port=mail.port, hooks=hooks, app_port=port)
        with session_scope(sessions) as s:
            for tid in enable or []:
                tactics_service.set_enabled(session=s, tactic_id=tid, enabled=True, force=True)
            live.discarded = start_at_present(session=s, now=clock.now(),
                                              reason="queued while the history was imported, before delivery began")
            key = auth.create_key(session=s, kind="write", name="demo shop snippet")
        with session_scope(sessions) as s:
            tactics = library.enabled(session=s)
        live.tactics = sorted(tactics)
        adapters = configured_adapters(settings)
        from emma.app import create_app

        app = create_app(settings, clock=clock)
        with AppServer(app, port), httpx.Client(timeout=30) as http:
            people = Recipients(sim=sim, sessions=sessions, settings=settings, http=http, set_clock=clock.set,
                                behaviour=behaviour, write_key=key)
            total = config.days - sim.day
            while sim.day < config.days:
                if rescore_days and live.days % rescore_days == 0:
                    rescore(sessions=sessions, live=live, at=clock.now())
                _live_day(sim, sessions, settings, clock, tactics, adapters, mail, hooks, people, live)
                live.days += 1
                if progress:
                    progress(live.days, total, {"messages": live.delivery["sent"],
                                                "opens": sum(people.counts.opened.values()),
                                                "orders": sum(people.counts.ordered.values())})
            # What is still planned before the end (reactions to the last evening's mail) happens too.
            people.act_until(live.end)
            clock.set(live.end)
            with session_scope(sessions) as s:
                live.delivery["converted"] += channels.attribute_orders(session=s, settings=settings, now=live.end)
        live.reactions = people.counts
        live.smtp_received, live.hooks_received = mail.received, hooks.received
    live.seconds = time.perf_counter() - t0
    return live


def _live_day(sim: Simulation, sessions: sessionmaker[Session], settings: Settings, clock: VirtualClock,
              tactics: dict[str, Any], adapters: dict[str, Any], mail: MailSink, hooks: HookSink,
              people: Recipients, live: LiveRun) -> None:
    out = sim.step(emit=True)
    day0 = sim.config.day_start(out.day)
    slices: list[list[dict[str, Any]]] = [[] for _ in range(24)]
    for m in out.messages:
        ts = dt.datetime.fromisoformat(m["timestamp"])
        slices[min(23, max(0, int((ts - day0) / SLICE)))].append(m)
    people.observe([], out.confirmations)
    for h in range(24):
        until = day0 + (h + 1) * SLICE
        if h == 0 and out.catalog_rows:
            people.act_until(out.catalog_at)
            clock.set(out.catalog_at)
            with session_scope(sessions) as s:
                catalog.upsert_products(session=s, products=out.catalog_rows, at=out.catalog_at)
        people.act_until(until)
        clock.set(until)
        now = clock.now()
        if slices[h]:
            people.observe(slices[h], [])
            with session_scope(sessions) as s:
                res = ingest.ingest(session=s, raw_messages=slices[h], received_at=now, settings=settings)
            live.events += res.accepted
            people.visit(slices[h], now)
            live.rejected += [{"day": out.day, "index": r.index, "errors": [e.model_dump() for e in r.errors]}
                              for r in res.rejected]
        # Schedules, birthdays and catalog changes are looked at every few hours (the catalog changes at
        # midnight); events and due runs every hour.
        live.engine.update(automation.tick(sessions=sessions, settings=settings, now=now, tactics=tactics,
                                           scan=h % SCAN_EVERY_HOURS == 0))
        live.ticks += 1
        with session_scope(sessions) as s:
            due = channels.next_due(session=s)
        for _ in range(MAX_DELIVERY_PASSES if due is not None and due <= now else 0):
            counts = delivery.deliver_due(sessions=sessions, settings=settings, adapters=adapters, now=now,
                                          attribute=False)
            live.delivery.update(counts)
            if not sum(counts.values()):
                break
        with session_scope(sessions) as s:  # the hour's orders, attributed to the messages that led to them
            live.delivery["converted"] += channels.attribute_orders(session=s, settings=settings, now=now)
        people.receive_mail(mail.take(), now)
        people.receive_provider(hooks.take(), now)
