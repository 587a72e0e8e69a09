"""Engine features the wider tactic library relies on: entry conditions, event counts, waits for a condition or a
(predicted) date, the double opt-in node, the bandit, attribute-change and last-seen triggers, points per unit."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from emma.automation import library
from emma.automation.exceptions import TacticInvalid
from emma.automation.models import BanditArm
from emma.consent import service as consent
from emma.db import session_scope
from emma.predict.models import Prediction, ScoreRun
from emma.profiles.models import Customer
from tests.automation.conftest import START, simple

H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
GO = {"kind": "event", "event": "Go"}
MAIL = [{"id": "m", "kind": "message", "content": "mail"}]


def _predict(world, cid, **values):
    with session_scope(world.sessions) as s:
        run = ScoreRun(as_of=world.clock.now(), horizon_days=30, status="done")
        s.add(run)
        s.flush()
        s.add(Prediction(customer_id=cid, run_id=run.id, as_of=world.clock.now(), **values))


def test_entry_condition_with_filtered_windowed_event_counts(world):
    world.tactic(simple("browse", {
        "kind": "event", "event": "Product Viewed", "key": "category",
        "when": {"all": [
            {"field": "events.Product Viewed", "where": {"category": "$entry.category"}, "within": "24h",
             "op": "gte", "value": 3},
            {"field": "events.Product Added", "within": "24h", "op": "eq", "value": 0}]}},
        [{"id": "x", "kind": "exit", "reason": "ok"}], reentry={"policy": "cooldown", "cooldown": "30d"}))
    cid = world.customer("c")
    other = world.customer("o")
    for cat in ("A", "B", "A"):
        world.track("c", "Product Viewed", sku="S", category=cat)
        world.tick()
    assert world.runs(cid) == []  # two views of A, one of B: not yet (and no cooldown started)
    world.clock.advance(25 * H)
    world.track("c", "Product Viewed", sku="S", category="A")
    world.tick()
    assert world.runs(cid) == []  # the first two views of A are older than 24 h now
    world.track("c", "Product Viewed", sku="S", category="A")
    world.track("c", "Product Viewed", sku="S", category="A")
    world.tick()
    [run] = world.runs(cid)
    assert run.key == "A"
    for _ in range(3):
        world.track("o", "Product Added", sku="S", cart_id="k")
        world.track("o", "Product Viewed", sku="S", category="A")
    world.tick()
    assert world.runs(other) == []  # a cart in the last 24 h


def test_event_count_and_order_facts_as_condition_fields(world):
    world.tactic(simple("facts", {"kind": "event", "event": "Order Completed", "key": "order_id"}, [
        {"id": "b", "kind": "branch", "cases": [
            {"when": {"all": [{"field": "events.*", "op": "gte", "value": 3},
                              {"field": "order.consumables", "op": "contains", "value": "TEA"},
                              {"field": "order.runout_date", "op": "eq", "value": "2026-03-22"}]},
             "next": "yes"}], "default": "no"},
        {"id": "yes", "kind": "exit", "reason": "consumable"}, {"id": "no", "kind": "exit", "reason": "other"}]))
    from emma.catalog import service as catalog

    with session_scope(world.sessions) as s:
        catalog.upsert_products(session=s, at=START, products=[
            {"sku": "TEA", "name": "Tee", "price": 5, "attributes": {"runout_days": 10}},
            {"sku": "POT", "name": "Kanne", "price": 30}])
    cid = world.customer("c")
    world.track("c", "Page Viewed")
    world.track("c", "Product Viewed", sku="TEA")
    world.track("c", "Order Completed", order_id="o-1", revenue=40,
                products=[{"sku": "POT", "quantity": 1, "price": 30}, {"sku": "TEA", "quantity": 2, "price": 5}])
    world.tick()
    [run] = world.runs(cid)
    assert run.outcome == "consumable"  # 2 packs x 10 days after 2 March


def test_wait_until_a_predicted_date_with_offset_and_fallback(world):
    world.tactic(simple("nextbuy", GO, [
        {"id": "w", "kind": "wait", "until_date": "prediction.next_order_date", "offset": "-2d", "at": "09:30",
         "fallback": "3d", "next": "m"},
        {"id": "m", "kind": "message", "content": "mail"}]))
    a, b = world.customer("a"), world.customer("b")
    _predict(world, a, next_order_date=dt.date(2026, 3, 5))
    world.track("a", "Go")
    world.track("b", "Go")
    world.run_until(4 * D)
    [ma] = world.messages(a)
    assert ma.due_at == dt.datetime(2026, 3, 3, 8, 30, tzinfo=dt.UTC)  # 09:30 in Berlin, two days before
    [mb] = world.messages(b)
    assert mb.due_at == START + 3 * D
    assert any("no prediction.next_order_date: wait the fallback 3d" in j for j in world.journal(b))


def test_wait_until_condition_or_timeout(world):
    world.tactic(simple("doi", GO, [
        {"id": "w", "kind": "wait_until", "when": {"field": "consent.email_marketing", "value": "granted"},
         "check_every": "1h", "timeout": "2d", "on_true": "m", "on_timeout": "x"},
        {"id": "m", "kind": "message", "content": "mail"},
        {"id": "x", "kind": "exit", "reason": "never confirmed"}]))
    yes = world.customer("yes", consent_email="pending")
    no = world.customer("no", consent_email="pending")
    world.track("yes", "Go")
    world.track("no", "Go")
    world.run_until(5 * H + 30 * dt.timedelta(minutes=1))
    with session_scope(world.sessions) as s:
        consent.record(session=s, customer_id=yes, purpose="email_marketing", status="granted", source="test",
                       recorded_at=world.clock.now())
    world.run_until(3 * D)
    [m] = world.messages(yes)
    assert m.due_at == START + 6 * H  # the next hourly check after the confirmation
    assert world.messages(no) == []
    assert world.runs(no)[0].outcome == "never confirmed"


def test_double_opt_in_node_uses_the_consent_flow(world):
    world.tactic(simple("reg", {"kind": "event", "event": "Signed Up"}, [
        {"id": "c", "kind": "double_opt_in", "next": "w"},
        {"id": "w", "kind": "wait_until", "when": {"field": "consent.email_marketing", "value": "granted"},
         "timeout": "7d", "on_true": "m", "on_timeout": "x"},
        {"id": "m", "kind": "message", "content": "mail"},
        {"id": "x", "kind": "exit", "reason": "not confirmed"}]))
    new = world.customer("new", consent_email=None)
    old = world.customer("old")
    world.track("new", "Signed Up")
    world.track("old", "Signed Up")
    world.tick()
    [doi] = world.messages(new)
    assert (doi.template, doi.transactional, doi.tactic_id, doi.due_at) == ("double_opt_in", True, "reg", START)
    with session_scope(world.sessions) as s:
        assert consent.status_of(session=s, customer_id=new)["email_marketing"] == "pending"
        token = doi.payload["confirm_url"].rsplit("/", 1)[1]
        world.clock.advance(2 * H)
        consent.confirm_opt_in(session=s, token=token, settings=world.settings, now=world.clock.now())
    world.run_until(2 * H)
    assert [m.template for m in world.messages(new)] == ["double_opt_in", "welcome"]
    assert [m.template for m in world.messages(old)] == ["welcome"]  # granted already: no confirmation mail
    assert any("already granted" in j for j in world.journal(old))


def _bandit_tactic(world):
    return world.tactic(simple("band", {"kind": "event", "event": "Go", "key": "k"}, [
        {"id": "pick", "kind": "bandit", "variants": [{"name": "a", "next": "ma"}, {"name": "b", "next": "mb"}]},
        {"id": "ma", "kind": "message", "content": "mail", "next": "g"},
        {"id": "mb", "kind": "message", "content": "mail2", "next": "g"},
        {"id": "g", "kind": "goal"}], goal={"event": "Buy", "where": {"k": "$key"}, "within": "1d"}))


def _bandit_rounds(world, n: int) -> list[str]:
    """n runs; whoever got variant b buys (b converts, a never does)."""
    _bandit_tactic(world)
    world.settings = world.settings.model_copy(update={"frequency_caps": {}})
    world.customer("c")
    chosen = []
    for i in range(n):
        world.track("c", "Go", k=f"r{i}")
        world.tick()
        run = world.runs()[-1]
        variant = run.state["bandits"]["pick"]
        chosen.append(variant)
        if variant == "b":
            world.track("c", "Buy", k=f"r{i}")
            world.tick()
    return chosen


def test_bandit_learns_from_goal_conversions_and_persists_its_counts(world):
    chosen = _bandit_rounds(world, 40)
    assert chosen[-15:].count("b") >= 12  # Thompson sampling moves to the converting variant
    with session_scope(world.sessions) as s:
        arms = {a.variant: (a.trials, a.conversions) for a in s.scalars(select(BanditArm))}
    assert arms["a"][1] == 0 and arms["b"] == (chosen.count("b"), chosen.count("b"))
    assert arms["a"][0] == chosen.count("a")
    assert any("bandit (Thompson sampling): variant" in j for j in world.journal())


def test_bandit_is_deterministic_for_the_same_history(world, tmp_path):
    from emma.db import Base, import_all_models, make_engine, make_sessionmaker
    from tests.automation.conftest import World

    first = _bandit_rounds(world, 12)
    url = f"sqlite:///{tmp_path / 'again.db'}"
    eng = make_engine(url)
    import_all_models()
    Base.metadata.create_all(eng)
    try:
        again = _bandit_rounds(World(make_sessionmaker(eng), url), 12)
    finally:
        eng.dispose()
    assert again == first


def test_bandit_needs_a_goal_and_distinct_variants():
    data = simple("band", GO, [
        {"id": "pick", "kind": "bandit", "variants": [{"name": "a", "next": "x"}, {"name": "a", "next": "x"}]},
        {"id": "x", "kind": "exit"}])
    with pytest.raises(TacticInvalid) as exc:
        library.parse(data, source="t")
    assert "unique" in str(exc.value)
    data["nodes"][0]["variants"][1]["name"] = "b"
    with pytest.raises(TacticInvalid) as exc:
        library.parse(data, source="t")
    assert "needs a goal" in str(exc.value)


def test_attribute_change_trigger(world):
    world.tactic(simple("tier", {"kind": "attribute", "attribute": "loyalty_tier", "to": ["silver", "gold"]},
                        [{"id": "x", "kind": "exit", "reason": "congratulated"}]))
    cid = world.customer("c")
    world.tick()  # the first scan starts at the present

    def identify(tier):
        with session_scope(world.sessions) as s:
            from emma.ingest import service as ingest

            ingest.ingest(session=s, received_at=world.clock.now(), settings=world.settings, raw_messages=[
                {"type": "identify", "userId": "c", "traits": {"loyalty_tier": tier},
                 "messageId": f"i-{tier}-{world.clock.now().timestamp()}", "timestamp": world.clock.now().isoformat()}])

    identify("bronze")  # not a tier the tactic congratulates on
    world.run_until(2 * H)
    identify("silver")
    world.run_until(2 * H)
    identify("silver")  # the same value again: no change
    world.run_until(2 * H)
    identify("gold")
    world.run_until(2 * H)
    runs = world.runs(cid)
    assert [r.state["entry"]["value"] for r in runs] == ["silver", "gold"]
    assert runs[1].state["entry"]["previous"] == "silver"


def test_last_seen_date_trigger_and_points_per_unit(world):
    world.tactic(simple("idle", {"kind": "date", "attribute": "last_seen_at", "offset_days": 3,
                                 "when": {"field": "orders.count", "value": 0}},
                        [{"id": "p", "kind": "add_points", "points": 2, "per": "$entry.last_seen_at", "next": "x"},
                         {"id": "x", "kind": "exit", "reason": "idle lead"}]))
    lead = world.customer("lead")
    buyer = world.customer("buyer")
    world.track("buyer", "Order Completed", order_id="o-1", revenue=5)
    with session_scope(world.sessions) as s:
        for cid in (lead, buyer):
            s.get(Customer, cid).last_seen_at = START
    world.run_until(4 * D)
    [run] = world.runs()
    assert (run.customer_id, run.outcome) == (lead, "idle lead")
    assert run.entered_at.date() == (START + 3 * D).date()
    with session_scope(world.sessions) as s:
        assert s.get(Customer, lead).attributes.get("points", 0) == 0  # not a number: no points


def test_points_per_revenue(world):
    world.tactic(simple("pts", {"kind": "event", "event": "Order Completed", "key": "order_id"}, [
        {"id": "p", "kind": "add_points", "points": 1, "per": "$entry.revenue"}]))
    cid = world.customer("c")
    world.track("c", "Order Completed", order_id="o-1", revenue=59.9)
    world.tick()
    with session_scope(world.sessions) as s:
        assert s.get(Customer, cid).attributes["points"] == 59


def test_schema_errors_for_the_new_fields():
    def err(nodes, entry=GO):
        with pytest.raises(TacticInvalid) as exc:
            library.parse(simple("t", entry, nodes), source="t.yaml")
        return str(exc.value)

    assert "fallback" in err([{"id": "w", "kind": "wait", "until_date": "prediction.next_order_date", "next": "x"},
                              {"id": "x", "kind": "exit"}])
    assert "events.<name> fields only" in err([{"id": "c", "kind": "condition", "then": "x", "else": "x", "when": {
        "field": "orders.count", "within": "1d", "value": 1}}, {"id": "x", "kind": "exit"}])
    assert "attribute is" in err([{"id": "x", "kind": "exit"}], {"kind": "date", "attribute": "nonsense"})
