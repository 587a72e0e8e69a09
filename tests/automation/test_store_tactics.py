"""Store openings, scheduled events and store stock as tactic inputs (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, event, select

from emma.automation import triggers
from emma.automation.models import Cursor, RunStep
from emma.catalog import service as catalog
from emma.db import session_scope
from emma.predict.models import Prediction, ScoreRun
from emma.stores import service as stores
from tests.automation.conftest import START

H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
MITTE = {"store_id": "B-1", "name": "Mitte", "street": "Alexanderplatz 1", "postal_code": "10178",
         "city": "Berlin", "country": "DE", "lat": 52.5219, "lon": 13.4132}


def _stores(world, rows, kind="stores"):
    with session_scope(world.sessions) as s:
        fn = stores.upsert_stores if kind == "stores" else stores.upsert_events
        res = fn(session=s, rows=rows, at=world.clock.now())
        assert not res.rejected, res.rejected


def test_store_opening_invites_neighbours_once(world):
    world.tactic("store_opening", holdout=0.0)
    near = world.customer("near", lat=52.5387, lon=13.4246)
    plz = world.customer("plz", postal_code="10999", country="DE")
    world.customer("far", lat=48.14, lon=11.58)
    world.customer("plz-far", postal_code="80331")
    world.tick()
    # Added three days before the opening (inside the 7 days): the invitation goes out at once (send hour).
    _stores(world, [{**MITTE, "opens_on": "2026-03-05"},
                    {"store_id": "OLD", "name": "Old", "postal_code": "10115", "opens_on": "2026-02-01"}])
    world.run_until(3 * D)
    runs = world.runs()
    assert sorted(r.customer_id for r in runs) == sorted([near, plz])
    entry = {r.customer_id: r.state["entry"] for r in runs}
    assert entry[near]["distance_km"] == 2.0 and entry[plz]["distance_km"] is None
    assert entry[plz]["matched_by"] == "postal_code" and entry[near]["store_id"] == "B-1"
    msgs = world.messages()
    assert {m.customer_id for m in msgs} == {near, plz}
    assert all(m.payload["store"]["name"] == "Mitte" and m.payload["coupon"]["campaign"] == "store_opening"
               for m in msgs)
    assert any("in the same postal area" in j for j in world.journal(plz))


def test_store_opening_enters_its_neighbours_together_and_once(world):
    # Many neighbours: their entries are checked with a few queries and inserted with one statement, not one
    # INSERT per customer; a scan of the same opening again (its "entered" mark lost) starts nobody twice.
    world.tactic("store_opening", holdout=0.0)
    near = [world.customer(f"n-{i}", lat=52.52 + i / 1000, lon=13.41) for i in range(30)]
    world.customer("far", lat=48.14, lon=11.58)
    world.tick()
    _stores(world, [{**MITTE, "opens_on": "2026-03-05"}])
    world.clock.set(world.clock.now() + H)  # the next hourly scan
    inserts: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO AUTOMATION_RUNS"):
            inserts.append(statement)

    bind = world.sessions.kw["bind"]
    event.listen(bind, "before_cursor_execute", count)
    try:
        with session_scope(world.sessions) as s:
            assert triggers.scan(session=s, tactics=world.tactics, settings=world.settings,
                                 now=world.clock.now()) == 30
    finally:
        event.remove(bind, "before_cursor_execute", count)
    assert len(inserts) == 1
    runs = world.runs()
    assert sorted(r.customer_id for r in runs) == sorted(near)
    with session_scope(world.sessions) as s:
        entries = {r.customer_id: r.inputs for r in s.scalars(select(RunStep).where(RunStep.kind == "entry"))}
    # The journal notes each customer's own distance, not the whole opening.
    assert all(entries[r.customer_id] == {"distance_km": r.state["entry"]["distance_km"], "holdout_share": 0.0,
                                          "holdout": False} for r in runs)
    assert len({e["distance_km"] for e in entries.values()}) > 10
    with session_scope(world.sessions) as s:
        s.execute(delete(Cursor).where(Cursor.name.like("store:store_opening:%")))
    world.clock.set(world.clock.now() + H)
    world.tick()
    assert len(world.runs()) == 30


def test_event_invitation_for_loyal_or_valuable_customers_only(world):
    world.tactic("event_invitation", holdout=0.0)
    loyal, valuable, casual = (world.customer(x, lat=52.53, lon=13.42) for x in ("loyal", "valuable", "casual"))
    for i in range(3):
        world.track("loyal", "Order Completed", order_id=f"o-{i}", revenue=10)
    world.track("casual", "Order Completed", order_id="o-c", revenue=10)
    with session_scope(world.sessions) as s:
        run = ScoreRun(as_of=START, horizon_days=365, status="done")
        s.add(run)
        s.flush()
        s.add(Prediction(customer_id=valuable, run_id=run.id, as_of=START, clv=900.0))
    world.tick()
    _stores(world, [MITTE])
    _stores(world, [{"event_id": "past", "name": "Gestern", "store_id": "B-1", "starts_at": "2026-03-01T18:00:00Z"},
                    {"event_id": "later", "name": "Sommerfest", "store_id": "B-1", "starts_at": "2026-06-01T18:00:00Z"},
                    {"event_id": "soon", "name": "Weinabend", "store_id": "B-1",
                     "starts_at": "2026-03-10T17:00:00Z"}], kind="events")
    world.run_until(D)
    assert {r.key for r in world.runs()} == {"soon"}  # past: over; later: outside the 21 days
    invited = {m.customer_id for m in world.messages() if m.template == "event_invitation"}
    assert invited == {loyal, valuable}
    [casual_run] = world.runs(casual)
    assert casual_run.status == "exited" and "neither a loyal" in casual_run.outcome
    entry = world.runs(loyal)[0].state["entry"]
    assert (entry["starts_date"], entry["starts_time"]) == ("2026-03-10", "18:00")  # Berlin time
    # The valuable customer registers: no reminder for them.
    world.track("valuable", "Event Registered", event_id="soon")
    world.run_until(10 * D)
    reminders = {m.customer_id for m in world.messages() if m.template == "event_reminder"}
    assert reminders == {loyal}
    assert world.runs(valuable)[0].status == "converted"


def test_search_online_buy_offline_lists_the_store_stock(world):
    world.tactic("search_online_buy_offline", holdout=0.0)
    with session_scope(world.sessions) as s:
        catalog.upsert_products(session=s, at=START, products=[
            {"sku": "J-1", "name": "Regenjacke", "price": 129}, {"sku": "J-3", "name": "Mütze", "price": 25},
            {"sku": "J-4", "name": "Schal", "price": 30}])
    _stores(world, [{**MITTE, "stock": {"J-1": 3, "J-3": 2}}])
    viewer = world.customer("viewer", lat=52.5387, lon=13.4246)
    buyer = world.customer("buyer", postal_code="10115")
    world.track("viewer", "Product Viewed", sku="J-3")
    world.track("viewer", "Product Viewed", sku="J-4")
    world.clock.advance(3 * D + H)  # the J-3 run is over and its cooldown too
    world.tick()
    world.track("viewer", "Product Viewed", sku="J-1")
    world.track("buyer", "Product Viewed", sku="J-1")
    world.clock.advance(30 * dt.timedelta(minutes=1))
    world.track("buyer", "Product Added", sku="J-1", cart_id="cart-b")
    world.run_until(2 * D)
    last = [m for m in world.messages(viewer)][-1]
    store = last.payload["store"]
    assert (store["store_id"], store["sku"], store["stock"]) == ("B-1", "J-1", 3)
    assert [(p["sku"], p["store_stock"]) for p in store["products"]] == [("J-1", 3), ("J-3", 2)]  # J-4: not there
    assert world.messages(buyer) == []
    [run] = world.runs(buyer)
    assert run.status == "exited" and run.outcome == "put into the cart online"


def test_a_scenario_with_a_bad_store_row_names_it(tmp_path):
    import pytest

    from emma.automation import library, scenario

    t = library.library()["store_opening"]
    bad = t.scenario.model_copy(update={"stores": [{"store_id": "X", "name": "Nowhere", "lat": 52.5}]})
    with pytest.raises(ValueError, match=r"scenario stores\.0: lat and lon go together"):
        scenario.play(tactic=t.model_copy(update={"scenario": bad}), workdir=tmp_path)
