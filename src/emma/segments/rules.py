"""The segment rule language: parsing and validation of YAML/JSON rules into a small typed tree.

A rule is a mapping. Logic: `all: [...]`, `any: [...]`, `not: {...}`. Everything else is a condition:

    country: {in: [DE, AT, CH]}                  profile fields, `attributes.<key>`, `birthday.month`
    consent.email_marketing: granted             consent per purpose (granted | revoked | pending)
    consent.email_marketing.recorded_at: {older_than_days: 700}   when it was recorded
    prediction.churn_probability: {gte: 0.6}     the latest predictions
    event: Product Viewed                        events, with where / within_days / older_than_days / count
    orders: {gte: 2}  /  revenue: {gte: 500}     orders (not cancelled or refunded), with a time window
    last_order: {older_than_days: 90}            first_order / last_order as dates
    bought: {category: Garten}                   sku or category (with sub-categories)
    cart: {idle_minutes: {gte: 60}}              an open cart with items
    wishlist: any                                the wishlist
    birthday: today                              in the customer's time zone

Every error names its path and the reason, e.g. `rule.all[2].within_days: must be a positive integer`.
See docs/segments.md for the whole language.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from emma.consent.models import PURPOSES, STATUSES
from emma.segments.exceptions import InvalidRule

# Value kinds. "json" values (custom attributes, event properties) are typed by the literal they are compared with.
STR, NUM, INT, BOOL, DATE, DATETIME, JSON, ENUM = "str", "num", "int", "bool", "date", "datetime", "json", "enum"

PROFILE_FIELDS: dict[str, tuple[str, str]] = {  # rule name -> (column, kind)
    "external_id": ("external_id", STR), "email": ("email", STR), "phone": ("phone", STR),
    "first_name": ("first_name", STR), "last_name": ("last_name", STR), "locale": ("locale", STR),
    "timezone": ("timezone", STR), "postal_code": ("postal_code", STR), "city": ("city", STR),
    "country": ("country", STR), "birthday": ("birthday", DATE), "created_at": ("created_at", DATETIME),
    "last_seen_at": ("last_seen_at", DATETIME), "anonymous": ("is_anonymous", BOOL),
    "lat": ("lat", NUM), "lon": ("lon", NUM),
}
BIRTHDAY_PARTS = ("year", "month", "day")
PREDICTION_FIELDS: dict[str, str] = {
    "clv": NUM, "churn_probability": NUM, "p_alive": NUM, "propensity_30d": NUM, "expected_orders": NUM,
    "expected_revenue": NUM, "incentive_uplift": NUM, "early_adopter": NUM, "best_send_hour": INT,
    "lifecycle_stage": STR, "preferred_channel": STR, "next_order_date": DATE, "as_of": DATETIME,
    "personalized": BOOL, "top_affinities": JSON, "recommendations": JSON,
}
ORDER_DATES = ("first_order", "last_order")

OPS_BY_KIND: dict[str, tuple[str, ...]] = {
    STR: ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "between", "contains", "exists"),
    NUM: ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "between", "exists"),
    INT: ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "between", "exists"),
    BOOL: ("eq", "ne", "exists"),
    DATE: ("eq", "ne", "lt", "lte", "gt", "gte", "between", "within_days", "older_than_days", "within_next_days",
           "exists"),
    DATETIME: ("lt", "lte", "gt", "gte", "between", "within_days", "older_than_days", "within_next_days", "exists"),
    JSON: ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "between", "contains", "exists"),
    ENUM: ("eq", "ne", "in", "not_in", "exists"),
}
ALL_OPS = ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "between", "contains", "exists",
           "within_days", "older_than_days", "within_next_days")
RELATIVE = ("within_days", "older_than_days", "within_next_days")
_KEY = re.compile(r"^[^\W\d]\w{0,63}$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # starts with a letter or _, so never an array index
CART_STATUSES = ("open", "checkout")  # a cart not yet ordered
ORDER_EXCLUDED = ("cancelled", "refunded")


@dataclass(frozen=True, slots=True)
class Test:
    """Operators on one value, all of which must hold. Values are already typed (date, datetime, ...)."""

    ops: tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class All:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class Field:
    """A value of the customer: source is profile | birthday_part | attribute | consent | consent_recorded |
    prediction | order_date."""

    source: str
    name: str  # column, birthday part, consent purpose, prediction column, first_order / last_order
    keys: tuple[str, ...]  # JSON path inside attributes (or inside a JSON prediction column)
    kind: str
    test: Test


@dataclass(frozen=True, slots=True)
class Window:
    within_days: int | None = None
    older_than_days: int | None = None


@dataclass(frozen=True, slots=True)
class EventCond:
    name: str
    where: tuple[tuple[tuple[str, ...], Test], ...]
    window: Window
    count: Test


@dataclass(frozen=True, slots=True)
class OrdersCond:
    measure: str  # count | revenue
    test: Test
    window: Window


@dataclass(frozen=True, slots=True)
class BoughtCond:
    skus: tuple[str, ...]
    category: str | None
    window: Window


@dataclass(frozen=True, slots=True)
class CartCond:
    items: Test
    value: Test | None
    idle_minutes: Test | None
    skus: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WishlistCond:
    skus: tuple[str, ...]
    category: str | None


@dataclass(frozen=True, slots=True)
class BirthdayCond:
    in_days: int  # 0 = today, in the customer's time zone


Node = All | AnyOf | Not | Field | EventCond | OrdersCond | BoughtCond | CartCond | WishlistCond | BirthdayCond


@dataclass
class _Errors:
    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        self.items.append((path, reason))


def parse(data: Any, *, root: str = "rule") -> Node:
    """Validate a rule (as loaded from YAML or JSON) and return its tree; raises InvalidRule with every error."""
    errors = _Errors()
    node = _node(data, root, errors)
    if errors.items or node is None:
        raise InvalidRule(errors.items or [(root, "is empty")])
    return node


def _typename(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "mapping"
    return type(v).__name__


def _expect_mapping(data: Any, path: str, errors: _Errors) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        errors.add(path, f"must be a mapping, not {_typename(data)}")
        return None
    if not data:
        errors.add(path, "must not be empty")
        return None
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        errors.add(path, f"keys must be text, not {_typename(bad[0])}")
        return None
    return data


_FAMILY_KEYS = {
    "event": ("event", "where", "within_days", "older_than_days", "count"),
    "did_not": ("did_not", "where", "within_days", "older_than_days"),
    "orders": ("orders", "within_days", "older_than_days"),
    "revenue": ("revenue", "within_days", "older_than_days"),
    "bought": ("bought", "within_days", "older_than_days"),
}


def _node(data: Any, path: str, errors: _Errors) -> Node | None:
    d = _expect_mapping(data, path, errors)
    if d is None:
        return None
    heads = [k for k in d if k in ("all", "any", "not", *_FAMILY_KEYS, "cart", "wishlist")]
    if len(heads) > 1:
        errors.add(path, f"has both {heads[0]!r} and {heads[1]!r}; put each condition in its own item of all/any")
        return None
    head = heads[0] if heads else None
    if head in ("all", "any", "not", "cart", "wishlist") and len(d) > 1:
        other = next(k for k in d if k != head)
        errors.add(f"{path}.{other}", f"not allowed beside {head!r}; put each condition in its own item of all/any")
        return None
    if head in ("all", "any"):
        items = d[head]
        if not isinstance(items, list) or not items:
            errors.add(f"{path}.{head}", f"must be a non-empty list of conditions, not {_typename(items)}")
            return None
        nodes = [_node(item, f"{path}.{head}[{i}]", errors) for i, item in enumerate(items)]
        if any(n is None for n in nodes):
            return None
        return All(tuple(nodes)) if head == "all" else AnyOf(tuple(nodes))  # type: ignore[arg-type]
    if head == "not":
        inner = _node(d["not"], f"{path}.not", errors)
        return Not(inner) if inner is not None else None
    if head in ("event", "did_not"):
        return _event(d, head, path, errors)
    if head in ("orders", "revenue"):
        return _orders(d, head, path, errors)
    if head == "bought":
        return _bought(d, path, errors)
    if head == "cart":
        return _cart(d["cart"], f"{path}.cart", errors)
    if head == "wishlist":
        return _wishlist(d["wishlist"], f"{path}.wishlist", errors)
    if len(d) > 1:
        errors.add(path, f"has {len(d)} conditions ({', '.join(map(str, d))}); "
                         "put each in its own item of all/any")
        return None
    name, value = next(iter(d.items()))
    if name == "birthday" and (value == "today" or (isinstance(value, dict) and "in_days" in value)):
        return _birthday(value, f"{path}.birthday", errors)
    if name == "birthday" and isinstance(value, str) and not _ISO_DATE.match(value):
        errors.add(f"{path}.birthday", f"must be today, {{in_days: N}} or a date (YYYY-MM-DD), not {_shown(value)}")
        return None
    return _field(name, value, f"{path}.{name}", errors)


def _unknown_keys(d: dict[str, Any], allowed: tuple[str, ...], path: str, errors: _Errors) -> bool:
    bad = [k for k in d if k not in allowed]
    for k in bad:
        errors.add(f"{path}.{k}", f"unknown key; expected one of {', '.join(allowed)}")
    return bool(bad)


def _shown(v: Any) -> str:
    """A value as an error message quotes it: its type, and short text or numbers themselves."""
    if isinstance(v, str) and len(v) <= 40:
        return f"text {v!r}"
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v!r}"
    return _typename(v)


def _positive_int(v: Any, path: str, errors: _Errors, *, zero: bool = False, unit: str = "days") -> int | None:
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if zero else 1):
        what = "a non-negative integer" if zero else "a positive integer"
        errors.add(path, f"must be {what} (a number of {unit}, e.g. 30), not {_shown(v)}")
        return None
    return v


def _window(d: dict[str, Any], path: str, errors: _Errors) -> Window | None:
    ok = True
    values: dict[str, int | None] = {}
    for key in ("within_days", "older_than_days"):
        if key in d:
            values[key] = _positive_int(d[key], f"{path}.{key}", errors, zero=key == "older_than_days")
            ok = ok and values[key] is not None
    w, o = values.get("within_days"), values.get("older_than_days")
    if ok and w is not None and o is not None and o >= w:
        errors.add(f"{path}.older_than_days", f"must be less than within_days ({w}) or the window is empty")
        ok = False
    return Window(w, o) if ok else None


def _text(v: Any, path: str, errors: _Errors) -> str | None:
    if not isinstance(v, str):
        errors.add(path, f"must be non-empty text, not {_typename(v)}")
        return None
    if not v.strip():
        errors.add(path, "must be non-empty text, not empty")
        return None
    return v


def _event(d: dict[str, Any], head: str, path: str, errors: _Errors) -> Node | None:
    if _unknown_keys(d, _FAMILY_KEYS[head], path, errors):
        return None
    name = _text(d[head], f"{path}.{head}", errors)
    window = _window(d, path, errors)
    where: list[tuple[tuple[str, ...], Test]] = []
    ok = True
    if "where" in d:
        w = _expect_mapping(d["where"], f"{path}.where", errors)
        if w is None:
            ok = False
        else:
            for prop, value in w.items():
                keys = prop.split(".")
                if keys[0] == "properties" and len(keys) > 1:
                    keys = keys[1:]
                if not all(_KEY.match(k) for k in keys):
                    errors.add(f"{path}.where.{prop}",
                               "property names are letters, digits and _ (not first) joined by dots")
                    ok = False
                    continue
                test = _test(value, JSON, f"{path}.where.{prop}", errors)
                if test is None:
                    ok = False
                else:
                    where.append((tuple(keys), test))
    if head == "did_not":
        count: Test | None = Test((("eq", 0),))
    elif "count" in d:
        count = _test(d["count"], INT, f"{path}.count", errors, allowed=OPS_BY_KIND[INT][:-1])
    else:
        count = Test((("gte", 1),))
    if name is None or window is None or count is None or not ok:
        return None
    return EventCond(name, tuple(where), window, count)


def _orders(d: dict[str, Any], head: str, path: str, errors: _Errors) -> Node | None:
    if _unknown_keys(d, _FAMILY_KEYS[head], path, errors):
        return None
    test = _test(d[head], INT if head == "orders" else NUM, f"{path}.{head}", errors,
                 allowed=OPS_BY_KIND[NUM][:-1])
    window = _window(d, path, errors)
    if test is None or window is None:
        return None
    return OrdersCond("count" if head == "orders" else "revenue", test, window)


def _skus(v: Any, path: str, errors: _Errors) -> tuple[str, ...] | None:
    values = v if isinstance(v, list) else [v]
    if not values or not all(isinstance(s, str) and s for s in values):
        errors.add(path, "must be a sku or a non-empty list of skus (text)")
        return None
    return tuple(values)


def _sku_or_category(d: dict[str, Any], path: str, errors: _Errors,
                     extra: tuple[str, ...] = ()) -> tuple[tuple[str, ...], str | None] | None:
    if _unknown_keys(d, ("sku", "category", *extra), path, errors):
        return None
    skus: tuple[str, ...] | None = ()
    category: str | None = None
    if "sku" in d:
        skus = _skus(d["sku"], f"{path}.sku", errors)
    if "category" in d:
        category = _text(d["category"], f"{path}.category", errors)
        if category is None:
            return None
    if skus is None:
        return None
    return skus, category


def _bought(d: dict[str, Any], path: str, errors: _Errors) -> Node | None:
    if _unknown_keys(d, _FAMILY_KEYS["bought"], path, errors):
        return None
    spec = d["bought"]
    window = _window(d, path, errors)
    if spec == "anything":
        parsed: tuple[tuple[str, ...], str | None] | None = ((), None)
    elif not isinstance(spec, dict):
        errors.add(f"{path}.bought", f"must be anything, or a mapping with sku and/or category, not {_shown(spec)}")
        parsed = None
    else:
        inner = _expect_mapping(spec, f"{path}.bought", errors)
        parsed = _sku_or_category(inner, f"{path}.bought", errors) if inner is not None else None
    if parsed is None or window is None:
        return None
    return BoughtCond(parsed[0], parsed[1], window)


def _cart(spec: Any, path: str, errors: _Errors) -> Node | None:
    if spec in ("open", "any"):
        return CartCond(Test((("gte", 1),)), None, None, ())
    if not isinstance(spec, dict):
        errors.add(path, f"must be open, or a mapping of items, value, idle_minutes and sku, not {_shown(spec)}")
        return None
    d = _expect_mapping(spec, path, errors)
    if d is None or _unknown_keys(d, ("items", "value", "idle_minutes", "sku"), path, errors):
        return None
    items = _test(d.get("items", {"gte": 1}), INT, f"{path}.items", errors, allowed=OPS_BY_KIND[INT][:-1])
    value = _test(d["value"], NUM, f"{path}.value", errors, allowed=OPS_BY_KIND[NUM][:-1]) if "value" in d else None
    idle = (_test(d["idle_minutes"], INT, f"{path}.idle_minutes", errors, allowed=("lt", "lte", "gt", "gte", "between"))
            if "idle_minutes" in d else None)
    skus = _skus(d["sku"], f"{path}.sku", errors) if "sku" in d else ()
    if items is None or ("value" in d and value is None) or ("idle_minutes" in d and idle is None) or skus is None:
        return None
    return CartCond(items, value, idle, skus)


def _wishlist(spec: Any, path: str, errors: _Errors) -> Node | None:
    if spec == "any":
        return WishlistCond((), None)
    if not isinstance(spec, dict):
        errors.add(path, f"must be any, or a mapping with sku and/or category, not {_shown(spec)}")
        return None
    d = _expect_mapping(spec, path, errors)
    if d is None:
        return None
    parsed = _sku_or_category(d, path, errors)
    return WishlistCond(*parsed) if parsed is not None else None


def _birthday(spec: Any, path: str, errors: _Errors) -> Node | None:
    if spec == "today":
        return BirthdayCond(0)
    if _unknown_keys(spec, ("in_days",), path, errors):
        return None
    n = _positive_int(spec["in_days"], f"{path}.in_days", errors, zero=True)
    if n is not None and n > 366:
        errors.add(f"{path}.in_days", "must be at most 366")
        return None
    return BirthdayCond(n) if n is not None else None


def _field(name: str, value: Any, path: str, errors: _Errors) -> Node | None:
    parts = name.split(".")
    if name in PROFILE_FIELDS:
        column, kind = PROFILE_FIELDS[name]
        source, fname, keys = "profile", column, ()
    elif parts[0] == "birthday" and len(parts) == 2 and parts[1] in BIRTHDAY_PARTS:
        source, fname, keys, kind = "birthday_part", parts[1], (), INT
    elif parts[0] == "attributes" and len(parts) > 1:
        if not all(_KEY.match(k) for k in parts[1:]):
            errors.add(path, "attribute names are letters, digits and _ (not first) joined by dots")
            return None
        source, fname, keys, kind = "attribute", "attributes", tuple(parts[1:]), JSON
    elif parts[0] == "consent" and len(parts) in (2, 3):
        if parts[1] not in PURPOSES:
            errors.add(path, f"unknown consent purpose; expected one of {', '.join(PURPOSES)}")
            return None
        if len(parts) == 3 and parts[2] != "recorded_at":
            errors.add(path, f"unknown consent field {parts[2]!r}; consent.<purpose> is the status, "
                             "consent.<purpose>.recorded_at the time it was recorded")
            return None
        if len(parts) == 3:
            source, fname, keys, kind = "consent_recorded", parts[1], (), DATETIME
        else:
            source, fname, keys, kind = "consent", parts[1], (), ENUM
    elif parts[0] == "prediction" and len(parts) == 2:
        if parts[1] not in PREDICTION_FIELDS:
            errors.add(path, f"unknown prediction; expected one of {', '.join(PREDICTION_FIELDS)}")
            return None
        source, fname, keys, kind = "prediction", parts[1], (), PREDICTION_FIELDS[parts[1]]
    elif name in ORDER_DATES:
        source, fname, keys, kind = "order_date", name, (), DATETIME
    else:
        errors.add(path, "unknown condition; expected all, any, not, event, did_not, orders, revenue, bought, cart, "
                         "wishlist, birthday, a profile field (" + ", ".join(PROFILE_FIELDS) + "), attributes.<name>, "
                         "consent.<purpose>[.recorded_at], prediction.<name>, first_order or last_order")
        return None
    test = _test(value, kind, path, errors)
    return Field(source, fname, keys, kind, test) if test is not None else None


def _literal_class(v: Any) -> str | None:
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, int | float):
        return NUM if v == v and v not in (float("inf"), float("-inf")) else None
    if isinstance(v, str):
        return STR
    return None


def _typed(v: Any, kind: str, path: str, errors: _Errors) -> Any:
    """The literal converted for a value of kind, or _BAD with an error recorded."""
    if kind == JSON:
        if _literal_class(v) is None:
            errors.add(path, f"must be text, a number or true/false, not {_typename(v)}")
            return _BAD
        return v
    if kind == ENUM:
        if v not in STATUSES:
            errors.add(path, f"must be one of {', '.join(STATUSES)}, not {_shown(v)}")
            return _BAD
        return v
    if kind == STR:
        if not isinstance(v, str):
            errors.add(path, f"must be text, not {_typename(v)}")
            return _BAD
        return v
    if kind in (NUM, INT):
        if _literal_class(v) != NUM or (kind == INT and not float(v).is_integer()):
            errors.add(path, f"must be {'an integer' if kind == INT else 'a number'}, not {_shown(v)}")
            return _BAD
        return int(v) if kind == INT else v
    if kind == BOOL:
        if not isinstance(v, bool):
            errors.add(path, f"must be true or false, not {_shown(v)}")
            return _BAD
        return v
    if kind == DATE:
        if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
            return v
        try:
            return dt.date.fromisoformat(v)
        except (TypeError, ValueError):
            errors.add(path, f"must be a date (YYYY-MM-DD), not {_shown(v)}")
            return _BAD
    if kind == DATETIME:
        if isinstance(v, dt.datetime):
            value = v
        elif isinstance(v, dt.date):
            value = dt.datetime(v.year, v.month, v.day)
        else:
            try:
                value = dt.datetime.fromisoformat(v)
            except (TypeError, ValueError):
                errors.add(path, f"must be a date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS+01:00), not {_shown(v)}")
                return _BAD
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    raise AssertionError(kind)


_BAD = object()


def _test(value: Any, kind: str, path: str, errors: _Errors, *, allowed: tuple[str, ...] | None = None) -> Test | None:
    allowed = allowed or OPS_BY_KIND[kind]
    if isinstance(value, list):
        value = {"in": value}
    elif not isinstance(value, dict):
        value = {"eq": value}
    if not value:
        errors.add(path, "must not be empty; give a value or operators such as {gte: 3}")
        return None
    ops: list[tuple[str, Any]] = []
    n_errors = len(errors.items)
    for op, arg in value.items():
        p = f"{path}.{op}"
        if op not in ALL_OPS:
            errors.add(p, f"unknown operator; expected one of {', '.join(allowed)}")
            continue
        if op not in allowed:
            errors.add(p, f"not allowed here; expected one of {', '.join(allowed)}")
            continue
        if op == "exists":
            if not isinstance(arg, bool):
                errors.add(p, "must be true or false")
                continue
            ops.append((op, arg))
        elif op in RELATIVE:
            n = _positive_int(arg, p, errors, zero=op != "within_days")
            if n is not None:
                ops.append((op, n))
        elif op in ("in", "not_in", "between"):
            if not isinstance(arg, list) or not arg or (op == "between" and len(arg) != 2):
                errors.add(p, "must be a list of two values [from, to]" if op == "between"
                           else "must be a non-empty list of values")
                continue
            typed = [_typed(v, kind, f"{p}[{i}]", errors) for i, v in enumerate(arg)]
            if any(t is _BAD for t in typed):
                continue
            if kind == JSON and len({_literal_class(t) for t in typed}) > 1:
                errors.add(p, "values must all be of one type (text, numbers or true/false)")
                continue
            ops.append((op, tuple(typed)))
        else:
            if kind == JSON and op in ("lt", "lte", "gt", "gte") and isinstance(arg, bool):
                errors.add(p, "must be text or a number to compare with")
                continue
            if op == "contains" and kind == STR and not isinstance(arg, str):
                errors.add(p, "must be text")
                continue
            typed_v = _typed(arg, kind, p, errors)
            if typed_v is not _BAD:
                ops.append((op, typed_v))
    if len(errors.items) > n_errors:
        return None
    return Test(tuple(ops))


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, depth first."""
    yield node
    if isinstance(node, All | AnyOf):
        for item in node.items:
            yield from walk(item)
    elif isinstance(node, Not):
        yield from walk(node.item)


# Shared meaning of time windows and dates: the SQL compiler and the predicate both use these.

def window_bounds(window: Window, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime, bool]:
    """(lowest time included or None, upper bound, whether the upper bound is included)."""
    lo = now - dt.timedelta(days=window.within_days) if window.within_days is not None else None
    if window.older_than_days is not None:
        return lo, now - dt.timedelta(days=window.older_than_days), False
    return lo, now, True


def relative_range(op: str, days: int, kind: str, now: dt.datetime) -> tuple[Any, Any, bool]:
    """(lowest value included or None, upper bound, whether it is included) of a relative operator.

    Dates count whole days of now's UTC date: `within_days: 7` on a date is today and the 7 days before."""
    origin: Any = now.date() if kind == DATE else now
    span = dt.timedelta(days=days)
    if op == "within_days":
        return origin - span, origin, True
    if op == "older_than_days":
        return None, origin - span, False
    if op == "within_next_days":
        return origin, origin + span, True
    raise AssertionError(op)


def in_window(ts: dt.datetime, bounds: tuple[dt.datetime | None, dt.datetime, bool]) -> bool:
    """Whether ts lies in the window given by window_bounds."""
    lo, hi, inclusive = bounds
    return (lo is None or ts >= lo) and (ts <= hi if inclusive else ts < hi)


def idle_as_time(test: Test, now: dt.datetime) -> Test:
    """An idle-minutes test as a test on the cart's last update: idle >= 60 means updated at or before now - 60 min."""
    ago = lambda minutes: now - dt.timedelta(minutes=minutes)  # noqa: E731
    flipped = {"gte": "lte", "gt": "lt", "lte": "gte", "lt": "gt"}
    ops: list[tuple[str, Any]] = []
    for op, arg in test.ops:
        if op == "between":
            ops.append(("between", (ago(arg[1]), ago(arg[0]))))
        else:
            ops.append((flipped[op], ago(arg)))
    return Test(tuple(ops))


def category_prefix(category: str) -> str:
    """Sub-categories are written "Garten > Werkzeug": a category matches itself and everything below it."""
    return f"{category} > "


def in_category(value: str | None, category: str) -> bool:
    """Whether a product category path lies in category."""
    return value is not None and (value == category or value.startswith(category_prefix(category)))


def birthday_days(local_today: dt.date, in_days: int) -> list[tuple[int, int]]:
    """The (month, day) pairs that count as a birthday on local_today + in_days (29 Feb on 28 Feb otherwise)."""
    target = local_today + dt.timedelta(days=in_days)
    days = [(target.month, target.day)]
    if target.month == 2 and target.day == 28:
        try:
            dt.date(target.year, 2, 29)
        except ValueError:
            days.append((2, 29))
    return days
