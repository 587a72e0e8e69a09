"""Rules compiled to SQLAlchemy Core: one boolean expression over `customers`, for counts and member lists.

Every user value travels as a bind parameter. The few constructs that differ between SQLite and PostgreSQL
(JSON access, array membership, substring search, byte-wise text order) are small elements compiled per
dialect, so one query object runs on both. Each condition is two-valued (never NULL), so `not` is exact.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    and_,
    cast,
    extract,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.functions import FunctionElement

from emma.catalog.models import Product
from emma.consent.models import Consent
from emma.ingest.models import Event
from emma.orders.models import Cart, CartItem, Order, OrderLine, WishlistItem
from emma.predict.models import Prediction
from emma.profiles.models import Customer
from emma.segments import predicate
from emma.segments import rules as r

# --- dialect-specific elements ------------------------------------------------------------------------------
# Arguments: the JSON column, the SQLite path ('$."a"."b"'), then the keys one by one (PostgreSQL).


def _json_args(col: Any, keys: tuple[str, ...]) -> list[Any]:
    path = "$" + "".join(f'."{k}"' for k in keys)
    return [col, literal(path, String), *(literal(k, String) for k in keys)]


def _parts(compiler: Any, element: Any, **kw: Any) -> tuple[str, str, list[str]]:
    args = [compiler.process(a, **kw) for a in element.clauses]
    return args[0], args[1], args[2:]


def _pg_at(col: str, keys: list[str], text: bool = False) -> str:
    if not keys:
        return f"({col} #>> '{{}}')" if text else col
    return f"jsonb_extract_path{'_text' if text else ''}({col}, {', '.join(keys)})"


class json_text(FunctionElement):
    """The value at a JSON path if it is a string, else NULL."""

    type = String()
    inherit_cache = True


class json_number(FunctionElement):
    type = Float()
    inherit_cache = True


class json_bool(FunctionElement):
    type = Boolean()
    inherit_cache = True


class json_present(FunctionElement):
    """True when the path holds a value other than JSON null."""

    type = Boolean()
    inherit_cache = True


@compiles(json_text, "sqlite")
def _jt_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    col, path, _ = _parts(compiler, element, **kw)
    return f"CASE WHEN json_type({col}, {path}) = 'text' THEN json_extract({col}, {path}) END"


@compiles(json_text, "postgresql")
def _jt_pg(element: Any, compiler: Any, **kw: Any) -> str:
    col, _, keys = _parts(compiler, element, **kw)
    return f"CASE WHEN jsonb_typeof({_pg_at(col, keys)}) = 'string' THEN {_pg_at(col, keys, text=True)} END"


@compiles(json_number, "sqlite")
def _jn_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    col, path, _ = _parts(compiler, element, **kw)
    return f"CASE WHEN json_type({col}, {path}) IN ('integer', 'real') THEN json_extract({col}, {path}) END"


@compiles(json_number, "postgresql")
def _jn_pg(element: Any, compiler: Any, **kw: Any) -> str:
    col, _, keys = _parts(compiler, element, **kw)
    # CASE guarantees the cast only ever sees numbers.
    return (f"CASE WHEN jsonb_typeof({_pg_at(col, keys)}) = 'number' "
            f"THEN CAST({_pg_at(col, keys, text=True)} AS DOUBLE PRECISION) END")


@compiles(json_bool, "sqlite")
def _jb_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    col, path, _ = _parts(compiler, element, **kw)
    return f"CASE json_type({col}, {path}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END"


@compiles(json_bool, "postgresql")
def _jb_pg(element: Any, compiler: Any, **kw: Any) -> str:
    col, _, keys = _parts(compiler, element, **kw)
    return (f"CASE WHEN jsonb_typeof({_pg_at(col, keys)}) = 'boolean' "
            f"THEN {_pg_at(col, keys, text=True)} = 'true' END")


@compiles(json_present, "sqlite")
def _jp_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    col, path, _ = _parts(compiler, element, **kw)
    return f"(COALESCE(json_type({col}, {path}), 'null') != 'null')"


@compiles(json_present, "postgresql")
def _jp_pg(element: Any, compiler: Any, **kw: Any) -> str:
    col, _, keys = _parts(compiler, element, **kw)
    return f"(COALESCE(jsonb_typeof({_pg_at(col, keys)}), 'null') != 'null')"


class json_array_has(FunctionElement):
    """True when the path holds an array with an element equal to the needle (of the needle's JSON type).

    Arguments: column, path, needle, needle as a JSON array text, SQLite json_each types, keys..."""

    type = Boolean()
    inherit_cache = True


def array_has(col: Any, keys: tuple[str, ...], needle: Any) -> json_array_has:
    types = "true false" if isinstance(needle, bool) else "integer real" if isinstance(needle, int | float) else "text"
    col_, path, *key_args = _json_args(col, keys)
    return json_array_has(col_, path, literal(needle), literal(json.dumps([needle]), String),
                          literal(types, String), *key_args)


@compiles(json_array_has, "sqlite")
def _jah_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    args = [compiler.process(a, **kw) for a in element.clauses]
    col, path, needle, _, types = args[:5]
    return (f"(COALESCE(json_type({col}, {path}), '') = 'array' AND EXISTS (SELECT 1 FROM json_each({col}, {path}) "
            f"AS je WHERE instr(' ' || {types} || ' ', ' ' || je.type || ' ') > 0 AND je.value = {needle}))")


@compiles(json_array_has, "postgresql")
def _jah_pg(element: Any, compiler: Any, **kw: Any) -> str:
    args = [compiler.process(a, **kw) for a in element.clauses]
    col, keys, needle_json = args[0], args[5:], args[3]
    at = _pg_at(col, keys)
    return f"(COALESCE(jsonb_typeof({at}), '') = 'array' AND {at} @> CAST({needle_json} AS JSONB))"


class has_substring(FunctionElement):
    """Case-sensitive substring test (LIKE would treat % and _ as wildcards, and differs in case per dialect)."""

    type = Boolean()
    inherit_cache = True


@compiles(has_substring, "sqlite")
def _hs_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    hay, needle = (compiler.process(a, **kw) for a in element.clauses)
    return f"(instr({hay}, {needle}) > 0)"


@compiles(has_substring, "postgresql")
def _hs_pg(element: Any, compiler: Any, **kw: Any) -> str:
    hay, needle = (compiler.process(a, **kw) for a in element.clauses)
    return f"(strpos({hay}, {needle}) > 0)"


class bytewise(FunctionElement):
    """Text ordered by code point on both dialects (PostgreSQL would otherwise use the database's locale)."""

    type = String()
    inherit_cache = True


@compiles(bytewise, "sqlite")
def _bw_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return compiler.process(next(iter(element.clauses)), **kw)


@compiles(bytewise, "postgresql")
def _bw_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return f'({compiler.process(next(iter(element.clauses)), **kw)} COLLATE "C")'


# --- tests on values ---------------------------------------------------------------------------------------

def _compare(expr: Any, op: str, arg: Any, kind: str, now: dt.datetime) -> ColumnElement[bool]:
    ordered = bytewise(expr) if kind in (r.STR, r.ENUM) else expr
    if op == "eq":
        return expr == arg
    if op == "ne":
        return expr != arg
    if op == "lt":
        return ordered < arg
    if op == "lte":
        return ordered <= arg
    if op == "gt":
        return ordered > arg
    if op == "gte":
        return ordered >= arg
    if op == "in":
        return expr.in_(list(arg))
    if op == "not_in":
        return expr.not_in(list(arg))
    if op == "between":
        return and_(ordered >= arg[0], ordered <= arg[1])
    if op == "contains":
        return has_substring(expr, literal(arg, String))
    if op in r.RELATIVE:
        lo, hi, inclusive = r.relative_range(op, arg, kind, now)
        upper = expr <= hi if inclusive else expr < hi
        return and_(expr >= lo, upper) if lo is not None else upper
    raise AssertionError(op)


def check(expr: Any, test: r.Test, kind: str, now: dt.datetime) -> ColumnElement[bool]:
    """The SQL form of predicate.check for a typed column or expression."""
    conds = []
    for op, arg in test.ops:
        if op == "exists":
            conds.append(expr.is_not(None) if arg else expr.is_(None))
        else:
            conds.append(and_(expr.is_not(None), _compare(expr, op, arg, kind, now)))
    return and_(true(), *conds)


def check_json(col: Any, keys: tuple[str, ...], test: r.Test, now: dt.datetime) -> ColumnElement[bool]:
    """The SQL form of predicate.check for a JSON value: typed by the literal it is compared with."""
    conds = []
    for op, arg in test.ops:
        if op == "exists":
            present = json_present(*_json_args(col, keys))
            conds.append(present if arg else not_(present))
            continue
        literal_ = arg[0] if op in ("in", "not_in", "between") else arg
        if op == "contains":
            has = array_has(col, keys, arg)
            if isinstance(arg, str):
                text = json_text(*_json_args(col, keys))
                has = or_(has, and_(text.is_not(None), has_substring(text, literal(arg, String))))
            conds.append(has)
            continue
        cls = predicate._class(literal_)
        element = json_text if cls == r.STR else json_number if cls == r.NUM else json_bool
        value = element(*_json_args(col, keys))
        conds.append(and_(value.is_not(None), _compare(value, op, arg, cls, now)))
    return and_(true(), *conds)


def _none_of(base: Select, key: Any) -> ColumnElement[bool]:
    """No row of base belongs to the customer: NOT EXISTS, which PostgreSQL runs as an anti-join at any size
    (NOT IN over a subquery falls back to a nested scan once the id set outgrows work_mem)."""
    return not_(base.where(key == Customer.id).exists())


def _grouped(base: Select, agg: Any, test: r.Test, kind: str, empty: Any, now: dt.datetime,
             key: Any) -> ColumnElement[bool]:
    """Customers whose aggregate over base's rows passes test; those without rows count as `empty`."""
    if predicate.check(test, empty, kind, now):
        return _none_of(base.group_by(key).having(not_(check(agg, test, kind, now))), key)
    return Customer.id.in_(base.group_by(key).having(check(agg, test, kind, now)))


def _window(col: Any, window: r.Window, now: dt.datetime) -> ColumnElement[bool]:
    lo, hi, inclusive = r.window_bounds(window, now)
    upper = col <= hi if inclusive else col < hi
    return and_(col >= lo, upper) if lo is not None else upper


def _in_category(category: str) -> ColumnElement[bool]:
    prefix = r.category_prefix(category)
    return or_(Product.category == category,
               func.substr(Product.category, 1, len(prefix)) == literal(prefix, String))


def _sku_filter(sku_col: Any, skus: tuple[str, ...], category: str | None) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if skus:
        conds.append(sku_col.in_(list(skus)))
    if category is not None:
        conds.append(sku_col.in_(select(Product.sku).where(_in_category(category))))
    return conds


# --- the compiler ------------------------------------------------------------------------------------------

def condition(node: r.Node, *, now: dt.datetime,
              default_timezone: str = predicate.DEFAULT_TIMEZONE) -> ColumnElement[bool]:
    """A boolean expression over `customers` that holds for the customers matching the rule at time now."""
    if isinstance(node, r.All):
        return and_(*(condition(n, now=now, default_timezone=default_timezone) for n in node.items))
    if isinstance(node, r.AnyOf):
        return or_(*(condition(n, now=now, default_timezone=default_timezone) for n in node.items))
    if isinstance(node, r.Not):
        return not_(condition(node.item, now=now, default_timezone=default_timezone))
    if isinstance(node, r.Field):
        return _field(node, now)
    if isinstance(node, r.EventCond):
        base = select(Event.customer_id).where(Event.customer_id.is_not(None), Event.name == node.name,
                                               _window(Event.timestamp, node.window, now),
                                               *(check_json(Event.properties, keys, test, now)
                                                 for keys, test in node.where))
        if node.count.ops == (("gte", 1),):
            return Customer.id.in_(base)
        if node.count.ops == (("eq", 0),):
            return _none_of(base, Event.customer_id)
        return _grouped(base, func.count(), node.count, r.INT, 0, now, Event.customer_id)
    if isinstance(node, r.OrdersCond):
        base = select(Order.customer_id).where(Order.status.not_in(r.ORDER_EXCLUDED),
                                               _window(Order.ordered_at, node.window, now))
        if node.measure == "count":
            return _grouped(base, func.count(), node.test, r.INT, 0, now, Order.customer_id)
        revenue = cast(func.round(func.coalesce(func.sum(Order.revenue), 0), 2), Float)
        return _grouped(base, revenue, node.test, r.NUM, 0.0, now, Order.customer_id)
    if isinstance(node, r.BoughtCond):
        lines = (select(Order.customer_id).join(OrderLine, OrderLine.order_pk == Order.id)
                 .where(Order.status.not_in(r.ORDER_EXCLUDED), _window(Order.ordered_at, node.window, now),
                        *_sku_filter(OrderLine.sku, node.skus, node.category)))
        return Customer.id.in_(lines)
    if isinstance(node, r.CartCond):
        return Customer.id.in_(_carts(node, now))
    if isinstance(node, r.WishlistCond):
        return Customer.id.in_(select(WishlistItem.customer_id).where(
            WishlistItem.removed_at.is_(None), *_sku_filter(WishlistItem.sku, node.skus, node.category)))
    if isinstance(node, r.BirthdayCond):
        return _birthday(node, now, default_timezone)
    raise TypeError(f"not a rule node: {node!r}")


def _field(node: r.Field, now: dt.datetime) -> ColumnElement[bool]:
    if node.source == "profile":
        return check(Customer.__table__.c[node.name], node.test, node.kind, now)
    if node.source == "birthday_part":
        return check(extract(node.name, Customer.birthday), node.test, node.kind, now)
    if node.source == "attribute":
        return check_json(Customer.attributes, node.keys, node.test, now)
    if node.source in ("consent", "consent_recorded"):
        col = Consent.status if node.source == "consent" else Consent.recorded_at
        return _single_row(select(Consent.customer_id).where(Consent.purpose == node.name), col, node, now,
                           Consent.customer_id)
    if node.source == "prediction":
        col = Prediction.__table__.c[node.name]
        base = select(Prediction.customer_id)
        if node.kind == r.JSON:
            inner = check_json(col, node.keys, node.test, now)
            if predicate.check(node.test, None, r.JSON, now):
                return _none_of(base.where(not_(inner)), Prediction.customer_id)
            return Customer.id.in_(base.where(inner))
        return _single_row(base, col, node, now, Prediction.customer_id)
    if node.source == "order_date":
        base = select(Order.customer_id).where(Order.status.not_in(r.ORDER_EXCLUDED), Order.ordered_at <= now)
        agg = func.min(Order.ordered_at) if node.name == "first_order" else func.max(Order.ordered_at)
        return _grouped(base, agg, node.test, r.DATETIME, None, now, Order.customer_id)
    raise AssertionError(node.source)


def _single_row(base: Select, col: Any, node: r.Field, now: dt.datetime, key: Any) -> ColumnElement[bool]:
    """A value from a table with at most one row per customer (consent per purpose, predictions)."""
    if predicate.check(node.test, None, node.kind, now):
        return _none_of(base.where(not_(check(col, node.test, node.kind, now))), key)
    return Customer.id.in_(base.where(check(col, node.test, node.kind, now)))


def _carts(node: r.CartCond, now: dt.datetime) -> Select:
    n_items = select(func.count()).where(CartItem.cart_pk == Cart.id).scalar_subquery()
    conds = [Cart.status.in_(r.CART_STATUSES), n_items >= 1, check(n_items, node.items, r.INT, now)]
    if node.value is not None:
        total = select(cast(func.round(func.coalesce(func.sum(CartItem.quantity * CartItem.price), 0), 2), Float)
                       ).where(CartItem.cart_pk == Cart.id).scalar_subquery()
        conds.append(check(total, node.value, r.NUM, now))
    if node.idle_minutes is not None:
        conds.append(check(Cart.updated_at, r.idle_as_time(node.idle_minutes, now), r.DATETIME, now))
    if node.skus:
        conds.append(select(CartItem.id).where(CartItem.cart_pk == Cart.id, CartItem.sku.in_(list(node.skus))).exists())
    return select(Cart.customer_id).where(*conds)


def _birthday(node: r.BirthdayCond, now: dt.datetime, default_timezone: str) -> ColumnElement[bool]:
    """Per local date that some time zone has at `now`, the zones on that date and their birthdays."""
    by_day: dict[tuple[tuple[int, int], ...], list[str]] = defaultdict(list)
    for zone in sorted(predicate.zones()):
        local = now.astimezone(ZoneInfo(zone)).date()
        by_day[tuple(r.birthday_days(local, node.in_days))].append(zone)
    default_local = now.astimezone(ZoneInfo(default_timezone)).date()
    default_days = tuple(r.birthday_days(default_local, node.in_days))
    month, day = extract("month", Customer.birthday), extract("day", Customer.birthday)
    ors = []
    for days, zones_ in by_day.items():
        in_zone = and_(Customer.timezone.is_not(None), Customer.timezone.in_(zones_))  # never NULL
        if days == default_days:
            in_zone = or_(in_zone, Customer.timezone.is_(None), Customer.timezone.not_in(sorted(predicate.zones())))
        ors.append(and_(in_zone, or_(*(and_(month == m, day == d) for m, d in days))))
    if default_days not in by_day:
        unknown = or_(Customer.timezone.is_(None), Customer.timezone.not_in(sorted(predicate.zones())))
        ors.append(and_(unknown, or_(*(and_(month == m, day == d) for m, d in default_days))))
    return and_(Customer.birthday.is_not(None), or_(false(), *ors))


def members_query(node: r.Node, *, now: dt.datetime, default_timezone: str = predicate.DEFAULT_TIMEZONE) -> Select:
    """SELECT customers.id of the rule's members, in id order (merged profiles are never members)."""
    return (select(Customer.id)
            .where(Customer.merged_into_id.is_(None), condition(node, now=now, default_timezone=default_timezone))
            .order_by(Customer.id))


def count_query(node: r.Node, *, now: dt.datetime, default_timezone: str = predicate.DEFAULT_TIMEZONE) -> Select:
    """SELECT count(*) of the rule's members."""
    return (select(func.count()).select_from(Customer)
            .where(Customer.merged_into_id.is_(None), condition(node, now=now, default_timezone=default_timezone)))


__all__ = ["condition", "members_query", "count_query", "check", "check_json", "Integer"]
