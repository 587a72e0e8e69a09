"""Catalog-driven tactics beyond their scenarios: who is reached, and how tactics that start on the same change
are ranked (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt

from emma.automation import library, scenario
from emma.config import Settings
from emma.db import session_scope
from tests.automation.conftest import predictions, products, simple

H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
MAIL = [{"id": "m", "kind": "message", "content": "mail"}]



def test_back_in_stock_counts_only_views_while_sold_out(world):
    world.tactic("back_in_stock", holdout=0.0)
    products(world, S1={"price": 10, "stock": 2})
    early, late = world.customer("early"), world.customer("late")
    world.track("early", "Product Viewed", sku="S1")  # could have bought it
    world.tick()
    world.clock.advance(H)
    products(world, S1={"stock": 0})
    world.clock.advance(H)
    world.track("late", "Product Viewed", sku="S1")  # wanted it and could not have it
    world.tick()
    world.clock.advance(H)
    products(world, S1={"stock": 5})
    world.tick()
    assert [r.customer_id for r in world.runs()] == [late]
    assert early not in {m.customer_id for m in world.messages()}


def test_push_where_the_customer_allows_it(world):
    from emma.consent import service as consent

    world.tactic("back_in_stock", holdout=0.0)
    products(world, S1={"price": 10, "stock": 0})
    cid = world.customer("c-1")
    with session_scope(world.sessions) as s:
        consent.record(session=s, customer_id=cid, purpose="push", status="granted", source="test",
                       recorded_at=world.clock.now())
    world.track("c-1", "Product Viewed", sku="S1")
    world.tick()
    world.clock.advance(H)
    products(world, S1={"stock": 1})
    world.tick()
    assert [(m.channel, m.template) for m in world.messages(cid)] == [("push", "back_in_stock")]


def test_the_higher_priority_tactic_wins_a_shared_catalog_change(world):
    world.tactic("back_in_stock", holdout=0.0)
    world.tactic("wishlist_back_in_stock", holdout=0.0)
    products(world, S1={"price": 10, "stock": 0})
    cid = world.customer("c-1")
    world.track("c-1", "Product Viewed", sku="S1")
    world.track("c-1", "Product Added to Wishlist", sku="S1")
    world.tick()
    world.clock.advance(H)
    products(world, S1={"stock": 3})
    world.tick()
    sent = [(m.tactic_id, m.status) for m in world.messages(cid)]
    assert sent == [("wishlist_back_in_stock", "queued")]  # the email cap (1 a day) held back back_in_stock
    assert any("frequency cap" in j for j in world.journal(cid))


def test_new_product_reaches_category_and_attribute_affinities(world):
    world.tactic(simple("novelty", {"kind": "catalog", "change": "new_product", "audience": "affinity"}, MAIL))
    products(world, OLD={"price": 1, "category": "Garten"})
    garden, green, furniture, nobody = (world.customer(x) for x in ("garden", "green", "furniture", "nobody"))
    predictions(world, {garden: {"top_affinities": [{"name": "Garten", "score": 2.0}]},
                     green: {"top_affinities": [{"name": "sustainability", "score": 1.6}]},
                     furniture: {"top_affinities": [{"name": "Gartenmöbel", "score": 3.0}]},
                     nobody: {"top_affinities": []}})
    world.tick()
    world.clock.advance(H)
    products(world, G1={"price": 20, "category": "Garten > Grillen"},
              ECO={"price": 9, "category": "Küche", "attributes": {"sustainable": True}})
    world.tick()
    got = sorted((r.key, r.customer_id) for r in world.runs())
    assert got == sorted([("G1", garden), ("ECO", green)])  # "Gartenmöbel" is not under "Garten"


def test_new_product_without_predictions_reaches_buyers_of_the_category(world):
    world.tactic("new_product", holdout=0.0)
    products(world, G0={"price": 5, "category": "Garten > Saatgut"}, K0={"price": 5, "category": "Küche"})
    buyer, other = world.customer("buyer"), world.customer("other")
    world.track("buyer", "Order Completed", order_id="o-1", revenue=5, products=[{"sku": "G0", "price": 5}])
    world.track("other", "Order Completed", order_id="o-2", revenue=5, products=[{"sku": "K0", "price": 5}])
    world.tick()
    world.clock.advance(H)
    products(world, G1={"price": 20, "category": "Garten > Grillen"})
    world.run_until(D)
    assert [r.customer_id for r in world.runs()] == [buyer]
    assert [m.template for m in world.messages(buyer)] == ["new_product"]
    assert world.messages(other) == []


def test_successor_named_by_either_product_skips_owners_of_the_successor(world):
    world.tactic("successor_product", holdout=0.0)
    products(world, OLD={"price": 100, "category": "Technik"})
    owner, both = world.customer("owner"), world.customer("both")
    world.track("owner", "Order Completed", order_id="o-1", revenue=100, products=[{"sku": "OLD", "price": 100}])
    world.track("both", "Order Completed", order_id="o-2", revenue=240,
                products=[{"sku": "OLD", "price": 100}, {"sku": "NEW2", "price": 140}])
    world.tick()
    world.clock.advance(H)
    # The old product names its successor, which arrives in the same import.
    products(world, OLD={"attributes": {"successor_sku": "NEW2"}}, NEW2={"price": 150, "category": "Technik"})
    world.run_until(D)
    [run] = world.runs()
    assert run.customer_id == owner and run.key == "NEW2" and run.state["entry"]["predecessor_sku"] == "OLD"
    [msg] = world.messages(owner)
    assert msg.payload["product"]["sku"] == "NEW2" and msg.payload["predecessor_name"] == "OLD"
    assert msg.payload["coupon"]["campaign"] == "successor_trade_up"
    assert world.messages(both) == []  # bought the successor already


def test_the_entry_event_is_not_its_own_goal(world):
    t = world.tactic(simple("after_order", {"kind": "event", "event": "Order Completed", "key": "order_id"},
                            [{"id": "w", "kind": "wait", "duration": "1d", "next": "g"},
                             {"id": "g", "kind": "goal", "next": "m"},
                             {"id": "m", "kind": "message", "content": "mail"}],
                            goal={"event": "Order Completed", "within": "7d"}))
    cid = world.customer("c-1")
    world.track("c-1", "Order Completed", order_id="o-1", revenue=10)
    world.run_until(2 * D)
    [run] = world.runs(cid)
    assert run.status == "waiting" and [m.template for m in world.messages(cid)] == ["welcome"]
    assert t.goal.event == "Order Completed"


def test_a_template_that_does_not_render_fails_the_scenario(tmp_path):
    broken = tmp_path / "templates" / "email"
    broken.mkdir(parents=True)
    for loc in ("de", "en"):
        (broken / f"back_in_stock.{loc}.subject.txt").write_text("{{ product.nonexistent_field.x }}")
        (broken / f"back_in_stock.{loc}.txt").write_text("x")
    settings = Settings(template_dir=str(tmp_path / "templates"))
    result = scenario.play(tactic=library.library()["back_in_stock"], settings=settings, workdir=tmp_path)
    assert not result.ok and any("does not render" in f for f in result.failures)
