"""Profiles: traits with history (latest wins), reversible merges."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

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


def test_a_trait_batch_loads_the_times_of_traits_it_was_not_told_about(session):
    # A batch preloaded for some traits only: a late, older update of another trait still loses to the
    # newer stored one, and a trait's time found in the history is not forgotten.
    ingest.ingest(session=session, raw_messages=[
        {"type": "identify", "userId": "u", "timestamp": at(5), "messageId": "5",
         "traits": {"firstName": "Anna", "email": "a@example.com", "plan": "gold"}}])
    session.commit()
    cid = session.scalar(select(Customer.id))
    batch = profiles.TraitBatch(session)
    batch.preload(customer_ids=[cid], traits=["email"])
    assert batch.apply(customer_id=cid, traits={"email": "old@example.com"}, source="t", at=T0) == []
    assert batch.apply(customer_id=cid, traits={"firstName": "Anne", "plan": "silver"}, source="t", at=T0) == []
    assert batch.apply(customer_id=cid, traits={"plan": "platinum"}, source="t", at=T0 + dt.timedelta(hours=6)) == [
        "plan"]
    batch.flush()
    session.commit()
    c = session.get(Customer, cid)
    session.refresh(c)
    assert (c.first_name, c.email, c.attributes) == ("Anna", "a@example.com", {"plan": "platinum"})
    assert session.scalar(select(func.count()).select_from(TraitChange).where(TraitChange.customer_id == cid)) == 7


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
