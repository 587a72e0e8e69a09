"""Segments: definitions, batch counts and member lists (SQL), real-time membership (predicate), transitions.

Entering or leaving a segment is recorded as a track event ("Segment Entered" / "Segment Exited", properties
{"segment": key}) with a deterministic message id, so tactics start on it like on any event and a re-run of a
refresh never records anything twice. Time is always passed in (`now`); nothing here reads the clock except
the created/updated stamps of definitions.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from emma.db import insert_columns, rows_among, utcnow
from emma.ingest.models import Event
from emma.profiles.models import Customer
from emma.segments import compile as sql
from emma.segments import predicate
from emma.segments import rules as r
from emma.segments.exceptions import InvalidRule, SegmentExists, SegmentNotFound
from emma.segments.models import Segment, SegmentMembership

ENTERED, EXITED = "Segment Entered", "Segment Exited"
_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_CHUNK = 500
_WRITE_CHUNK = 5_000  # transitions per set of statements


@dataclass(frozen=True)
class Transition:
    """A customer entered or left a segment at `at`; `message_id` is the id of the event that records it."""

    segment: str
    segment_id: int
    customer_id: int
    kind: str  # enter | exit
    at: dt.datetime
    message_id: str

    @property
    def event_name(self) -> str:
        return ENTERED if self.kind == "enter" else EXITED


# --- definitions -------------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    """The rule as plain JSON (YAML may have turned dates into date objects)."""
    return json.loads(json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))


def validate_rule(*, rule: Any) -> r.Node:
    """Parse and validate a rule; raises InvalidRule naming every bad path."""
    return r.parse(_jsonable(rule))


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidRule([("key", "must be 1-64 characters: lower-case letters, digits, - and _, "
                                   "starting with a letter or digit")])


def create(*, session: Session, key: str, rule: Any, name: str | None = None,
           description: str | None = None, active: bool = True) -> Segment:
    """Create a segment after validating its key and rule."""
    _check_key(key)
    validate_rule(rule=rule)
    if session.scalar(select(Segment.id).where(Segment.key == key)) is not None:
        raise SegmentExists(key)
    now = utcnow()
    segment = Segment(key=key, name=name or key, description=description, rule=_jsonable(rule), version=1,
                      active=active, created_at=now, updated_at=now)
    session.add(segment)
    session.flush()
    return segment


def get(*, session: Session, key: str) -> Segment:
    """The segment with this key."""
    segment = session.scalar(select(Segment).where(Segment.key == key))
    if segment is None:
        raise SegmentNotFound(key)
    return segment


def list_segments(*, session: Session, active_only: bool = False) -> list[Segment]:
    """All segments by key."""
    q = select(Segment).order_by(Segment.key)
    if active_only:
        q = q.where(Segment.active.is_(True))
    return list(session.scalars(q))


def update_segment(*, session: Session, key: str, rule: Any = None, name: str | None = None,
                   description: str | None = None, active: bool | None = None) -> Segment:
    """Change a segment; a new rule raises its version (memberships follow on the next refresh)."""
    segment = get(session=session, key=key)
    if rule is not None:
        validate_rule(rule=rule)
        plain = _jsonable(rule)
        if plain != segment.rule:
            segment.rule = plain
            segment.version += 1
    if name is not None:
        segment.name = name
    if description is not None:
        segment.description = description
    if active is not None:
        segment.active = active
    segment.updated_at = utcnow()
    session.flush()
    return segment


def delete(*, session: Session, key: str) -> None:
    """Delete a segment and its memberships (recorded transition events stay)."""
    segment = get(session=session, key=key)
    session.execute(SegmentMembership.__table__.delete().where(SegmentMembership.segment_id == segment.id))
    session.delete(segment)
    session.flush()


_PARSED: dict[str, r.Node] = {}


def parsed(segment: Segment | r.Node | dict[str, Any]) -> r.Node:
    """The rule tree of a segment (or of a rule given as data), cached by rule text."""
    if not isinstance(segment, Segment | dict):
        return segment
    rule = segment.rule if isinstance(segment, Segment) else segment
    text = json.dumps(rule, sort_keys=True, default=str)
    node = _PARSED.get(text)
    if node is None:
        if len(_PARSED) > 1000:
            _PARSED.clear()
        node = _PARSED[text] = validate_rule(rule=rule)
    return node


def _resolve(session: Session, segment: Segment | str) -> Segment:
    return get(session=session, key=segment) if isinstance(segment, str) else segment


# --- batch (SQL) -------------------------------------------------------------------------------------------

def members_query(*, segment: Segment | str | r.Node | dict[str, Any], now: dt.datetime,
                  session: Session | None = None) -> Select:
    """SELECT customers.id of the members at time now, in id order (a segment key needs the session)."""
    if isinstance(segment, str):
        if session is None:
            raise TypeError("members_query: a segment given by key needs session=")
        segment = get(session=session, key=segment)
    return sql.members_query(parsed(segment), now=now)


def count(*, session: Session, segment: Segment | str, now: dt.datetime) -> int:
    """How many customers match the segment's rule at time now."""
    return int(session.scalar(sql.count_query(parsed(_resolve(session, segment)), now=now)) or 0)


def members(*, session: Session, segment: Segment | str, now: dt.datetime, limit: int | None = None,
            after_id: int | None = None) -> list[int]:
    """Customer ids matching the segment's rule at time now, ascending; page with after_id."""
    q = members_query(segment=_resolve(session, segment), now=now)
    if after_id is not None:
        q = q.where(Customer.id > after_id)
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))


# --- real time (predicate) ---------------------------------------------------------------------------------

def matching(*, session: Session, rule: Segment | r.Node | dict[str, Any], customer_ids: Iterable[int],
             now: dt.datetime) -> set[int]:
    """Which of the given customers match a rule now, evaluated in memory from their facts."""
    node = parsed(rule)
    facts = predicate.load_facts(session=session, customer_ids=customer_ids, needs=predicate.Needs.of([node]))
    return {cid for cid, f in facts.items() if predicate.evaluate(node, f, now=now)}


def matches(*, session: Session, segment: Segment | str | dict[str, Any], customer_id: int, now: dt.datetime) -> bool:
    """Whether one customer matches a segment (or a rule) now, in real time."""
    seg = _resolve(session, segment) if isinstance(segment, str) else segment
    return customer_id in matching(session=session, rule=seg, customer_ids=[customer_id], now=now)


def is_member(*, session: Session, segment: Segment | str, customer_id: int, now: dt.datetime | None = None) -> bool:
    """In the segment: evaluated in real time at `now` if given, else as stored by the last refresh."""
    seg = _resolve(session, segment)
    if now is not None:
        return matches(session=session, segment=seg, customer_id=customer_id, now=now)
    return bool(session.scalar(select(SegmentMembership.member).where(
        SegmentMembership.segment_id == seg.id, SegmentMembership.customer_id == customer_id)))


def segments_of(*, session: Session, customer_id: int) -> list[tuple[str, dt.datetime | None]]:
    """The segments a customer is in (stored membership) with the time they entered."""
    rows = session.execute(select(Segment.key, SegmentMembership.since)
                           .join(SegmentMembership, SegmentMembership.segment_id == Segment.id)
                           .where(SegmentMembership.customer_id == customer_id, SegmentMembership.member.is_(True))
                           .order_by(Segment.key))
    return [(k, s) for k, s in rows]


def refresh_membership(*, session: Session, customer_ids: Iterable[int], now: dt.datetime) -> list[Transition]:
    """Re-evaluate the given customers for every active segment; store and record each enter and exit."""
    ids = sorted(set(customer_ids))
    segments = list_segments(session=session, active_only=True)
    if not ids or not segments:
        return []
    nodes = {s.id: parsed(s) for s in segments}
    needs = predicate.Needs.of(nodes.values())
    out: list[Transition] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        facts = predicate.load_facts(session=session, customer_ids=chunk, needs=needs)
        stored: dict[int, set[int]] = {s.id: set() for s in segments}
        for seg_id, cid in session.execute(select(SegmentMembership.segment_id, SegmentMembership.customer_id).where(
                SegmentMembership.customer_id.in_(chunk), SegmentMembership.member.is_(True))):
            stored.setdefault(seg_id, set()).add(cid)
        for segment in segments:
            now_in = {cid for cid, f in facts.items() if predicate.evaluate(nodes[segment.id], f, now=now)}
            was_in = stored[segment.id]
            if now_in != was_in:
                out.extend(_transition(session, segment, sorted(now_in - was_in), sorted(was_in - now_in), now))
    return out


def refresh_all(*, session: Session, now: dt.datetime, segments: Sequence[str] | None = None) -> list[Transition]:
    """Batch: compare every active segment's members (SQL) with the stored ones; record the differences."""
    out: list[Transition] = []
    for segment in list_segments(session=session, active_only=True):
        if segments is not None and segment.key not in segments:
            continue
        current = set(session.scalars(members_query(segment=segment, now=now)))
        stored = set(session.scalars(select(SegmentMembership.customer_id).where(
            SegmentMembership.segment_id == segment.id, SegmentMembership.member.is_(True))))
        out.extend(_transition(session, segment, sorted(current - stored), sorted(stored - current), now))
    return out


def _transition(session: Session, segment: Segment, entering: list[int], leaving: list[int],
                now: dt.datetime) -> list[Transition]:
    """Store the changed memberships and insert their events (a message id seen before is skipped)."""
    # A chunk is a handful of statements whatever its size: look-ups and inserts as plain SQL on the driver,
    # one UPDATE per kind. Per-row statements made a first refresh on PostgreSQL take minutes.
    out: list[Transition] = []
    table = SegmentMembership.__table__
    for kind, ids in (("enter", entering), ("exit", leaving)):
        for start in range(0, len(ids), _WRITE_CHUNK):
            chunk = ids[start:start + _WRITE_CHUNK]
            rows = {cid: (pk, entries) for pk, cid, entries in rows_among(
                session, table, ("id", "customer_id", "entries"), "customer_id", chunk,
                where="segment_id = {p}", params=(segment.id,))}
            user_ids = dict(rows_among(session, Customer, ("id", "external_id"), "id", chunk))
            inserts: list[int] = []
            updates: list[int] = []
            for cid in chunk:
                pk, entries = rows.get(cid, (None, 0))
                n = entries + 1 if kind == "enter" else max(entries, 1)
                if pk is None:
                    if kind == "enter":
                        inserts.append(cid)
                else:
                    updates.append(pk)
                out.append(Transition(segment.key, segment.id, cid, kind, now, f"seg:{segment.id}:{cid}:{kind}:{n}"))
            if updates:
                values = (dict(member=True, since=now, left_at=None, entries=table.c.entries + 1) if kind == "enter"
                          else dict(member=False, left_at=now))
                session.execute(update(table).where(table.c.id.in_(updates)).values(**values))
            if inserts:
                insert_columns(session, table, {"segment_id": [segment.id] * len(inserts), "customer_id": inserts,
                                                "member": [True] * len(inserts), "since": [now] * len(inserts),
                                                "left_at": [None] * len(inserts), "entries": [1] * len(inserts)})
            _record(session, out[-len(chunk):], user_ids)
    return out


def _record(session: Session, transitions: list[Transition], user_ids: dict[int, str | None]) -> None:
    """The transitions as Segment Entered / Segment Exited events; a message id recorded before is left alone."""
    if not transitions:
        return
    n = len(transitions)
    props = {t.segment: json.dumps({"segment": t.segment}) for t in transitions}
    insert_columns(session, Event, {
        "message_id": [t.message_id for t in transitions], "type": ["track"] * n,
        "name": [t.event_name for t in transitions], "customer_id": [t.customer_id for t in transitions],
        "user_id": [user_ids.get(t.customer_id) for t in transitions], "anonymous_id": [None] * n,
        "properties": [props[t.segment] for t in transitions], "context": [_CONTEXT] * n,
        "timestamp": [t.at for t in transitions], "received_at": [t.at for t in transitions]},
        on_conflict=["message_id"], encoded=("properties", "context"))


_CONTEXT = json.dumps({"library": {"name": "emma.segments"}})


def member_count(*, session: Session, segment: Segment | str) -> int:
    """How many customers the stored membership holds (as of the last refresh)."""
    seg = _resolve(session, segment)
    return int(session.scalar(select(func.count()).select_from(SegmentMembership).where(
        SegmentMembership.segment_id == seg.id, SegmentMembership.member.is_(True))) or 0)
