"""Tactics (list, enable, disable, copy), runs and the step journal, for the CLI, the API and other domains."""

from __future__ import annotations

import datetime as dt
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from emma.automation import library
from emma.automation import schemas as S
from emma.automation.exceptions import TacticConflict, TacticInvalid, TacticNotFound
from emma.automation.models import Run, RunStep, SalesTask, TacticSetting
from emma.config import Settings
from emma.db import utcnow
from emma.predict.models import Prediction


def missing_models(*, session: Session, tactic: S.Tactic) -> list[str]:
    """The predictions the tactic reads that no scoring run has produced yet."""
    out = []
    for name in tactic.requires:
        col = getattr(Prediction, name, None)
        if col is None:
            out.append(name)
            continue
        cond = col.is_not(None) if name not in ("recommendations", "top_affinities") else Prediction.customer_id > 0
        if session.scalar(select(Prediction.customer_id).where(cond).limit(1)) is None:
            out.append(name)
    return out


def list_tactics(*, session: Session) -> list[S.TacticOut]:
    """Every tactic of the library and every copy, with its state."""
    out = []
    for tid, (t, on, source) in sorted(library.all_tactics(session=session).items()):
        out.append(S.TacticOut(id=tid, version=t.version, name=t.names.en, enabled=on, source=source,
                               entry=describe_entry(t), channels=list(t.channels), priority=t.priority,
                               holdout=t.holdout, missing=missing_models(session=session, tactic=t)))
    return out


def describe_entry(t: S.Tactic) -> str:
    """A one-line description of the entry trigger."""
    e = t.entry
    if isinstance(e, S.EventEntry):
        return f"event {e.event}" + (f" where {e.where}" if e.where else "") + (f" keyed by {e.key}" if e.key else "")
    if isinstance(e, S.SegmentEntry):
        return f"{e.kind.replace('_', ' ')} {e.segment}"
    if isinstance(e, S.ScheduleEntry):
        return f"every {e.every} at {e.at} UTC" + (f" over segment {e.segment}" if e.segment else
                                                   " over its rule" if e.rule else "")
    if isinstance(e, S.DateEntry):
        return f"date {e.attribute}" + (f" {e.offset_days:+d} days" if e.offset_days else "")
    if isinstance(e, S.CatalogEntry):
        return f"catalog {e.change}" + (f" >= {e.min_drop_percent:g} %" if e.change == "price_drop" else "") + (
            f" to early adopters >= {e.min_score:g}" if e.change == "upcoming_launch" else "") + (
            f" ({e.audience})" if e.change in ("price_drop", "back_in_stock") and e.audience != "viewed_or_wishlisted"
            else "")
    if isinstance(e, S.StoreEntry):
        return (f"store {'opening' if e.change == 'opening' else 'event'} within {e.lead_days} days, customers "
                f"within {e.radius_km:g} km" if e.radius_km else
                f"store {'opening' if e.change == 'opening' else 'event'} within {e.lead_days} days, customers nearby")
    if isinstance(e, S.AttributeEntry):
        return f"attribute {e.attribute} changes" + (f" to {', '.join(map(str, e.to))}" if e.to else "")
    return f"prediction {e.field} {e.op} {e.value:g}"


def get_tactic(*, session: Session, tactic_id: str) -> tuple[S.Tactic, bool, str]:
    """One tactic with its enabled flag and source."""
    return library.get(session=session, tactic_id=tactic_id)


def set_enabled(*, session: Session, tactic_id: str, enabled: bool, force: bool = False) -> list[str]:
    """Switch a tactic on or off; returns the missing models (enabling refuses without force when any are)."""
    t, _, _ = library.get(session=session, tactic_id=tactic_id)
    missing = missing_models(session=session, tactic=t) if enabled else []
    if missing and not force:
        return missing
    row = session.get(TacticSetting, tactic_id)
    if row is None:
        row = TacticSetting(id=tactic_id, enabled=enabled, definition=None)
        session.add(row)
    row.enabled, row.updated_at = enabled, utcnow()
    return missing


def copy_tactic(*, session: Session, source_id: str, new_id: str, changes: dict[str, Any] | None = None,
                settings: Settings | None = None) -> S.Tactic:
    """Copy a tactic under a new id (disabled), optionally with changed fields; the original stays as it is."""
    t, _, _ = library.get(session=session, tactic_id=source_id)
    if new_id in library.all_tactics(session=session):
        raise TacticConflict(f"a tactic {new_id!r} exists already")
    data = t.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.update(changes or {})
    data.update({"id": new_id, "based_on": source_id})
    copy = library.parse(data, source=f"copy {new_id}")
    if settings is not None:
        problems = library.missing_templates(tactic=copy, settings=settings)
        if problems:
            raise TacticInvalid(f"copy {new_id}", problems)
    session.add(TacticSetting(id=new_id, enabled=False, based_on=source_id,
                              definition=copy.model_dump(mode="json", by_alias=True, exclude_none=True),
                              updated_at=utcnow()))
    return copy


def save_copy(*, session: Session, text: str, settings: Settings | None = None) -> S.Tactic:
    """Replace a copy's definition from edited YAML (library tactics are not edited in place)."""
    t = library.load_text(text, source="edited tactic")
    row = session.get(TacticSetting, t.id)
    if row is None or row.definition is None:
        if t.id in library.library():
            raise TacticConflict(f"{t.id} is a library tactic; copy it first (emma tactics copy {t.id} NEW_ID)")
        raise TacticNotFound(t.id)
    if settings is not None:
        problems = library.missing_templates(tactic=t, settings=settings)
        if problems:
            raise TacticInvalid(t.id, problems)
    row.definition = t.model_dump(mode="json", by_alias=True, exclude_none=True)
    row.updated_at = utcnow()
    return t


def to_yaml(tactic: S.Tactic) -> str:
    """The definition as YAML (what `emma tactics show` prints and a copy is edited from)."""
    data = tactic.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)


def runs_of(*, session: Session, customer_id: int, limit: int = 50) -> list[Run]:
    """The customer's runs, newest first."""
    return list(session.scalars(select(Run).where(Run.customer_id == customer_id)
                                .order_by(Run.entered_at.desc(), Run.id.desc()).limit(limit)))


def journal_of(*, session: Session, customer_id: int, limit: int = 200) -> list[RunStep]:
    """The customer's journal, oldest first (the latest limit steps)."""
    rows = list(session.scalars(select(RunStep).where(RunStep.customer_id == customer_id)
                                .order_by(RunStep.at.desc(), RunStep.id.desc()).limit(limit)))
    return rows[::-1]


def tasks(*, session: Session, status: str | None = "open", limit: int = 100) -> list[SalesTask]:
    """Sales tasks created by tactics."""
    stmt = select(SalesTask).order_by(SalesTask.due_at, SalesTask.id).limit(limit)
    if status:
        stmt = stmt.where(SalesTask.status == status)
    return list(session.scalars(stmt))


def customer_automation(*, session: Session, customer_id: int, limit: int = 100) -> dict[str, Any]:
    """Runs and journal of one customer as plain JSON data (for `emma customers show` and the API)."""
    def plain(v: Any) -> Any:
        return v.isoformat() if isinstance(v, dt.datetime) else v

    runs = [{"id": r.id, "tactic_id": r.tactic_id, "version": r.tactic_version, "key": r.key, "status": r.status,
             "node_id": r.node_id, "due_at": plain(r.due_at), "holdout": r.holdout, "entered_at": plain(r.entered_at),
             "finished_at": plain(r.finished_at), "outcome": r.outcome}
            for r in runs_of(session=session, customer_id=customer_id)]
    steps = [{"at": plain(s.at), "tactic_id": s.tactic_id, "run_id": s.run_id, "node_id": s.node_id, "kind": s.kind,
              "outcome": s.outcome, "reason": s.reason, "inputs": s.inputs}
             for s in journal_of(session=session, customer_id=customer_id, limit=limit)]
    return {"runs": runs, "journal": steps}
