"""Node kinds and inputs beyond the basic ones.

Waiting for a condition or for a (predicted) date, the consent double opt-in, the bandit; event counts and the
keyed order as condition fields; product lists (viewed, alternatives, complements, next best offer) filled into
message payloads from emma.predict, with a stated fallback when no model output exists.
The engine imports this module; it imports the engine lazily (inside functions) to keep that one-way at load.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from emma.automation import occasions
from emma.automation import schemas as S
from emma.automation.models import BanditArm, Run
from emma.catalog.models import Product
from emma.ingest.models import Event
from emma.orders.models import Order, OrderLine

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from emma.automation.engine import Ctx, Step

VIEW_WINDOW = dt.timedelta(hours=24)
LIST_LIMIT = 4


# Condition fields: events.<name> (a count, optionally filtered and windowed) and order.<fact>

def count_events(ctx: Ctx, cond: S.Condition) -> int:
    """How often the customer did the event named by cond.field (filtered by where, within the window)."""
    from emma.automation import engine

    name = cond.field.partition(".")[2] if cond.field else ""
    ids = engine.profile_ids(ctx.session, ctx.run.customer_id)
    stmt = select(Event.properties).where(Event.customer_id.in_(ids), Event.timestamp <= ctx.now)
    if name == "identify":
        stmt = stmt.where(Event.type == "identify")
    elif name == "*":  # any track event: activity of any kind
        stmt = stmt.where(Event.type == "track")
    else:
        stmt = stmt.where(Event.name == name)
    if cond.within:
        stmt = stmt.where(Event.timestamp > ctx.now - S.parse_duration(cond.within))
    if cond.since_entry and ctx.run.entered_at is not None:
        stmt = stmt.where(Event.timestamp > ctx.run.entered_at)
    if not cond.where:
        return int(ctx.session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    where = engine.resolve_where(cond.where, ctx.run)
    return sum(1 for props in ctx.session.scalars(stmt) if engine.props_match(props or {}, where))


def _order_id(ctx: Ctx) -> str | None:
    entry = (ctx.run.state or {}).get("entry", {})
    return str(entry.get("order_id") or ctx.run.key or "") or None


def order_facts(ctx: Ctx) -> dict[str, Any]:
    """The run's order (its key or the entry's order_id): total, skus, consumables and the predicted run-out date.

    The run-out date is the order date plus the product's runout_days times the quantity, the earliest over the
    consumable lines: the same rule the recommender uses to bring consumables back when they are due.
    """
    if "order_facts" in ctx._cache:
        return ctx._cache["order_facts"]
    facts: dict[str, Any] = {}
    oid = _order_id(ctx)
    order = ctx.session.scalar(select(Order).where(Order.order_id == oid)) if oid else None
    if order is not None:
        lines = list(ctx.session.execute(select(OrderLine.sku, OrderLine.quantity, OrderLine.unit_price)
                                         .where(OrderLine.order_pk == order.id).order_by(OrderLine.line_no)))
        attrs = {p.sku: p.attributes or {} for p in ctx.session.scalars(
            select(Product).where(Product.sku.in_([ln.sku for ln in lines])))} if lines else {}
        runout: list[tuple[dt.datetime, str]] = []
        for ln in lines:
            days = attrs.get(ln.sku, {}).get("runout_days")
            if str(days or "").isdigit() and int(days) > 0:
                runout.append((order.ordered_at + dt.timedelta(days=int(days) * max(1, ln.quantity)), ln.sku))
        first = min(runout) if runout else None
        facts = {"order_id": order.order_id, "total": float(order.revenue or 0), "skus": [ln.sku for ln in lines],
                 "item_count": sum(ln.quantity for ln in lines), "consumables": [s for _, s in sorted(runout)],
                 "runout_date": first[0].date().isoformat() if first else None,
                 "runout_sku": first[1] if first else None, "status": order.status,
                 "days_since": (ctx.now - order.ordered_at).days}
        facts.update(occasions.category_repeat(ctx, order, [ln.sku for ln in lines]))
    ctx._cache["order_facts"] = facts
    return facts


def field_value(ctx: Ctx, root: str, rest: str) -> Any:
    """Values of the roots this module adds: events.<name> (a count) and order.<fact>."""
    if root == "events":
        return count_events(ctx, S.Condition(field=f"events.{rest}", op="exists"))
    if root == "order":
        return order_facts(ctx).get(rest)
    if root == "product":
        return _path_of(product_facts(ctx), rest)
    if root == "occasion":
        return occasions.occasion_value(ctx, rest)
    return None


def _path_of(data: Any, path: str) -> Any:
    from emma.automation.context import plain
    from emma.automation.engine import _path

    return plain(_path(data, path))


def product_facts(ctx: Ctx) -> dict[str, Any]:
    """The run's product (the keyed or entry sku): its catalog columns, attributes, and upsell_count (how many
    accessories and also-bought products there are to show with it)."""
    if "product_facts" in ctx._cache:
        return ctx._cache["product_facts"]
    anchors = _anchor_skus(ctx)
    p = ctx.session.scalar(select(Product).where(Product.sku == anchors[0])) if anchors else None
    facts: dict[str, Any] = {}
    if p is not None:
        facts = {"sku": p.sku, "name": p.name, "category": p.category, "price": p.price, "stock": p.stock,
                 "active": p.active, "attributes": dict(p.attributes or {})}
        facts["upsell_count"] = len(_upsell(ctx, "$accessories")[0]) + len(_upsell(ctx, "$also_bought")[0])
    ctx._cache["product_facts"] = facts
    return facts


def consent_fact(ctx: Ctx, purpose: str, fact: str) -> Any:
    """consent.<purpose>.<fact>: recorded_at, age_days (since it was recorded), source."""
    from emma.consent.models import Consent

    row = ctx.session.execute(select(Consent.recorded_at, Consent.source).where(
        Consent.customer_id == ctx.run.customer_id, Consent.purpose == purpose)).first()
    if row is None:
        return None
    if fact == "age_days":
        return (ctx.now - row.recorded_at).days
    return {"recorded_at": row.recorded_at.isoformat(), "source": row.source}.get(fact)


# Waiting for a date from a field

def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and value:
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def date_target(node: S.WaitNode, ctx: Ctx) -> tuple[dt.datetime, str, dict[str, Any]]:
    """(until, why, inputs) of a wait until_date: the date at the local time, moved by the offset; else fallback.

    With several occasions, the earliest moment still ahead wins (within node.within, when given); when all of
    them have passed, the wait ends at once; when none has a date, it lasts the fallback."""
    assert node.until_date is not None and node.fallback is not None
    inputs: dict[str, Any] = {}
    found: list[tuple[dt.datetime, str]] = []
    for o in node.occasions():
        raw = ctx.value(o.field)
        inputs[o.field] = raw
        day = _as_date(raw)
        if day is None:
            continue
        offset = S.parse_offset(o.offset or "0d")
        local = dt.datetime.combine(day, S.parse_clock(node.at), tzinfo=ctx.tz) + offset
        shift = "" if offset == dt.timedelta() else f" {o.offset}"
        found.append((local.astimezone(dt.UTC), f"{o.field} {day.isoformat()}{shift}"))
    if not found:
        until = ctx.now + S.parse_duration(node.fallback)
        names = " or ".join(o.field for o in node.occasions())
        return until, f"no {names}: wait the fallback {node.fallback}", inputs
    if isinstance(node.until_date, str):
        until, what = found[0]
        return until, f"wait until {what} at {node.at} in {ctx.tz.key}", inputs
    horizon = ctx.now + S.parse_duration(node.within) if node.within else None
    ahead = sorted(f for f in found if f[0] > ctx.now and (horizon is None or f[0] <= horizon))
    others = ", ".join(w for _, w in sorted(found) if not ahead or w != ahead[0][1])
    if not ahead:
        if any(f[0] > ctx.now for f in found):  # all of them beyond the horizon
            until = ctx.now + S.parse_duration(node.fallback)
            return until, (f"no occasion within {node.within} ({others}): wait the fallback {node.fallback}"), inputs
        return ctx.now, f"every occasion has passed ({others})", inputs
    until, what = ahead[0]
    return until, (f"wait until the earliest occasion: {what} at {node.at} in {ctx.tz.key}"
                   + (f" (also: {others})" if others else "")), inputs


# wait_until: a condition checked at intervals

def wait_until(node: S.WaitUntilNode, ctx: Ctx) -> Step:
    from emma.automation.engine import Step, _describe

    run, now = ctx.run, ctx.now
    w = run.wait or {}
    first = w.get("node") != node.id
    until = now + S.parse_duration(node.timeout) if first else dt.datetime.fromisoformat(w["until"])
    used: dict[str, Any] = {}
    if ctx.evaluate(node.when, used):
        run.wait = None
        shown = ", ".join(f"{k} = {v!r}" for k, v in used.items())
        ctx.journal(node.id, "wait_until", "true", f"{_describe(node.when)} holds ({shown}) -> {node.on_true}", used)
        return Step(next=node.on_true)
    if now >= until:
        run.wait = None
        ctx.journal(node.id, "wait_until", "timeout",
                    f"{_describe(node.when)} did not hold within {node.timeout} -> {node.on_timeout}", used)
        return Step(next=node.on_timeout)
    if first:
        run.wait = {"node": node.id, "until": until.isoformat()}
        ctx.journal(node.id, "wait_until", "waiting", f"wait up to {node.timeout} until {_describe(node.when)} "
                    f"(checked every {node.check_every})", used)
    run.due_at, run.status = min(until, now + S.parse_duration(node.check_every)), "waiting"
    return Step(stop=True)


# double_opt_in: the consent domain's flow, started by a tactic

def double_opt_in(node: S.DoubleOptInNode, ctx: Ctx) -> Step:
    from emma.automation.engine import Step, _locale
    from emma.channels import service as channels
    from emma.channels.models import OutboxMessage
    from emma.consent import service as consent

    status = ctx.value(f"consent.{node.purpose}")
    if status == "granted":
        ctx.journal(node.id, "double_opt_in", "granted", f"{node.purpose} already granted: no confirmation needed")
        return Step(next=node.next)
    if not channels.address_of(customer=ctx.customer, channel="email", settings=ctx.settings):
        ctx.journal(node.id, "double_opt_in", "suppressed", "double opt-in not started: no email address")
        return Step(next=node.next)
    mid = consent.request_opt_in(session=ctx.session, customer_id=ctx.run.customer_id, settings=ctx.settings,
                                 purpose=node.purpose, source=f"tactic:{ctx.tactic.id}", now=ctx.now)
    msg = ctx.session.get(OutboxMessage, mid) if mid else None
    if msg is not None and msg.run_id is None:
        # The confirmation belongs to this run (its timeline and report); it is due at the run's now.
        msg.tactic_id, msg.run_id, msg.due_at = ctx.tactic.id, ctx.run.id, ctx.now
        msg.locale = msg.locale or _locale(ctx.customer, ["de", "en"], ctx.settings)
        msg.payload = {**(msg.payload or {}), "reason": f"{ctx.tactic.names.en} ({ctx.tactic.id}) step {node.id}"}
    ctx.journal(node.id, "double_opt_in", "requested",
                f"double opt-in for {node.purpose} requested (consent was {status or 'missing'}): "
                f"transactional email double_opt_in queued", {"message_id": mid, "channel": "email",
                                                               "template": "double_opt_in"})
    return Step(next=node.next)


# bandit: Thompson sampling over the variants' goal conversions

def _rng(*parts: Any) -> random.Random:
    seed = int.from_bytes(hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()[:8], "big")
    return random.Random(seed)


def arms(*, session: Session, tactic_id: str, node_id: str) -> dict[str, tuple[int, int]]:
    """variant -> (trials, conversions) of a bandit node so far."""
    rows = session.execute(select(BanditArm.variant, BanditArm.trials, BanditArm.conversions)
                           .where(BanditArm.tactic_id == tactic_id, BanditArm.node_id == node_id))
    return {v: (t, c) for v, t, c in rows}


def _count(session: Session, tactic_id: str, node_id: str, variant: str, now: dt.datetime, *, trial: bool) -> None:
    col = BanditArm.trials if trial else BanditArm.conversions
    key = (BanditArm.tactic_id == tactic_id, BanditArm.node_id == node_id, BanditArm.variant == variant)
    done = session.execute(update(BanditArm).where(*key).values({col: col + 1, BanditArm.updated_at: now}))
    if done.rowcount:
        return
    try:
        with session.begin_nested():
            session.add(BanditArm(tactic_id=tactic_id, node_id=node_id, variant=variant, trials=1 if trial else 0,
                                  conversions=0 if trial else 1, updated_at=now))
    except IntegrityError:  # another worker created the row meanwhile: count on it
        session.execute(update(BanditArm).where(*key).values({col: col + 1, BanditArm.updated_at: now}))


def bandit(node: S.BanditNode, ctx: Ctx) -> Step:
    from emma.automation.engine import Step, _set_state, _visit

    run = ctx.run
    visit = _visit(run, node.id)
    stats = arms(session=ctx.session, tactic_id=ctx.tactic.id, node_id=node.id)
    # Seeded by run, node and visit: a step repeated after a crash chooses the same variant.
    rng = _rng("bandit", ctx.tactic.id, node.id, run.id, visit)
    draws = []
    for v in node.variants:
        trials, conv = stats.get(v.name, (0, 0))
        draws.append((rng.betavariate(1 + conv, 1 + max(0, trials - conv)), v, trials, conv))
    best = max(draws, key=lambda d: d[0])
    shown = "; ".join(f"{v.name} {c}/{t} converted, sample {x:.3f}" for x, v, t, c in draws)
    if run.holdout:
        ctx.journal(node.id, "bandit", best[1].name, f"bandit: variant {best[1].name} ({shown}); control group: "
                    f"not counted -> {best[1].next}", {"variant": best[1].name})
        return Step(next=best[1].next)
    _count(ctx.session, ctx.tactic.id, node.id, best[1].name, ctx.now, trial=True)
    _set_state(run, bandits={**(run.state or {}).get("bandits", {}), node.id: best[1].name})
    ctx.journal(node.id, "bandit", best[1].name, f"bandit (Thompson sampling): variant {best[1].name} ({shown}) "
                f"-> {best[1].next}", {"variant": best[1].name, "arms": {v.name: [t, c] for _, v, t, c in draws}})
    return Step(next=best[1].next)


def bandit_converted(*, session: Session, run: Run, now: dt.datetime) -> None:
    """A converted run counts a conversion for each bandit variant it was given."""
    for node_id, variant in ((run.state or {}).get("bandits") or {}).items():
        _count(session, run.tactic_id, node_id, variant, now, trial=False)


HANDLERS: dict[str, Any] = {"wait_until": wait_until, "double_opt_in": double_opt_in, "bandit": bandit}


# Product lists for message payloads

def _products(ctx: Ctx, skus: list[str], limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
    from emma.automation.context import plain
    from emma.channels import service as channels

    found = channels.products_by_sku(session=ctx.session, skus=list(dict.fromkeys(skus)))
    out = [{k: plain(v) for k, v in found[s].items()} for s in dict.fromkeys(skus) if s in found]
    return out[:limit]


def _viewed_skus(ctx: Ctx) -> list[str]:
    from emma.automation import engine

    entry = (ctx.run.state or {}).get("entry", {})
    category = entry.get("category")
    since = ctx.run.entered_at - VIEW_WINDOW
    rows = ctx.session.scalars(select(Event.properties).where(
        Event.customer_id.in_(engine.profile_ids(ctx.session, ctx.run.customer_id)), Event.name == "Product Viewed",
        Event.timestamp >= since, Event.timestamp <= ctx.now).order_by(Event.id.desc()))
    skus = [str(p.get("sku")) for p in rows if p and p.get("sku")
            and (category is None or str(p.get("category")) == str(category))]
    return list(dict.fromkeys(skus))


def _recommend(ctx: Ctx, context: str | None, k: int = 12) -> list[str]:
    from emma.predict import service as predict

    try:
        return [r.sku for r in predict.recommend(session=ctx.session, customer_id=ctx.run.customer_id, k=k,
                                                  context=context)]
    except Exception:  # noqa: BLE001 - a model read that fails must not stop the message; the fallback follows
        return []


def _in_category(ctx: Ctx, category: str | None, exclude: set[str]) -> list[str]:
    stmt = (select(Product.sku, func.count(OrderLine.id)).outerjoin(OrderLine, OrderLine.sku == Product.sku)
            .where(Product.active.is_(True), (Product.stock.is_(None)) | (Product.stock > 0))
            .group_by(Product.sku).order_by(func.count(OrderLine.id).desc(), Product.sku))
    if category:
        stmt = stmt.where(Product.category == category)
    return [s for s, _ in ctx.session.execute(stmt.limit(50 + len(exclude))) if s not in exclude]


def _category_of(ctx: Ctx, skus: list[str]) -> str | None:
    if not skus:
        return None
    return ctx.session.scalar(select(Product.category).where(Product.sku == skus[0]))


def product_list(ref: str, ctx: Ctx) -> tuple[Any, str]:
    """The value of a payload reference ($viewed, $alternatives, $bought, $consumables, $complements,
    $next_best_offer, $recommendations) and a note on where it came from (the journal says when a fallback was used)."""
    if ref == "$viewed":
        skus = _viewed_skus(ctx)
        return _products(ctx, skus, 6), f"{len(skus)} viewed product(s)"
    if ref == "$alternatives":
        viewed = _viewed_skus(ctx)
        category = (ctx.run.state or {}).get("entry", {}).get("category") or _category_of(ctx, viewed)
        model = [s for s in _recommend(ctx, f"product:{viewed[0]}" if viewed else None) if s not in viewed]
        same = set(_in_category(ctx, category, set(viewed)))
        picked = [s for s in model if s in same]
        note = f"{len(picked)} alternative(s) from the recommender"
        if len(picked) < LIST_LIMIT:
            picked += [s for s in _in_category(ctx, category, set(viewed) | set(picked))]
            note += f"; filled with best sellers of {category or 'the shop'}"
        return _products(ctx, picked), note
    if ref == "$bought":
        return _products(ctx, order_facts(ctx).get("skus") or [], 10), "the order's products"
    if ref == "$consumables":
        consumables = order_facts(ctx).get("consumables") or []
        return _products(ctx, consumables), "the order's consumables, soonest run-out first"
    if ref == "$complements":
        bought = order_facts(ctx).get("skus") or []
        cats = {c for c in ctx.session.scalars(select(Product.category).where(Product.sku.in_(bought))) if c}
        acc: list[str] = []
        for p in ctx.session.scalars(select(Product).where(Product.sku.in_(bought))):
            acc += [str(a) for a in ((p.attributes or {}).get("accessory_skus") or []) if str(a) not in bought]
        model = [s for sku in bought[:3] for s in _recommend(ctx, f"product:{sku}") if s not in bought]
        other = {s for s, c in ctx.session.execute(select(Product.sku, Product.category)
                                                   .where(Product.sku.in_(model)))
                 if c not in cats} if model else set()
        picked = list(dict.fromkeys(acc + [s for s in model if s in other]))
        note = f"{len(acc)} accessory(ies) and {len(picked) - len(acc)} co-purchase complement(s)"
        if not picked:
            picked = [s for s in _in_category(ctx, None, set(bought))
                      if ctx.session.scalar(select(Product.category).where(Product.sku == s)) not in cats]
            note = "no accessories or co-purchase data for the order: best sellers from other categories"
        return _products(ctx, picked), note
    if ref in ("$accessories", "$also_bought"):
        return _upsell(ctx, ref)
    if ref == "$next_best_offer":
        p = ctx.prediction()
        sku = p.next_best_offer if p is not None else None
        found = _products(ctx, [sku]) if sku else []
        if found:
            return {"product": found[0], "text": None}, f"next best offer {sku} (prediction)"
        recs = _recommend(ctx, None, 4)
        found = _products(ctx, recs) or _products(ctx, _in_category(ctx, None, set()))
        if found:
            why = "first recommendation" if recs else "best seller"
            return {"product": found[0], "text": None}, f"no next-best-offer prediction: the {why} instead"
        return None, "no next-best-offer prediction and no products to offer"
    if ref == "$recommendations":
        recs = _recommend(ctx, None, LIST_LIMIT)
        if recs:
            return _products(ctx, recs), "recommendations from the recommender"
        return _products(ctx, _in_category(ctx, None, set())), "no recommendations for the customer: best sellers"
    raise KeyError(ref)


PRODUCT_REFS = ("$viewed", "$alternatives", "$bought", "$consumables", "$complements", "$next_best_offer",
                "$recommendations", "$accessories", "$also_bought")


def _anchor_skus(ctx: Ctx) -> list[str]:
    """The product(s) an in-session run is about: the keyed sku, else the entry's sku or its cart's skus."""
    entry = (ctx.run.state or {}).get("entry", {})
    sku = entry.get("sku") or (ctx.run.key if ctx.run.key and not entry.get("cart_id") else None)
    if sku:
        return [str(sku)]
    cart = ctx.cart() or {}
    return [str(s) for s in cart.get("skus") or []]


def _upsell(ctx: Ctx, ref: str) -> tuple[list[str], str]:
    """skus for an on-site upsell: catalog accessories of the anchor product(s), or what others also bought
    (the co-purchase relations of the last scoring run, via emma.predict)."""
    anchors = _anchor_skus(ctx)
    if not anchors:
        return [], "no product to relate to"
    if ref == "$accessories":
        acc: list[str] = []
        for p in ctx.session.scalars(select(Product).where(Product.sku.in_(anchors))):
            acc += [str(a) for a in ((p.attributes or {}).get("accessory_skus") or []) if str(a) not in anchors]
        sellable = set(ctx.session.scalars(select(Product.sku).where(
            Product.sku.in_(acc), Product.active.is_(True), Product.stock.is_(None) | (Product.stock > 0))))
        found = [s for s in dict.fromkeys(acc) if s in sellable][:6]
        return found, f"{len(found)} accessory(ies) of {', '.join(anchors)} from the catalog"
    model = [s for a in anchors[:3] for s in _recommend(ctx, f"product:{a}") if s not in anchors]
    found = list(dict.fromkeys(model))[:6]
    if found:
        return found, f"{len(found)} product(s) others also bought, from the co-purchase model"
    return [], "no co-purchase data yet (no scoring run): nothing under 'also bought'"
