"""The engine's step function: enter a customer into a tactic, advance a run node by node, react to events.

Every function works inside the caller's transaction: a run's steps, its journal entries and the messages it
puts into the outbox commit together or not at all, and every action carries an idempotency key derived
from the run and the node, so a worker killed at any point and restarted produces each message once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, inspect, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from emma.automation import nodes
from emma.automation import schemas as S
from emma.automation.context import plain
from emma.automation.models import LIVE, Run, RunStep, SalesTask
from emma.channels import service as channels
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.consent import service as consent
from emma.consent.models import Consent
from emma.db import allocate_ids, among, insert_rows, update_rows
from emma.ingest.models import Event
from emma.orders.models import Cart, CartItem, Order
from emma.predict.models import Prediction
from emma.profiles.models import Customer, MergeLog, TraitChange

MAX_STEPS_PER_ADVANCE = 50
CAP_EXEMPT_STATUSES = ("suppressed", "failed", "bounced", "held")


# Small helpers

def _hash_unit(text: str) -> float:
    """A stable number in [0, 1) from text (the same customer lands in the same group on every machine)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def in_holdout(*, tactic_id: str, customer_id: int, share: float, salt: str = "") -> bool:
    """Whether the customer belongs to the tactic's control group (deterministic per customer and tactic)."""
    return share > 0 and _hash_unit(f"holdout:{tactic_id}:{salt}:{customer_id}") < share


def timezone_of(customer: Customer | None, settings: Settings) -> zoneinfo.ZoneInfo:
    """The customer's time zone, else the configured default."""
    for name in ((customer.timezone if customer else None), settings.default_timezone, "UTC"):
        if not name:
            continue
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            continue
    return zoneinfo.ZoneInfo("UTC")


def next_local_time(now: dt.datetime, at: dt.time, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    """The next moment (now or later) when the wall clock in tz shows at."""
    local = now.astimezone(tz)
    cand = dt.datetime.combine(local.date(), at, tzinfo=tz)
    if cand.astimezone(dt.UTC) < now:
        cand = dt.datetime.combine(local.date() + dt.timedelta(days=1), at, tzinfo=tz)
    return cand.astimezone(dt.UTC)


def quiet_hours(settings: Settings) -> tuple[dt.time, dt.time] | None:
    """(start, end) of the quiet hours, or None when switched off."""
    spec = (settings.quiet_hours or "").strip()
    if not spec:
        return None
    start, _, end = spec.partition("-")
    return S.parse_clock(start.strip()), S.parse_clock(end.strip())


def after_quiet_hours(when: dt.datetime, tz: zoneinfo.ZoneInfo, settings: Settings) -> dt.datetime:
    """when, or the end of the quiet hours in the customer's time zone if when falls inside them."""
    q = quiet_hours(settings)
    if q is None:
        return when
    start, end = q
    t = when.astimezone(tz).time()
    inside = (start <= t or t < end) if start > end else (start <= t < end)
    return next_local_time(when, end, tz) if inside else when


def _path(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
        return False
    return str(a) == str(b)


def compare(op: str, actual: Any, expected: Any) -> bool:
    """Apply a condition operator; a missing value passes only 'missing' and 'ne'."""
    if op == "exists":
        return actual is not None
    if op == "missing":
        return actual is None
    if op == "eq":
        return _same(actual, expected)
    if op == "ne":
        return not _same(actual, expected)
    if op == "in":
        return any(_same(actual, e) for e in expected)
    if op == "not_in":
        return not any(_same(actual, e) for e in expected)
    if actual is None:
        return False
    if op == "contains":
        return expected in actual if isinstance(actual, list | str | dict) else False
    try:
        a, e = float(actual), float(expected)
    except (TypeError, ValueError):
        a, e = str(actual), str(expected)  # ISO dates compare as text
    return {"gt": a > e, "gte": a >= e, "lt": a < e, "lte": a <= e}[op]


def substitute(value: Any, run: Run | None) -> Any:
    """'$key' -> the run's key; '$entry.<prop>' -> the entry event's property."""
    if not isinstance(value, str) or run is None or not value.startswith("$"):
        return value
    if value == "$key":
        return run.key
    if value.startswith("$entry."):
        return _path((run.state or {}).get("entry", {}), value[len("$entry."):])
    return value


def resolve_where(where: dict[str, Any], run: Run | None) -> dict[str, Any]:
    """A filter with its references ($key, $entry.<prop>) filled in, also inside {op: value}."""
    out: dict[str, Any] = {}
    for name, want in where.items():
        if isinstance(want, dict):
            out[name] = {op: substitute(v, run) for op, v in want.items()}
        else:
            out[name] = substitute(want, run)
    return out


def props_match(props: dict[str, Any], where: dict[str, Any], run: Run | None = None) -> bool:
    """Event properties against a filter: {prop: value} or {prop: {op: value}} (all must hold)."""
    for name, want in where.items():
        actual = _path(props, name)
        if isinstance(want, dict) and len(want) == 1 and next(iter(want)) in S.OPS:
            op, val = next(iter(want.items()))
            if not compare(op, actual, substitute(val, run)):
                return False
        elif not _same(actual, substitute(want, run)):
            return False
    return True


# What one run knows while it steps: lazily loaded inputs, the journal.

@dataclass
class Step:
    """The outcome of one node: go to next, stop (waiting), or end the run with a status."""

    next: str | None = None
    stop: bool = False
    end: str | None = None
    reason: str = ""


class Ctx:
    def __init__(self, *, session: Session, run: Run, tactic: S.Tactic, settings: Settings, now: dt.datetime,
                 priorities: dict[str, int], batch: Batch | None = None) -> None:
        self.session, self.run, self.tactic, self.settings, self.now = session, run, tactic, settings, now
        self.priorities = priorities
        self.batch = batch
        self._cache: dict[str, Any] = {}

    def journal(self, node_id: str | None, kind: str, outcome: str, reason: str,
                inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        return journal(session=self.session, run=self.run, node_id=node_id, kind=kind, outcome=outcome,
                       reason=reason, inputs=inputs, at=self.now)

    @property
    def customer(self) -> Customer | None:
        if "customer" not in self._cache:
            self._cache["customer"] = (self.batch.customer(self.run.customer_id) if self.batch is not None
                                       else self.session.get(Customer, self.run.customer_id))
        return self._cache["customer"]

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return timezone_of(self.customer, self.settings)

    def prediction(self) -> Prediction | None:
        if "prediction" not in self._cache:
            self._cache["prediction"] = (self.batch.prediction(self.run.customer_id) if self.batch is not None
                                         else self.session.get(Prediction, self.run.customer_id))
        return self._cache["prediction"]

    def cart(self) -> dict[str, Any] | None:
        if "cart" not in self._cache:
            stmt = select(Cart).where(Cart.customer_id == self.run.customer_id)
            stmt = (stmt.where(Cart.cart_id == self.run.key) if self.run.key else
                    stmt.where(Cart.status != "ordered").order_by(Cart.updated_at.desc()).limit(1))
            cart = self.session.scalar(stmt)
            data = None
            if cart is not None:
                items = list(self.session.scalars(select(CartItem).where(CartItem.cart_pk == cart.id)))
                total = sum(float(i.price or 0) * i.quantity for i in items)
                idle = (self.now - cart.updated_at).total_seconds() / 60
                data = {"cart_id": cart.cart_id, "status": cart.status, "total": round(total, 2),
                        "item_count": sum(i.quantity for i in items), "skus": [i.sku for i in items],
                        "idle_minutes": round(idle, 1)}
            self._cache["cart"] = data
        return self._cache["cart"]

    def orders(self) -> dict[str, Any]:
        if "orders" not in self._cache:
            n, revenue, last = self.session.execute(
                select(func.count(Order.id), func.coalesce(func.sum(Order.revenue), 0), func.max(Order.ordered_at))
                .where(Order.customer_id == self.run.customer_id)).one()
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=dt.UTC)
            self._cache["orders"] = {"count": n, "revenue": float(revenue or 0),
                                     "days_since_last": (self.now - last).days if last else None}
        return self._cache["orders"]

    def matching_events(self, names: list[str], match: dict[str, Any], after_id: int,
                        since: dt.datetime | None) -> Event | None:
        """The first of the customer's events (any merged profile) named names that matches, after after_id."""
        cid = self.run.customer_id
        if self.batch is not None:
            return self.batch.matching_events(cid, names, match, after_id, since)
        return _matching_events(self.session, profile_ids(self.session, cid), names, match, after_id, since)

    def value(self, field: str) -> Any:
        """The current value of a condition field (customer.*, prediction.*, cart.*, consent.*, ...)."""
        root, _, rest = field.partition(".")
        if root == "customer":
            c = self.customer
            if c is None:
                return None
            if rest.startswith("attributes."):
                return _path(c.attributes or {}, rest[len("attributes."):])
            if rest in Customer.__table__.columns:
                return plain(getattr(c, rest))
            return _path(c.attributes or {}, rest)
        if root == "prediction":
            p = self.prediction()
            return plain(getattr(p, rest, None)) if p is not None and rest in Prediction.__table__.columns else None
        if root == "cart":
            return _path(self.cart() or {}, rest)
        if root == "consent":
            if "." in rest:
                return nodes.consent_fact(self, *rest.split(".", 1))
            if self.batch is not None:
                return self.batch.consents(self.run.customer_id).get(rest)
            return self.session.scalar(select(Consent.status).where(Consent.customer_id == self.run.customer_id,
                                                                    Consent.purpose == rest))
        if root == "event":
            return _path((self.run.state or {}).get("entry", {}), rest)
        if root == "run":
            if rest in ("key", "holdout", "tactic_id"):
                return getattr(self.run, rest)
            return _path(self.run.state or {}, rest)
        if root == "orders":
            return self.orders().get(rest)
        if root == "segment":
            if self.batch is not None:
                self.session.flush()  # the real-time predicate reads the database: let it see this batch's changes
            return segment_member(session=self.session, segment=rest, customer_id=self.run.customer_id,
                                  now=self.now)
        if root in ("order", "store"):
            found = _path(self.context(root), rest)
            if found is None and root == "order":  # the run-out date, consumables: facts of the order's products
                found = nodes.order_facts(self).get(rest)
            return found
        return nodes.field_value(self, root, rest)

    def context(self, name: str) -> dict[str, Any] | None:
        """The keyed order ('order') or the nearby store ('store') as condition and template data."""
        if name not in self._cache:
            from emma.automation import context

            fn = context.order_data if name == "order" else context.store_data
            self._cache[name] = fn(session=self.session, run=self.run, customer=self.customer,
                                   settings=self.settings, now=self.now)
        return self._cache[name]

    def evaluate(self, cond: S.Condition, used: dict[str, Any]) -> bool:
        """Evaluate a condition tree, noting each field's value in used (for the journal)."""
        if cond.all is not None:
            return all(self.evaluate(c, used) for c in cond.all)
        if cond.any is not None:
            return any(self.evaluate(c, used) for c in cond.any)
        if cond.not_ is not None:
            return not self.evaluate(cond.not_, used)
        assert cond.field is not None
        actual = nodes.count_events(self, cond) if cond.field.startswith("events.") else self.value(cond.field)
        used[cond.field] = actual
        return compare(cond.op, actual, substitute(cond.value, self.run))


_CHUNK = 5000


def _chunks(values: list[Any], n: int = _CHUNK) -> Iterable[list[Any]]:
    for i in range(0, len(values), n):
        yield values[i:i + n]


@dataclass
class CapRow:
    """A marketing message that counts against its customer's frequency caps (id None until written)."""

    id: int | None
    due_at: dt.datetime
    tactic_id: str | None
    status: str
    run_id: int | None


class Batch:
    """The inputs of a batch of due runs, read for all their customers with a few queries (profiles, consent,
    predictions, merged profiles, messages that count against frequency caps, awaited events), and their
    outbox messages and trait history, written with a few statements when the batch is done.

    A customer outside the batch (a run that followed a profile merge) is loaded on its own when asked for.
    """

    def __init__(self, *, session: Session, runs: list[Run], settings: Settings, now: dt.datetime,
                 tactics: Iterable[S.Tactic]) -> None:
        self.session, self.settings, self.now = session, settings, now
        self.runs = runs
        self.cids = sorted({r.customer_id for r in runs})
        self._customers: dict[int, Customer] = {}
        for part in _chunks(self.cids):
            for c in session.scalars(select(Customer).where(among(session, Customer.id, part))):
                self._customers[c.id] = c
        self._tables: dict[str, dict[int, Any]] = {}
        self._loaded: dict[str, set[int]] = {}
        self._traits = sorted({n.attribute for t in tactics for n in t.nodes
                               if isinstance(n, S.AddPointsNode | S.UpdateAttributeNode)})
        # Events a run may still await or count as its goal: after its entry or after the last event it saw.
        self._since = min((r.entered_at for r in runs), default=now)
        afters = [int((r.state or {}).get(k) or 0) for r in runs for k in ("last_event_id", "entry_event_id")]
        self._after = min((a for a in afters if a > 0), default=None)
        self.history: list[dict[str, Any]] = []
        self._outbox: list[dict[str, Any]] = []
        self._pending_caps: dict[str, list[tuple[int, CapRow]]] = {}
        self._patch: list[tuple[str, dict[str, Any] | None, CapRow | None]] = []

    def _lookup(self, name: str, cid: int, load: Any, default: Any) -> Any:
        """The value of cid in the per-customer table name, loaded for the whole batch on first use."""
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = {}
            for part in _chunks(self.cids):
                table.update(load(part))
            self._loaded[name] = set(self.cids)
        if cid not in self._loaded[name]:
            table.update(load([cid]))
            self._loaded[name].add(cid)
        if cid not in table:
            table[cid] = default
        return table[cid]

    def customer(self, cid: int) -> Customer | None:
        """The customer (a profile row of this session)."""
        c = self._customers.get(cid)
        return c if c is not None else self.session.get(Customer, cid)

    def consents(self, cid: int) -> dict[str, str]:
        """purpose -> status of the customer's current consent."""
        def load(part: list[int]) -> dict[int, dict[str, str]]:
            out: dict[int, dict[str, str]] = {}
            for c, purpose, status in self.session.execute(
                    select(Consent.customer_id, Consent.purpose, Consent.status)
                    .where(among(self.session, Consent.customer_id, part))):
                out.setdefault(c, {})[purpose] = status
            return out
        return self._lookup("consents", cid, load, {})

    def prediction(self, cid: int) -> Prediction | None:
        """The customer's stored predictions."""
        def load(part: list[int]) -> dict[int, Prediction]:
            return {p.customer_id: p for p in self.session.scalars(
                select(Prediction).where(among(self.session, Prediction.customer_id, part)))}
        return self._lookup("predictions", cid, load, None)

    def profile_ids(self, cid: int) -> list[int]:
        """As profile_ids()."""
        def load(part: list[int]) -> dict[int, list[int]]:
            out: dict[int, list[int]] = {}
            for src, tgt in self.session.execute(
                    select(MergeLog.source_customer_id, MergeLog.target_customer_id)
                    .where(among(self.session, MergeLog.target_customer_id, part), MergeLog.reverted_at.is_(None))):
                out.setdefault(tgt, []).append(src)
            return out
        return [cid, *self._lookup("merged", cid, load, [])]

    def matching_events(self, cid: int, names: list[str], match: dict[str, Any], after_id: int,
                        since: dt.datetime | None) -> Event | None:
        """As _matching_events() over the customer's profiles, from the events loaded for the batch."""
        wanted = set(names)

        def load(part: list[int]) -> dict[int, list[Event]]:
            pids = sorted({p for c in part for p in self.profile_ids(c)})
            owner = {p: c for c in part for p in self.profile_ids(c)}
            by_name = Event.name.in_(sorted(wanted))
            if "identify" in wanted:
                by_name = or_(by_name, Event.type == "identify")
            recent = Event.timestamp >= self._since
            if self._after is not None:
                recent = or_(recent, Event.id > self._after)
            out: dict[int, list[Event]] = {}
            for p in _chunks(pids):
                for ev in self.session.scalars(select(Event).where(among(self.session, Event.customer_id, p),
                                                                   by_name, recent)):
                    out.setdefault(owner[ev.customer_id], []).append(ev)
            for evs in out.values():
                evs.sort(key=lambda e: e.id)
            return out
        for ev in self._lookup("events:" + "\x1f".join(sorted(wanted)), cid, load, []):
            if ev.id <= after_id or (since is not None and not after_id and ev.timestamp < since):
                continue
            if (ev.name in wanted or ("identify" in wanted and ev.type == "identify")) \
                    and props_match(ev.properties or {}, match):
                return ev
        return None

    def latest_traits(self, cid: int, trait: str) -> dict[str, dt.datetime] | None:
        """trait -> time of its latest recorded change, for the traits the batch's tactics set (None: trait is
        not one of them)."""
        if trait not in self._traits:
            return None
        def load(part: list[int]) -> dict[int, dict[str, dt.datetime]]:
            out: dict[int, dict[str, dt.datetime]] = {}
            for c, name, ts in self.session.execute(
                    select(TraitChange.customer_id, TraitChange.trait, func.max(TraitChange.recorded_at))
                    .where(among(self.session, TraitChange.customer_id, part), TraitChange.trait.in_(self._traits))
                    .group_by(TraitChange.customer_id, TraitChange.trait)):
                if ts is not None:
                    ts = dt.datetime.fromisoformat(ts) if isinstance(ts, str) else ts
                    out.setdefault(c, {})[name] = ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)
            return out
        return self._lookup("traits", cid, load, {})

    def capped(self, cid: int, channel: str, widest: dt.timedelta) -> list[CapRow]:
        """The customer's marketing messages on channel that count against its caps (this batch's included)."""
        def load(part: list[int]) -> dict[int, list[CapRow]]:
            out: dict[int, list[CapRow]] = {}
            for r in self.session.execute(
                    select(OutboxMessage.id, OutboxMessage.due_at, OutboxMessage.tactic_id, OutboxMessage.status,
                           OutboxMessage.run_id, OutboxMessage.customer_id)
                    .where(among(self.session, OutboxMessage.customer_id, part), OutboxMessage.channel == channel,
                           OutboxMessage.transactional.is_(False),
                           OutboxMessage.status.not_in(CAP_EXEMPT_STATUSES),
                           OutboxMessage.due_at > self.now - widest)):
                out.setdefault(r.customer_id, []).append(CapRow(r.id, r.due_at, r.tactic_id, r.status, r.run_id))
            wanted = set(part)
            for c, cap in self._pending_caps.get(channel, []):  # queued in this batch, not written yet
                if c in wanted and cap.id is None:
                    out.setdefault(c, []).append(cap)
            return out
        return self._lookup(f"caps:{channel}", cid, load, [])

    def enqueue(self, row: dict[str, Any], entry: dict[str, Any] | None) -> None:
        """Queue an outbox message (written with the batch); the journal entry gets its id then."""
        cap = None
        if not row.get("transactional") and row.get("customer_id") is not None:
            cap = CapRow(None, row["due_at"], row.get("tactic_id"), "queued", row.get("run_id"))
            self._pending_caps.setdefault(row["channel"], []).append((row["customer_id"], cap))
            table = self._tables.get(f"caps:{row['channel']}")
            if table is not None and row["customer_id"] in self._loaded[f"caps:{row['channel']}"]:
                table.setdefault(row["customer_id"], []).append(cap)
        self._outbox.append(row)
        self._patch.append((row["idempotency_key"], entry, cap))

    def write_outbox(self) -> None:
        """Insert the queued messages (a message whose key exists already is not queued twice)."""
        if not self._outbox:
            return
        ids: dict[str, int] = {}
        channels.enqueue_many(session=self.session, messages=self._outbox, ids=ids, now=self.now)
        for key, entry, cap in self._patch:
            if entry is not None:
                entry["inputs"]["message_id"] = ids.get(key)
            if cap is not None:
                cap.id = ids.get(key)
        self._outbox, self._patch, self._pending_caps = [], [], {}

    def flush(self) -> None:
        """Write what the batch did: new runs, run changes, outbox messages, trait history (the journal
        follows)."""
        insert_new_runs(self.session)
        write_runs(self.session, self.runs)
        self.session.flush()
        self.write_outbox()
        if self.history:
            insert_rows(self.session, TraitChange, self.history)
            self.history = []


def segment_member(*, session: Session, segment: str, customer_id: int, now: dt.datetime) -> bool | None:
    """Whether the customer is in the segment now, by its real-time predicate (None: no such segment)."""
    from emma.segments import service as segments
    from emma.segments.exceptions import SegmentNotFound

    try:
        return segments.matches(session=session, segment=segment, customer_id=customer_id, now=now)
    except SegmentNotFound:
        return None


def _describe(cond: S.Condition) -> str:
    if cond.all is not None:
        return " and ".join(f"({_describe(c)})" for c in cond.all)
    if cond.any is not None:
        return " or ".join(f"({_describe(c)})" for c in cond.any)
    if cond.not_ is not None:
        return f"not ({_describe(cond.not_)})"
    sym = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}.get(cond.op, cond.op)
    return f"{cond.field} {sym} {cond.value!r}" if cond.op not in ("exists", "missing") else f"{cond.field} {sym}"


# The journal and run life cycle

_JOURNAL = "emma.automation.journal"


def journal(*, session: Session, run: Run | NewRun, node_id: str | None, kind: str, outcome: str, reason: str,
            inputs: dict[str, Any] | None = None, at: dt.datetime) -> dict[str, Any]:
    """Record one step of a run with its reason and inputs (written in bulk before the transaction commits);
    returns the entry, whose inputs may still be completed (an outbox id known only once the batch is written)."""
    run.steps = (run.steps or 0) + 1
    row = {"run": run, "customer_id": run.customer_id, "tactic_id": run.tactic_id, "node_id": node_id,
           "kind": kind, "outcome": outcome, "reason": reason[:2000],
           "inputs": {k: plain(v) for k, v in (inputs or {}).items()}, "at": at}
    session.info.setdefault(_JOURNAL, []).append(row)
    return row


def flush_journal(session: Session, *, final: bool = False) -> None:
    """Insert the journal entries collected in this session (one statement instead of one per step). final:
    the transaction's work is done, so runs still deferred are inserted as they are now; otherwise they are
    handed to the ORM (changes after this point must still be written)."""
    if final:
        insert_new_runs(session)
    rows = session.info.pop(_JOURNAL, None)
    if not rows:
        return
    attach_new_runs(session)  # entries of deferred runs (a no-op when final)
    if any(r["run"].id is None for r in rows):
        session.flush()  # runs entered in this batch get their ids
    for r in rows:
        r["run_id"] = r.pop("run").id
    insert_rows(session, RunStep, rows)


# What a step may change in a run (the rest is fixed when it enters).
_RUN_CHANGES = ("customer_id", "active_key", "status", "node_id", "due_at", "wait", "state", "steps", "finished_at",
                "outcome")


def write_runs(session: Session, runs: list[Run]) -> None:
    """Write the changes of stepped runs with one UPDATE (the ORM's flush sends one per run), then take them out
    of the session, which has nothing left to write for them."""
    changed = [r for r in runs if (st := inspect(r)).persistent and st.modified]
    if len(changed) < 2:
        return
    update_rows(session, Run, [{"id": r.id, **{c: getattr(r, c) for c in _RUN_CHANGES}} for r in changed])
    for r in changed:
        session.expunge(r)


_NEW_RUNS = "emma.automation.new_runs"


def defer_runs(session: Session, runs: list[Run]) -> None:
    """Runs entered by this transaction and stepped in it, kept out of the ORM: they get ids now and are
    inserted once, in the state the step leaves them, with one statement (insert_new_runs), instead of an
    insert and an update per run."""
    if not runs:
        return
    for run, rid in zip(runs, allocate_ids(session, Run, len(runs)), strict=True):
        run.id = rid
    session.info.setdefault(_NEW_RUNS, {}).update((r.id, r) for r in runs)


def insert_new_runs(session: Session) -> None:
    """Insert the deferred runs as they are now (their work in this transaction is done)."""
    runs = session.info.pop(_NEW_RUNS, None)
    if runs:
        cols = [c.key for c in Run.__table__.columns]
        insert_rows(session, Run, [{c: getattr(r, c) for c in cols} for r in runs.values()])


def attach_new_runs(session: Session) -> None:
    """Hand the deferred runs to the ORM and write them now (a path that needs them in the database before the
    batch is done); later changes are flushed as updates."""
    runs = session.info.pop(_NEW_RUNS, None)
    if runs:
        session.add_all(list(runs.values()))
        session.flush()


def run_by_id(session: Session, run_id: int) -> Run | None:
    """A run by id, deferred ones included."""
    deferred = session.info.get(_NEW_RUNS)
    if deferred and run_id in deferred:
        return deferred[run_id]
    return session.get(Run, run_id)


@sa_event.listens_for(Session, "before_commit")
def _journal_before_commit(session: Session) -> None:
    if not session.in_nested_transaction():  # a savepoint that fails must not take earlier entries with it
        flush_journal(session, final=True)


@sa_event.listens_for(Session, "after_rollback")
def _forget_deferred(session: Session) -> None:
    session.info.pop(_NEW_RUNS, None)


def finish(*, session: Session, run: Run, status: str, reason: str, now: dt.datetime,
           node_id: str | None = None, inputs: dict[str, Any] | None = None) -> None:
    """End a run: it leaves the live slot, so the customer may enter again as the re-entry policy allows."""
    run.status, run.active_key, run.due_at, run.wait = status, None, None, None
    run.finished_at, run.outcome = now, reason
    if status == "converted" and (run.state or {}).get("bandits"):
        nodes.bandit_converted(session=session, run=run, now=now)
    journal(session=session, run=run, node_id=node_id, kind="run", outcome=status, reason=reason, inputs=inputs,
            at=now)


def _set_state(run: Run, **values: Any) -> None:
    run.state = {**(run.state or {}), **values}  # reassigned: JSON columns do not track in-place changes


class Entries:
    """What enter() checks, read for many customers and tactics with a few queries: live runs, each customer's
    latest entry (re-entry policy), trigger occurrences already recorded, entries in the last day.

    With it, enter() adds runs without a savepoint each; they are inserted together when the session flushes.
    The caller makes sure no other transaction enters the same tactics concurrently (the event cursor's lock,
    the trigger scan's cursor row); if one does anyway, the unique constraints fail the whole transaction.
    """

    def __init__(self, *, session: Session, tactic_ids: Iterable[str], customer_ids: Iterable[int],
                 dedupes: Iterable[str] = (), since: dt.datetime | None = None, rows: bool = False,
                 defer: bool = False, live: Iterable[Run] | None = None) -> None:
        # live: the live runs of these customers, read by the caller already (any tactic; filtered here).
        # rows: enter() starts NewRun rows, written by insert() (a trigger scan, which does not step them).
        self.new: list[NewRun] | None = [] if rows else None
        # defer: enter() starts Run objects outside the session, for the caller to defer_runs() and step.
        self.deferred: list[Run] | None = [] if defer else None
        tids = sorted(set(tactic_ids))
        cids = sorted(set(customer_ids))
        wanted = sorted({d[:255] for d in dedupes})
        self.live: dict[tuple[str, int, str], Run] = {}
        self.last: dict[tuple[str, int], dt.datetime] = {}
        self.seen: set[tuple[str, int, str]] = set()
        self.recent: dict[tuple[str, int], int] = {}
        if not tids or not cids:
            return
        if live is not None:
            wanted_t, wanted_c = set(tids), set(cids)
            for run in live:
                if run.active_key is not None and run.tactic_id in wanted_t and run.customer_id in wanted_c:
                    self.live[(run.tactic_id, run.customer_id, run.active_key)] = run
        tset = set(tids)
        for part in _chunks(cids):
            # By customer only, the tactics filtered here: with the tactic in the WHERE clause a generic plan made
            # while the table was new (PostgreSQL, prepared statements) walks every run of the tactic.
            mine = [among(session, Run.customer_id, part)]
            if live is None:
                for run in session.scalars(select(Run).where(*mine, Run.tactic_id.in_(tids),
                                                             Run.active_key.is_not(None))):
                    self.live[(run.tactic_id, run.customer_id, run.active_key or "")] = run
            for tid, cid, last in session.execute(select(Run.tactic_id, Run.customer_id, func.max(Run.entered_at))
                                                  .where(*mine).group_by(Run.tactic_id, Run.customer_id)):
                if tid in tset:
                    self.last[(tid, cid)] = last
            if wanted:
                self.seen.update((t, c, d) for t, c, d in session.execute(
                    select(Run.tactic_id, Run.customer_id, Run.dedupe)
                    .where(*mine, among(session, Run.dedupe, wanted))) if t in tset)
            if since is not None:
                for tid, cid, n in session.execute(select(Run.tactic_id, Run.customer_id, func.count(Run.id))
                                                   .where(*mine, Run.entered_at > since)
                                                   .group_by(Run.tactic_id, Run.customer_id)):
                    if tid in tset:
                        self.recent[(tid, cid)] = n

    def live_run(self, tactic_id: str, customer_id: int, key: str) -> Run | None:
        run = self.live.get((tactic_id, customer_id, key))
        return run if run is not None and run.active_key == key else None

    def insert(self, session: Session) -> None:
        """Write the NewRun rows entered since the last call, with ids from one query and one statement."""
        if not self.new:
            return
        for run, rid in zip(self.new, allocate_ids(session, Run, len(self.new)), strict=True):
            run.id = rid
        insert_rows(session, Run, [{k: getattr(r, k) for k in NewRun.__slots__} for r in self.new])
        self.new = []

    def add(self, run: Run | NewRun) -> None:
        self.live[(run.tactic_id, run.customer_id, run.key)] = run
        self.last[(run.tactic_id, run.customer_id)] = run.entered_at
        self.seen.add((run.tactic_id, run.customer_id, run.dedupe))
        self.recent[(run.tactic_id, run.customer_id)] = self.recent.get((run.tactic_id, run.customer_id), 0) + 1


@dataclass(slots=True)
class NewRun:
    """A run a trigger scan starts, as a row (an ORM object costs more to build and flush than its insert)."""

    tactic_id: str
    tactic_version: int
    customer_id: int
    key: str
    active_key: str | None
    dedupe: str
    status: str
    node_id: str | None
    due_at: dt.datetime | None
    state: dict[str, Any]
    holdout: bool
    steps: int
    entered_at: dt.datetime
    id: int | None = None
    wait: dict[str, Any] | None = None


def enter(*, session: Session, tactic: S.Tactic, customer_id: int, now: dt.datetime, dedupe: str, reason: str,
          key: str = "", entry: dict[str, Any] | None = None, event_id: int | None = None,
          event_name: str | None = None, inputs: dict[str, Any] | None = None,
          known: Entries | None = None) -> Run | NewRun | None:
    """Start a run unless one is live for (customer, tactic, key), the trigger occurrence was seen, or the
    re-entry policy forbids it; returns the new run (due now) or None. known: the checks' inputs read
    beforehand for many entries."""
    key = (key or "")[:255]
    if known is not None:
        live = known.live_run(tactic.id, customer_id, key)
    else:
        live = session.scalar(select(Run).where(Run.tactic_id == tactic.id, Run.customer_id == customer_id,
                                                Run.active_key == key))
    if live is not None:
        if isinstance(tactic.entry, S.EventEntry) and tactic.entry.extend_wait and live.wait \
                and live.wait.get("timeout_s") and live.status == "waiting":
            until = now + dt.timedelta(seconds=live.wait["timeout_s"])
            live.wait = {**live.wait, "until": until.isoformat()}
            live.due_at = until
            journal(session=session, run=live, node_id=live.node_id, kind="entry", outcome="extended",
                    reason=f"{reason}: again while waiting; timeout restarted, now {until:%Y-%m-%d %H:%M} UTC",
                    inputs=inputs, at=now)
        return None
    if known is not None and (tactic.id, customer_id, dedupe[:255]) in known.seen:
        return None  # this trigger occurrence started a run before
    policy = tactic.reentry.policy
    if policy != "always":
        last = (known.last.get((tactic.id, customer_id)) if known is not None else
                session.scalar(select(func.max(Run.entered_at)).where(Run.tactic_id == tactic.id,
                                                                       Run.customer_id == customer_id)))
        if last is not None:
            if policy == "once":
                return None
            cooldown = S.parse_duration(tactic.reentry.cooldown or "0s")
            if last > now - cooldown:
                return None
    if tactic.entry.when is not None and not _entry_holds(session, tactic, customer_id, key, entry, now):
        return None
    holdout = in_holdout(tactic_id=tactic.id, customer_id=customer_id, share=tactic.holdout)
    values = {"tactic_id": tactic.id, "tactic_version": tactic.version, "customer_id": customer_id, "key": key,
              "active_key": key, "dedupe": dedupe[:255], "status": "active", "node_id": tactic.start, "due_at": now,
              "state": {"entry": entry or {}, "entry_event": event_name, "entry_event_id": event_id,
                        "last_event_id": event_id or 0},
              "holdout": holdout, "steps": 0, "entered_at": now}
    run: Run | NewRun
    if known is not None and known.new is not None:
        run = NewRun(**values)
        known.new.append(run)
        known.add(run)
    elif known is not None:
        run = Run(**values)
        if known.deferred is not None:
            known.deferred.append(run)
        else:
            session.add(run)
        known.add(run)
    else:
        run = Run(**values)
        try:
            with session.begin_nested():
                session.add(run)
        except IntegrityError:  # a live run or the same occurrence was recorded concurrently
            return None
    note = f"entered {tactic.id}: {reason}" + ("; control group (holdout): no messages" if holdout else "")
    journal(session=session, run=run, node_id=None, kind="entry", outcome="entered", reason=note,
            inputs={**(inputs or {}), "holdout_share": tactic.holdout, "holdout": holdout}, at=now)
    return run


def _entry_holds(session: Session, tactic: S.Tactic, customer_id: int, key: str, entry: dict[str, Any] | None,
                 now: dt.datetime) -> bool:
    """The entry's when-condition for this customer and trigger, evaluated on a run that is not stored."""
    probe = Run(tactic_id=tactic.id, customer_id=customer_id, key=key, state={"entry": entry or {}}, holdout=False,
                entered_at=now)
    ctx = Ctx(session=session, run=probe, tactic=tactic, settings=Settings(), now=now, priorities={})
    assert tactic.entry.when is not None
    return ctx.evaluate(tactic.entry.when, {})


# Nodes

def _wait(node: S.WaitNode, ctx: Ctx) -> Step:
    run, now = ctx.run, ctx.now
    w = run.wait or {}
    if w.get("node") == node.id:
        until = dt.datetime.fromisoformat(w["until"])
        if now < until:
            run.due_at = until
            return Step(stop=True)
        run.wait = None
        ctx.journal(node.id, "wait", "resumed", f"waited until {until:%Y-%m-%d %H:%M} UTC")
        return Step(next=node.next)
    inputs: dict[str, Any] = {}
    if node.duration:
        until = now + S.parse_duration(node.duration)
        why = f"wait {node.duration}"
    elif node.until_local:
        until = next_local_time(now, S.parse_clock(node.until_local), ctx.tz)
        why = f"wait until {node.until_local} in {ctx.tz.key}"
    elif node.until_entry:
        raw = _path((run.state or {}).get("entry", {}), node.until_entry)
        at = _moment(raw, ctx.tz)
        if at is None:
            ctx.journal(node.id, "wait", "next", f"no date in the entry's {node.until_entry} ({raw!r}): no wait")
            return Step(next=node.next)
        until = at - S.parse_duration(node.before or "0s")
        why = f"wait until {node.before + ' before ' if node.before else ''}{node.until_entry} {raw}"
    elif node.until_date:
        until, why, inputs = nodes.date_target(node, ctx)
    else:
        p = ctx.prediction()
        hour = p.best_send_hour if p is not None and p.best_send_hour is not None else node.fallback_hour
        inputs["best_send_hour"] = p.best_send_hour if p is not None else None
        until = next_local_time(now, dt.time(int(hour) % 24, 0), ctx.tz)
        why = (f"wait until the best send hour {hour:02d}:00 in {ctx.tz.key}" if inputs["best_send_hour"] is not None
               else f"wait until {hour:02d}:00 in {ctx.tz.key} (no send-hour prediction)")
    if until <= now:
        ctx.journal(node.id, "wait", "next", f"{why}: already due")
        return Step(next=node.next)
    run.wait = {"node": node.id, "until": until.isoformat()}
    run.due_at, run.status = until, "active"
    ctx.journal(node.id, "wait", "waiting", f"{why}, until {until:%Y-%m-%d %H:%M} UTC", inputs)
    return Step(stop=True)


def _moment(value: Any, tz: zoneinfo.ZoneInfo) -> dt.datetime | None:
    """An ISO date-time (UTC when naive) or date (its start in tz) as a UTC moment; None when it is neither."""
    if isinstance(value, str) and len(value) == 10:
        try:
            return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), tzinfo=tz).astimezone(dt.UTC)
        except ValueError:
            return None
    try:
        moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _matching_events(session: Session, customer_ids: list[int], names: list[str], match: dict[str, Any],
                     after_id: int, since: dt.datetime | None) -> Event | None:
    by_name = Event.name.in_(names)
    if "identify" in names:
        by_name = or_(by_name, Event.type == "identify")
    stmt = select(Event).where(Event.customer_id.in_(customer_ids), by_name, Event.id > after_id)
    if since is not None and not after_id:
        stmt = stmt.where(Event.timestamp >= since)
    for ev in session.scalars(stmt.order_by(Event.id)):
        if props_match(ev.properties or {}, match):
            return ev
    return None


def profile_ids(session: Session, customer_id: int) -> list[int]:
    """The customer and the anonymous profiles merged into it (their early events count as the customer's)."""
    merged = session.scalars(select(MergeLog.source_customer_id).where(MergeLog.target_customer_id == customer_id,
                                                                        MergeLog.reverted_at.is_(None)))
    return [customer_id, *merged]


def _wait_for_event(node: S.WaitForEventNode, ctx: Ctx) -> Step:
    run, now = ctx.run, ctx.now
    w = run.wait or {}
    what = " / ".join(node.events)
    if w.get("node") == node.id:
        if w.get("matched"):
            m = w["matched"]
            run.wait = None
            _set_state(run, last_event_id=max(int(m.get("id") or 0), int((run.state or {}).get("last_event_id") or 0)))
            ctx.journal(node.id, "wait_for_event", "event", f"{m['event']} arrived {_keyed(w['match'])}",
                        {"event": m["event"], "event_id": m.get("id")})
            return Step(next=node.on_event)
        until = dt.datetime.fromisoformat(w["until"])
        if now < until:
            run.due_at, run.status = until, "waiting"
            return Step(stop=True)
        run.wait = None
        ctx.journal(node.id, "wait_for_event", "timeout",
                    f"no {what} {_keyed(w['match'])} within {node.timeout}", {"timeout": node.timeout})
        return Step(next=node.on_timeout)
    match = resolve_where(node.match, run)
    # The awaited event may have landed before the run reached this node (same batch, or a slow step).
    after = int((run.state or {}).get("last_event_id") or 0)
    found = ctx.matching_events(node.events, match, after, run.entered_at)
    if found is not None:
        _set_state(run, last_event_id=found.id)
        ctx.journal(node.id, "wait_for_event", "event", f"{found.name} already arrived {_keyed(match)}",
                    {"event": found.name, "event_id": found.id})
        return Step(next=node.on_event)
    timeout = S.parse_duration(node.timeout)
    until = now + timeout
    run.wait = {"node": node.id, "until": until.isoformat(), "events": node.events, "match": match,
                "timeout_s": timeout.total_seconds(), "after": after}
    run.due_at, run.status = until, "waiting"
    ctx.journal(node.id, "wait_for_event", "waiting", f"wait up to {node.timeout} for {what} {_keyed(match)}",
                {"events": node.events, "match": match, "until": until})
    return Step(stop=True)


def _keyed(match: dict[str, Any]) -> str:
    return ("with " + ", ".join(f"{k} {v}" for k, v in match.items())) if match else "from the customer"


def _branch(node: S.BranchNode, ctx: Ctx) -> Step:
    for i, case in enumerate(node.cases):
        used: dict[str, Any] = {}
        if ctx.evaluate(case.when, used):
            shown = ", ".join(f"{k} = {v!r}" for k, v in used.items())
            ctx.journal(node.id, "branch", "case", f"branch: {_describe(case.when)} holds ({shown}) -> {case.next}",
                        {**used, "case": i})
            return Step(next=case.next)
    ctx.journal(node.id, "branch", "default", f"branch: no case holds -> {node.default}")
    return Step(next=node.default)


def _condition(node: S.ConditionNode, ctx: Ctx) -> Step:
    used: dict[str, Any] = {}
    ok = ctx.evaluate(node.when, used)
    target = node.then if ok else node.else_
    shown = ", ".join(f"{k} = {v!r}" for k, v in used.items())
    ctx.journal(node.id, "condition", "then" if ok else "else",
                f"condition: {_describe(node.when)} is {'true' if ok else 'false'} ({shown}) -> {target}", used)
    return Step(next=target)


def _split(node: S.SplitNode, ctx: Ctx) -> Step:
    total = sum(b.weight for b in node.branches)
    u = _hash_unit(f"split:{ctx.run.id}:{node.id}") * total
    acc = 0.0
    chosen = node.branches[-1]
    for b in node.branches:
        acc += b.weight
        if u < acc:
            chosen = b
            break
    _set_state(ctx.run, splits={**(ctx.run.state or {}).get("splits", {}), node.id: chosen.name})
    ctx.journal(node.id, "split", chosen.name, f"random split: variant {chosen.name} "
                f"(weight {chosen.weight:g} of {total:g}) -> {chosen.next}", {"variant": chosen.name})
    return Step(next=chosen.next)


def _holdout(node: S.HoldoutNode, ctx: Ctx) -> Step:
    control = in_holdout(tactic_id=ctx.tactic.id, customer_id=ctx.run.customer_id, share=node.share, salt=node.id)
    target = node.control if control else node.treatment
    ctx.journal(node.id, "holdout", "control" if control else "treatment",
                f"holdout {node.share:.0%}: {'control' if control else 'treatment'} group -> {target}",
                {"share": node.share, "control": control})
    return Step(next=target)


def _visit(run: Run, node_id: str) -> int:
    visits = dict((run.state or {}).get("visits", {}))
    visits[node_id] = int(visits.get(node_id, 0)) + 1
    _set_state(run, visits=visits)
    return visits[node_id]


def action_key(run: Run, node_id: str, visit: int) -> str:
    """The idempotency key of an action: the same run, node and visit always give the same key."""
    return f"run:{run.id}:{node_id}:{visit}"


def _cap_windows(settings: Settings, channel: str) -> list[tuple[str, dt.timedelta, int]]:
    caps = settings.frequency_caps.get(channel) or {}
    spans = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1), "week": dt.timedelta(days=7),
             "month": dt.timedelta(days=30)}
    return [(name, spans[name], int(n)) for name, n in caps.items() if name in spans]


def _window_full(times: list[dt.datetime], at: dt.datetime, span: dt.timedelta, cap: int) -> bool:
    """Whether some window of length span that contains at already holds cap messages."""
    starts = [at - span + dt.timedelta(microseconds=1)] + [t for t in times if at - span < t <= at]
    return any(sum(1 for t in times if s <= t < s + span) + 1 > cap for s in starts)


def check_caps(*, session: Session, customer_id: int, channel: str, due: dt.datetime, settings: Settings,
               now: dt.datetime, priority: int, priorities: dict[str, int],
               batch: Batch | None = None) -> tuple[str | None, str | None]:
    """(reason the message is capped or None, a note on a lower-priority message it displaced or None)."""
    windows = _cap_windows(settings, channel)
    if not windows:
        return None, None
    widest = max(span for _, span, _ in windows)
    if batch is not None:
        capped = batch.capped(customer_id, channel, widest)
        rows: list[Any] = [r for r in capped if due - widest < r.due_at < due + widest]
        return _apply_caps(session, rows, windows, due, now, priority, priorities, channel, batch, capped)
    rows = session.execute(select(OutboxMessage.id, OutboxMessage.due_at, OutboxMessage.tactic_id,
                                  OutboxMessage.status, OutboxMessage.run_id)
                           .where(OutboxMessage.customer_id == customer_id, OutboxMessage.channel == channel,
                                  OutboxMessage.transactional.is_(False),
                                  OutboxMessage.status.not_in(CAP_EXEMPT_STATUSES),
                                  OutboxMessage.due_at > due - widest, OutboxMessage.due_at < due + widest)).all()
    return _apply_caps(session, rows, windows, due, now, priority, priorities, channel, None, None)


def _apply_caps(session: Session, rows: list[Any], windows: list[tuple[str, dt.timedelta, int]], due: dt.datetime,
                now: dt.datetime, priority: int, priorities: dict[str, int], channel: str, batch: Batch | None,
                capped: list[CapRow] | None) -> tuple[str | None, str | None]:
    note = None
    for name, span, cap in windows:
        times = [r.due_at for r in rows]
        if not _window_full(times, due, span, cap):
            continue
        # Priorities: a higher-priority tactic displaces a lower one's message that has not gone out yet.
        victims = sorted((r for r in rows if r.status == "queued" and r.due_at > now
                          and priorities.get(r.tactic_id or "", 50) < priority and abs(r.due_at - due) < span),
                         key=lambda r: (priorities.get(r.tactic_id or "", 50), -r.due_at.timestamp()))
        if victims:
            v = victims[0]
            if v.id is None and batch is not None:
                batch.write_outbox()  # the displaced message was queued by this batch: write it to get its id
            why = f"displaced by a higher-priority tactic (priority {priority}) within the {name} cap"
            session.execute(OutboxMessage.__table__.update().where(OutboxMessage.id == v.id)
                            .values(status="suppressed", last_error=why))
            channels.log(session=session, message_id=v.id, status="suppressed", detail={"reason": why}, at=now)
            if v.run_id:
                victim_run = run_by_id(session, v.run_id)
                if victim_run is not None:
                    journal(session=session, run=victim_run, node_id=None, kind="message", outcome="suppressed",
                            reason=f"message {v.id} suppressed: {why}", inputs={"message_id": v.id}, at=now)
            rows = [r for r in rows if r.id != v.id]
            if capped is not None:
                capped[:] = [r for r in capped if r.id != v.id]
            note = f"displaced message {v.id} of {v.tactic_id} (lower priority)"
            if not _window_full([r.due_at for r in rows], due, span, cap):
                continue
        return f"frequency cap: at most {cap} marketing {channel} message(s) per {name}", note
    return None, note


def _message(node: S.MessageNode, ctx: Ctx) -> Step:
    run, session, settings, now = ctx.run, ctx.session, ctx.settings, ctx.now
    content = ctx.tactic.content[node.content]
    visit = _visit(run, node.id)
    key = action_key(run, node.id, visit)
    base = {"channel": content.channel, "template": content.template, "idempotency_key": key}
    if run.holdout:
        ctx.journal(node.id, "message", "holdout",
                    f"{content.channel} {content.template} not sent: control group (holdout)", base)
        return Step(next=node.next)
    customer = ctx.customer
    purpose = None if node.transactional else (node.purpose or consent.CHANNEL_PURPOSE.get(content.channel))
    probe = OutboxMessage(customer_id=run.customer_id, channel=content.channel, purpose=purpose,
                          transactional=node.transactional)
    why_not = channels.missing_consent(session=session, message=probe, statuses=(
        ctx.batch.consents(run.customer_id) if ctx.batch is not None else None))
    if why_not is None and content.channel != "webhook":
        address = channels.address_of(customer=customer, channel=content.channel, settings=settings)
        if not address:
            why_not = f"no {content.channel} address"
    due = now
    note = None
    if why_not is None and not node.transactional:
        # On-site content is shown while the visitor is on the site: quiet hours do not apply.
        due = after_quiet_hours(now, ctx.tz, settings) if content.channel != "onsite" else now
        why_not, note = check_caps(session=session, customer_id=run.customer_id, channel=content.channel, due=due,
                                   settings=settings, now=now, priority=ctx.tactic.priority,
                                   priorities=ctx.priorities, batch=ctx.batch)
    if why_not is not None:
        ctx.journal(node.id, "message", "suppressed", f"{content.channel} {content.template} suppressed: {why_not}",
                    {**base, "reason": why_not})
        return Step(next=node.next)
    locale = _locale(customer, content.locales, settings)
    reason = f"{ctx.tactic.names.en} ({ctx.tactic.id}) step {node.id}"
    payload: dict[str, Any] = {**_payload(node.payload, ctx), "reason": reason, "run_id": run.id}
    if run.key:
        payload.setdefault("key", run.key)
    if node.transactional:  # never advertising: no recommendations, offers or coupons get filled in
        payload.update({"recommendations": [], "offer": None})
    message = {"idempotency_key": key, "customer_id": run.customer_id, "channel": content.channel,
               "template": content.template if content.channel != "webhook" else None, "purpose": purpose,
               "transactional": node.transactional, "locale": locale, "payload": payload, "due_at": due,
               "tactic_id": ctx.tactic.id, "run_id": run.id}
    msg_id = _enqueue(ctx, message)
    when = "now" if due <= now else f"at {due:%Y-%m-%d %H:%M} UTC (after quiet hours in {ctx.tz.key})"
    text = (f"{'transactional ' if node.transactional else ''}{content.channel} {content.template} ({locale}) "
            f"queued {when}" + (f"; {note}" if note else ""))
    entry = ctx.journal(node.id, "message", "queued", text,
                        {**base, "message_id": msg_id, "due_at": due, "locale": locale})
    if ctx.batch is not None:
        ctx.batch.enqueue(message, entry)
    return Step(next=node.next)


def _enqueue(ctx: Ctx, message: dict[str, Any]) -> int | None:
    """Put a message into the outbox now and return its id; in a batch it is written with the batch (None)."""
    if ctx.batch is not None:
        return None
    run_id = message.pop("run_id")
    msg = channels.enqueue(session=ctx.session, now=ctx.now, **message)
    msg.run_id = run_id
    message["run_id"] = run_id
    return msg.id


def _payload(data: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    """Template data with '$key', '$entry', '$entry.<prop>' and '$product' (the keyed product) filled in."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if v == "$entry":
            out[k] = dict((ctx.run.state or {}).get("entry", {}))
        elif v in ("$order", "$store"):
            data = ctx.context(v[1:])
            out[k] = {kk: plain(vv) for kk, vv in data.items()} if data else None
        elif v == "$product":
            sku = (ctx.run.state or {}).get("entry", {}).get("sku") or ctx.run.key
            found = channels.products_by_sku(session=ctx.session, skus=[str(sku)]) if sku else {}
            out[k] = {kk: plain(vv) for kk, vv in found.get(str(sku), {}).items()} or None
        elif isinstance(v, dict):
            out[k] = _payload(v, ctx)
        elif v in nodes.PRODUCT_REFS:
            out[k], note = nodes.product_list(v, ctx)
            ctx.journal(None, "payload", "filled", f"{k}: {note}", {"reference": v})
        elif isinstance(v, str) and v.startswith("$") and v[1:].split(".")[0] in S.FIELD_ROOTS \
                and v[1:].split(".")[0] not in ("event",):
            out[k] = plain(ctx.value(v[1:]))
        else:
            out[k] = substitute(v, ctx.run)
    return out


def _locale(customer: Customer | None, locales: list[str], settings: Settings) -> str:
    from emma.channels.content import normalize_locale

    want = normalize_locale(customer.locale if customer else None, settings.default_locale)
    return want if want in locales else (settings.default_locale if settings.default_locale in locales else locales[0])


def _update_attribute(node: S.UpdateAttributeNode, ctx: Ctx) -> Step:

    customer = ctx.customer
    if customer is not None:
        value = substitute(node.value, ctx.run)
        _set_traits(ctx, customer, {node.attribute: value})
        ctx.journal(node.id, "update_attribute", "done", f"set {node.attribute} = {value!r}",
                    {"attribute": node.attribute, "value": value})
    return Step(next=node.next)


def _set_traits(ctx: Ctx, customer: Customer, traits: dict[str, Any]) -> None:
    from emma.profiles import service as profiles

    batch = ctx.batch
    latest = batch.latest_traits(customer.id, next(iter(traits))) if batch is not None else None
    profiles.apply_traits(session=ctx.session, customer=customer, traits=traits, source=f"tactic:{ctx.tactic.id}",
                          at=ctx.now, latest=latest, history=batch.history if latest is not None else None)


def _add_points(node: S.AddPointsNode, ctx: Ctx) -> Step:
    customer = ctx.customer
    if customer is not None:
        before = (customer.attributes or {}).get(node.attribute) or 0
        points = node.points
        if node.per:
            try:
                points = int(node.points * float(_payload({"v": node.per}, ctx)["v"] or 0))
            except (TypeError, ValueError):
                points = 0
        after = int(before) + points
        _set_traits(ctx, customer, {node.attribute: after})
        ctx.journal(node.id, "add_points", "done", f"{points:+d} {node.attribute}: {before} -> {after}",
                    {"before": before, "after": after})
    return Step(next=node.next)


def _webhook(node: S.WebhookNode, ctx: Ctx) -> Step:
    visit = _visit(ctx.run, node.id)
    key = action_key(ctx.run, node.id, visit)
    data = {k: substitute(v, ctx.run) for k, v in node.data.items()}
    message = {"idempotency_key": key, "customer_id": ctx.run.customer_id, "channel": "webhook", "template": None,
               "transactional": True, "due_at": ctx.now, "tactic_id": ctx.tactic.id, "run_id": ctx.run.id,
               "payload": {"event": node.event, "data": data, "key": ctx.run.key, "run_id": ctx.run.id}}
    msg_id = _enqueue(ctx, message)
    entry = ctx.journal(node.id, "webhook", "queued", f"webhook {node.event} queued", {"message_id": msg_id, **data})
    if ctx.batch is not None:
        ctx.batch.enqueue(message, entry)
    return Step(next=node.next)


def _task(node: S.TaskNode, ctx: Ctx) -> Step:
    visit = _visit(ctx.run, node.id)
    key = action_key(ctx.run, node.id, visit)
    if ctx.session.scalar(select(SalesTask.id).where(SalesTask.idempotency_key == key)) is None:
        ctx.session.add(SalesTask(idempotency_key=key, customer_id=ctx.run.customer_id, run_id=ctx.run.id,
                                  tactic_id=ctx.tactic.id, title=node.title, detail=node.detail, status="open",
                                  due_at=ctx.now + S.parse_duration(node.due_in), created_at=ctx.now))
    ctx.journal(node.id, "task", "created", f"sales task: {node.title}", {"due_in": node.due_in})
    return Step(next=node.next)


def _goal(node: S.GoalNode, ctx: Ctx) -> Step:
    goal = ctx.tactic.goal
    if goal is not None:
        where = resolve_where(goal.where, ctx.run)
        # The event that started the run is not its own goal (an order entering a post-purchase tactic).
        after = int((ctx.run.state or {}).get("entry_event_id") or 0)
        found = ctx.matching_events([goal.event], where, after, ctx.run.entered_at)
        if found is not None and found.timestamp >= ctx.run.entered_at:
            return Step(end="converted", reason=f"goal reached: {goal.event} ({_brief(found.properties)})")
    ctx.journal(node.id, "goal", "not_reached", "goal not reached yet" + (f" -> {node.next}" if node.next else ""))
    return Step(next=node.next)


def _exit(node: S.ExitNode, ctx: Ctx) -> Step:
    return Step(end="exited", reason=node.reason)


HANDLERS: dict[str, Any] = {"wait": _wait, "wait_for_event": _wait_for_event, "branch": _branch,
                            "condition": _condition, "split": _split, "holdout": _holdout, "message": _message,
                            "update_attribute": _update_attribute, "add_points": _add_points, "webhook": _webhook,
                            "task": _task, "goal": _goal, "exit": _exit, **nodes.HANDLERS}


def _brief(props: dict[str, Any] | None) -> str:
    props = props or {}
    keys = [k for k in ("order_id", "cart_id", "sku", "revenue", "total", "segment") if k in props]
    return ", ".join(f"{k} {props[k]}" for k in keys) or "no details"


def _follow_merge(session: Session, run: Run, now: dt.datetime, batch: Batch | None = None) -> bool:
    """A run of an anonymous profile that was merged moves to the known customer; False when it cannot."""
    c = batch.customer(run.customer_id) if batch is not None else session.get(Customer, run.customer_id)
    if c is None or c.merged_into_id is None:
        return True
    target = c.merged_into_id
    attach_new_runs(session)
    session.flush()  # a batch runs without autoflush: the clash query must see the batch's changes
    clash = session.scalar(select(Run.id).where(Run.tactic_id == run.tactic_id, Run.customer_id == target,
                                                or_(Run.active_key == run.key, Run.dedupe == run.dedupe)))
    if clash is not None:
        finish(session=session, run=run, status="exited", now=now,
               reason=f"profile merged into customer {target}, who is already in this tactic")
        return False
    source = run.customer_id
    run.customer_id = target
    flush_journal(session)
    session.execute(RunStep.__table__.update().where(RunStep.run_id == run.id).values(customer_id=target))
    journal(session=session, run=run, node_id=run.node_id, kind="run", outcome="moved",
            reason=f"profile {source} merged into customer {target}; the run follows", at=now)
    return True


GOAL_WINDOW = "(goal window)"


def _goal_window(session: Session, run: Run, tactic: S.Tactic, now: dt.datetime) -> None:
    """After the last node the run stays live until its goal window closes, so a late conversion still counts."""
    if tactic.goal is None:
        finish(session=session, run=run, status="done", reason="flow finished", now=now)
        return
    until = run.entered_at + S.parse_duration(tactic.goal.within)
    if now >= until:
        finish(session=session, run=run, status="done", now=now,
               reason=f"flow finished; goal {tactic.goal.event} not reached within {tactic.goal.within}")
        return
    if run.wait is None or run.wait.get("node") != GOAL_WINDOW:
        run.wait = {"node": GOAL_WINDOW, "until": until.isoformat()}
        journal(session=session, run=run, node_id=None, kind="goal", outcome="waiting", at=now,
                reason=f"flow finished; waiting for the goal {tactic.goal.event} until {until:%Y-%m-%d %H:%M} UTC")
    run.status, run.due_at = "waiting", until


def advance(*, session: Session, run: Run, tactic: S.Tactic | None, settings: Settings, now: dt.datetime,
            priorities: dict[str, int] | None = None, batch: Batch | None = None) -> None:
    """Step a due run through its nodes until it waits or ends (inside the caller's transaction)."""
    if run.status not in LIVE:
        return
    if tactic is None:
        finish(session=session, run=run, status="exited", now=now, reason=f"tactic {run.tactic_id} is disabled")
        return
    if not _follow_merge(session, run, now, batch):
        return
    if run.node_id == GOAL_WINDOW:
        _goal_window(session, run, tactic, now)
        return
    ctx = Ctx(session=session, run=run, tactic=tactic, settings=settings, now=now, priorities=priorities or {},
              batch=batch)
    for _ in range(MAX_STEPS_PER_ADVANCE):
        try:
            node = tactic.node(run.node_id or "")
        except KeyError:
            finish(session=session, run=run, status="failed", now=now,
                   reason=f"node {run.node_id!r} does not exist in {tactic.id} version {tactic.version}")
            return
        step: Step = HANDLERS[node.kind](node, ctx)
        if step.end:
            finish(session=session, run=run, status=step.end, reason=step.reason, now=now, node_id=node.id)
            return
        if step.stop:
            return
        if step.next is None:
            run.node_id = GOAL_WINDOW
            _goal_window(session, run, tactic, now)
            return
        run.node_id, run.status, run.due_at = step.next, "active", now
    finish(session=session, run=run, status="failed", now=now,
           reason=f"more than {MAX_STEPS_PER_ADVANCE} steps without a wait: a loop in the flow?")


# Events: entries, resumed waits, goals

def event_name(ev: Event) -> str | None:
    """A track event's name; 'identify' for identify calls (their traits are the properties)."""
    return "identify" if ev.type == "identify" else ev.name


def _entry_matches(tactic: S.Tactic, ev: Event) -> tuple[str, str] | None:
    """(key, reason) when the event starts the tactic, else None."""
    entry = tactic.entry
    props = ev.properties or {}
    name = event_name(ev)
    if isinstance(entry, S.EventEntry):
        if name not in entry.names or not props_match(props, entry.where):
            return None
        key = str(_path(props, entry.key) or "") if entry.key else ""
        if entry.key and not key:
            return None
        return key, f"{name}" + (f" ({entry.key} {key})" if key else "")
    if isinstance(entry, S.SegmentEntry):
        wanted = "Segment Entered" if entry.kind == "segment_entered" else "Segment Exited"
        if ev.name == wanted and str(props.get("segment")) == entry.segment:
            return "", f"{'entered' if entry.kind == 'segment_entered' else 'left'} segment {entry.segment}"
    return None


def entry_events(tactics: Iterable[S.Tactic]) -> set[str]:
    """Event names that can start one of the tactics."""
    names: set[str] = set()
    for t in tactics:
        if isinstance(t.entry, S.EventEntry):
            names.update(t.entry.names)
        elif isinstance(t.entry, S.SegmentEntry):
            names.add("Segment Entered" if t.entry.kind == "segment_entered" else "Segment Exited")
    return names


def handle_events(*, session: Session, events: list[Event], tactics: dict[str, S.Tactic], settings: Settings,
                  now: dt.datetime, ready: list[Run] | None = None) -> int:
    """Apply a batch of events in id order: start runs, wake runs waiting for them, end runs on their goal.
    ready: gets the runs started or woken (due now), for the caller to step in the same transaction; the
    runs it starts are then deferred (defer_runs: inserted once the step is done, with the journal)."""
    if not events:
        return 0
    starts = entry_events(tactics.values())
    max_age = dt.timedelta(hours=settings.entry_max_event_age_hours)
    cids = {e.customer_id for e in events if e.customer_id is not None}
    # Anonymous profiles merged into these customers may hold live runs too.
    alias: dict[int, int] = {}
    if cids:
        for src, tgt in session.execute(select(MergeLog.source_customer_id, MergeLog.target_customer_id)
                                        .where(among(session, MergeLog.target_customer_id, sorted(cids)),
                                               MergeLog.reverted_at.is_(None))):
            alias[src] = tgt
    live: dict[int, list[Run]] = {}
    found: list[Run] = []
    if cids:
        found = list(session.scalars(select(Run).where(among(session, Run.customer_id, sorted(cids | set(alias))),
                                                       Run.status.in_(LIVE)).order_by(Run.id)))
        for run in found:
            live.setdefault(alias.get(run.customer_id, run.customer_id), []).append(run)
    entering = [t.id for t in tactics.values() if isinstance(t.entry, S.EventEntry | S.SegmentEntry)]
    known = Entries(session=session, tactic_ids=entering, customer_ids=cids,
                    dedupes=[f"event:{e.id}" for e in events if event_name(e) in starts], defer=ready is not None,
                    live=found)
    touched = 0
    for ev in events:
        cid = ev.customer_id
        if cid is None:
            continue
        props = ev.properties or {}
        name = event_name(ev)
        for run in list(live.get(cid, [])):
            if run.status not in LIVE:
                continue
            tactic = tactics.get(run.tactic_id)
            if tactic is None:
                continue
            if tactic.goal and name == tactic.goal.event and ev.timestamp >= run.entered_at \
                    and props_match(props, tactic.goal.where, run):
                finish(session=session, run=run, status="converted", now=now, node_id=run.node_id,
                       reason=f"goal reached: {name} ({_brief(props)})"
                       + ("; control group" if run.holdout else ""),
                       inputs={"event": name, "event_id": ev.id})
                touched += 1
                continue
            w = run.wait
            if w and w.get("events") and name in w["events"] and not w.get("matched") \
                    and ev.id > int(w.get("after") or 0) and props_match(props, w.get("match") or {}):
                run.wait = {**w, "matched": {"event": name, "id": ev.id}}
                run.status, run.due_at = "active", now
                touched += 1
                if ready is not None:
                    ready.append(run)
        if name in starts and now - ev.timestamp <= max_age:
            for tactic in tactics.values():
                hit = _entry_matches(tactic, ev)
                if hit is None:
                    continue
                key, why = hit
                run = enter(session=session, tactic=tactic, customer_id=cid, now=now, dedupe=f"event:{ev.id}",
                            key=key, entry=props, event_id=ev.id, reason=why, event_name=name,
                            inputs={"event": name, "event_id": ev.id}, known=known)
                if run is not None:
                    live.setdefault(cid, []).append(run)
                    touched += 1
                    if ready is not None:
                        ready.append(run)
    if known.deferred is not None:
        defer_runs(session, known.deferred)  # the journal waits for them
        return touched
    assign_run_ids(session)
    flush_journal(session)
    return touched


def assign_run_ids(session: Session) -> None:
    """Give the runs added to the session ids from one query, so they are inserted with one executemany (an
    insert that returns each new id goes row by row on SQLite and renders a statement per batch on PostgreSQL).
    The caller holds the write lock on SQLite (the event cursor, a trigger's cursor row)."""
    new = [o for o in session.new if isinstance(o, Run) and o.id is None]
    if len(new) < 2:
        return
    new.sort(key=lambda r: r.entered_at)
    for run, rid in zip(new, allocate_ids(session, Run, len(new)), strict=True):
        run.id = rid
    session.flush()


def due_runs(*, session: Session, now: dt.datetime, limit: int) -> list[Run]:
    """Claim up to limit due runs; concurrent workers never get the same run.

    PostgreSQL: FOR UPDATE SKIP LOCKED, workers skip each other's rows. SQLite: the claim is a write (an
    UPDATE ... RETURNING that changes nothing), so it takes the database's write lock before it reads; a second
    worker waits for the first one's commit and then reads the runs as that left them.
    """
    stmt = (select(Run).where(Run.status.in_(LIVE), Run.due_at <= now)
            .order_by(Run.due_at, Run.id).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        return list(session.scalars(stmt.with_for_update(skip_locked=True)))
    table = Run.__table__
    due = select(table.c.id).where(table.c.status.in_(LIVE), table.c.due_at <= now) \
        .order_by(table.c.due_at, table.c.id).limit(limit)
    ids = list(session.scalars(table.update().where(table.c.id.in_(due.scalar_subquery()))
                               .values(due_at=table.c.due_at).returning(table.c.id)))
    if not ids:
        return []
    return list(session.scalars(select(Run).where(among(session, Run.id, ids)).order_by(Run.due_at, Run.id)))


def process_due(*, session: Session, tactics: dict[str, S.Tactic], settings: Settings, now: dt.datetime,
                limit: int = 200) -> int:
    """Advance every due run (up to limit); returns how many were stepped."""
    return step(session=session, runs=due_runs(session=session, now=now, limit=limit), tactics=tactics,
                settings=settings, now=now)


def step(*, session: Session, runs: list[Run], tactics: dict[str, S.Tactic], settings: Settings,
         now: dt.datetime) -> int:
    """Advance runs this transaction claimed or started, as one batch; returns how many were stepped."""
    if not runs:
        return 0
    priorities = {tid: t.priority for tid, t in tactics.items()}
    batch = Batch(session=session, runs=runs, settings=settings, now=now, tactics=tactics.values())
    # One flush for the batch instead of one before every query; the few reads that must see the batch's own
    # changes (segment predicates, profile merges) flush first.
    with session.no_autoflush:
        for run in runs:
            advance(session=session, run=run, tactic=tactics.get(run.tactic_id), settings=settings, now=now,
                    priorities=priorities, batch=batch)
    batch.flush()
    flush_journal(session)
    return len(runs)


def next_due(*, session: Session) -> dt.datetime | None:
    """When the next run falls due (for the virtual clock's jumps)."""
    return session.scalar(select(func.min(Run.due_at)).where(Run.status.in_(LIVE)))


