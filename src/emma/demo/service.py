"""`emma demo`: a fresh database filled with a simulated year of the demo shop, through the public paths."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from emma.catalog import service as catalog
from emma.config import Settings
from emma.consent import service as consent
from emma.consent.models import PURPOSES, Consent
from emma.db import make_engine, make_sessionmaker, session_scope, upgrade
from emma.demo.simulate import DayOutput, DemoConfig, Simulation
from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.orders.models import Cart, Order
from emma.predict import service as predict
from emma.profiles.models import Customer, Identity

DEFAULT_DATABASE = "sqlite:///./emma-demo.db"
# Messages per ingest call: large enough to amortise the per-call lookups, small enough to keep memory flat.
BATCH = 5000

Progress = Callable[[int, int, int], None]  # (days done, days total, messages so far)


@dataclass
class DemoRun:
    config: DemoConfig
    database: str
    seconds: float = 0.0
    generate_seconds: float = 0.0
    ingest_seconds: float = 0.0
    messages: int = 0
    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    orders: int = 0
    carts: int = 0
    abandoned_carts: int = 0

    @property
    def events_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def customers_per_second(self) -> float:
        return self.config.customers / self.seconds if self.seconds else 0.0


def sidecar(database: str, suffix: str) -> Path:
    """A file next to a SQLite database (the demo's parameters, the truth); cwd for other databases."""
    url = make_url(database)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        p = Path(url.database)
        return p.with_name(p.stem + suffix)
    return Path("emma-demo" + suffix)


def fresh_sqlite(database: str) -> None:
    """Delete the SQLite file (and its WAL) so every run starts empty."""
    url = make_url(database)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(url.database + suffix).unlink(missing_ok=True)


def write_meta(database: str, config: DemoConfig) -> Path:
    """Remember the parameters so the truth can be recomputed from the seed later."""
    path = sidecar(database, ".json")
    from emma.demo.catalog import stores

    data = {**asdict(config), "end": config.end.isoformat(),
            # The physical shops (there is no stores table yet): where they are and when they opened.
            "stores": [{**st.as_dict(), "opened": (config.start + dt.timedelta(days=st.opened_day)).isoformat()
                        if st.opened_day is not None else None} for st in stores(config.days)]}
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def read_meta(database: str) -> DemoConfig:
    """The configuration a demo database was generated with."""
    path = sidecar(database, ".json")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["end"] = dt.date.fromisoformat(data["end"])
    data.pop("stores", None)
    return DemoConfig(**data)


def populate(*, session_factory: Any, config: DemoConfig, progress: Progress | None = None,
             settings: Settings | None = None, sim: Simulation | None = None,
             until_day: int | None = None) -> tuple[Simulation, DemoRun]:
    """Simulate the year (up to until_day) and send everything in through ingest and the catalog service, a day
    per commit."""
    sim = sim or Simulation(config)
    run = DemoRun(config=config, database="")
    settings = settings or Settings()
    t0 = time.perf_counter()
    until = config.days if until_day is None else min(until_day, config.days)
    while sim.day < until:
        g0 = time.perf_counter()
        out = sim.step(emit=True)
        g1 = time.perf_counter()
        with session_scope(session_factory) as session:
            accepted, rejected = ingest_day(session=session, out=out, settings=settings)
        run.accepted += accepted
        run.rejected.extend(rejected)
        run.generate_seconds += g1 - g0
        run.ingest_seconds += time.perf_counter() - g1
        run.messages += len(out.messages)
        run.orders += out.counts["orders"]
        run.carts += out.counts["carts"]
        run.abandoned_carts += out.counts["abandoned_carts"]
        if progress:
            progress(sim.day, until, run.messages)
    run.seconds = time.perf_counter() - t0
    return sim, run


def ingest_day(*, session: Session, out: DayOutput, settings: Settings) -> tuple[int, list[dict[str, Any]]]:
    """One simulated day through the public paths: catalog upsert, ingest, opt-in link clicks (caller commits)."""
    if out.catalog_rows:
        catalog.upsert_products(session=session, products=out.catalog_rows, at=out.catalog_at)
    accepted, rejected = 0, []
    # The shop's tracking endpoint received the day's events by the end of that day.
    received = out.catalog_at + dt.timedelta(days=1)
    for start in range(0, len(out.messages), BATCH):
        res = ingest.ingest(session=session, raw_messages=out.messages[start:start + BATCH], received_at=received,
                            settings=settings, index_offset=start)
        accepted += res.accepted
        rejected += [{"day": out.day, "index": r.index, "errors": [e.model_dump() for e in r.errors]}
                     for r in res.rejected]
    _confirm_opt_ins(session, out.confirmations, settings)
    return accepted, rejected


def _confirm_opt_ins(session: Session, clicks: list[tuple[str, str, dt.datetime]], settings: Settings) -> None:
    """The customers who click the link in their double opt-in mail, through the same flow as the link."""
    if not clicks:
        return
    ids = dict(session.execute(select(Identity.value, Identity.customer_id).where(
        Identity.kind == "user_id", Identity.value.in_([uid for uid, _, _ in clicks]))).all())
    for uid, purpose, at in clicks:
        if uid in ids:
            token = consent.confirmation_token(customer_id=ids[uid], purpose=purpose, settings=settings, now=at)
            consent.confirm_opt_in(session=session, token=token, settings=settings, now=at)


def run_demo(*, database: str = DEFAULT_DATABASE, config: DemoConfig, progress: Progress | None = None,
             fresh: bool = True, until_day: int | None = None) -> tuple[Simulation, DemoRun]:
    """Recreate the database, migrate it, and fill it with the simulated year (the history up to until_day)."""
    if fresh:
        fresh_sqlite(database)
    upgrade(database)
    write_meta(database, config)
    engine = make_engine(database)
    try:
        sim, run = populate(session_factory=make_sessionmaker(engine), config=config, progress=progress,
                            settings=Settings(database_url=database), until_day=until_day)
    finally:
        engine.dispose()
    run.database = database
    return sim, run


def run_live(*, database: str, sim: Simulation, enable: list[str] | None = None,
             progress: Any = None, rescore_days: int | None = None) -> Any:
    """The remaining simulated days live: tactics on the virtual clock, messages through the channels, reactions;
    with rescore_days, fresh predictions when they begin and every rescore_days days."""
    from emma.demo import live

    engine = make_engine(database)
    try:
        return live.run_live(sessions=make_sessionmaker(engine), settings=Settings(database_url=database), sim=sim,
                             enable=enable, progress=progress, rescore_days=rescore_days)
    finally:
        engine.dispose()


def _campaigns(session: Session) -> dict[str, Any]:
    from emma.automation.models import Run
    from emma.channels.models import OutboxMessage

    runs = session.scalar(select(func.count()).select_from(Run)) or 0
    sent = dict(session.execute(select(OutboxMessage.channel, func.count()).where(OutboxMessage.status == "sent")
                                .group_by(OutboxMessage.channel)).all())
    return {"tactics_fired": runs or None, "messages_by_channel": sent or None}


def summary(*, session: Session) -> dict[str, Any]:
    """Headline figures of what is in the database (all read back from the tables, not the simulation)."""
    known = select(func.count()).select_from(Customer).where(Customer.is_anonymous.is_(False),
                                                             Customer.merged_into_id.is_(None))
    anonymous = select(func.count()).select_from(Customer).where(Customer.is_anonymous.is_(True),
                                                                 Customer.merged_into_id.is_(None))
    merged = select(func.count()).select_from(Customer).where(Customer.merged_into_id.is_not(None))
    orders, revenue, buyers = session.execute(
        select(func.count(), func.coalesce(func.sum(Order.revenue), 0), func.count(Order.customer_id.distinct()))
    ).one()
    carts = dict(session.execute(select(Cart.status, func.count()).group_by(Cart.status)).all())
    events = session.execute(select(func.coalesce(Event.name, Event.type), func.count())
                             .group_by(func.coalesce(Event.name, Event.type))
                             .order_by(func.count().desc())).all()
    consent_rows = session.execute(select(Consent.purpose, Consent.status, func.count())
                                   .group_by(Consent.purpose, Consent.status)).all()
    consent: dict[str, dict[str, int]] = {p: {} for p in PURPOSES}
    for purpose, status, n in consent_rows:
        consent.setdefault(purpose, {})[status] = n
    n_known = session.scalar(known) or 0
    total_carts = sum(carts.values())
    return {
        "customers": {"known": n_known, "anonymous": session.scalar(anonymous) or 0,
                      "merged": session.scalar(merged) or 0, "buyers": buyers},
        "orders": orders, "revenue": float(revenue),
        "carts": total_carts, "abandoned_carts": total_carts - carts.get("ordered", 0),
        "events": {name: n for name, n in events},
        "consent": {p: {"granted": v.get("granted", 0), "pending": v.get("pending", 0), "revoked": v.get("revoked", 0),
                        "coverage": v.get("granted", 0) / n_known if n_known else 0.0}
                    for p, v in consent.items()},
        # Filled in by later parts of the product (they are None until their tables exist).
        "predictions": predict.summary(session=session),
        **_campaigns(session),
    }
