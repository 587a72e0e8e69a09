"""Order- and prediction-driven tactics beyond their scenarios: the `order.*` fields and `$order` payload,
the better version of a product, waits until an entry date, early adopters, lapsed buyers."""

from __future__ import annotations

import datetime as dt

from emma.automation import library
from emma.catalog import service as catalog
from emma.db import session_scope
from tests.automation.conftest import START, predictions, products, simple

H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)



def test_better_versions_prefer_the_named_upgrade_then_the_next_step_up(world):
    products(world, A={"price": 20, "category": "K"}, A_PLUS={"price": 26, "category": "K"},
              A_PRO={"price": 40, "category": "K"}, A_LUX={"price": 90, "category": "K"},
              A_SOLD={"price": 24, "category": "K", "stock": 0},
              B={"price": 10, "category": "L", "attributes": {"upgrade_sku": "B_NAMED"}},
              B_NAMED={"price": 99, "category": "Other"}, B_NEAR={"price": 12, "category": "L"})
    with session_scope(world.sessions) as s:
        got = {k: v.sku for k, v in catalog.better_versions(session=s, skus=["A", "B"]).items()}
        assert got == {"A": "A_PLUS", "B": "B_NAMED"}  # sold out A_SOLD skipped; A_LUX too dear
        got = {k: v.sku for k, v in catalog.better_versions(session=s, skus=["A"], exclude={"A_PLUS"}).items()}
        assert got == {"A": "A_PRO"}  # the customer owns A_PLUS already


def test_quality_trade_up_offers_the_upgrade_and_skips_returned_orders(world):
    world.tactic("quality_trade_up", holdout=0.0)
    products(world, PAN={"price": 30, "category": "Pfannen"}, PAN_PRO={"price": 50, "category": "Pfannen"},
              SALT={"price": 3, "category": "Gewürze"})
    keeper, returner, salty = world.customer("keeper"), world.customer("returner"), world.customer("salty")
    world.track("keeper", "Order Completed", order_id="o-1", revenue=30, products=[{"sku": "PAN", "price": 30}])
    world.track("returner", "Order Completed", order_id="o-2", revenue=30, products=[{"sku": "PAN", "price": 30}])
    world.track("salty", "Order Completed", order_id="o-3", revenue=3, products=[{"sku": "SALT", "price": 3}])
    world.tick()
    world.clock.advance(2 * D)
    world.track("returner", "Order Returned", order_id="o-2")
    world.run_until(6 * D)
    [msg] = world.messages()
    assert msg.customer_id == keeper
    [up] = msg.payload["order"]["upgrades"]
    assert (up["sku"], up["for_sku"], up["for_name"]) == ("PAN_PRO", "PAN", "PAN")
    status = {r.customer_id: (r.status, r.outcome) for r in world.runs()}
    assert status[returner][0] == status[salty][0] == "exited"
    assert "no better version" in status[salty][1]


def test_warranty_cross_sell_lists_only_warranty_lines(world):
    world.tactic("warranty_cross_sell", holdout=0.0)
    products(world, TV={"price": 800, "attributes": {"warranty_months": 24}}, CABLE={"price": 10})
    cid = world.customer("c-1")
    world.track("c-1", "Order Completed", order_id="o-1", revenue=810,
                products=[{"sku": "TV", "price": 800}, {"sku": "CABLE", "price": 10}])
    world.run_until(9 * D)
    [msg] = world.messages(cid)
    order = msg.payload["order"]
    assert order["order_id"] == "o-1" and order["count_with"] == {"warranty_months": 1}
    assert [ln["sku"] for ln in order["lines"] if ln["attributes"].get("warranty_months")] == ["TV"]
    from emma.channels import content

    text = content.render(channel="email", template="warranty_extension", locale="de", settings=world.settings,
                          context={**msg.payload, "customer": {"first_name": "Erika"}, "transactional": False,
                                   "links": {}, "coupon": None}).text
    assert "TV" in text and "CABLE" not in text


def test_warranty_counts_from_delivery(world):
    from emma.automation.clock import VirtualClock

    world.tactic(simple("warranty", {"kind": "date", "attribute": "warranty_end", "offset_days": -90},
                        [{"id": "m", "kind": "message", "content": "mail"}]))
    world.clock = VirtualClock(dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC))
    cid = world.customer("c-1")
    products(world, DRILL={"price": 99, "attributes": {"warranty_months": 24}})
    world.track("c-1", "Order Completed", order_id="o-1", revenue=99, products=[{"sku": "DRILL", "price": 99}])
    world.clock.set(dt.datetime(2024, 6, 11, 12, tzinfo=dt.UTC))
    world.track("c-1", "Order Delivered", order_id="o-1")
    # Delivered 2024-06-11: the warranty ends 2026-06-11, 90 days before is 2026-03-13 (not 2026-03-03).
    world.clock.set(dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC))
    world.run_until(2 * D)
    assert world.runs(cid) == []
    world.clock.set(dt.datetime(2026, 3, 12, 12, tzinfo=dt.UTC))
    world.run_until(2 * D)
    [run] = world.runs(cid)
    assert run.entered_at.date() == dt.date(2026, 3, 13) and run.state["entry"]["warranty_end"] == "2026-06-11"


def test_wait_until_an_entry_date(world):
    world.tactic(simple("countdown", {"kind": "event", "event": "Event Scheduled"}, [
        {"id": "w", "kind": "wait", "until_entry": "starts_at", "before": "2d", "next": "m"},
        {"id": "m", "kind": "message", "content": "mail"}]))
    a, b, c = world.customer("a"), world.customer("b"), world.customer("c")
    world.track("a", "Event Scheduled", starts_at="2026-03-10T18:00:00+01:00")
    world.track("b", "Event Scheduled", starts_at="2026-03-05")  # a date: the start of that day, Berlin time
    world.track("c", "Event Scheduled", starts_at="soon")
    world.run_until(10 * D)
    due = {m.customer_id: m.due_at for m in world.messages()}
    assert due[a] == dt.datetime(2026, 3, 8, 17, tzinfo=dt.UTC)
    assert due[b] == dt.datetime(2026, 3, 3, 7, tzinfo=dt.UTC)  # 00:00 Berlin is quiet: 08:00 local
    assert due[c] == START and any("no date in the entry's starts_at" in j for j in world.journal(c))


def test_wait_until_entry_is_validated():
    import pytest

    from emma.automation.exceptions import TacticInvalid

    bad = simple("x", {"kind": "event", "event": "E"}, [{"id": "w", "kind": "wait", "duration": "1d",
                                                         "before": "2d", "next": "m"},
                                                        {"id": "m", "kind": "message", "content": "mail"}])
    with pytest.raises(TacticInvalid) as exc:
        library.parse(bad, source="t")
    assert "before goes with until_entry" in str(exc.value)


def test_early_adopters_only_above_the_score_and_future_launches_only(world):
    world.tactic("early_adopter", holdout=0.0)
    keen, average, unscored = world.customer("keen"), world.customer("average"), world.customer("unscored")
    world.tick()
    world.clock.advance(H)
    products(world, SOON={"price": 10, "attributes": {"launch_date": "2026-04-01"}})
    world.tick()
    assert world.runs() == []  # no scores yet: nobody is invited
    predictions(world, {keen: {"early_adopter": 2.0}, average: {"early_adopter": 1.0}})
    world.clock.advance(H)
    products(world, PAST={"price": 10, "attributes": {"launch_date": "2026-02-01"}},
              NEXT={"price": 10, "attributes": {"launch_date": "2026-05-01"}})
    world.tick()
    assert [(r.customer_id, r.key) for r in world.runs()] == [(keen, "NEXT")]
    assert unscored not in {m.customer_id for m in world.messages()}


def test_win_back_inactive_coupon_only_with_uplift_and_not_for_recent_buyers(world):
    world.tactic("win_back_inactive", holdout=0.0)
    lapsed, recent, never = world.customer("lapsed"), world.customer("recent"), world.customer("never")
    with session_scope(world.sessions) as s:
        from emma.ingest import service as ingest

        ingest.ingest(session=s, received_at=START, settings=world.settings, raw_messages=[
            {"type": "track", "userId": "lapsed", "event": "Order Completed", "messageId": "o1",
             "timestamp": (START - 100 * D).isoformat(), "properties": {"order_id": "o-1", "revenue": 10}}])
    world.track("recent", "Order Completed", order_id="o-2", revenue=10)
    predictions(world, {lapsed: {"propensity_30d": 0.01, "incentive_uplift": 0.2},
                     recent: {"propensity_30d": 0.02}, never: {"propensity_30d": 0.0}})
    world.run_until(D)
    [msg] = world.messages()
    assert msg.customer_id == lapsed and msg.payload["coupon"]["campaign"] == "win_back_inactive"
    outcomes = {r.customer_id: r.outcome for r in world.runs()}
    assert "never bought" in outcomes[recent] and "never bought" in outcomes[never]


def test_warranty_expiry_last_call_only_without_an_order(world):
    from emma.automation.clock import VirtualClock

    world.tactic("warranty_expiry", holdout=0.0)
    world.clock = VirtualClock(dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC))
    buyer, waiter = world.customer("buyer"), world.customer("waiter")
    products(world, WM={"price": 500, "attributes": {"warranty_months": 24}})
    for ext in ("buyer", "waiter"):
        world.track(ext, "Order Completed", order_id=f"o-{ext}", revenue=500, products=[{"sku": "WM", "price": 500}])
    world.clock.set(dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC))  # 90 days before 2026-06-01 is 2026-03-03
    world.run_until(2 * D)
    assert {m.customer_id: m.template for m in world.messages()} == {buyer: "warranty_expiry",
                                                                     waiter: "warranty_expiry"}
    world.track("buyer", "Order Completed", order_id="o-ext", revenue=49)  # the extension
    world.run_until(31 * D)
    assert [m.template for m in world.messages(buyer)] == ["warranty_expiry"]
    assert [m.template for m in world.messages(waiter)] == ["warranty_expiry", "warranty_last_call"]
    assert world.runs(buyer)[0].status == "converted"


def test_order_fields_of_a_run_keyed_by_something_else_read_the_latest_order(world):
    world.tactic(simple("after_cart", {"kind": "event", "event": "Checkout Started", "key": "cart_id"}, [
        {"id": "c", "kind": "condition", "when": {"field": "order.skus", "op": "contains", "value": "B"},
         "then": "m", "else": "x"},
        {"id": "m", "kind": "message", "content": "mail"}, {"id": "x", "kind": "exit"}]))
    products(world, A={"price": 1}, B={"price": 2})
    cid = world.customer("c-1")
    world.track("c-1", "Order Completed", order_id="o-1", revenue=1, products=[{"sku": "A", "price": 1}])
    world.clock.advance(H)
    world.track("c-1", "Order Completed", order_id="o-2", revenue=2, products=[{"sku": "B", "price": 2}])
    world.track("c-1", "Checkout Started", cart_id="cart-9")
    world.tick()
    assert [m.template for m in world.messages(cid)] == ["welcome"]
    assert any("order.skus = ['B']" in j for j in world.journal(cid))
