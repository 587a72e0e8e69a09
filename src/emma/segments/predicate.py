"""Rules evaluated in memory for single customers: load their facts once, then test any number of rules.

The meaning of every condition is the one the SQL compiler gives it (tests/segments compare both on random
rules and data): a missing value matches no comparison, only `exists: false`; JSON values match only literals
of their own type; time windows end at `now`.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from sqlalchemy import Integer, String, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from emma.catalog.models import Product
from emma.consent.models import Consent
from emma.ingest.models import Event
from emma.orders.models import Cart, CartItem, Order, OrderLine, WishlistItem
from emma.predict.models import Prediction
from emma.profiles.models import Customer
from emma.segments import rules as r
from emma.segments.rules import in_window

DEFAULT_TIMEZONE = "Europe/Berlin"
_CHUNK = 500


@functools.cache
def zones() -> frozenset[str]:
    """The IANA time zone names a profile's timezone must be one of (others fall back to the default)."""
    return frozenset(available_timezones())


@dataclass
class Facts:
    """What the rules may look at for one customer, loaded in a few queries."""

    customer: dict[str, Any]
    consents: dict[str, str] = field(default_factory=dict)
    consent_times: dict[str, dt.datetime] = field(default_factory=dict)  # purpose -> recorded_at
    prediction: dict[str, Any] | None = None
    events: list[tuple[str, dt.datetime, dict[str, Any]]] = field(default_factory=list)
    orders: list[tuple[dt.datetime, str, Decimal, list[str]]] = field(default_factory=list)
    carts: list[tuple[str, dt.datetime, list[tuple[str, int, Decimal | None]]]] = field(default_factory=list)
    wishlist: list[str] = field(default_factory=list)
    categories: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Needs:
    """Which tables the rules read (so a refresh loads no more than it must)."""

    consents: bool = False
    prediction: bool = False
    event_names: frozenset[str] = frozenset()
    orders: bool = False
    carts: bool = False
    wishlist: bool = False
    categories: bool = False

    @classmethod
    def of(cls, nodes: Iterable[r.Node]) -> Needs:
        """The union of what the given rules read."""
        flags: dict[str, bool] = defaultdict(bool)
        names: set[str] = set()
        for root in nodes:
            for n in r.walk(root):
                if isinstance(n, r.Field):
                    flags["consents"] |= n.source in ("consent", "consent_recorded")
                    flags["prediction"] |= n.source == "prediction"
                    flags["orders"] |= n.source == "order_date"
                elif isinstance(n, r.EventCond):
                    names.add(n.name)
                elif isinstance(n, r.OrdersCond | r.BoughtCond):
                    flags["orders"] = True
                    flags["categories"] |= isinstance(n, r.BoughtCond) and n.category is not None
                elif isinstance(n, r.CartCond):
                    flags["carts"] = True
                elif isinstance(n, r.WishlistCond):
                    flags["wishlist"] = True
                    flags["categories"] |= n.category is not None
        return cls(event_names=frozenset(names), **flags)


def load_facts(*, session: Session, customer_ids: Iterable[int], needs: Needs) -> dict[int, Facts]:
    """Facts of the given customers that exist and were not merged into another profile."""
    ids = sorted(set(customer_ids))
    out: dict[int, Facts] = {}
    for start in range(0, len(ids), _CHUNK):
        out.update(_load_chunk(session, ids[start:start + _CHUNK], needs))
    return out


def _among_ids(dialect: str, column: Any) -> Any:
    """column IN :ids with a named parameter, so each statement is built once per dialect (see db.among)."""
    if dialect == "postgresql":
        return column.in_(select(func.unnest(bindparam("ids", type_=ARRAY(Integer)))))
    return column.in_(bindparam("ids", expanding=True))


class unindexed(FunctionElement):
    """The expression as is, but not usable as an index key on SQLite (unary +).

    Without statistics SQLite prefers the (name, timestamp) index over the customer index for
    `customer_id IN (...) AND name IN (...)`, and then reads every event of that name."""

    type = String()
    inherit_cache = True


@compiles(unindexed)
def _unindexed(element: Any, compiler: Any, **kw: Any) -> str:
    return compiler.process(next(iter(element.clauses)), **kw)


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return f"+{compiler.process(next(iter(element.clauses)), **kw)}"


@functools.cache
def _statements(dialect: str) -> dict[str, Any]:
    """The fact queries, built once; parameters: ids (customer ids), names (event names), skus."""
    of = functools.partial(_among_ids, dialect)
    c = Customer.__table__
    return {
        "customers": select(c).where(of(c.c.id), c.c.merged_into_id.is_(None)),
        "consents": select(Consent.customer_id, Consent.purpose, Consent.status, Consent.recorded_at)
        .where(of(Consent.customer_id)),
        "prediction": select(Prediction.__table__).where(of(Prediction.customer_id)),
        "events": select(Event.customer_id, Event.name, Event.timestamp, Event.properties)
        .where(of(Event.customer_id), unindexed(Event.name).in_(bindparam("names", expanding=True))),
        "orders": select(Order.id, Order.customer_id, Order.ordered_at, Order.status, Order.revenue, OrderLine.sku)
        .outerjoin(OrderLine, OrderLine.order_pk == Order.id).where(of(Order.customer_id)),
        "carts": select(Cart.id, Cart.customer_id, Cart.status, Cart.updated_at, CartItem.sku, CartItem.quantity,
                        CartItem.price).outerjoin(CartItem, CartItem.cart_pk == Cart.id).where(of(Cart.customer_id)),
        "wishlist": select(WishlistItem.customer_id, WishlistItem.sku).where(
            of(WishlistItem.customer_id), WishlistItem.removed_at.is_(None)),
        "categories": select(Product.sku, Product.category).where(Product.sku.in_(bindparam("skus", expanding=True))),
    }


def _load_chunk(session: Session, ids: list[int], needs: Needs) -> dict[int, Facts]:
    q = _statements(session.get_bind().dialect.name)
    cols = [col.name for col in Customer.__table__.columns]
    facts: dict[int, Facts] = {}
    for row in session.execute(q["customers"], {"ids": ids}):
        facts[row.id] = Facts(customer=dict(zip(cols, row, strict=True)))
    found = {"ids": list(facts)}
    if not facts:
        return facts
    if needs.consents:
        for cid, purpose, status, recorded_at in session.execute(q["consents"], found):
            facts[cid].consents[purpose] = status
            facts[cid].consent_times[purpose] = recorded_at
    if needs.prediction:
        pcols = [col.name for col in Prediction.__table__.columns]
        for row in session.execute(q["prediction"], found):
            facts[row.customer_id].prediction = dict(zip(pcols, row, strict=True))
    if needs.event_names:
        for cid, name, ts, props in session.execute(q["events"], {**found, "names": sorted(needs.event_names)}):
            facts[cid].events.append((name, ts, props if isinstance(props, dict) else {}))
    skus: set[str] = set()
    if needs.orders:
        orders: dict[int, tuple[dt.datetime, str, Decimal, list[str]]] = {}
        for pk, cid, at, status, revenue, sku in session.execute(q["orders"], found):
            order = orders.get(pk)
            if order is None:
                order = orders[pk] = (at, status, Decimal(str(revenue or 0)), [])
                facts[cid].orders.append(order)
            if sku is not None:
                order[3].append(sku)
                skus.add(sku)
    if needs.carts:
        carts: dict[int, tuple[str, dt.datetime, list[tuple[str, int, Decimal | None]]]] = {}
        for pk, cid, status, updated, sku, qty, price in session.execute(q["carts"], found):
            cart = carts.get(pk)
            if cart is None:
                cart = carts[pk] = (status, updated, [])
                facts[cid].carts.append(cart)
            if sku is not None:
                cart[2].append((sku, qty, None if price is None else Decimal(str(price))))
    if needs.wishlist:
        for cid, sku in session.execute(q["wishlist"], found):
            facts[cid].wishlist.append(sku)
            skus.add(sku)
    if needs.categories and skus:
        categories = dict(session.execute(q["categories"], {"skus": sorted(skus)}).all())
        for f in facts.values():
            f.categories = categories
    return facts


# --- evaluation ---------------------------------------------------------------------------------------------

def evaluate(node: r.Node, facts: Facts, *, now: dt.datetime, default_timezone: str = DEFAULT_TIMEZONE) -> bool:
    """Whether the customer whose facts are given matches the rule at time now."""
    if isinstance(node, r.All):
        return all(evaluate(n, facts, now=now, default_timezone=default_timezone) for n in node.items)
    if isinstance(node, r.AnyOf):
        return any(evaluate(n, facts, now=now, default_timezone=default_timezone) for n in node.items)
    if isinstance(node, r.Not):
        return not evaluate(node.item, facts, now=now, default_timezone=default_timezone)
    if isinstance(node, r.Field):
        return check(node.test, _field_value(node, facts, now), node.kind, now)
    if isinstance(node, r.EventCond):
        bounds = r.window_bounds(node.window, now)
        n = sum(1 for name, ts, props in facts.events
                if name == node.name and r.in_window(ts, bounds)
                and all(check(test, _json_at(props, keys), r.JSON, now) for keys, test in node.where))
        return check(node.count, n, r.INT, now)
    if isinstance(node, r.OrdersCond):
        bounds = r.window_bounds(node.window, now)
        chosen = [o for o in _orders(facts) if r.in_window(o[0], bounds)]
        if node.measure == "count":
            return check(node.test, len(chosen), r.INT, now)
        return check(node.test, float(round(sum((o[2] for o in chosen), Decimal(0)), 2)), r.NUM, now)
    if isinstance(node, r.BoughtCond):
        bounds = r.window_bounds(node.window, now)
        return any(_sku_matches(sku, node.skus, node.category, facts)
                   for at, _status, _rev, skus in _orders(facts) if r.in_window(at, bounds) for sku in skus)
    if isinstance(node, r.CartCond):
        return any(_cart_matches(node, cart, now) for cart in facts.carts)
    if isinstance(node, r.WishlistCond):
        return any(_sku_matches(sku, node.skus, node.category, facts) for sku in facts.wishlist)
    if isinstance(node, r.BirthdayCond):
        bday = facts.customer["birthday"]
        if bday is None:
            return False
        tz = facts.customer["timezone"]
        local = now.astimezone(ZoneInfo(tz if tz in zones() else default_timezone)).date()
        return (bday.month, bday.day) in r.birthday_days(local, node.in_days)
    raise TypeError(f"not a rule node: {node!r}")


def _orders(facts: Facts) -> list[tuple[dt.datetime, str, Decimal, list[str]]]:
    return [o for o in facts.orders if o[1] not in r.ORDER_EXCLUDED]


def _sku_matches(sku: str, skus: tuple[str, ...], category: str | None, facts: Facts) -> bool:
    if skus and sku not in skus:
        return False
    return category is None or r.in_category(facts.categories.get(sku), category)


def _cart_matches(node: r.CartCond, cart: tuple[str, dt.datetime, list[tuple[str, int, Decimal | None]]],
                  now: dt.datetime) -> bool:
    status, updated, items = cart
    if status not in r.CART_STATUSES or not items or not check(node.items, len(items), r.INT, now):
        return False
    if node.value is not None:
        total = sum((q * p for _s, q, p in items if p is not None), Decimal(0))
        if not check(node.value, float(round(total, 2)), r.NUM, now):
            return False
    if node.idle_minutes is not None and not check(r.idle_as_time(node.idle_minutes, now), updated, r.DATETIME, now):
        return False
    return not node.skus or any(s in node.skus for s, _q, _p in items)


def _json_at(value: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(k)
    return value


def _field_value(node: r.Field, facts: Facts, now: dt.datetime) -> Any:
    c = facts.customer
    if node.source == "profile":
        return c[node.name]
    if node.source == "birthday_part":
        return getattr(c["birthday"], node.name) if c["birthday"] is not None else None
    if node.source == "attribute":
        return _json_at(c["attributes"], node.keys)
    if node.source == "consent":
        return facts.consents.get(node.name)
    if node.source == "consent_recorded":
        return facts.consent_times.get(node.name)
    if node.source == "prediction":
        if facts.prediction is None:
            return None
        return _json_at(facts.prediction[node.name], node.keys) if node.keys else facts.prediction[node.name]
    if node.source == "order_date":
        times = [o[0] for o in _orders(facts) if o[0] <= now]
        if not times:
            return None
        return min(times) if node.name == "first_order" else max(times)
    raise AssertionError(node.source)


def _class(v: Any) -> str | None:
    if isinstance(v, bool):
        return r.BOOL
    if isinstance(v, int | float | Decimal):
        return r.NUM
    if isinstance(v, str):
        return r.STR
    return None


def check(test: r.Test, value: Any, kind: str, now: dt.datetime) -> bool:
    """Whether value passes every operator of test (see the module docstring for missing and JSON values)."""
    if isinstance(value, Decimal):
        value = float(value)
    return all(_op(op, arg, value, kind, now) for op, arg in test.ops)


def _op(op: str, arg: Any, v: Any, kind: str, now: dt.datetime) -> bool:
    if op == "exists":
        return (v is not None) == arg
    if v is None:
        return False
    if kind == r.JSON:
        if op == "contains":
            if isinstance(v, list):
                return any(_class(e) == _class(arg) and e == arg for e in v)
            return isinstance(v, str) and isinstance(arg, str) and arg in v
        literal = arg[0] if op in ("in", "not_in", "between") else arg
        if _class(v) != _class(literal):
            return False
    if op in r.RELATIVE:
        return in_window(v, r.relative_range(op, arg, kind, now))
    if op == "eq":
        return v == arg
    if op == "ne":
        return v != arg
    if op == "lt":
        return v < arg
    if op == "lte":
        return v <= arg
    if op == "gt":
        return v > arg
    if op == "gte":
        return v >= arg
    if op == "in":
        return v in arg
    if op == "not_in":
        return v not in arg
    if op == "between":
        return arg[0] <= v <= arg[1]
    if op == "contains":
        return arg in v
    raise AssertionError(op)
