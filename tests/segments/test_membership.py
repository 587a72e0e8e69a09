"""Stored membership follows the data: enter and exit events, idempotent refreshes, batch and real time agree."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from emma.ingest.models import Event
from emma.segments import service

NOW = dt.datetime(2026, 5, 17, 10, 0, tzinfo=dt.UTC)


def _events(session) -> list[tuple[str, int, str, dict]]:  # type: ignore[no-untyped-def, type-arg]
    rows = session.execute(select(Event.name, Event.customer_id, Event.message_id, Event.properties)
                           .where(Event.name.in_([service.ENTERED, service.EXITED])).order_by(Event.id))
    return [tuple(r) for r in rows]


def test_enter_and_exit_are_events_and_refresh_is_idempotent(shop, session):
    a, b = shop.customer(), shop.customer()
    shop.event(a, "Product Viewed", 1, category="Garten")
    seg = service.create(session=session, key="gartenfans", name="Gartenfans",
                         rule={"event": "Product Viewed", "where": {"category": "Garten"}, "within_days": 7})

    first = service.refresh_membership(session=session, customer_ids=[a, b], now=NOW)
    assert [(t.segment, t.customer_id, t.kind) for t in first] == [("gartenfans", a, "enter")]
    assert first[0].message_id == f"seg:{seg.id}:{a}:enter:1"
    assert service.refresh_membership(session=session, customer_ids=[a, b], now=NOW) == []
    assert _events(session) == [(service.ENTERED, a, f"seg:{seg.id}:{a}:enter:1", {"segment": "gartenfans"})]
    assert service.is_member(session=session, segment="gartenfans", customer_id=a)

    # b views a garden product: enters on the real-time refresh; a's view ages out of the window: leaves.
    shop.event(b, "Product Viewed", 0, category="Garten")
    later = NOW + dt.timedelta(days=6, hours=12)
    moved = service.refresh_membership(session=session, customer_ids=[a, b], now=later)
    assert {(t.customer_id, t.kind) for t in moved} == {(a, "exit"), (b, "enter")}
    assert {m for _, _, m, _ in _events(session)} == {
        f"seg:{seg.id}:{a}:enter:1", f"seg:{seg.id}:{a}:exit:1", f"seg:{seg.id}:{b}:enter:1"}

    # a comes back: the second stay gets its own event ids.
    shop.event(a, "Product Viewed", -6.6, category="Garten")
    back = service.refresh_membership(session=session, customer_ids=[a], now=later + dt.timedelta(days=1))
    assert [(t.customer_id, t.kind, t.message_id) for t in back] == [(a, "enter", f"seg:{seg.id}:{a}:enter:2")]
    assert service.segments_of(session=session, customer_id=a)[0][0] == "gartenfans"


def test_refresh_all_catches_changes_that_come_with_time(shop, session):
    a, b, c = shop.customer(), shop.customer(), shop.customer()
    shop.order(a, 80, "50.00")
    shop.order(b, 10, "20.00")
    service.create(session=session, key="lapsed", rule={"all": [{"orders": {"gte": 1}},
                                                                {"last_order": {"older_than_days": 90}}]})
    service.create(session=session, key="never-bought", rule={"orders": 0}, active=True)
    service.create(session=session, key="inactive-def", rule={"orders": 0}, active=False)

    first = service.refresh_all(session=session, now=NOW)
    assert {(t.segment, t.customer_id) for t in first} == {("never-bought", c)}
    assert service.refresh_all(session=session, now=NOW) == []
    # Eleven days later a's last order is 91 days old: nothing happened, time did.
    later = service.refresh_all(session=session, now=NOW + dt.timedelta(days=11))
    assert [(t.segment, t.customer_id, t.kind) for t in later] == [("lapsed", a, "enter")]
    assert service.member_count(session=session, segment="lapsed") == 1
    assert service.count(session=session, segment="lapsed", now=NOW + dt.timedelta(days=11)) == 1
    # The batch result is what the real-time refresh would have said.
    assert service.refresh_membership(session=session, customer_ids=[a, b, c], now=NOW + dt.timedelta(days=11)) == []
    # A retried refresh after a rollback writes the same event ids, so nothing is recorded twice.
    session.commit()
    service.refresh_all(session=session, now=NOW + dt.timedelta(days=200))
    n_events = len(_events(session))
    session.rollback()
    service.refresh_all(session=session, now=NOW + dt.timedelta(days=200))
    assert len(_events(session)) == n_events


def test_changed_rule_raises_version_and_delete_keeps_events(shop, session):
    a = shop.customer(country="DE")
    seg = service.create(session=session, key="de", rule={"country": "DE"})
    service.refresh_all(session=session, now=NOW)
    assert service.update_segment(session=session, key="de", rule={"country": "AT"}).version == 2
    assert service.update_segment(session=session, key="de", rule={"country": "AT"}).version == 2
    moved = service.refresh_all(session=session, now=NOW)
    assert [(t.customer_id, t.kind) for t in moved] == [(a, "exit")]
    service.delete(session=session, key="de")
    assert service.list_segments(session=session) == []
    assert len(_events(session)) == 2
    again = service.create(session=session, key="de", rule={"country": "DE"})
    assert again.id != seg.id
    assert [t.message_id for t in service.refresh_all(session=session, now=NOW)] == [f"seg:{again.id}:{a}:enter:1"]


def test_engine_entry_points(shop, session):
    a, b = shop.customer(country="DE"), shop.customer(country="AT")
    service.create(session=session, key="de", rule={"country": "DE"})
    # By key with the session (recurring schedules), and as a subquery the engine pages through.
    query = service.members_query(session=session, segment="de", now=NOW)
    assert list(session.scalars(query)) == [a]
    # Real time at `now` without a refresh; the stored membership only after one.
    assert service.is_member(session=session, segment="de", customer_id=a, now=NOW)
    assert not service.is_member(session=session, segment="de", customer_id=b, now=NOW)
    assert not service.is_member(session=session, segment="de", customer_id=a)
    service.refresh_all(session=session, now=NOW)
    assert service.is_member(session=session, segment="de", customer_id=a)
