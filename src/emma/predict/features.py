"""Features built in SQL and numpy: purchase-day histories (RFM), outcomes after a cut-off."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Float, Integer, cast, func, select
from sqlalchemy.orm import Session

from emma.orders.models import Order
from emma.predict.estimators.recommend import distinct

EXCLUDED_STATUSES = ("cancelled",)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def epoch_days(when: dt.datetime) -> float:
    """Days since 1970-01-01 UTC (the unit every feature array uses)."""
    return (when - _EPOCH).total_seconds() / 86400.0


def _day_expr(session: Session, column):  # type: ignore[no-untyped-def]
    # Compute the day number in the database: parsing millions of timestamps in Python costs seconds.
    if session.get_bind().dialect.name == "sqlite":
        return func.julianday(column) - 2440587.5
    return cast(func.extract("epoch", column), Float) / 86400.0


def fetch_array(session: Session, stmt, ncols: int, *, chunk: int = 500_000) -> np.ndarray:  # type: ignore[no-untyped-def]
    """All rows of a numeric query as one float64 array, read from the driver's cursor in chunks.

    Going around the ORM's row objects makes reading ten million rows several times faster.
    """
    result = session.connection().execute(stmt.execution_options(stream_results=True, yield_per=chunk))
    cursor = result.cursor
    parts = []
    try:
        while True:
            rows = cursor.fetchmany(chunk)
            if not rows:
                break
            parts.append(np.array(rows, dtype=np.float64))
    finally:
        result.close()
    return np.concatenate(parts) if parts else np.empty((0, ncols))


@dataclass(frozen=True)
class Orders:
    """Every non-cancelled order before a cut-off as parallel arrays, sorted by the order's primary key."""

    pk: np.ndarray
    customer_id: np.ndarray
    day: np.ndarray
    revenue: np.ndarray
    coupon: np.ndarray  # the order used a coupon

    def __len__(self) -> int:
        return len(self.pk)


def orders(*, session: Session, before: dt.datetime, since: dt.datetime | None = None,
           chunk: int = 500_000) -> Orders:
    """(primary key, customer_id, day number, revenue, coupon used) of every non-cancelled order in [since, before)."""
    stmt = (select(Order.id, Order.customer_id, _day_expr(session, Order.ordered_at), cast(Order.revenue, Float),
                   Order.coupon.is_not(None))
            .where(Order.ordered_at < before, Order.status.not_in(EXCLUDED_STATUSES)).order_by(Order.id))
    if since is not None:
        stmt = stmt.where(Order.ordered_at >= since)
    arr = fetch_array(session, stmt, 5, chunk=chunk)
    return Orders(arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], np.nan_to_num(arr[:, 3]),
                  arr[:, 4] > 0)


def order_days(*, session: Session, before: dt.datetime, since: dt.datetime | None = None,
               chunk: int = 500_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer_id, day number, revenue) of every non-cancelled order in [since, before)."""
    o = orders(session=session, before=before, since=since, chunk=chunk)
    return o.customer_id, o.day, o.revenue


def _day_keys(customer_id: np.ndarray, day: np.ndarray) -> tuple[np.ndarray, int, int]:
    """One int64 per (customer, purchase day): a 1-d unique is many times faster than np.unique(axis=0)."""
    dayi = np.floor(day).astype(np.int64)
    lo = int(dayi.min())
    span = int(dayi.max()) - lo + 1
    return customer_id.astype(np.int64) * span + (dayi - lo), lo, span


@dataclass(frozen=True)
class RFM:
    """Per-customer purchase summary in weeks, the BG/NBD convention (x repeat days, t_x, T)."""

    customer_id: np.ndarray
    frequency: np.ndarray  # repeat purchase days
    recency: np.ndarray  # weeks from first to last purchase day
    T: np.ndarray  # weeks from first purchase day to the cut-off
    monetary: np.ndarray  # mean revenue of the repeat purchase days (0 where none)
    first_day: np.ndarray
    last_day: np.ndarray
    total_revenue: np.ndarray
    orders: np.ndarray  # purchase days incl. the first

    def __len__(self) -> int:
        return len(self.customer_id)


def rfm(customer_id: np.ndarray, day: np.ndarray, revenue: np.ndarray, *, as_of_day: float) -> RFM:
    """Summarise order rows into one RFM row per customer; several orders on one day count once."""
    if len(customer_id) == 0:
        e = np.empty(0)
        return RFM(np.empty(0, np.int64), e, e, e, e, e, e, e, e)
    key, lo, span = _day_keys(customer_id, day)
    uniq, inv = np.unique(key, return_inverse=True)
    day_rev = np.bincount(inv, weights=revenue, minlength=len(uniq))
    cust, dayu = np.divmod(uniq, span)
    dayu = (dayu + lo).astype(np.float64)
    # uniq is sorted by (customer, day): group boundaries give first and last day per customer
    starts = np.flatnonzero(np.r_[True, cust[1:] != cust[:-1]])
    ends = np.r_[starts[1:], len(cust)] - 1
    n_days = ends - starts + 1
    first, last = dayu[starts], dayu[ends]
    total = np.add.reduceat(day_rev, starts)
    first_rev = day_rev[starts]
    freq = (n_days - 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(freq > 0, (total - first_rev) / np.maximum(freq, 1), 0.0)
    return RFM(customer_id=cust[starts], frequency=freq, recency=(last - first) / 7.0,
               T=(np.floor(as_of_day) - first) / 7.0, monetary=monetary, first_day=first, last_day=last,
               total_revenue=total, orders=n_days.astype(np.float64))


def future_purchase_days(customer_id: np.ndarray, day: np.ndarray, revenue: np.ndarray,
                         *, customers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Purchase days and revenue per customer (aligned to `customers`) from order rows of a later window."""
    if len(customer_id) == 0:
        return np.zeros(len(customers)), np.zeros(len(customers))
    key, _, span = _day_keys(customer_id, day)
    cust_days, counts = np.unique(distinct(key) // span, return_counts=True)
    rev_c, rev_inv = np.unique(customer_id, return_inverse=True)
    rev = np.bincount(rev_inv.ravel(), weights=revenue)
    pos = np.searchsorted(cust_days, customers)
    pos_ok = (pos < len(cust_days)) & (cust_days[np.minimum(pos, len(cust_days) - 1)] == customers)
    days_out = np.where(pos_ok, counts[np.minimum(pos, len(counts) - 1)], 0).astype(np.float64)
    rpos = np.searchsorted(rev_c, customers)
    rpos_ok = (rpos < len(rev_c)) & (rev_c[np.minimum(rpos, len(rev_c) - 1)] == customers)
    rev_out = np.where(rpos_ok, rev[np.minimum(rpos, len(rev) - 1)], 0.0)
    return days_out, rev_out


# -- catalog, order lines, engagement --------------------------------------------------------------


@dataclass(frozen=True)
class Items:
    """The catalog as parallel arrays (index = item number), with what the business rules need."""

    product_id: np.ndarray
    sku: list[str]
    category: np.ndarray  # index into categories: top-level category path segment
    categories: list[str]
    subcategory: np.ndarray  # index of the full category path (the per-category cap applies to it)
    price: np.ndarray
    margin: np.ndarray  # per unit: the `margin` attribute, else DEFAULT_MARGIN_RATE * price
    in_stock: np.ndarray
    runout_days: np.ndarray  # 0: not a consumable
    sustainable: np.ndarray
    created_day: np.ndarray
    accessories: list[list[int]]

    def __len__(self) -> int:
        return len(self.sku)


DEFAULT_MARGIN_RATE = 0.3


def items(*, session: Session) -> Items:
    """Every active product with category, stock, consumable run-out, accessories and margin."""
    from emma.catalog.models import Product

    rows = session.execute(select(Product.id, Product.sku, Product.category, cast(Product.price, Float), Product.stock,
                                  Product.attributes, _day_expr(session, Product.created_at))
                           .where(Product.active.is_(True)).order_by(Product.id)).all()
    sku = [r[1] for r in rows]
    index = {s: i for i, s in enumerate(sku)}
    top_names: dict[str, int] = {}
    sub_names: dict[str, int] = {}
    top, sub = [], []
    for r in rows:
        path = r[2] or ""
        top.append(top_names.setdefault(path.split(">")[0].strip(), len(top_names)))
        sub.append(sub_names.setdefault(path, len(sub_names)))
    attrs = [r[5] or {} for r in rows]
    price = np.array([r[3] or 0.0 for r in rows], dtype=np.float64)
    margin = np.array([float(a["margin"]) if isinstance(a.get("margin"), int | float) else np.nan for a in attrs])
    margin = np.where(np.isnan(margin), DEFAULT_MARGIN_RATE * price, margin)
    return Items(
        product_id=np.array([r[0] for r in rows], dtype=np.int64), sku=sku,
        category=np.array(top, dtype=np.int64), categories=list(top_names),
        subcategory=np.array(sub, dtype=np.int64), price=price, margin=margin,
        in_stock=np.array([r[4] is None or r[4] > 0 for r in rows], dtype=bool),
        runout_days=np.array([float(a.get("runout_days") or 0) for a in attrs]),
        sustainable=np.array([bool(a.get("sustainable")) for a in attrs]),
        created_day=np.array([r[6] or 0.0 for r in rows], dtype=np.float64),
        accessories=[[index[s] for s in (a.get("accessory_skus") or []) if s in index] for a in attrs])


def order_lines(*, session: Session, before: dt.datetime, items: Items, known: Orders | None = None,
                chunk: int = 500_000) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(customer_id, day number, item index, quantity) of every line of a non-cancelled order before `before`.

    Lines whose sku is not (or no longer) in the catalog are left out: nothing can be recommended from them.
    Given the orders already read (`known`, from `orders`), the lines take customer and day from them by primary key
    instead of joining the orders table again, which is a third of the reading time at ten million lines.
    """
    from emma.catalog.models import Product
    from emma.orders.models import OrderLine

    o_rows = known if known is not None else orders(session=session, before=before, chunk=chunk)
    stmt = (select(OrderLine.order_pk, Product.id, OrderLine.quantity).select_from(OrderLine)
            .join(Product, Product.sku == OrderLine.sku))
    arr = fetch_array(session, stmt, 3, chunk=chunk)
    if not len(arr) or not len(o_rows) or not len(items):
        return np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64), np.empty(0)
    opk = arr[:, 0].astype(np.int64)
    o = np.minimum(np.searchsorted(o_rows.pk, opk), len(o_rows) - 1)
    pid = arr[:, 1].astype(np.int64)
    pos = np.minimum(np.searchsorted(items.product_id, pid), len(items) - 1)
    ok = (o_rows.pk[o] == opk) & (items.product_id[pos] == pid)  # the order is in the window, the item active
    o, pos = o[ok], pos[ok]
    return o_rows.customer_id[o], o_rows.day[o], pos, np.maximum(np.nan_to_num(arr[ok, 2]), 1.0)


# Shop-side status events: they say when the shop acted, not when the customer was there.
NOT_ENGAGEMENT = ("Order Shipped", "Order Delivered", "Order Returned", "Order Refunded", "Order Cancelled",
                  "Order Updated", "Store Opened", "Email Delivered", "Email Bounced", "Push Notification Received")
CHANNEL_EVENTS = {
    "email": ("Email Opened", "Email Link Clicked"),
    "push": ("Push Notification Tapped", "Push Notification Opened"),
    "sms": ("SMS Opened", "SMS Link Clicked"),
    "onsite": ("Promotion Viewed", "Promotion Clicked"),
}
# Reactions to messages: when they happen follows when the shop sent, not the customer's own rhythm of the day.
MESSAGE_REACTIONS = tuple(n for ch, names in CHANNEL_EVENTS.items() if ch != "onsite" for n in names)


def engagement_slots(*, session: Session, before: dt.datetime, since: dt.datetime | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(customer_id, quarter hour since the epoch, UTC) of the customers' own events, each quarter hour with any
    engagement once: a session's burst of events is one observation of when the customer is around."""
    from emma.ingest.models import Event

    quarter = _day_expr(session, Event.timestamp) * 96
    quarter = cast(quarter, Integer) if session.get_bind().dialect.name == "sqlite" else func.floor(quarter)
    stmt = (select(Event.customer_id, quarter)
            .where(Event.customer_id.is_not(None), Event.timestamp < before,
                   Event.type.in_(("track", "page", "screen")),
                   func.coalesce(Event.name, "").not_in(NOT_ENGAGEMENT + MESSAGE_REACTIONS))
            .group_by(Event.customer_id, quarter))
    if since is not None:
        stmt = stmt.where(Event.timestamp >= since)
    a = fetch_array(session, stmt, 2)
    return a[:, 0].astype(np.int64), a[:, 1].astype(np.int64)


def channel_engagement(*, session: Session, before: dt.datetime) -> dict[int, dict[str, int]]:
    """Per customer, how often they engaged with a message on each channel (opens, clicks, taps)."""
    from emma.ingest.models import Event

    names = {n: ch for ch, ns in CHANNEL_EVENTS.items() for n in ns}
    rows = session.execute(select(Event.customer_id, Event.name, func.count())
                           .where(Event.customer_id.is_not(None), Event.timestamp < before,
                                  Event.name.in_(list(names)))
                           .group_by(Event.customer_id, Event.name)).all()
    out: dict[int, dict[str, int]] = {}
    for cid, name, n in rows:
        d = out.setdefault(int(cid), {})
        d[names[name]] = d.get(names[name], 0) + int(n)
    return out


def activity(*, session: Session, before: dt.datetime, since: dt.datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer_id, events, last event day) of the customers' own events in [since, before): lead features."""
    from emma.ingest.models import Event

    rows = session.execute(select(Event.customer_id, func.count(), func.max(_day_expr(session, Event.timestamp)))
                           .where(Event.customer_id.is_not(None), Event.timestamp < before, Event.timestamp >= since,
                                  Event.type.in_(("track", "page", "screen")),
                                  func.coalesce(Event.name, "").not_in(NOT_ENGAGEMENT))
                           .group_by(Event.customer_id)).all()
    if not rows:
        return np.empty(0, np.int64), np.empty(0), np.empty(0)
    a = np.array(rows, dtype=np.float64)
    return a[:, 0].astype(np.int64), a[:, 1], a[:, 2]


def order_coupons(*, session: Session, before: dt.datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer_id, day number, used a coupon) of every non-cancelled order before `before`."""
    stmt = (select(Order.customer_id, _day_expr(session, Order.ordered_at), Order.coupon.is_not(None))
            .where(Order.ordered_at < before, Order.status.not_in(EXCLUDED_STATUSES)))
    a = fetch_array(session, stmt, 3)
    return a[:, 0].astype(np.int64), a[:, 1], a[:, 2] > 0


COUPON_TEST_EVENT = "Email Delivered"


def coupon_test_deliveries(*, session: Session, before: dt.datetime
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(customer_id, day number, campaign id, coupon variant) of every message delivery before `before`.

    Whether a campaign was a randomised coupon test (some recipients with, some without) is decided later.
    """
    from emma.ingest.models import Event

    campaign = Event.properties["campaign_id"].as_string()
    coupon = Event.properties["coupon"].as_string()
    rows = session.execute(select(Event.customer_id, _day_expr(session, Event.timestamp), campaign,
                                  coupon.is_not(None))
                           .where(Event.name == COUPON_TEST_EVENT, Event.timestamp < before,
                                  Event.customer_id.is_not(None), campaign.is_not(None))).all()
    if not rows:
        e = np.empty(0)
        return e.astype(np.int64), e, np.empty(0, dtype=object), e.astype(bool)
    return (np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float64),
            np.array([r[2] for r in rows], dtype=object), np.array([bool(r[3]) for r in rows]))


def message_reactions(*, session: Session, before: dt.datetime) -> tuple[np.ndarray, np.ndarray]:
    """(customer_id, day number) of every open or click of a message (email, push, sms) before `before`."""
    from emma.ingest.models import Event

    stmt = (select(Event.customer_id, _day_expr(session, Event.timestamp))
            .where(Event.name.in_(MESSAGE_REACTIONS), Event.timestamp < before, Event.customer_id.is_not(None)))
    a = fetch_array(session, stmt, 2)
    return a[:, 0].astype(np.int64), a[:, 1]


def activity_days(*, session: Session, before: dt.datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer_id, day number, events) of the customers' own events per day before `before`: one read from which
    activity as of any cut-off is computed in numpy."""
    from emma.ingest.models import Event

    day = _day_expr(session, Event.timestamp)
    day = cast(day, Integer) if session.get_bind().dialect.name == "sqlite" else func.floor(day)
    stmt = (select(Event.customer_id, day, func.count())
            .where(Event.customer_id.is_not(None), Event.timestamp < before,
                   Event.type.in_(("track", "page", "screen")),
                   func.coalesce(Event.name, "").not_in(NOT_ENGAGEMENT))
            .group_by(Event.customer_id, day))
    a = fetch_array(session, stmt, 3)
    return a[:, 0].astype(np.int64), a[:, 1], a[:, 2]
