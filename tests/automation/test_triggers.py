"""Each kind of entry trigger, on SQLite and PostgreSQL, on the virtual clock."""

from __future__ import annotations

import datetime as dt

from emma.automation.clock import VirtualClock
from emma.automation.models import Run
from emma.catalog import service as catalog
from emma.db import session_scope
from emma.predict.models import Prediction, ScoreRun
from tests.automation.conftest import START, simple

H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
MAIL = [{"id": "m", "kind": "message", "content": "mail"}]


def _entered(world, tid):
    return [r for r in world.runs() if r.tactic_id == tid]


def test_event_trigger_with_property_filters_and_several_names(world):
    world.tactic(simple("big", {"kind": "event", "event": ["Order Completed", "Order Updated"],
                                "where": {"revenue": {"gte": 100}, "currency": "EUR"}}, MAIL))
    cid = world.customer("c-1")
    world.track("c-1", "Order Completed", order_id="o-1", revenue=50, currency="EUR")
    world.track("c-1", "Order Completed", order_id="o-2", revenue=150, currency="USD")
    world.track("c-1", "Order Completed", order_id="o-3", revenue=150, currency="EUR")
    world.track("c-1", "Order Updated", order_id="o-3", status="shipped", revenue="120", currency="EUR")
    world.tick()
    runs = _entered(world, "big")
    assert [r.state["entry"]["order_id"] for r in runs] == ["o-3"]  # o-3's update: a live run exists already
    assert len(world.messages(cid)) == 1


def test_identify_trigger(world):
    world.tactic("welcome", holdout=0.0)
    cid = world.customer("c-1", email=None)
    world.tick()
    with session_scope(world.sessions) as s:
        from emma.ingest import service as ingest

        ingest.ingest(session=s, received_at=START, settings=world.settings, raw_messages=[
            {"type": "identify", "userId": "c-1", "traits": {"first_name": "Ida"}, "messageId": "i-1",
             "timestamp": START.isoformat()},
            {"type": "identify", "userId": "c-1", "traits": {"email": "ida@example.com"}, "messageId": "i-2",
             "timestamp": START.isoformat()}])
    world.tick()
    [run] = world.runs(cid)
    assert run.state["entry"] == {"email": "ida@example.com"}
    assert [m.template for m in world.messages(cid)] == ["welcome"]


def test_segment_entered_and_exited_start_tactics(world):
    from emma.segments import service as segments

    world.tactic(simple("vip_in", {"kind": "segment_entered", "segment": "vip"}, MAIL))
    world.tactic(simple("vip_out", {"kind": "segment_exited", "segment": "vip"},
                        [{"id": "t", "kind": "task", "title": "call the customer"}]))
    cid = world.customer("c-1")
    with session_scope(world.sessions) as s:
        segments.create(session=s, key="vip", rule={"attributes.vip": True})
    world.track("c-1", "Order Completed", order_id="o-1", revenue=10)
    world.tick()
    assert _entered(world, "vip_in") == []
    with session_scope(world.sessions) as s:  # the customer becomes a VIP: the next event refreshes membership
        from emma.profiles.models import Customer

        s.get(Customer, cid).attributes = {"vip": True}
    world.track("c-1", "Product Viewed", sku="K-1")
    world.tick()
    world.tick()
    [run] = _entered(world, "vip_in")
    assert "entered segment vip" in "\n".join(world.journal(cid))
    with session_scope(world.sessions) as s:
        from emma.profiles.models import Customer

        s.get(Customer, cid).attributes = {"vip": False}
    world.track("c-1", "Product Viewed", sku="K-1")
    world.tick()
    world.tick()
    assert len(_entered(world, "vip_out")) == 1


def test_schedule_over_a_segment_once_per_occurrence(world):
    from emma.segments import service as segments

    world.tactic(simple("weekly", {"kind": "schedule", "every": "week", "weekday": 0, "at": "06:00",
                                   "segment": "german"}, [{"id": "bye", "kind": "exit"}]))
    de = [world.customer(f"d-{i}", country="DE") for i in range(3)]
    world.customer("f-1", country="FR")
    with session_scope(world.sessions) as s:
        segments.create(session=s, key="german", rule={"country": "DE"})
    world.run_until(2 * H)  # Monday 09:00 -> 11:00: this week's occurrence (Monday 06:00) is due
    assert sorted(r.customer_id for r in _entered(world, "weekly")) == de
    world.run_until(3 * D)
    assert len(_entered(world, "weekly")) == 3  # not again before next Monday
    world.run_until(5 * D)
    assert len(_entered(world, "weekly")) == 6
    assert {r.dedupe for r in _entered(world, "weekly")} == {"schedule:2026-03-02", "schedule:2026-03-09"}


def test_schedule_lists_its_members_once_and_enters_them_a_chunk_per_scan(world, monkeypatch):
    from emma.automation import triggers
    from emma.segments import service as segments

    monkeypatch.setattr(triggers, "CHUNK", 2)
    listed: list[int] = []
    real = triggers._members

    def members(*args, **kw):
        listed.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(triggers, "_members", members)
    world.tactic(simple("daily", {"kind": "schedule", "every": "day", "at": "06:00", "segment": "german"},
                        [{"id": "bye", "kind": "exit"}]))
    de = [world.customer(f"d-{i}", country="DE") for i in range(5)]
    world.customer("f-1", country="FR")
    with session_scope(world.sessions) as s:
        segments.create(session=s, key="german", rule={"country": "DE"})
    counts = [len(_entered(world, "daily"))]
    for _ in range(4):  # one transaction per chunk of 2
        world.tick()
        counts.append(len(_entered(world, "daily")))
    assert counts == [0, 2, 4, 5, 5]
    assert sorted(r.customer_id for r in _entered(world, "daily")) == de
    assert len(listed) == 1  # the segment was evaluated once for the occurrence, not once per chunk
    world.clock.set(world.clock.now() + D)
    world.tick()
    assert len(_entered(world, "daily")) == 7 and len(listed) == 2  # the next day's occurrence lists again


def test_schedule_without_segment_reaches_every_known_customer(world):
    world.tactic(simple("daily", {"kind": "schedule", "every": "day", "at": "08:00"}, [{"id": "x", "kind": "exit"}]))
    ids = [world.customer(f"c-{i}") for i in range(4)]
    world.run_until(H)
    assert sorted(r.customer_id for r in _entered(world, "daily")) == ids


def test_birthday_in_the_customers_time_zone(world):
    world.tactic("happy_birthday", holdout=0.0)
    world.clock = VirtualClock(dt.datetime(2026, 2, 28, 12, 0, tzinfo=dt.UTC))
    tokyo = world.customer("t", tz="Asia/Tokyo", birthday=dt.date(1985, 3, 3))
    berlin = world.customer("b", tz="Europe/Berlin", birthday=dt.date(1990, 3, 3))
    leap = world.customer("l", tz="Europe/Berlin", birthday=dt.date(2000, 2, 29))
    world.run_until(D)
    assert [r.customer_id for r in world.runs()] == [leap]  # 29 Feb is celebrated on 28 Feb in 2026
    world.run_until(28 * H)  # to 2 March 16:00 UTC: 3 March has begun in Tokyo, not yet in Berlin
    assert {r.customer_id for r in world.runs()} == {leap, tokyo}
    world.run_until(D)
    by = {m.customer_id: m.due_at for m in world.messages()}
    assert by[tokyo] == dt.datetime(2026, 3, 3, 0, 0, tzinfo=dt.UTC)  # 09:00 in Tokyo
    assert by[berlin] == dt.datetime(2026, 3, 3, 8, 0, tzinfo=dt.UTC)  # 09:00 in Berlin
    assert all(r.dedupe.startswith("birthday:2026") for r in world.runs())


def test_warranty_end_minus_90_days(world):
    world.tactic(simple("warranty", {"kind": "date", "attribute": "warranty_end", "offset_days": -90}, MAIL))
    world.clock = VirtualClock(dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC))
    cid = world.customer("c-1")
    with session_scope(world.sessions) as s:
        catalog.upsert_products(session=s, at=world.clock.now(), products=[
            {"sku": "DRILL", "name": "Drill", "price": 99, "attributes": {"warranty_months": 24}},
            {"sku": "SOCK", "name": "Sock", "price": 3}])
    # Bought 2024-06-01 with 24 months: the warranty ends 2026-06-01; 90 days before is 2026-03-03.
    world.track("c-1", "Order Completed", order_id="o-1", revenue=102,
                products=[{"sku": "DRILL", "price": 99}, {"sku": "SOCK", "price": 3}])
    world.clock.set(dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC))
    world.run_until(D)
    [run] = world.runs(cid)
    assert run.key == "o-1:DRILL" and run.entered_at.date() == dt.date(2026, 3, 3)
    assert "ends 2026-06-01" in "\n".join(world.journal(cid))


def test_date_attribute_relative(world):
    world.tactic(simple("contract", {"kind": "date", "attribute": "attributes.contract_end", "offset_days": -30},
                        MAIL))
    a = world.customer("a", attributes={"contract_end": "2026-04-01"})
    world.customer("b", attributes={"contract_end": "2026-05-01"})
    world.run_until(D)
    assert [r.customer_id for r in world.runs()] == [a]


def _products(world, **prices):
    with session_scope(world.sessions) as s:
        catalog.upsert_products(session=s, at=world.clock.now(), products=[
            {"sku": sku, "name": sku, **vals} for sku, vals in prices.items()])


def test_price_drop_reaches_viewers_and_wishlisters_only_over_the_threshold(world):
    world.tactic("price_drop", holdout=0.0)
    _products(world, P1={"price": 100, "stock": 3}, P2={"price": 50})
    viewer, wisher, other = world.customer("v"), world.customer("w"), world.customer("o")
    world.track("v", "Product Viewed", sku="P1")
    world.track("w", "Product Added to Wishlist", sku="P1")
    world.track("o", "Product Viewed", sku="P2")
    world.tick()
    world.clock.advance(H)
    _products(world, P1={"price": 95})  # -5 %: nothing
    world.tick()
    assert world.runs() == []
    world.clock.advance(H)
    _products(world, P1={"price": 88})  # -12 % from the 30-day high of 100
    world.tick()
    assert sorted(r.customer_id for r in world.runs()) == sorted([viewer, wisher])
    msg = world.messages(viewer)[0]
    assert msg.payload["product"]["sku"] == "P1" and msg.payload["drop_percent"] == 12.0
    assert other not in {r.customer_id for r in world.runs()}


def test_back_in_stock(world):
    world.tactic(simple("restock", {"kind": "catalog", "change": "back_in_stock", "audience": "wishlisted"}, MAIL))
    _products(world, S1={"price": 10, "stock": 0})
    cid = world.customer("c-1")
    world.track("c-1", "Product Added to Wishlist", sku="S1")
    world.tick()
    world.clock.advance(H)
    _products(world, S1={"stock": 4})
    world.tick()
    [run] = world.runs(cid)
    assert run.key == "S1" and "back in stock" in "\n".join(world.journal(cid))


def test_new_product_in_category_and_successor(world):
    world.tactic(simple("novelty", {"kind": "catalog", "change": "new_product", "category": "Garten",
                                    "audience": "bought"}, MAIL))
    world.tactic(simple("successor", {"kind": "catalog", "change": "successor_launched"}, MAIL))
    _products(world, G1={"price": 10, "category": "Garten > Scheren"}, K1={"price": 10, "category": "Küche"},
              PHONE1={"price": 300, "category": "Technik"})
    gardener, cook = world.customer("g"), world.customer("k")
    world.track("g", "Order Completed", order_id="o-g", revenue=10, products=[{"sku": "G1", "price": 10},
                                                                              {"sku": "PHONE1", "price": 300}])
    world.track("k", "Order Completed", order_id="o-k", revenue=10, products=[{"sku": "K1", "price": 10}])
    world.tick()
    world.clock.advance(H)
    _products(world, G2={"price": 12, "category": "Garten > Schläuche"}, K2={"price": 5, "category": "Küche"},
              PHONE2={"price": 350, "category": "Technik", "attributes": {"predecessor_sku": "PHONE1"}})
    world.tick()
    got = sorted((r.tactic_id, r.customer_id, r.key) for r in world.runs())
    assert got == [("novelty", gardener, "G2"), ("successor", gardener, "PHONE2")]
    assert cook not in {r.customer_id for r in world.runs()}


def _score(world, values):
    with session_scope(world.sessions) as s:
        run = ScoreRun(as_of=world.clock.now(), horizon_days=365, status="done")
        s.add(run)
        s.flush()
        for cid, churn in values.items():
            p = s.get(Prediction, cid) or Prediction(customer_id=cid, run_id=run.id, as_of=world.clock.now())
            p.run_id, p.churn_probability = run.id, churn
            s.add(p)


def test_prediction_threshold_crossing(world):
    world.tactic("win_back", holdout=0.0)
    a, b = world.customer("a"), world.customer("b")
    _score(world, {a: 0.2, b: 0.7})
    world.tick()
    assert [r.customer_id for r in world.runs()] == [b]
    world.clock.advance(D)
    _score(world, {a: 0.65, b: 0.8})  # b stays above: no new crossing; a crosses
    world.tick()
    assert sorted(r.customer_id for r in world.runs()) == [a, b]
    world.clock.advance(100 * D)
    _score(world, {a: 0.1, b: 0.3})  # both fall back below
    world.tick()
    world.clock.advance(D)
    _score(world, {a: 0.9, b: 0.3})  # a crosses again (after the 90 d cooldown)
    world.tick()
    assert sum(1 for r in world.runs() if r.customer_id == a) == 2
    assert any("churn_probability 0.90 crossed gte 0.6" in j for j in world.journal(a))


def test_scan_is_idempotent(world):
    world.tactic(simple("daily", {"kind": "schedule", "every": "day", "at": "08:00"}, [{"id": "x", "kind": "exit"}]))
    world.customer("c-1")
    world.tick()
    with session_scope(world.sessions) as s:  # forget the cursor: a crash before it was saved
        from emma.automation.models import Cursor

        s.query(Cursor).delete()
    world.tick()
    assert len(world.runs()) == 1
    assert isinstance(world.runs()[0], Run)


def test_prediction_crossings_enter_the_most_valuable_customers_first(world):
    world.tactic("win_back", holdout=0.0)
    low, unknown, high = world.customer("low"), world.customer("unknown"), world.customer("high")
    _score(world, {low: 0.7, unknown: 0.7, high: 0.7})
    with session_scope(world.sessions) as s:
        for cid, clv in ((low, 40.0), (high, 900.0)):
            s.get(Prediction, cid).clv = clv
    world.tick()
    assert [r.customer_id for r in world.runs()] == [high, low, unknown]  # run ids in entry order
    assert any("(scoring run" in j and "clv 900.00" in j for j in world.journal(high))
