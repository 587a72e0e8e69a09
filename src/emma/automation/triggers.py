"""Entry triggers that are not single events: schedules, dates, catalog changes, prediction thresholds.

Each keeps a persisted cursor (last date, last history id, last scoring run), and each run it starts carries a
dedupe key naming the occurrence (birthday:2026, price:1234), so a scan repeated after a crash starts nothing
twice.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import json
import logging
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from emma.automation import engine
from emma.automation import schemas as S
from emma.automation.models import PredictionMark
from emma.catalog.models import PriceChange, Product, StockChange
from emma.config import Settings
from emma.db import insert_rows
from emma.ingest.models import Event
from emma.orders.models import Order, OrderLine, WishlistItem
from emma.predict.models import Prediction, ScoreRun
from emma.profiles.models import Customer, TraitChange

CHUNK = 5000
log = logging.getLogger(__name__)


def _cursor(session: Session, name: str) -> Any:
    from emma.automation.jobs import cursor

    return cursor(session=session, name=name)


def scan(*, session: Session, tactics: dict[str, S.Tactic], settings: Settings, now: dt.datetime) -> int:
    """Check every non-event trigger of the enabled tactics; returns how many runs were started."""
    entered = 0
    scanners = {"schedule": _schedule, "date": _date, "catalog": _catalog, "prediction": _prediction,
                "store": _store, "attribute": _attribute}
    # Higher priorities first: when two tactics start on the same change, the more important one's message is
    # created first and the frequency cap holds back the other.
    for t in sorted(tactics.values(), key=lambda t: -t.priority):
        fn = scanners.get(t.entry.kind)
        if fn is None:
            continue
        engine.flush_journal(session)
        try:
            with session.begin_nested():  # one tactic's broken trigger (a deleted segment) spares the others
                entered += fn(session, t, settings, now)
        except Exception:  # noqa: BLE001 - logged; the scan of this tactic is retried next time
            log.exception("trigger scan of %s failed", t.id)
            session.info.pop(engine._JOURNAL, None)  # entries of the rolled-back scan
    engine.flush_journal(session)
    return entered


def _enter_many(session: Session, tactic: S.Tactic, customer_ids: Iterable[int], now: dt.datetime, dedupe: str,
                reason: str, key: str = "", entry: dict[str, Any] | None = None,
                max_per_day: int | None = None) -> int:
    return _enter_each(session, tactic, [(cid, dedupe, reason, key, entry) for cid in customer_ids], now,
                       max_per_day)


Entry = tuple[int, str, str, str, dict[str, Any] | None]  # customer, dedupe, reason, key, entry properties


def _enter_each(session: Session, tactic: S.Tactic, entries: list[Entry], now: dt.datetime,
                max_per_day: int | None = None, inputs: dict[int, dict[str, Any]] | None = None) -> int:
    """Enter many customers, the checks for all of them read with a few queries (scans hold their cursor row,
    so no other worker enters the same tactic meanwhile). The journal notes each entry's properties, or
    inputs[customer] when given."""
    n = 0
    for lo in range(0, len(entries), CHUNK):
        part = entries[lo:lo + CHUNK]
        known = engine.Entries(session=session, tactic_ids=[tactic.id], customer_ids=[e[0] for e in part],
                               dedupes={e[1] for e in part},
                               since=now - dt.timedelta(days=1) if max_per_day is not None else None, rows=True)
        for cid, dedupe, reason, key, entry in part:
            if max_per_day is not None and known.recent.get((tactic.id, cid), 0) >= max_per_day:
                continue
            if engine.enter(session=session, tactic=tactic, customer_id=cid, now=now, dedupe=dedupe, key=key,
                            entry=entry, reason=reason, inputs=entry if inputs is None else inputs.get(cid),
                            known=known) is not None:
                n += 1
        known.insert(session)
        engine.flush_journal(session)
    return n


def _known_customers(session: Session) -> Any:
    return select(Customer.id).where(Customer.is_anonymous.is_(False), Customer.merged_into_id.is_(None))


# Recurring schedule over a segment

def occurrence(entry: S.ScheduleEntry, now: dt.datetime) -> dt.date | None:
    """The date of the schedule's latest occurrence at or before now (None if there was none today)."""
    at = S.parse_clock(entry.at)
    today = now.astimezone(dt.UTC).date()
    for back in range(0, 32):
        d = today - dt.timedelta(days=back)
        if back == 0 and now.astimezone(dt.UTC).time() < at:
            continue
        if entry.every == "day" or (entry.every == "week" and d.weekday() == (entry.weekday or 0)) or (
                entry.every == "month" and d.day == (entry.day or 1)):
            return d
    return None


def _schedule(session: Session, tactic: S.Tactic, settings: Settings, now: dt.datetime) -> int:
    entry = tactic.entry
    assert isinstance(entry, S.ScheduleEntry)
    occ = occurrence(entry, now)
    if occ is None:
        return 0
    cur = _cursor(session, f"schedule:{tactic.id}")
    if cur.value and cur.value > occ.isoformat():
        return 0
    if cur.value != occ.isoformat():  # a new occurrence: start from the first customer
        cur.value, cur.position = occ.isoformat(), 0
    if cur.position < 0:
        return 0  # this occurrence is complete
    # The members are listed once per occurrence and entered CHUNK at a time, a transaction each: evaluating the
    # segment costs about as much for one chunk as for all of them (3 s over 1,000,000 customers).
    rule = entry.rule if entry.rule is not None else entry.segment
    key = (session.get_bind().url.render_as_string(), tactic.id, occ.isoformat(), json.dumps(rule, sort_keys=True))
    members = _SNAPSHOTS.get(key)
    if members is None:
        members = _SNAPSHOTS[key] = _members(session, rule, now, after=cur.position, limit=None)
    start = bisect.bisect_right(members, cur.position)
    ids = members[start:start + CHUNK]
    reason = f"scheduled {entry.every} {occ.isoformat()}" + (
        f" over segment {entry.segment}" if entry.segment else " over the tactic's rule" if entry.rule else "")
    n = _enter_many(session, tactic, ids, now, f"schedule:{occ.isoformat()}", reason)
    if start + CHUNK < len(members):
        cur.position = ids[-1]
    else:
        cur.position = -1
        _SNAPSHOTS.pop(key, None)
    return n


# The members of schedule occurrences being entered (by database, tactic, occurrence, rule), in this process; a
# restarted worker lists them again from its cursor.
_SNAPSHOTS: dict[tuple[str, str, str, str], list[int]] = {}


def _members(session: Session, segment: str | dict[str, Any] | None, now: dt.datetime, *, after: int,
             limit: int | None) -> list[int]:
    """Members of a stored segment (by key) or of a rule given as data, in id order after `after`."""
    if segment is None:
        q = _known_customers(session).where(Customer.id > after).order_by(Customer.id)
        return list(session.scalars(q if limit is None else q.limit(limit)))
    from emma.segments import service as segments

    if isinstance(segment, dict):
        # Like "every known customer": anonymous profiles have no address to ask on.
        q = (segments.members_query(segment=segment, now=now)
             .where(Customer.id > after, Customer.is_anonymous.is_(False)).limit(limit))
        return list(session.scalars(q))
    return segments.members(session=session, segment=segment, now=now, limit=limit, after_id=after)


# Date attributes relative to today: birthday (yearly), warranty end, attributes.<name>

def _mmdd(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(column, "MM-DD")
    return func.strftime("%m-%d", column)


def _date(session: Session, tactic: S.Tactic, settings: Settings, now: dt.datetime) -> int:
    entry = tactic.entry
    assert isinstance(entry, S.DateEntry)
    cur = _cursor(session, f"date:{tactic.id}")
    hour = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H")
    if cur.value == hour:
        return 0  # scanned this hour already; the local dates move on by the hour
    cur.value = hour
    if entry.attribute == "birthday":
        return _birthdays(session, tactic, entry, settings, now)
    if entry.attribute == "warranty_end":
        return _warranty(session, tactic, entry, now)
    if entry.attribute in ("last_seen_at", "created_at") or entry.attribute.startswith("consent."):
        return _moment_date(session, tactic, entry, now)
    return _attribute_date(session, tactic, entry, settings, now)


def _anniversary(born: dt.date, year: int) -> dt.date:
    if born.month == 2 and born.day == 29 and not calendar.isleap(year):
        return dt.date(year, 2, 28)
    return born.replace(year=year)


def _birthdays(session: Session, tactic: S.Tactic, entry: S.DateEntry, settings: Settings,
               now: dt.datetime) -> int:
    """Customers whose birthday (plus offset) is today in their own time zone."""
    utc_today = now.astimezone(dt.UTC).date()
    days = [utc_today + dt.timedelta(days=d) for d in (-1, 0, 1)]
    wanted = {(d - dt.timedelta(days=entry.offset_days)).strftime("%m-%d") for d in days}
    if "02-28" in wanted:
        wanted.add("02-29")
    rows = session.execute(select(Customer.id, Customer.birthday, Customer.timezone)
                           .where(Customer.birthday.is_not(None), Customer.merged_into_id.is_(None),
                                  _mmdd(session, Customer.birthday).in_(sorted(wanted)))).all()
    zones: dict[str | None, Any] = {}
    entries: list[Entry] = []
    for cid, born, tzname in rows:
        tz = zones.get(tzname)
        if tz is None:
            tz = zones[tzname] = engine.timezone_of(Customer(timezone=tzname), settings)
        local_today = now.astimezone(tz).date()
        target = local_today - dt.timedelta(days=entry.offset_days)
        if _anniversary(born, target.year) != target:
            continue
        entries.append((cid, f"birthday:{local_today.year}",
                        f"birthday on {born:%d.%m.} (today {local_today:%Y-%m-%d} in {tz.key})", "",
                        {"birthday": born.isoformat(), "local_date": local_today.isoformat()}))
    return _enter_each(session, tactic, entries, now)


def _add_months(d: dt.date, months: int) -> dt.date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    return dt.date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def _warranty(session: Session, tactic: S.Tactic, entry: S.DateEntry, now: dt.datetime) -> int:
    """Order lines whose warranty (product attribute warranty_months, from delivery, else from the order date)
    ends offset_days from today."""
    today = now.astimezone(dt.UTC).date()
    entries: list[Entry] = []
    products = [(p.sku, int(p.attributes["warranty_months"])) for p in session.scalars(select(Product))
                if isinstance(p.attributes, dict) and str(p.attributes.get("warranty_months", "")).isdigit()]
    since = func.coalesce(Order.delivered_at, Order.ordered_at)
    for sku, months in products:
        # warranty end = delivery date + months; the trigger date = end + offset (offset -90: 90 days before)
        end = today - dt.timedelta(days=entry.offset_days)
        bought_on = _add_months(end, -months)
        lo = dt.datetime.combine(bought_on, dt.time(), tzinfo=dt.UTC)
        rows = session.execute(select(Order.customer_id, Order.order_id).join(OrderLine, OrderLine.order_pk == Order.id)
                               .where(OrderLine.sku == sku, since >= lo, since < lo + dt.timedelta(days=1),
                                      Order.status.not_in(("cancelled", "returned", "refunded")))).all()
        for cid, order_id in rows:
            entries.append((cid, f"warranty:{order_id}:{sku}",
                            f"warranty of {sku} (order {order_id}) ends {end.isoformat()}", f"{order_id}:{sku}",
                            {"order_id": order_id, "sku": sku, "warranty_end": end.isoformat()}))
    return _enter_each(session, tactic, entries, now)


def _attribute_date(session: Session, tactic: S.Tactic, entry: S.DateEntry, settings: Settings,
                    now: dt.datetime) -> int:
    name = entry.attribute.removeprefix("attributes.")
    target = (now.astimezone(dt.UTC).date() - dt.timedelta(days=entry.offset_days)).isoformat()
    ids = session.scalars(_known_customers(session).where(Customer.attributes[name].as_string() == target))
    return _enter_many(session, tactic, list(ids), now, f"date:{name}:{target}", f"{name} is {target}",
                       entry={name: target})


def _moment_date(session: Session, tactic: S.Tactic, entry: S.DateEntry, now: dt.datetime) -> int:
    """Customers whose last_seen_at / created_at / consent record (UTC date) is offset_days before today."""
    from emma.consent.models import Consent

    target = now.astimezone(dt.UTC).date() - dt.timedelta(days=entry.offset_days)
    lo = dt.datetime.combine(target, dt.time(), tzinfo=dt.UTC)
    hi = lo + dt.timedelta(days=1)
    if entry.attribute.startswith("consent."):
        purpose = entry.attribute.removeprefix("consent.")
        rows = session.execute(select(Consent.customer_id, Consent.status).where(
            Consent.purpose == purpose, Consent.recorded_at >= lo, Consent.recorded_at < hi)).all()
        ids = [cid for cid, _ in rows]
        what = f"{purpose} consent recorded on {target.isoformat()}"
    else:
        col = getattr(Customer, entry.attribute)
        ids = list(session.scalars(_known_customers(session).where(col >= lo, col < hi).order_by(Customer.id)))
        what = f"{entry.attribute} {target.isoformat()}"
    days = f" ({entry.offset_days} days ago)" if entry.offset_days else ""
    return _enter_many(session, tactic, ids, now, f"date:{entry.attribute}:{target.isoformat()}", what + days,
                       entry={entry.attribute: target.isoformat()})


# Catalog changes

def _catalog(session: Session, tactic: S.Tactic, settings: Settings, now: dt.datetime) -> int:
    entry = tactic.entry
    assert isinstance(entry, S.CatalogEntry)
    if entry.change == "price_drop":
        return _price_drops(session, tactic, entry, now)
    if entry.change == "back_in_stock":
        return _back_in_stock(session, tactic, entry, now)
    return _new_products(session, tactic, entry, now)


def _audience(session: Session, entry: S.CatalogEntry, skus: list[str], now: dt.datetime,
              viewed_since: dt.datetime | None = None) -> set[int]:
    """Customers who viewed, wishlisted or bought one of skus (as the trigger asks); views count from
    viewed_since when that is later than the trigger's `within`."""
    out: set[int] = set()
    since = now - S.parse_duration(entry.within)
    if viewed_since is not None and viewed_since > since:
        since = viewed_since
    if entry.audience in ("viewed", "viewed_or_wishlisted"):
        for sku in skus:
            out.update(c for c in session.scalars(
                select(Event.customer_id).where(Event.name == "Product Viewed", Event.timestamp >= since,
                                                Event.properties["sku"].as_string() == sku).distinct()) if c)
    if entry.audience in ("wishlisted", "viewed_or_wishlisted"):
        out.update(session.scalars(select(WishlistItem.customer_id).where(WishlistItem.sku.in_(skus),
                                                                          WishlistItem.removed_at.is_(None))))
    if entry.audience == "bought":
        out.update(session.scalars(select(Order.customer_id).join(OrderLine, OrderLine.order_pk == Order.id)
                                   .where(OrderLine.sku.in_(skus)).distinct()))
    return out


def _catalog_cursor(session: Session, name: str, id_column: Any) -> Any:
    """The tactic's cursor over a catalog change table; None on first use, which starts at the present."""
    cur = _cursor(session, name)
    if cur.position == 0 and cur.value is None:  # a newly enabled tactic does not replay old changes
        cur.position, cur.value = session.scalar(select(func.coalesce(func.max(id_column), 0))), "start"
        return None
    return cur


def _price_drops(session: Session, tactic: S.Tactic, entry: S.CatalogEntry, now: dt.datetime) -> int:
    cur = _catalog_cursor(session, f"catalog:{tactic.id}:price", PriceChange.id)
    if cur is None:
        return 0
    changes = list(session.scalars(select(PriceChange).where(PriceChange.id > cur.position)
                                   .order_by(PriceChange.id).limit(CHUNK)))
    n = 0
    for ch in changes:
        cur.position = ch.id
        if ch.price is None:
            continue
        # The reference is the highest price of the last 30 days, so a drop cut into small steps still counts.
        ref = session.scalar(select(func.max(PriceChange.price)).where(
            PriceChange.sku == ch.sku, PriceChange.id < ch.id,
            PriceChange.changed_at >= ch.changed_at - dt.timedelta(days=30)))
        ref = max(x for x in (ref, ch.previous_price) if x is not None) if (ref or ch.previous_price) else None
        if not ref or Decimal(ref) <= 0:
            continue
        drop = float((Decimal(ref) - Decimal(ch.price)) / Decimal(ref) * 100)
        if drop < entry.min_drop_percent:
            continue
        who = _audience(session, entry, [ch.sku], now)
        info = {"sku": ch.sku, "old_price": float(ref), "new_price": float(ch.price), "drop_percent": round(drop, 1)}
        n += _enter_many(session, tactic, sorted(who), now, f"price:{ch.id}",
                         f"price of {ch.sku} dropped from {float(ref):.2f} to {float(ch.price):.2f} (-{drop:.0f} %)",
                         key=ch.sku, entry=info, max_per_day=entry.max_per_day)
    return n


def _back_in_stock(session: Session, tactic: S.Tactic, entry: S.CatalogEntry, now: dt.datetime) -> int:
    cur = _catalog_cursor(session, f"catalog:{tactic.id}:stock", StockChange.id)
    if cur is None:
        return 0
    n = 0
    for ch in session.scalars(select(StockChange).where(StockChange.id > cur.position)
                              .order_by(StockChange.id).limit(CHUNK)):
        cur.position = ch.id
        if ch.previous_stock is None or ch.previous_stock > 0 or not ch.stock or ch.stock <= 0:
            continue
        # Only views while the product was out of stock: the customer wanted it and could not have it.
        gone = session.scalar(select(func.max(StockChange.changed_at)).where(
            StockChange.sku == ch.sku, StockChange.id < ch.id, StockChange.stock <= 0))
        who = _audience(session, entry, [ch.sku], now, viewed_since=gone)
        n += _enter_many(session, tactic, sorted(who), now, f"stock:{ch.id}",
                         f"{ch.sku} is back in stock ({ch.stock} available)", key=ch.sku,
                         entry={"sku": ch.sku, "stock": ch.stock}, max_per_day=entry.max_per_day)
    return n


def _new_products(session: Session, tactic: S.Tactic, entry: S.CatalogEntry, now: dt.datetime) -> int:
    from emma.predict import service as predict  # lazily: the scoring stack is heavy to import

    cur = _catalog_cursor(session, f"catalog:{tactic.id}:products", Product.id)
    if cur is None:
        return 0
    n = 0
    affinities: dict[str, Any] | None = None  # built once per scan, on the first product that needs it
    for p in session.scalars(select(Product).where(Product.id > cur.position).order_by(Product.id).limit(CHUNK)):
        cur.position = p.id
        attrs = p.attributes or {}
        info: dict[str, Any] = {"sku": p.sku, "name": p.name, "category": p.category}
        if entry.category and not (p.category or "").startswith(entry.category):
            continue
        if entry.change == "successor_launched":
            preds = _predecessors(session, p)
            if not preds:
                continue
            who = _audience(session, entry.model_copy(update={"audience": "bought"}), sorted(preds), now)
            who -= _audience(session, entry.model_copy(update={"audience": "bought"}), [p.sku], now)
            first = min(preds)
            info.update(predecessor_sku=first, predecessor_name=preds[first])
            reason = f"{p.sku} ({p.name}) succeeds {', '.join(sorted(preds))}, which the customer bought"
        elif entry.change == "upcoming_launch":
            launch = _iso_date(attrs.get("launch_date"))
            if launch is None or launch <= now.astimezone(dt.UTC).date():
                continue
            who = predict.early_adopters(session=session, min_score=entry.min_score)
            info["launch_date"] = launch.isoformat()
            reason = f"{p.sku} ({p.name}) launches on {launch.isoformat()}"
        else:
            if affinities is None:
                affinities = predict.affinity_index(session=session)
            who = _category_audience(session, entry, p, affinities)
            reason = f"new product {p.sku} ({p.name}) in {p.category}"
        n += _enter_many(session, tactic, sorted(who), now, f"product:{p.id}", reason, key=p.sku,
                         entry=info, max_per_day=entry.max_per_day)
    return n


def _predecessors(session: Session, p: Product) -> dict[str, str]:
    """sku -> name of the products p succeeds: its own predecessor_sku, or products naming it as successor_sku."""
    attrs = p.attributes or {}
    out: dict[str, str] = {}
    named = attrs.get("predecessor_sku") or attrs.get("successor_of")
    if named:
        out[str(named)] = str(session.scalar(select(Product.name).where(Product.sku == str(named))) or named)
    for sku, name in session.execute(select(Product.sku, Product.name).where(
            Product.attributes["successor_sku"].as_string() == p.sku, Product.sku != p.sku)):
        out[sku] = name
    return out


def _iso_date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


def _category_audience(session: Session, entry: S.CatalogEntry, product: Product,
                       affinities: dict[str, Any]) -> set[int]:
    """Customers with a predicted affinity for the product's category or one of its attributes (e.g.
    sustainability), and (unless audience is affinity) who bought in its top-level category."""
    category = product.category or ""
    attrs = product.attributes or {}
    flags = {k for k, v in attrs.items() if v is True or v in ("true", "yes", 1)}
    if "sustainable" in flags:
        flags.add("sustainability")  # the affinity the predictive layer reports for sustainable products
    top = category.split(" > ")[0] if category else None
    out: set[int] = set()
    for name, ids in affinities.items():
        if name in flags or _under(category, name) or (top and _under(name, top)):
            out.update(ids.tolist())
    if top and entry.audience != "affinity":
        out.update(session.scalars(select(Order.customer_id).join(OrderLine, OrderLine.order_pk == Order.id)
                                   .join(Product, Product.sku == OrderLine.sku)
                                   .where(or_(Product.category == top, Product.category.startswith(f"{top} > ")),
                                          Product.sku != product.sku).distinct()))
    return out


def _under(category: str, name: str) -> bool:
    """Whether the category path is name or lies below it ("Garten > Grills" is under "Garten")."""
    return bool(category) and (category == name or category.startswith(f"{name} > "))


# Store openings and scheduled events (emma.stores)

def _store(session: Session, tactic: S.Tactic, settings: Settings, now: dt.datetime) -> int:
    """Customers living near a store that opens, or an event that starts, within lead_days enter once per
    opening or event (an opening or event already past when the tactic is enabled starts nothing)."""
    from emma.stores import service as stores

    entry = tactic.entry
    assert isinstance(entry, S.StoreEntry)
    cur = _cursor(session, f"store:{tactic.id}")
    hour = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H")
    if cur.value == hour:
        return 0
    cur.value = hour
    radius = entry.radius_km or settings.store_radius_km
    n = 0
    for occ in stores.upcoming(session=session, kind=entry.change, now=now, lead_days=entry.lead_days):
        done = _cursor(session, f"store:{tactic.id}:{entry.change}:{occ['id']}")
        if done.value == "entered":
            continue
        near = stores.customers_near(session=session, lat=occ["lat"], lon=occ["lon"], postal_code=occ["postal_code"],
                                     country=occ["country"], radius_km=radius,
                                     postal_prefix=settings.store_postal_prefix)
        zones: dict[int, str | None] = {}
        ids = sorted(near) if entry.change == "event" else []
        for i in range(0, len(ids), 900):
            zones.update(session.execute(select(Customer.id, Customer.timezone)
                                         .where(Customer.id.in_(ids[i:i + 900]))).all())
        what = "opens" if entry.change == "opening" else "takes place"
        entries: list[Entry] = []
        for cid in sorted(near):
            km = near[cid]
            data = {**occ["entry"], "distance_km": km, "matched_by": "coordinates" if km is not None else "postal_code"}
            if entry.change == "event":  # the start in the customer's own time for the invitation
                tz = engine.timezone_of(Customer(timezone=zones.get(cid)), settings)
                local = dt.datetime.fromisoformat(data["starts_at"]).astimezone(tz)
                data.update(starts_date=local.date().isoformat(), starts_time=local.strftime("%H:%M"))
            where = f"{km:.1f} km away" if km is not None else "in the same postal area"
            when = data.get("opens_on") or data.get("starts_at", "")[:16].replace("T", " ") + " UTC"
            entries.append((cid, f"{entry.change}:{occ['key']}", f"{occ['name']} {what} {when}, {where}", occ["key"],
                            data))
        n += _enter_each(session, tactic, entries, now, inputs={cid: {"distance_km": near[cid]} for cid in near})
        done.value = "entered"
    return n


# Prediction thresholds

def _prediction(session: Session, tactic: S.Tactic, settings: Settings, now: dt.datetime) -> int:
    entry = tactic.entry
    assert isinstance(entry, S.PredictionEntry)
    latest = session.scalar(select(func.max(ScoreRun.id))) or 0
    cur = _cursor(session, f"prediction:{tactic.id}")
    if latest <= cur.position:
        return 0
    cur.position = latest
    col = getattr(Prediction, entry.field)
    cond = {"gt": col > entry.value, "gte": col >= entry.value, "lt": col < entry.value,
            "lte": col <= entry.value}[entry.op]
    marked = select(PredictionMark.customer_id).where(PredictionMark.tactic_id == tactic.id)
    # Fell back below the threshold: forget the mark, so crossing it again starts a new run.
    below = select(Prediction.customer_id).where(~cond | col.is_(None))
    session.execute(PredictionMark.__table__.delete().where(PredictionMark.tactic_id == tactic.id,
                                                            PredictionMark.customer_id.in_(below)))
    # The most valuable customers first (predicted CLV, unknown last): their runs, and so their messages, come
    # before the others' when a scoring run moves many across the threshold at once.
    crossed = list(session.execute(select(Prediction.customer_id, col, Prediction.clv)
                                   .where(cond, Prediction.customer_id.not_in(marked))
                                   .order_by(Prediction.clv.is_(None), Prediction.clv.desc(), Prediction.customer_id)))
    if crossed:
        insert_rows(session, PredictionMark, [{"tactic_id": tactic.id, "customer_id": cid, "crossed_at": now}
                                              for cid, _, _ in crossed])
    return _enter_each(session, tactic, [
        (cid, f"prediction:{latest}",
         f"{entry.field} {value:.2f} crossed {entry.op} {entry.value:g} (scoring run {latest}"
         + (f"; clv {float(clv):.2f}" if clv is not None else "") + ")", "",
         {entry.field: value, "clv": float(clv) if clv is not None else None}) for cid, value, clv in crossed], now)


# Attribute changes (trait history: identify calls, imports, update_attribute nodes)

def _attribute(session: Session, tactic: S.Tactic, settings: Settings, now: dt.datetime) -> int:
    entry = tactic.entry
    assert isinstance(entry, S.AttributeEntry)
    cur = _catalog_cursor(session, f"attribute:{tactic.id}", TraitChange.id)
    if cur is None:
        return 0
    rows = list(session.scalars(select(TraitChange).where(TraitChange.id > cur.position,
                                                          TraitChange.trait == entry.attribute)
                                .order_by(TraitChange.id).limit(CHUNK)))
    n = 0
    for ch in rows:
        cur.position = ch.id
        if ch.value is None:
            continue
        if entry.to is not None and not any(engine.compare("eq", ch.value, v) for v in entry.to):
            continue
        before = session.scalar(select(TraitChange.value).where(
            TraitChange.customer_id == ch.customer_id, TraitChange.trait == ch.trait, TraitChange.id < ch.id)
            .order_by(TraitChange.id.desc()).limit(1))
        if before is not None and engine.compare("eq", before, ch.value):
            continue  # the same value again: no change
        # Keyed by the new value: a further change while the first run is live starts its own run.
        n += _enter_many(session, tactic, [ch.customer_id], now, f"trait:{ch.id}",
                         f"{ch.trait} changed from {before!r} to {ch.value!r} ({ch.source})", key=str(ch.value)[:255],
                         entry={"attribute": ch.trait, "value": ch.value, "previous": before, "source": ch.source})
    return n
