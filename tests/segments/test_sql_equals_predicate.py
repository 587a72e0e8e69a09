"""Property: for random rules over random small shops, SQL (batch) and the predicate (real time) agree.

Values sit on window boundaries often (whole and half days, equal amounts), JSON values of every type meet
literals of every type, and missing values meet every operator, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emma.segments import rules

NOW = dt.datetime(2026, 5, 17, 10, 0, tzinfo=dt.UTC)
TEXTS = st.sampled_from(["", "a", "b", "ab", "Garten", "garten", "Zäune", "a%", "B"])
NUMBERS = st.sampled_from([0, 1, 2, 2.5, -1, 10, 0.1, 30.3])
SCALARS = st.one_of(TEXTS, NUMBERS, st.booleans())
JSON_VALUES = st.one_of(st.none(), SCALARS, st.lists(SCALARS, max_size=3), st.fixed_dictionaries({"x": SCALARS}))
DAYS = st.sampled_from([-1, 0, 0.5, 1, 7, 30, 90, 365])  # on the window edges used below
SKUS = st.sampled_from(["A", "B", "C", "D"])
PURPOSES = st.sampled_from(["email_marketing", "sms_marketing", "push"])
STATUSES = st.sampled_from(["granted", "revoked", "pending"])
ZONES = st.sampled_from([None, "Europe/Berlin", "Pacific/Kiritimati", "America/New_York", "Mars/Olympus"])

customer_st = st.fixed_dictionaries({
    "country": st.sampled_from([None, "DE", "AT", "ch"]),
    "city": st.sampled_from([None, "Köln", "Wien", "München"]),
    "birthday": st.one_of(st.none(), st.sampled_from([dt.date(1980, 5, 17), dt.date(1990, 5, 18),
                                                      dt.date(2000, 2, 29), dt.date(1975, 12, 31)])),
    "timezone": ZONES,
    "is_anonymous": st.booleans(),
    "created_days": DAYS,
    "attributes": st.dictionaries(st.sampled_from(["a", "b", "d"]), JSON_VALUES, max_size=3),
    "consents": st.dictionaries(PURPOSES, st.tuples(STATUSES, DAYS), max_size=2),
    "prediction": st.one_of(st.none(), st.fixed_dictionaries({
        "clv": st.one_of(st.none(), NUMBERS), "churn_probability": st.sampled_from([None, 0.1, 0.6, 0.9]),
        "lifecycle_stage": st.sampled_from([None, "new", "loyal", "at_risk"]),
        "next_order_date": st.sampled_from([None, dt.date(2026, 5, 17), dt.date(2026, 5, 24), dt.date(2026, 5, 10)]),
        "top_affinities": st.lists(TEXTS, max_size=2)})),
    "events": st.lists(st.tuples(st.sampled_from(["View", "Buy"]), DAYS,
                                 st.dictionaries(st.sampled_from(["a", "b"]), JSON_VALUES, max_size=2)), max_size=4),
    "orders": st.lists(st.tuples(DAYS, st.sampled_from(["10.10", "20.20", "0.00", "30.30"]),
                                 st.sampled_from(["completed", "cancelled"]), st.lists(SKUS, max_size=2)), max_size=3),
    "carts": st.lists(st.tuples(st.sampled_from(["open", "checkout", "ordered"]), st.sampled_from([0, 30, 60, 61, 600]),
                                st.lists(st.tuples(SKUS, st.integers(1, 3), st.sampled_from([None, "5.05", "10.00"])),
                                         max_size=2, unique_by=lambda i: i[0])), max_size=2),
    "wishlist": st.lists(st.tuples(SKUS, st.booleans()), max_size=2, unique_by=lambda w: w[0]),
})

# --- rules -------------------------------------------------------------------------------------------------

def _ops(values: st.SearchStrategy[Any], ordered: bool = True, contains: bool = False) -> st.SearchStrategy[Any]:
    names = ["eq", "ne", "in", "not_in", "exists"] + (["lt", "lte", "gt", "gte", "between"] if ordered else []) + \
        (["contains"] if contains else [])

    @st.composite
    def one(draw: Any) -> Any:
        op = draw(st.sampled_from(names))
        if op == "exists":
            return {"exists": draw(st.booleans())}
        if op in ("in", "not_in"):
            return {op: draw(st.lists(values, min_size=1, max_size=3))}
        if op == "between":
            return {op: sorted(draw(st.lists(values, min_size=2, max_size=2)))}
        return {op: draw(values)}
    return one()


@st.composite
def json_test(draw: Any) -> Any:
    kind = draw(st.sampled_from(["text", "num", "bool", "contains", "exists"]))
    if kind == "exists":
        return {"exists": draw(st.booleans())}
    if kind == "contains":
        return {"contains": draw(SCALARS)}
    if kind == "bool":
        return {draw(st.sampled_from(["eq", "ne"])): draw(st.booleans())}
    return draw(_ops(TEXTS if kind == "text" else NUMBERS, contains=kind == "text").filter(lambda d: "exists" not in d))


def _window(draw: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    if draw(st.booleans()):
        out["within_days"] = draw(st.sampled_from([1, 7, 30, 90]))
    if draw(st.booleans()):
        older = draw(st.sampled_from([0, 1, 7, 90]))
        if "within_days" not in out or older < out["within_days"]:
            out["older_than_days"] = older
    return out


COUNTS = _ops(st.integers(0, 3)).filter(lambda d: "exists" not in d)


@st.composite
def leaf(draw: Any) -> dict[str, Any]:
    family = draw(st.sampled_from(["profile", "attribute", "consent", "prediction", "event", "orders", "revenue",
                                   "order_date", "bought", "cart", "wishlist", "birthday"]))
    if family == "profile":
        return draw(st.one_of(
            st.builds(lambda t: {"country": t}, _ops(st.sampled_from(["DE", "AT", "ch", "B"]))),
            st.builds(lambda t: {"city": t}, _ops(st.sampled_from(["Köln", "ö", "W", "w"]), contains=True)),
            st.builds(lambda t: {"birthday.month": t}, _ops(st.integers(1, 12))),
            st.builds(lambda t: {"birthday": t}, _ops(st.sampled_from(["1980-05-17", "1990-01-01"]))
                      .filter(lambda d: "in" not in d and "not_in" not in d)),
            st.builds(lambda t: {"anonymous": t}, st.booleans()),
            st.builds(lambda op, n: {"created_at": {op: n}},
                      st.sampled_from(["within_days", "older_than_days", "within_next_days"]),
                      st.sampled_from([1, 2, 7, 30, 90])),
        ))
    if family == "attribute":
        return {f"attributes.{draw(st.sampled_from(['a', 'b', 'd', 'd.x', 'a.x']))}": draw(json_test())}
    if family == "consent":
        return draw(st.one_of(
            st.builds(lambda p, t: {f"consent.{p}": t}, PURPOSES, _ops(STATUSES, ordered=False)),
            st.builds(lambda p, op, n: {f"consent.{p}.recorded_at": {op: n if op != "exists" else n > 7}}, PURPOSES,
                      st.sampled_from(["within_days", "older_than_days", "exists"]), st.sampled_from([1, 7, 30, 90])),
        ))
    if family == "prediction":
        return draw(st.one_of(
            st.builds(lambda t: {"prediction.clv": t}, _ops(NUMBERS)),
            st.builds(lambda t: {"prediction.churn_probability": t}, _ops(st.sampled_from([0.1, 0.5, 0.6]))),
            st.builds(lambda t: {"prediction.lifecycle_stage": t}, _ops(st.sampled_from(["new", "loyal"]))),
            st.builds(lambda t: {"prediction.top_affinities": {"contains": t}}, TEXTS),
            st.builds(lambda op, n: {"prediction.next_order_date": {op: n}},
                      st.sampled_from(["within_days", "older_than_days", "within_next_days"]),
                      st.sampled_from([1, 7])),
        ))
    if family == "event":
        rule: dict[str, Any] = {"event": draw(st.sampled_from(["View", "Buy"])), **_window(draw)}
        if draw(st.booleans()):
            rule["where"] = {draw(st.sampled_from(["a", "properties.b", "a.x"])): draw(json_test())}
        if draw(st.booleans()):
            rule["count"] = draw(COUNTS)
        return rule
    if family in ("orders", "revenue"):
        values = st.integers(0, 3) if family == "orders" else st.sampled_from([0, 10.1, 30.3, 30.31, 50])
        return {family: draw(_ops(values).filter(lambda d: "exists" not in d)), **_window(draw)}
    if family == "order_date":
        op = draw(st.sampled_from(["within_days", "older_than_days", "exists"]))
        arg = draw(st.booleans()) if op == "exists" else draw(st.sampled_from([1, 7, 30, 90]))
        return {draw(st.sampled_from(["first_order", "last_order"])): {op: arg}}
    if family == "bought":
        spec = draw(st.sampled_from([{"sku": "A"}, {"sku": ["B", "C"]}, {"category": "Garten"}, {"category": "Küche"},
                                     {"sku": "B", "category": "Garten"}]))
        return {"bought": spec, **_window(draw)}
    if family == "cart":
        spec = draw(st.fixed_dictionaries({}, optional={
            "items": COUNTS, "value": _ops(st.sampled_from([0, 5.05, 10, 15.15])).filter(lambda d: "exists" not in d),
            "idle_minutes": st.builds(lambda op, n: {op: n}, st.sampled_from(["lt", "lte", "gt", "gte"]),
                                      st.sampled_from([30, 60, 61])),
            "sku": SKUS}))
        return {"cart": spec or "open"}
    if family == "wishlist":
        return {"wishlist": draw(st.sampled_from(["any", {"sku": "A"}, {"category": "Garten"}]))}
    return {"birthday": draw(st.sampled_from(["today", {"in_days": 1}, {"in_days": 365}]))}


rule_st = st.recursive(leaf(), lambda inner: st.one_of(
    st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
    st.builds(lambda x: {"not": x}, inner)), max_leaves=6)


def _populate(shop: Any, customers: list[dict[str, Any]]) -> None:
    shop.product("A", "Garten")
    shop.product("B", "Garten > Werkzeug")
    shop.product("C", "Küche")
    shop.product("D", "Gartenmöbel")
    for c in customers:
        cid = shop.customer(country=c["country"], city=c["city"], birthday=c["birthday"], timezone=c["timezone"],
                            is_anonymous=c["is_anonymous"], created_at=NOW - dt.timedelta(days=c["created_days"]),
                            attributes=c["attributes"])
        for purpose, (status, days) in c["consents"].items():
            shop.consent(cid, purpose, status, days)
        if c["prediction"] is not None:
            shop.prediction(cid, **c["prediction"])
        for name, days, props in c["events"]:
            shop.event(cid, name, days, **props)
        for days, revenue, status, skus in c["orders"]:
            shop.order(cid, days, revenue, tuple(skus), status=status)
        for status, idle, items in c["carts"]:
            shop.cart(cid, idle, [(sku, q, p) for sku, q, p in items], status=status)
        for sku, removed in c["wishlist"]:
            shop.wish(cid, sku, removed=removed)


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(customers=st.lists(customer_st, min_size=1, max_size=5), rule_list=st.lists(rule_st, min_size=1, max_size=6),
       shift=st.sampled_from([dt.timedelta(0), dt.timedelta(0), dt.timedelta(hours=13, minutes=30)]))
def test_sql_and_predicate_agree(session, shop, both, customers, rule_list, shift):
    try:
        _populate(shop, customers)
        for rule in rule_list:
            rules.parse(rule)  # every generated rule is valid
            by_sql, by_predicate = both(rule, NOW + shift)
            assert by_sql == by_predicate, rule
    finally:
        session.rollback()
        shop.run = None
