"""Play a tactic's built-in scenario: a synthetic customer and a timeline of inputs, on a virtual clock, against a
throwaway SQLite database; the result is the timeline (sent, suppressed, why) and the checked expectations."""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from emma.automation import engine, jobs
from emma.automation import schemas as S
from emma.automation.clock import VirtualClock
from emma.automation.models import Run, RunStep
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.db import Base, import_all_models, make_engine, make_sessionmaker, session_scope


@dataclass
class Line:
    at: dt.datetime
    offset: dt.timedelta
    kind: str  # input | step | message | suppressed
    text: str
    channel: str | None = None


@dataclass
class Result:
    tactic_id: str
    start: dt.datetime
    lines: list[Line] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    elapsed_virtual: dt.timedelta = dt.timedelta(0)

    @property
    def ok(self) -> bool:
        return not self.failures


def fmt_offset(d: dt.timedelta) -> str:
    """'+1d 01:20' style offsets from the scenario start."""
    secs = int(d.total_seconds())
    days, rest = divmod(secs, 86400)
    h, rest = divmod(rest, 3600)
    m = rest // 60
    return f"+{days}d {h:02d}:{m:02d}" if days else f"+{h:02d}:{m:02d}"


def _setup(session: Session, scenario: S.Scenario, now: dt.datetime) -> int:
    from emma.catalog import service as catalog
    from emma.consent import service as consent
    from emma.profiles.models import Customer, Identity

    c = scenario.customer
    customer = Customer(external_id=c.external_id, email=c.email, phone=c.phone, first_name=c.first_name,
                        last_name=c.last_name, locale=c.locale, timezone=c.timezone, birthday=c.birthday,
                        postal_code=c.postal_code, city=c.city, country=c.country, lat=c.lat, lon=c.lon,
                        attributes=dict(c.attributes), is_anonymous=False, created_at=now, last_seen_at=now)
    session.add(customer)
    session.flush()
    session.add(Identity(customer_id=customer.id, kind="user_id", value=c.external_id, created_at=now))
    for purpose, status in c.consent.items():
        since = c.consent_recorded.get(purpose)
        at = dt.datetime.combine(since, dt.time(9), tzinfo=dt.UTC) if since else now
        consent.record(session=session, customer_id=customer.id, purpose=purpose, status=status, source="scenario",
                       recorded_at=at)
    if c.prediction is not None:
        _predict(session, customer.id, c.prediction, now)
    if scenario.catalog:
        catalog.upsert_products(session=session, products=[dict(p) for p in scenario.catalog], at=now)
    if scenario.stores:
        _stores(session, "stores", scenario.stores, now)
    return customer.id


def _stores(session: Session, what: str, rows: list[dict[str, Any]], now: dt.datetime) -> str:
    from emma.stores import service as stores

    fn = stores.upsert_stores if what == "stores" else stores.upsert_events
    res = fn(session=session, rows=[dict(r) for r in rows], at=now)
    if res.rejected:
        first = res.rejected[0]
        field = f"{first.field}: " if first.field != "row" else ""
        raise ValueError(f"scenario {what}.{first.index}: {field}{first.reason}")
    return f"{what}: " + "; ".join(", ".join(f"{k} {v}" for k, v in r.items() if not isinstance(v, dict | list))
                                   for r in rows)


def _predict(session: Session, customer_id: int, values: dict[str, Any], now: dt.datetime) -> None:
    from emma.predict.models import Prediction, ScoreRun

    run = ScoreRun(as_of=now, horizon_days=365, status="done", customers_done=1, started_at=now, finished_at=now)
    session.add(run)
    session.flush()
    p = session.get(Prediction, customer_id)
    if p is None:
        p = Prediction(customer_id=customer_id, run_id=run.id, as_of=now)
        session.add(p)
    p.run_id, p.as_of = run.id, now
    for k, v in values.items():
        if k not in Prediction.__table__.columns:
            raise ValueError(f"scenario prediction: unknown field {k!r}")
        setattr(p, k, v)


def _apply(session: Session, step: S.ScenarioStep, index: int, customer_id: int, external_id: str,
           now: dt.datetime, settings: Settings) -> str:
    from emma.catalog import service as catalog
    from emma.consent import service as consent
    from emma.ingest import service as ingest

    if step.track is not None:
        props = dict(step.track.get("properties") or {})
        ts = step.track.get("timestamp")  # a backdated event, e.g. an order two years ago
        stamp = ts.isoformat() if isinstance(ts, dt.datetime | dt.date) else str(ts or now.isoformat())
        msg = {"type": "track", "userId": external_id, "event": step.track["event"], "properties": props,
               "timestamp": stamp, "messageId": f"scenario-{index}"}
        res = ingest.ingest(session=session, raw_messages=[msg], received_at=now, settings=settings)
        if res.rejected:
            raise ValueError(f"timeline.{index}: event rejected: {res.rejected[0].errors}")
        shown = ", ".join(f"{k} {v}" for k, v in props.items() if not isinstance(v, list | dict))
        return f"event {step.track['event']}" + (f" ({shown})" if shown else "")
    if step.identify is not None:
        msg = {"type": "identify", "userId": external_id, "traits": dict(step.identify),
               "timestamp": now.isoformat(), "messageId": f"scenario-{index}"}
        ingest.ingest(session=session, raw_messages=[msg], received_at=now, settings=settings)
        return f"identify {', '.join(step.identify)}"
    if step.catalog is not None:
        catalog.upsert_products(session=session, products=[dict(p) for p in step.catalog], at=now)
        return "catalog: " + "; ".join(", ".join(f"{k} {v}" for k, v in p.items()) for p in step.catalog)
    if step.stores is not None:
        return _stores(session, "stores", step.stores, now)
    if step.store_events is not None:
        return _stores(session, "store_events", step.store_events, now)
    if step.consent is not None:
        for purpose, status in step.consent.items():
            consent.record(session=session, customer_id=customer_id, purpose=purpose, status=status,
                           source="scenario", recorded_at=now)
        return "consent: " + ", ".join(f"{k} {v}" for k, v in step.consent.items())
    assert step.prediction is not None
    _predict(session, customer_id, step.prediction, now)
    return "scoring: " + ", ".join(f"{k} {v}" for k, v in step.prediction.items())


def play(*, tactic: S.Tactic, settings: Settings | None = None, workdir: Path | None = None) -> Result:
    """Run the tactic's scenario on a virtual clock in a fresh SQLite database and check its expectations."""
    scenario = tactic.scenario
    share = 0.0 if scenario.group == "treatment" else 1.0  # the test customer's group is part of the scenario
    played = tactic.model_copy(update={"holdout": share})
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        url = f"sqlite:///{Path(tmp) / 'scenario.db'}"
        base = settings or Settings()
        settings = base.model_copy(update={"database_url": url, "worker_embedded": False})
        eng = make_engine(url)
        try:
            import_all_models()
            Base.metadata.create_all(eng)
            return _play(played, scenario, make_sessionmaker(eng), settings)
        finally:
            eng.dispose()


def _play(tactic: S.Tactic, scenario: S.Scenario, sessions: sessionmaker[Session], settings: Settings) -> Result:
    start = scenario.start
    clock = VirtualClock(start)
    result = Result(tactic_id=tactic.id, start=start)
    with session_scope(sessions) as s:
        cid = _setup(s, scenario, start)
    steps = sorted(((start + S.parse_duration(st.at), i, st) for i, st in enumerate(scenario.timeline)),
                   key=lambda x: (x[0], x[1]))
    end = (steps[-1][0] if steps else start) + S.parse_duration(scenario.run_for)
    tactics = {tactic.id: tactic}
    hourly = tactic.entry.kind in ("schedule", "date", "catalog", "prediction", "store", "attribute")
    pending = list(steps)
    for _ in range(100_000):
        now = clock.now()
        while pending and pending[0][0] <= now:
            at, i, st = pending.pop(0)
            with session_scope(sessions) as s:
                text = _apply(s, st, i, cid, scenario.customer.external_id, now, settings)
            result.lines.append(Line(at=now, offset=now - start, kind="input", text=text))
        jobs.tick(sessions=sessions, settings=settings, now=now, tactics=tactics)
        with session_scope(sessions) as s:
            due = engine.next_due(session=s)
        candidates = [t for t in (due, pending[0][0] if pending else None) if t is not None and t > now]
        if hourly:
            candidates.append((now + dt.timedelta(hours=1)).replace(minute=0, second=0, microsecond=0))
        if not candidates:
            break
        nxt = min(candidates)
        if nxt > end:
            break
        clock.set(nxt)
    result.elapsed_virtual = clock.now() - start
    _collect(sessions, result, tactic, start, settings)
    _check(result, scenario.expect, start)
    return result


def _render(session: Session, m: OutboxMessage, settings: Settings, result: Result) -> str | None:
    """Render the message as delivery would (a template error fails the scenario); returns its subject."""
    from emma.channels import content
    from emma.channels import service as channels
    from emma.channels.exceptions import RenderError
    from emma.profiles.models import Customer

    if m.template is None or m.status == "suppressed":
        return None
    customer = session.get(Customer, m.customer_id) if m.customer_id else None
    try:
        ctx = channels.context_for(session=session, message=m, customer=customer, settings=settings)
        out = content.render(channel=m.channel, template=m.template, locale=m.locale or settings.default_locale,
                             context=ctx, settings=settings)
    except RenderError as exc:
        result.failures.append(f"{m.channel} {m.template} ({m.locale}) does not render: {exc}")
        return None
    return out.subject


def _collect(sessions: sessionmaker[Session], result: Result, tactic: S.Tactic, start: dt.datetime,
             settings: Settings) -> None:
    with session_scope(sessions) as s:
        runs = list(s.scalars(select(Run).where(Run.tactic_id == tactic.id).order_by(Run.id)))
        result.runs = [{"id": r.id, "status": r.status, "key": r.key, "holdout": r.holdout, "outcome": r.outcome}
                       for r in runs]
        for st in s.scalars(select(RunStep).where(RunStep.tactic_id == tactic.id).order_by(RunStep.at, RunStep.id)):
            kind = "suppressed" if st.outcome in ("suppressed", "holdout") else "step"
            result.lines.append(Line(at=st.at, offset=st.at - start, kind=kind, text=st.reason,
                                     channel=(st.inputs or {}).get("channel")))
        for m in s.scalars(select(OutboxMessage).where(OutboxMessage.tactic_id == tactic.id)
                           .order_by(OutboxMessage.due_at, OutboxMessage.id)):
            result.messages.append({"channel": m.channel, "template": m.template, "due_at": m.due_at,
                                    "offset": m.due_at - start, "transactional": m.transactional,
                                    "status": m.status, "locale": m.locale, "payload": m.payload,
                                    "subject": _render(s, m, settings, result)})
            if m.status != "suppressed":
                result.lines.append(Line(at=m.due_at, offset=m.due_at - start, kind="message", channel=m.channel,
                                         text=f"{m.channel} {m.template} ({m.locale})"
                                         + (" [transactional]" if m.transactional else "")
                                         + f" goes out: {(m.payload or {}).get('reason', '')}"
                                         + (f" – “{result.messages[-1]['subject']}”"
                                            if result.messages[-1]["subject"] else "")))
    order = {"input": 0, "step": 1, "suppressed": 1, "message": 2}
    result.lines.sort(key=lambda ln: (ln.at, order[ln.kind]))


def _check(result: Result, expect: S.Expectations, start: dt.datetime) -> None:
    f = result.failures
    sent = [m for m in result.messages if m["status"] != "suppressed"]
    if expect.messages or expect.status is not None or expect.runs is not None:
        if len(sent) != len(expect.messages):
            f.append(f"expected {len(expect.messages)} message(s), got {len(sent)}: "
                     + ", ".join(f"{m['channel']} {m['template']} at {fmt_offset(m['offset'])}" for m in sent))
        for i, (want, got) in enumerate(zip(expect.messages, sent, strict=False)):
            if (want.channel, want.template) != (got["channel"], got["template"]):
                f.append(f"message {i + 1}: expected {want.channel} {want.template}, "
                         f"got {got['channel']} {got['template']}")
            if want.at is not None and S.parse_duration(want.at) != got["offset"]:
                f.append(f"message {i + 1} ({want.template}): expected at {fmt_offset(S.parse_duration(want.at))}, "
                         f"due at {fmt_offset(got['offset'])}")
            if want.transactional is not None and want.transactional != got["transactional"]:
                f.append(f"message {i + 1} ({want.template}): transactional should be {want.transactional}")
    suppressed = [ln.text for ln in result.lines if ln.kind == "suppressed"]
    for text in expect.suppressed:
        if not any(text in s for s in suppressed):
            f.append(f"expected a suppression mentioning {text!r}; suppressions: {suppressed or 'none'}")
    if expect.runs is not None and len(result.runs) != expect.runs:
        f.append(f"expected {expect.runs} run(s), got {len(result.runs)}")
    if expect.status is not None:
        last = result.runs[-1]["status"] if result.runs else "(no run)"
        if last != expect.status:
            f.append(f"expected the run to end {expect.status}, it is {last}")
    if expect.holdout is not None and result.runs and result.runs[0]["holdout"] != expect.holdout:
        f.append(f"expected holdout={expect.holdout}")
    reasons = [ln.text for ln in result.lines if ln.kind in ("step", "suppressed")]
    for text in expect.journal:
        if not any(text in r for r in reasons):
            f.append(f"expected a step mentioning {text!r}")
