"""The engine on SQLite and PostgreSQL: abandoned cart end to end, runs, rules (consent, caps, quiet hours,
priorities, holdout), on a virtual clock."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.exc import IntegrityError

from emma.automation import engine
from emma.automation.models import Run
from emma.db import session_scope
from tests.automation.conftest import START, simple

H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)


def test_abandoned_cart_sends_once_then_converts(world):
    world.tactic("abandoned_cart", holdout=0.0)
    cid = world.customer("c-1")
    world.track("c-1", "Product Added", cart_id="cart-1", sku="K-1", price=10)
    world.run_until(30 * dt.timedelta(minutes=1))
    assert world.messages() == []
    world.run_until(45 * dt.timedelta(minutes=1))
    [msg] = world.messages(cid)
    assert (msg.channel, msg.template, msg.status) == ("email", "cart_abandoned", "queued")
    assert msg.due_at == START + H
    assert msg.idempotency_key.startswith("run:")
    assert "coupon" not in msg.payload  # no incentive prediction: the default branch, no coupon
    world.track("c-1", "Order Completed", order_id="o-1", cart_id="cart-1", revenue=10,
                products=[{"sku": "K-1", "price": 10}])
    world.run_until(3 * D)
    assert len(world.messages(cid)) == 1  # no reminder after the purchase
    [run] = world.runs(cid)
    assert run.status == "converted" and run.active_key is None
    text = "\n".join(world.journal(cid))
    assert "entered abandoned_cart: Product Added (cart_id cart-1)" in text
    assert "no Checkout Started / Order Completed with cart_id cart-1 within 1h" in text
    assert "goal reached: Order Completed" in text


def test_abandoned_cart_checkout_within_the_hour_exits(world):
    world.tactic("abandoned_cart", holdout=0.0)
    cid = world.customer("c-1")
    world.track("c-1", "Product Added", cart_id="cart-1", sku="K-1")
    world.run_until(20 * dt.timedelta(minutes=1))
    world.track("c-1", "Checkout Started", cart_id="cart-1")
    world.run_until(2 * D)
    assert world.messages() == []
    assert world.runs(cid)[0].status == "exited"


def test_other_carts_events_do_not_wake_the_run(world):
    world.tactic("abandoned_cart", holdout=0.0)
    world.customer("c-1")
    world.track("c-1", "Product Added", cart_id="cart-1", sku="K-1")
    world.track("c-1", "Checkout Started", cart_id="cart-OTHER")
    world.run_until(2 * H)
    assert [m.template for m in world.messages()] == ["cart_abandoned"]


def test_incentive_branch_adds_a_coupon(world):
    from emma.predict.models import Prediction, ScoreRun

    world.tactic("abandoned_cart", holdout=0.0)
    cid = world.customer("c-1")
    with session_scope(world.sessions) as s:
        run = ScoreRun(as_of=START, horizon_days=30, status="done")
        s.add(run)
        s.flush()
        s.add(Prediction(customer_id=cid, run_id=run.id, as_of=START, incentive_uplift=0.12))
    world.track("c-1", "Product Added", cart_id="cart-1", sku="K-1")
    world.run_until(2 * H)
    [msg] = world.messages()
    assert msg.payload["coupon"]["campaign"] == "abandoned_cart"
    assert any("incentive_uplift = 0.12" in j for j in world.journal(cid))


def test_one_live_run_per_customer_tactic_and_key(world):
    world.tactic("abandoned_cart", holdout=0.0)
    cid = world.customer("c-1")
    for _ in range(3):
        world.track("c-1", "Product Added", cart_id="cart-1", sku="K-1")
    world.track("c-1", "Product Added", cart_id="cart-2", sku="K-1")
    world.tick()
    runs = world.runs(cid)
    assert sorted(r.key for r in runs) == ["cart-1", "cart-2"]
    # The database itself refuses a second live run for the same key.
    with pytest.raises(IntegrityError), session_scope(world.sessions) as s:
        s.add(Run(tactic_id="abandoned_cart", tactic_version=1, customer_id=cid, key="cart-1", active_key="cart-1",
                  dedupe="manual", status="active", node_id="idle_hour", due_at=START, state={}, holdout=False,
                  steps=0, entered_at=START))


def test_repeat_entry_event_restarts_the_idle_timer(world):
    world.tactic("abandoned_cart", holdout=0.0)
    world.customer("c-1")
    world.track("c-1", "Product Added", cart_id="cart-1", sku="K-1")
    world.run_until(40 * dt.timedelta(minutes=1))
    world.track("c-1", "Product Added", cart_id="cart-1", sku="K-2")
    world.run_until(3 * H)
    [msg] = world.messages()
    assert msg.due_at == START + 40 * dt.timedelta(minutes=1) + H


def test_reentry_policies(world):
    nodes = [{"id": "bye", "kind": "exit"}]
    world.tactic(simple("always", {"kind": "event", "event": "Ping"}, nodes))
    world.tactic(simple("once", {"kind": "event", "event": "Ping"}, nodes, reentry={"policy": "once"}))
    world.tactic(simple("cool", {"kind": "event", "event": "Ping"}, nodes,
                        reentry={"policy": "cooldown", "cooldown": "2d"}))
    cid = world.customer("c-1")
    for _ in range(2):
        world.track("c-1", "Ping")
        world.run_until(D)
    world.track("c-1", "Ping")
    world.tick()
    count = {t: sum(1 for r in world.runs(cid) if r.tactic_id == t) for t in ("always", "once", "cool")}
    assert count == {"always": 3, "once": 1, "cool": 2}


def test_consent_is_checked_when_the_message_is_created(world):
    world.tactic("abandoned_cart", holdout=0.0)
    cid = world.customer("c-1", consent_email=None)
    pending = world.customer("c-2", consent_email="pending")
    world.track("c-1", "Product Added", cart_id="a", sku="K-1")
    world.track("c-2", "Product Added", cart_id="b", sku="K-1")
    world.run_until(2 * H)
    assert world.messages() == []
    for c in (cid, pending):
        assert any("suppressed: no consent for email_marketing" in j for j in world.journal(c))


def test_holdout_is_deterministic_and_has_its_share():
    ids = range(1, 20001)
    first = [engine.in_holdout(tactic_id="win_back", customer_id=i, share=0.1) for i in ids]
    again = [engine.in_holdout(tactic_id="win_back", customer_id=i, share=0.1) for i in ids]
    other = [engine.in_holdout(tactic_id="welcome", customer_id=i, share=0.1) for i in ids]
    assert first == again
    assert 0.09 < sum(first) / len(first) < 0.11
    assert first != other  # independent per tactic
    assert not any(engine.in_holdout(tactic_id="x", customer_id=i, share=0.0) for i in ids)


def test_holdout_customers_get_no_message_but_their_conversion_counts(world):
    world.tactic("abandoned_cart", holdout=0.5)
    customers = [world.customer(f"c-{i}", email=f"c{i}@example.com") for i in range(12)]
    for i in range(12):
        world.track(f"c-{i}", "Product Added", cart_id=f"cart-{i}", sku="K-1")
    world.run_until(2 * H)
    for i in range(12):
        world.track(f"c-{i}", "Order Completed", order_id=f"o-{i}", cart_id=f"cart-{i}", revenue=5)
    world.tick()
    runs = {r.customer_id: r for r in world.runs()}
    control = {c for c in customers if runs[c].holdout}
    assert control and control != set(customers)
    assert {m.customer_id for m in world.messages()} == set(customers) - control
    assert all(r.status == "converted" for r in runs.values())
    assert all(r.holdout == engine.in_holdout(tactic_id="abandoned_cart", customer_id=c, share=0.5)
               for c, r in runs.items())


def _mailer(tid: str, priority: int = 50, transactional: bool = False, gap: str = "3h") -> dict:
    return simple(tid, {"kind": "event", "event": f"Go {tid}"}, [
        {"id": "one", "kind": "message", "content": "mail", "transactional": transactional, "next": "pause"},
        {"id": "pause", "kind": "wait", "duration": gap, "next": "two"},
        {"id": "two", "kind": "message", "content": "mail2", "transactional": transactional}], priority=priority)


def test_frequency_cap_suppresses_with_reason_and_transactional_bypasses(world):
    world.tactic(_mailer("news"))
    world.tactic(_mailer("status", transactional=True))
    cid = world.customer("c-1")
    world.track("c-1", "Go news")
    world.track("c-1", "Go status")
    world.run_until(5 * H)
    sent = [(m.tactic_id, m.transactional) for m in world.messages(cid)]
    assert sent.count(("news", False)) == 1  # the second marketing email of the day is capped
    assert sent.count(("status", True)) == 2  # transactional messages are not capped
    assert any("frequency cap: at most 1 marketing email message(s) per day" in j for j in world.journal(cid))
    # A day later the cap has room again; the weekly cap (3) then holds.
    for _ in range(4):
        world.clock.advance(D)
        world.track("c-1", "Go news")
        world.run_until(5 * H)
    marketing = [m for m in world.messages(cid) if not m.transactional]
    assert len(marketing) == 3
    assert any("per week" in j for j in world.journal(cid))


def test_configurable_caps(world):
    world.settings = world.settings.model_copy(update={"frequency_caps": {"email": {"day": 2}}})
    world.tactic(_mailer("news"))
    world.customer("c-1")
    world.track("c-1", "Go news")
    world.run_until(5 * H)
    assert len(world.messages()) == 2


def test_quiet_hours_in_the_customers_time_zone(world):
    world.tactic(simple("late", {"kind": "event", "event": "Late"},
                        [{"id": "one", "kind": "message", "content": "mail"}]))
    berlin = world.customer("b", tz="Europe/Berlin")
    ny = world.customer("n", tz="America/New_York")
    tokyo = world.customer("t", tz="Asia/Tokyo")
    world.clock.set(dt.datetime(2026, 3, 2, 21, 30, tzinfo=dt.UTC))  # 22:30 Berlin, 16:30 New York, 06:30 Tokyo
    for ext in ("b", "n", "t"):
        world.track(ext, "Late")
    world.tick()
    due = {m.customer_id: m.due_at for m in world.messages()}
    assert due[berlin] == dt.datetime(2026, 3, 3, 7, 0, tzinfo=dt.UTC)  # waits for 08:00 Berlin
    assert due[ny] == world.clock.now()  # daytime there: goes now
    assert due[tokyo] == dt.datetime(2026, 3, 2, 23, 0, tzinfo=dt.UTC)  # 08:00 Tokyo
    assert any("after quiet hours in Europe/Berlin" in j for j in world.journal(berlin))


def test_transactional_messages_ignore_quiet_hours_and_carry_no_ads(world):
    world.tactic(simple("status", {"kind": "event", "event": "Order Shipped"},
                        [{"id": "one", "kind": "message", "content": "mail", "transactional": True}]))
    world.customer("c-1", consent_email=None)
    world.clock.set(dt.datetime(2026, 3, 2, 23, 0, tzinfo=dt.UTC))
    world.track("c-1", "Order Shipped", order_id="o-1")
    world.tick()
    [m] = world.messages()
    assert m.transactional and m.purpose is None and m.due_at == world.clock.now()
    assert m.payload["recommendations"] == [] and m.payload["offer"] is None


def test_higher_priority_tactic_displaces_a_waiting_lower_one(world):
    world.tactic(simple("low", {"kind": "event", "event": "Low"},
                        [{"id": "one", "kind": "message", "content": "mail"}], priority=10))
    world.tactic(simple("high", {"kind": "event", "event": "High"},
                        [{"id": "one", "kind": "message", "content": "mail2"}], priority=90))
    cid = world.customer("c-1")
    world.clock.set(dt.datetime(2026, 3, 2, 22, 0, tzinfo=dt.UTC))  # 23:00 Berlin: both wait for the morning
    world.track("c-1", "Low")
    world.tick()
    world.track("c-1", "High")
    world.tick()
    status = {m.tactic_id: m.status for m in world.messages(cid)}
    assert status == {"low": "suppressed", "high": "queued"}
    assert any("displaced by a higher-priority tactic" in j for j in world.journal(cid))
    # The other way round, the lower-priority one is the one capped.
    world.track("c-1", "Low")
    world.tick()
    assert sum(1 for m in world.messages(cid) if m.status == "queued") == 1


def test_old_events_start_no_runs(world):
    world.tactic("abandoned_cart", holdout=0.0)
    world.customer("c-1")
    world.track("c-1", "Product Added", cart_id="old", sku="K-1")
    world.clock.advance(2 * D)  # the worker sees the event two days late (catching up on history)
    world.track("c-1", "Product Added", cart_id="new", sku="K-1")
    world.tick()
    assert [r.key for r in world.runs()] == ["new"]
