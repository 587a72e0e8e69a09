"""Each kind of node, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from emma.automation import engine
from emma.automation.models import SalesTask
from emma.db import session_scope
from emma.predict.models import Prediction, ScoreRun
from emma.profiles.models import Customer
from tests.automation.conftest import START, simple

H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
GO = {"kind": "event", "event": "Go"}


def _predict(world, cid, **values):
    with session_scope(world.sessions) as s:
        run = ScoreRun(as_of=world.clock.now(), horizon_days=30, status="done")
        s.add(run)
        s.flush()
        s.add(Prediction(customer_id=cid, run_id=run.id, as_of=world.clock.now(), **values))


def test_waits_duration_local_time_and_send_hour(world):
    world.tactic(simple("waits", GO, [
        {"id": "a", "kind": "wait", "duration": "2h", "next": "m1"},
        {"id": "m1", "kind": "message", "content": "mail", "next": "b"},
        {"id": "b", "kind": "wait", "until_local": "18:30", "next": "m2"},
        {"id": "m2", "kind": "message", "content": "mail2", "next": "c"},
        {"id": "c", "kind": "wait", "until_send_hour": True, "fallback_hour": 10, "next": "m3"},
        {"id": "m3", "kind": "message", "content": "mail"}]))
    world.settings = world.settings.model_copy(update={"frequency_caps": {}})
    ny = world.customer("n", tz="America/New_York")
    _predict(world, ny, best_send_hour=7)
    world.track("n", "Go")
    world.run_until(3 * D)
    due = [m.due_at for m in world.messages(ny)]
    assert due[0] == START + 4 * H  # 2 h later is 06:00 in New York: quiet hours until 08:00 (13:00 UTC)
    assert due[1] == dt.datetime(2026, 3, 2, 23, 30, tzinfo=dt.UTC)  # 18:30 in New York (EST)
    # The best send hour (07:00 New York) is inside the quiet hours (until 08:00): it waits for their end.
    assert due[2] == dt.datetime(2026, 3, 3, 13, 0, tzinfo=dt.UTC)
    assert any("best send hour 07:00 in America/New_York" in j for j in world.journal(ny))


def test_condition_on_profile_consent_cart_and_orders(world):
    world.tactic(simple("cond", {"kind": "event", "event": "Product Added", "key": "cart_id"}, [
        {"id": "c", "kind": "condition", "when": {"all": [
            {"field": "customer.country", "value": "DE"},
            {"field": "consent.email_marketing", "value": "granted"},
            {"field": "cart.total", "op": "gte", "value": 50},
            {"not": {"field": "orders.count", "op": "gt", "value": 0}}]},
         "then": "yes", "else": "no"},
        {"id": "yes", "kind": "update_attribute", "attribute": "segment_hint", "value": "big_cart"},
        {"id": "no", "kind": "exit", "reason": "small cart"}]))
    big = world.customer("big", country="DE")
    small = world.customer("small", country="DE")
    world.track("big", "Product Added", cart_id="c1", sku="A", price=60)
    world.track("small", "Product Added", cart_id="c2", sku="A", price=20)
    world.tick()
    runs = {r.customer_id: r for r in world.runs()}
    assert runs[big].status == "done" and runs[small].status == "exited"
    with session_scope(world.sessions) as s:
        assert s.get(Customer, big).attributes["segment_hint"] == "big_cart"
    assert any("cart.total >= 50" in j and "cart.total = 60.0" in j for j in world.journal(big))


def test_branch_on_predictions_and_lifecycle(world):
    world.tactic(simple("br", GO, [
        {"id": "b", "kind": "branch", "cases": [
            {"when": {"field": "prediction.churn_probability", "op": "gt", "value": 0.5}, "next": "risk"},
            {"when": {"field": "prediction.lifecycle_stage", "op": "in", "value": ["new", "active"]}, "next": "fine"}],
         "default": "unknown"},
        {"id": "risk", "kind": "exit", "reason": "risk"},
        {"id": "fine", "kind": "exit", "reason": "fine"},
        {"id": "unknown", "kind": "exit", "reason": "unknown"}]))
    a, b, c = world.customer("a"), world.customer("b"), world.customer("c")
    _predict(world, a, churn_probability=0.8, lifecycle_stage="active")
    _predict(world, b, churn_probability=0.1, lifecycle_stage="new")
    for ext in "abc":
        world.track(ext, "Go")
    world.tick()
    assert {r.customer_id: r.outcome for r in world.runs()} == {a: "risk", b: "fine", c: "unknown"}


def test_random_split_follows_weights_and_is_stable(world):
    world.tactic(simple("ab", GO, [
        {"id": "s", "kind": "split", "branches": [{"name": "A", "weight": 3, "next": "a"},
                                                  {"name": "B", "weight": 1, "next": "b"}]},
        {"id": "a", "kind": "exit", "reason": "A"}, {"id": "b", "kind": "exit", "reason": "B"}]))
    for i in range(200):
        world.customer(f"c-{i}", email=f"c{i}@example.com")
        world.track(f"c-{i}", "Go")
    world.tick()
    outcomes = [r.outcome for r in world.runs()]
    share_a = outcomes.count("A") / len(outcomes)
    assert 0.65 < share_a < 0.85
    assert all(r.state["splits"]["s"] == r.outcome for r in world.runs())


def test_holdout_node_is_deterministic_per_customer(world):
    world.tactic(simple("ho", GO, [
        {"id": "h", "kind": "holdout", "share": 0.3, "control": "ctl", "treatment": "trt"},
        {"id": "ctl", "kind": "exit", "reason": "control"}, {"id": "trt", "kind": "exit", "reason": "treatment"}]))
    ids = [world.customer(f"c-{i}", email=f"c{i}@example.com") for i in range(100)]
    for i in range(100):
        world.track(f"c-{i}", "Go")
    world.tick()
    got = {r.customer_id: r.outcome == "control" for r in world.runs()}
    assert got == {c: engine.in_holdout(tactic_id="ho", customer_id=c, share=0.3, salt="h") for c in ids}
    assert 10 < sum(got.values()) < 50


def test_points_webhook_task_goal_and_exit(world):
    world.tactic(simple("loyal", {"kind": "event", "event": "Order Completed", "key": "order_id"}, [
        {"id": "p", "kind": "add_points", "points": 50, "next": "p2"},
        {"id": "p2", "kind": "add_points", "points": 25, "next": "hook"},
        {"id": "hook", "kind": "webhook", "event": "loyalty.points", "data": {"order": "$key"}, "next": "t"},
        {"id": "t", "kind": "task", "title": "Thank-you call", "due_in": "1d", "next": "g"},
        {"id": "g", "kind": "goal", "next": "bye"},
        {"id": "bye", "kind": "exit", "reason": "no repeat purchase"}],
        goal={"event": "Order Completed", "where": {"order_id": {"ne": "$key"}}, "within": "30d"}))
    cid = world.customer("c-1", consent_email=None)
    world.track("c-1", "Order Completed", order_id="o-1", revenue=10)
    world.tick()
    with session_scope(world.sessions) as s:
        assert s.get(Customer, cid).attributes["points"] == 75
        [task] = s.scalars(select(SalesTask))
        assert (task.title, task.customer_id, task.due_at) == ("Thank-you call", cid, START + D)
    [hook] = world.messages(cid)
    assert hook.channel == "webhook" and hook.transactional and hook.payload["data"] == {"order": "o-1"}
    run = world.runs(cid)[0]
    assert (run.status, run.outcome) == ("exited", "no repeat purchase")


def test_goal_node_converts_when_the_goal_happened(world):
    world.tactic(simple("g", GO, [
        {"id": "w", "kind": "wait", "duration": "1d", "next": "g"},
        {"id": "g", "kind": "goal", "next": "m"},
        {"id": "m", "kind": "message", "content": "mail"}],
        goal={"event": "Order Completed", "within": "7d"}))
    world.customer("c-1")
    world.track("c-1", "Go")
    world.tick()
    # A goal event also ends live runs directly; here the run is stepped before the event is consumed.
    world.clock.advance(D)
    with session_scope(world.sessions) as s:
        from emma.ingest import service as ingest

        ingest.ingest(session=s, received_at=world.clock.now(), settings=world.settings, raw_messages=[{
            "type": "track", "userId": "c-1", "event": "Order Completed", "messageId": "oc",
            "timestamp": world.clock.now().isoformat(), "properties": {"order_id": "o-9", "revenue": 1}}])
    with session_scope(world.sessions) as s:
        engine.process_due(session=s, tactics=world.tactics, settings=world.settings, now=world.clock.now())
    [run] = world.runs()
    assert run.status == "converted" and world.messages() == []


def test_segment_condition_uses_the_real_time_predicate(world):
    from emma.segments import service as segments

    world.tactic(simple("seg", GO, [
        {"id": "c", "kind": "condition", "when": {"field": "segment.germans", "value": True},
         "then": "de", "else": "other"},
        {"id": "de", "kind": "exit", "reason": "german"}, {"id": "other", "kind": "exit", "reason": "other"}]))
    with session_scope(world.sessions) as s:
        segments.create(session=s, key="germans", rule={"country": "DE"})
    a, b = world.customer("a", country="DE"), world.customer("b", country="FR")
    world.track("a", "Go")
    world.track("b", "Go")
    world.tick()
    assert {r.customer_id: r.outcome for r in world.runs()} == {a: "german", b: "other"}


def test_a_loop_without_a_wait_fails_the_run(world):
    world.tactic(simple("loop", GO, [
        {"id": "a", "kind": "add_points", "points": 1, "next": "b"},
        {"id": "b", "kind": "add_points", "points": 1, "next": "a"}]))
    world.customer("c-1")
    world.track("c-1", "Go")
    world.tick()
    [run] = world.runs()
    assert run.status == "failed" and "loop" in run.outcome


def test_disabling_a_tactic_ends_its_live_runs(world):
    world.tactic("abandoned_cart", holdout=0.0)
    world.customer("c-1")
    world.track("c-1", "Product Added", cart_id="x", sku="A")
    world.tick()
    world.tactics.clear()
    world.run_until(2 * H)
    [run] = world.runs()
    assert run.status == "exited" and "disabled" in run.outcome
    assert world.messages() == []


def test_a_run_follows_an_anonymous_profile_into_the_known_customer(world):
    world.tactic("abandoned_cart", holdout=0.0)
    with session_scope(world.sessions) as s:
        from emma.ingest import service as ingest

        ingest.ingest(session=s, received_at=START, settings=world.settings, raw_messages=[
            {"type": "track", "anonymousId": "anon-1", "event": "Product Added", "messageId": "a1",
             "timestamp": START.isoformat(), "properties": {"cart_id": "cx", "sku": "A"}}])
    world.tick()
    known = world.customer("k-1")
    with session_scope(world.sessions) as s:
        from emma.ingest import service as ingest

        ingest.ingest(session=s, received_at=START, settings=world.settings, raw_messages=[
            {"type": "identify", "anonymousId": "anon-1", "userId": "k-1", "messageId": "a2",
             "timestamp": START.isoformat(), "traits": {}}])
    world.run_until(2 * H)
    [msg] = world.messages()
    assert msg.customer_id == known
    assert any("merged into customer" in j for j in world.journal(known))
    assert any("entered abandoned_cart" in j for j in world.journal(known))
