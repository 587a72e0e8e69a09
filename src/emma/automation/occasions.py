"""Occasions for a purchase, as dates a wait can end on (docs/tactics.md, "Occasions").

- `occasion.birthday`: the customer's next birthday (today or later, in their time zone; 29 February is kept
  on 28 February in other years).
- `occasion.holiday` / `occasion.holiday_name`: the next gift-giving day of the German retail calendar
  (Valentinstag, Ostern, Muttertag, Vatertag, Weihnachten), today or later.
- `order.category_repeat_days` / `order.category_repeat_date`: how many days after a first order in the same
  top-level category customers typically placed their second order (the median over the shop's order history
  of the last two years, at least MIN_PAIRS customers), and the run's order date plus that span. It is the
  replenishment time of the category as the shop's own customers show it.
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select

from emma.catalog.models import Product
from emma.orders.models import Order, OrderLine

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from emma.automation.engine import Ctx

HISTORY = dt.timedelta(days=730)
MIN_PAIRS = 5
MAX_ROWS = 200_000  # the most recent orders read per category: a bounded query on a large shop
EXCLUDED = ("cancelled", "refunded")


def easter(year: int) -> dt.date:
    """Easter Sunday (Gregorian calendar; the anonymous algorithm of Meeus/Jones/Butcher)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    day = (h + l_ - 7 * m + 114) % 31 + 1
    return dt.date(year, month, day)


def holidays(year: int) -> list[tuple[dt.date, str]]:
    """The gift-giving days of a year in German retail, in date order."""
    may_first = dt.date(year, 5, 1)
    mothers_day = may_first + dt.timedelta(days=(6 - may_first.weekday()) % 7 + 7)  # second Sunday of May
    e = easter(year)
    return sorted([(dt.date(year, 2, 14), "Valentinstag"), (e, "Ostern"), (mothers_day, "Muttertag"),
                   (e + dt.timedelta(days=39), "Vatertag"), (dt.date(year, 12, 24), "Weihnachten")])


def next_holiday(today: dt.date) -> tuple[dt.date, str]:
    """The next gift-giving day, today or later."""
    return next((d, n) for d, n in holidays(today.year) + holidays(today.year + 1) if d >= today)


def next_birthday(birthday: dt.date, today: dt.date) -> dt.date:
    """The next birthday, today or later (29 February on 28 February in other years)."""
    for year in (today.year, today.year + 1):
        try:
            day = birthday.replace(year=year)
        except ValueError:
            day = dt.date(year, 2, 28)
        if day >= today:
            return day
    raise AssertionError("unreachable")


def occasion_value(ctx: Ctx, name: str) -> Any:
    """occasion.<name>: birthday, holiday, holiday_name (dates as ISO text, None when unknown)."""
    today = ctx.now.astimezone(ctx.tz).date()
    if name == "birthday":
        c = ctx.customer
        return next_birthday(c.birthday, today).isoformat() if c is not None and c.birthday else None
    if name in ("holiday", "holiday_name"):
        day, holiday = next_holiday(today)
        return day.isoformat() if name == "holiday" else holiday
    return None


_REPEAT: dict[tuple[str, str, dt.date], int | None] = {}


def category_repeat_days(*, session: Session, category: str, now: dt.datetime) -> int | None:
    """Median days from a first order containing the category (or one below it) to the same customer's second
    order, over the orders of the last two years; None with fewer than MIN_PAIRS such customers. Cached per
    database and day."""
    key = (str(session.get_bind().engine.url), category, now.date())
    if key in _REPEAT:
        return _REPEAT[key]
    since = now - HISTORY
    in_category = or_(Product.category == category, Product.category.like(f"{category} > %"))
    buyers = (select(Order.customer_id).join(OrderLine, OrderLine.order_pk == Order.id)
              .join(Product, Product.sku == OrderLine.sku)
              .where(in_category, Order.ordered_at >= since, Order.status.not_in(EXCLUDED)))
    rows = session.execute(select(Order.id, Order.customer_id, Order.ordered_at)
                           .where(Order.customer_id.in_(buyers), Order.ordered_at >= since,
                                  Order.status.not_in(EXCLUDED), Order.ordered_at <= now)
                           .order_by(Order.customer_id, Order.ordered_at, Order.id).limit(MAX_ROWS)).all()
    first_two: dict[int, list[tuple[int, dt.datetime]]] = {}
    for oid, cid, at in rows:
        got = first_two.setdefault(cid, [])
        if len(got) < 2:
            got.append((oid, at))
    firsts = [pair[0][0] for pair in first_two.values() if len(pair) == 2]
    with_category: set[int] = set()
    for i in range(0, len(firsts), 1000):
        with_category.update(session.scalars(
            select(OrderLine.order_pk).join(Product, Product.sku == OrderLine.sku)
            .where(OrderLine.order_pk.in_(firsts[i:i + 1000]), in_category)))
    gaps = [(pair[1][1] - pair[0][1]).total_seconds() / 86400 for pair in first_two.values()
            if len(pair) == 2 and pair[0][0] in with_category]
    days = round(statistics.median(gaps)) if len(gaps) >= MIN_PAIRS else None
    if len(_REPEAT) > 1000:
        _REPEAT.clear()
    _REPEAT[key] = days
    return days


def category_repeat(ctx: Ctx, order: Order, skus: list[str]) -> dict[str, Any]:
    """order.category / category_repeat_days / category_repeat_date of the run's order (its first line's top-level
    category)."""
    categories = dict(ctx.session.execute(select(Product.sku, Product.category).where(Product.sku.in_(skus))).all()) \
        if skus else {}
    category = next((categories[s] for s in skus if categories.get(s)), None)
    top = category.split(" > ")[0].strip() if category else None
    days = category_repeat_days(session=ctx.session, category=top, now=ctx.now) if top else None
    return {"category": top, "category_repeat_days": days,
            "category_repeat_date": (order.ordered_at + dt.timedelta(days=days)).date().isoformat()
            if days is not None else None}
