"""Profiles: traits with history (latest wins), reversible merges."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.profiles import service as profiles
from emma.profiles.models import Customer, MergeLog, TraitChange

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def at(h: int) -> str:
    return (T0 + dt.timedelta(hours=h)).isoformat()


def test_traits_keep_history_and_latest_by_time_wins(session):
    ingest.ingest(session=session, raw_messages=[
        {"type": "identify", "userId": "u", "timestamp": at(2), "messageId": "2",
         "traits": {"firstName": "Anna", "birthday": "1990-05-17", "plan": "gold",
                    "address": {"city": "Köln", "postalCode": "50667", "country": "de"}}},
        # arrives later but happened earlier: history only
        {"type": "identify", "userId": "u", "timestamp": at(1), "messageId": "1", "traits": {"firstName": "Anne"}},
        {"type": "identify", "userId": "u", "timestamp": at(3), "messageId": "3", "traits": {"plan": "platinum"},
         "context": {"locale": "de-DE", "timezone": "Europe/Berlin"}},
    ])
    session.commit()
    c = session.scalar(select(Customer))
    assert (c.first_name, c.birthday, c.city, c.postal_code, c.country) == (
        "Anna", dt.date(1990, 5, 17), "Köln", "50667", "DE")
    assert c.attributes == {"plan": "platinum"}
    assert (c.locale, c.timezone) == ("de-DE", "Europe/Berlin")
    names = [(t.value, t.source) for t in session.scalars(
        select(TraitChange).where(TraitChange.trait == "firstName").order_by(TraitChange.recorded_at))]
    assert names == [("Anne", "identify"), ("Anna", "identify")]


def test_merge_is_logged_and_reversible(session):
    ingest.ingest(session=session, raw_messages=[
        {"type": "track", "anonymousId": "a", "event": "Product Viewed", "timestamp": at(0), "messageId": "v",
         "properties": {"sku": "S"}},
        {"type": "identify", "userId": "known", "timestamp": at(0), "messageId": "k"},
        {"type": "alias", "previousId": "a", "userId": "known", "timestamp": at(1), "messageId": "al"},
    ])
    session.commit()
    known = profiles.get_customer(session=session, ref="known")
    assert profiles.get_customer(session=session, ref="a").id == known.id
    log = session.scalar(select(MergeLog))
    assert log.target_customer_id == known.id and "events" in log.moved
    profiles.revert_merge(session=session, merge_id=log.id)
    session.commit()
    ev = session.scalar(select(Event).where(Event.message_id == "v"))
    assert ev.customer_id == log.source_customer_id
    assert session.get(Customer, log.source_customer_id).merged_into_id is None
    assert profiles.get_customer(session=session, ref="a").id == log.source_customer_id
