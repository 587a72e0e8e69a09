"""Occasions for a second purchase: the calendar (birthdays, holidays), the category's repeat time from the
shop's own orders, and first_to_repeat_buyer choosing the earliest of them."""

from __future__ import annotations

import datetime as dt

from emma.automation import occasions
from emma.db import session_scope
from emma.orders import service as orders
from tests.automation.conftest import START, predictions, products

D = dt.timedelta(days=1)


def test_calendar():
    assert [occasions.easter(y) for y in (2024, 2025, 2026)] == [dt.date(2024, 3, 31), dt.date(2025, 4, 20),
                                                                 dt.date(2026, 4, 5)]
    days = dict((n, d) for d, n in occasions.holidays(2026))
    assert days["Muttertag"] == dt.date(2026, 5, 10) and days["Vatertag"] == dt.date(2026, 5, 14)
    assert occasions.next_holiday(dt.date(2026, 12, 24)) == (dt.date(2026, 12, 24), "Weihnachten")
    assert occasions.next_holiday(dt.date(2026, 12, 25)) == (dt.date(2027, 2, 14), "Valentinstag")
    assert occasions.next_birthday(dt.date(1992, 2, 29), dt.date(2027, 1, 10)) == dt.date(2027, 2, 28)
    assert occasions.next_birthday(dt.date(1992, 2, 29), dt.date(2028, 1, 10)) == dt.date(2028, 2, 29)
    assert occasions.next_birthday(dt.date(1990, 3, 1), dt.date(2026, 3, 2)) == dt.date(2027, 3, 1)


def _history(world, category_sku: str, gaps: list[int]) -> None:
    """Customers whose first order held category_sku and whose second came `gap` days later."""
    ids = [world.customer(f"hist-{category_sku}-{i}", consent_email=None) for i in range(len(gaps))]
    first = START - dt.timedelta(days=300)
    with session_scope(world.sessions) as s:
        orders.create_orders(session=s, source="import", orders=[
            {"order_id": f"h-{category_sku}-{i}-{n}", "customer_id": cid, "ordered_at": at, "status": "completed",
             "currency": "EUR", "revenue": None, "discount": None, "coupon": None, "cart_id": None,
             "lines": [{"sku": sku, "quantity": 1, "unit_price": 10}]}
            for i, (cid, gap) in enumerate(zip(ids, gaps, strict=True))
            for n, (at, sku) in enumerate([(first, category_sku), (first + gap * D, "OTHER")])])


def test_category_repeat_time_comes_from_the_shops_orders(world):
    world.tactic("first_to_repeat_buyer", holdout=0.0)
    products(world, TEA={"price": 8, "category": "Tee > Grüntee"}, MUG={"price": 12, "category": "Geschirr"},
             OTHER={"price": 5, "category": "Sonstiges"})
    _history(world, "TEA", [15, 18, 20, 22, 90])  # median 20 days
    _history(world, "MUG", [40, 50])  # too few customers to say
    tea, mug = world.customer("tea"), world.customer("mug")
    world.track("tea", "Order Completed", order_id="o-tea", revenue=8, products=[{"sku": "TEA", "price": 8}])
    world.track("mug", "Order Completed", order_id="o-mug", revenue=12, products=[{"sku": "MUG", "price": 12}])
    world.tick()
    tea_wait = next(j for j in world.journal(tea) if "wait" in j)
    assert "order.category_repeat_date 2026-03-22 -2d" in tea_wait  # 2 March + 20 days, two days before
    # Easter (5 April) minus 10 days is later; the mug's category has no repeat time, so Easter comes first.
    assert "occasion.holiday 2026-04-05 -10d" in tea_wait and "earliest occasion: order.category_repeat" in tea_wait
    mug_wait = next(j for j in world.journal(mug) if "wait" in j)
    assert "earliest occasion: occasion.holiday 2026-04-05 -10d" in mug_wait
    world.run_until(30 * D)
    sent = {m.customer_id: m.due_at for m in world.messages() if m.customer_id in (tea, mug)}
    assert sent == {tea: dt.datetime(2026, 3, 20, 9, 0, tzinfo=dt.UTC),  # 10:00 in Berlin
                    mug: dt.datetime(2026, 3, 26, 9, 0, tzinfo=dt.UTC)}


def test_only_occasions_within_90_days_count_else_the_fallback(world):
    world.tactic("first_to_repeat_buyer", holdout=0.0)
    world.clock.set(dt.datetime(2026, 6, 1, 8, 0, tzinfo=dt.UTC))  # next holiday: Christmas, 206 days away
    products(world, X={"price": 10, "category": "Garten"})
    far, near = world.customer("far"), world.customer("near")
    predictions(world, {far: {"next_order_date": dt.date(2026, 12, 1)}, near: {"next_order_date": dt.date(2026, 7, 3)}})
    for ext in ("far", "near"):
        world.track(ext, "Order Completed", order_id=f"o-{ext}", revenue=10, products=[{"sku": "X", "price": 10}])
    world.tick()
    far_wait = next(j for j in world.journal(far) if "wait" in j)
    assert "no occasion within 90d" in far_wait and "wait the fallback 30d" in far_wait
    near_wait = next(j for j in world.journal(near) if "wait" in j)
    assert "earliest occasion: prediction.next_order_date 2026-07-03 -2d" in near_wait
    world.run_until(40 * D)
    sent = {m.customer_id: m.due_at.date() for m in world.messages() if m.customer_id in (far, near)}
    assert sent == {far: dt.date(2026, 7, 1), near: dt.date(2026, 7, 1)}
