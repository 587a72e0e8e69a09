"""Consent: per purpose, audit log of every change; stale decisions are history only, replays change nothing."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from emma.consent import service as consent
from emma.consent.exceptions import InvalidConsent
from emma.ingest import service as ingest
from emma.profiles import service as profiles

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _customer(session) -> int:  # type: ignore[no-untyped-def]
    return profiles.ensure_customers(session=session, external_ids=["c"], at=T0)["c"]


def test_changes_are_logged_and_only_granted_allows(session):
    cid = _customer(session)
    assert consent.record(session=session, customer_id=cid, purpose="email_marketing", status="pending",
                          source="signup", recorded_at=T0, text_version="v1")
    assert not consent.allows(session=session, customer_id=cid, purpose="email_marketing")
    consent.record(session=session, customer_id=cid, purpose="email_marketing", status="granted",
                   source="doi", recorded_at=T0 + dt.timedelta(hours=1), text_version="v1")
    assert consent.allows(session=session, customer_id=cid, purpose="email_marketing")
    consent.record(session=session, customer_id=cid, purpose="email_marketing", status="revoked",
                   source="unsubscribe", recorded_at=T0 + dt.timedelta(days=3))
    session.commit()
    assert not consent.allows(session=session, customer_id=cid, purpose="email_marketing")
    log = consent.history(session=session, customer_id=cid)
    assert [(x.previous_status, x.status) for x in log] == [(None, "pending"), ("pending", "granted"),
                                                            ("granted", "revoked")]


def test_stale_decisions_are_history_only_and_replays_change_nothing(session):
    cid = _customer(session)
    consent.record(session=session, customer_id=cid, purpose="sms_marketing", status="revoked", source="s",
                   recorded_at=T0 + dt.timedelta(days=1))
    for _ in range(2):  # the second time a replay: no second entry
        assert not consent.record(session=session, customer_id=cid, purpose="sms_marketing", status="granted",
                                  source="old-import", recorded_at=T0)
    assert not consent.record(session=session, customer_id=cid, purpose="sms_marketing", status="revoked",
                              source="s", recorded_at=T0 + dt.timedelta(days=1))
    session.commit()
    assert consent.status_of(session=session, customer_id=cid) == {"sms_marketing": "revoked"}
    assert [(x.recorded_at, x.status, x.source) for x in consent.history(session=session, customer_id=cid)] == [
        (T0, "granted", "old-import"), (T0 + dt.timedelta(days=1), "revoked", "s")]


def test_unknown_purpose_or_status_names_the_field(session):
    cid = _customer(session)
    with pytest.raises(InvalidConsent) as exc:
        consent.record(session=session, customer_id=cid, purpose="telepathy", status="granted", source="x")
    assert exc.value.field == "purpose"
    with pytest.raises(InvalidConsent) as exc:
        consent.record(session=session, customer_id=cid, purpose="push", status="maybe", source="x")
    assert exc.value.field == "status"


def test_consent_travels_in_segment_context(session):
    ingest.ingest(session=session, raw_messages=[
        {"type": "identify", "userId": "c", "timestamp": T0.isoformat(), "messageId": "m",
         "context": {"consent": {"categoryPreferences": {"email_marketing": True, "ads": False, "bogus": True}}}}])
    session.commit()
    cid = profiles.get_customer(session=session, ref="c").id
    # email needs double opt-in: pending, and a transactional confirmation mail is queued
    assert consent.status_of(session=session, customer_id=cid) == {"email_marketing": "pending", "ads": "revoked"}
    from emma.channels.models import OutboxMessage

    doi = session.scalar(select(OutboxMessage).where(OutboxMessage.customer_id == cid))
    assert doi.transactional and doi.template == "double_opt_in"
