"""Webhook, SMS and push against a real local HTTP server: signature, retries, permanent errors, rate limits."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import socket

from sqlalchemy import select

from emma.channels import jobs
from emma.channels import service as channels
from emma.channels.adapters import configured_adapters
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.consent import service as consent
from emma.db import make_sessionmaker
from emma.ingest import service as ingest
from emma.profiles.models import Customer

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def _settings(db_url: str, **kw) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(database_url=db_url, base_url="https://shop.example", secret_key="s3cret",
                    webhook_secret="hook-secret", delivery_max_attempts=3, **kw)


def _customer(session, ext="c1", phone="+491701234567", locale="de") -> int:  # type: ignore[no-untyped-def]
    ingest.ingest(session=session, received_at=T0, raw_messages=[{
        "type": "identify", "userId": ext, "messageId": f"id-{ext}", "timestamp": T0.isoformat(),
        "traits": {"phone": phone, "first_name": "Ben", "locale": locale}}])
    cid = session.scalar(select(Customer.id).where(Customer.external_id == ext))
    for purpose in ("sms_marketing", "push", "personalization"):
        consent.record(session=session, customer_id=cid, purpose=purpose, status="granted", source="t",
                       recorded_at=T0)
    return cid


def _later(seconds: float = 0) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds + 1)


def test_webhook_is_signed_and_carries_the_payload(session, db_url, webhook):
    settings = _settings(db_url, webhook_url=webhook.url)
    cid = _customer(session)
    m = channels.enqueue(session=session, idempotency_key="w1", customer_id=cid, channel="webhook", template=None,
                         purpose="personalization", payload={"offer": "SKU-9", "reason": "affinity: Küche"})
    session.commit()
    assert jobs.deliver_due(sessions=make_sessionmaker(session.get_bind()), settings=settings,
                            adapters={"webhook": configured_adapters(settings)["webhook"]}) == {"sent": 1}
    [req] = webhook.requests
    h = {k.lower(): v for k, v in req["headers"].items()}
    expected = hmac.new(b"hook-secret", h["x-emma-timestamp"].encode() + b"." + req["raw"], hashlib.sha256).hexdigest()
    assert h["x-emma-signature"] == f"sha256={expected}"
    assert h["idempotency-key"] == f"emma-{m.id}"
    body = req["json"]
    assert body["data"]["offer"] == "SKU-9" and body["data"]["customer"]["external_id"] == "c1"
    session.expire_all()
    assert session.get(OutboxMessage, m.id).status == "sent"
    assert channels.delivery_log(session=session, message_id=m.id)[-1].detail["provider_id"] == "prov-1"


def test_webhook_without_purpose_or_consent_is_suppressed(session, db_url, webhook):
    settings = _settings(db_url, webhook_url=webhook.url)
    cid = _customer(session)
    channels.enqueue(session=session, idempotency_key="w1", customer_id=cid, channel="webhook", template=None)
    channels.enqueue(session=session, idempotency_key="w2", customer_id=cid, channel="webhook", template=None,
                     purpose="ads")
    session.commit()
    assert jobs.deliver_due(sessions=make_sessionmaker(session.get_bind()), settings=settings) == {"suppressed": 2}
    assert webhook.requests == []


def test_server_errors_are_retried_client_errors_are_not(session, db_url, webhook):
    settings = _settings(db_url, webhook_url=webhook.url)
    sessions = make_sessionmaker(session.get_bind())
    cid = _customer(session)
    a = channels.enqueue(session=session, idempotency_key="a", customer_id=cid, channel="webhook", template=None,
                         purpose="personalization")
    session.commit()
    webhook.statuses = [503, 500]
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=_later()) == {"queued": 1}
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=_later(60)) == {"queued": 1}
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=_later(180)) == {"sent": 1}
    assert len(webhook.requests) == 3
    session.expire_all()
    assert session.get(OutboxMessage, a.id).attempts == 3
    b = channels.enqueue(session=session, idempotency_key="b", customer_id=cid, channel="webhook", template=None,
                         purpose="personalization")
    session.commit()
    webhook.statuses = [422]
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=_later(200)) == {"failed": 1}
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=_later(100000)) == {}
    session.expire_all()
    assert "HTTP 422" in session.get(OutboxMessage, b.id).last_error


def test_rate_limited_by_receiver_waits_without_using_an_attempt(session, db_url, webhook):
    settings = _settings(db_url, webhook_url=webhook.url)
    cid = _customer(session)
    m = channels.enqueue(session=session, idempotency_key="a", customer_id=cid, channel="webhook", template=None,
                         purpose="personalization")
    session.commit()
    webhook.statuses = [429]
    now = _later()
    assert jobs.deliver_due(sessions=make_sessionmaker(session.get_bind()), settings=settings, now=now) == {
        "queued": 1}
    session.expire_all()
    row = session.get(OutboxMessage, m.id)
    assert row.attempts == 0 and row.due_at == now + dt.timedelta(seconds=30)  # the server's Retry-After


def test_unreachable_webhook_retries_then_fails_and_the_message_stays(session, db_url):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(db_url, webhook_url=f"http://127.0.0.1:{port}/hook", webhook_timeout=1.0)
    sessions = make_sessionmaker(session.get_bind())
    cid = _customer(session)
    m = channels.enqueue(session=session, idempotency_key="a", customer_id=cid, channel="webhook", template=None,
                         purpose="personalization")
    session.commit()
    results = [jobs.deliver_due(sessions=sessions, settings=settings, now=_later(t)) for t in (0, 60, 180)]
    assert results == [{"queued": 1}, {"queued": 1}, {"failed": 1}]
    session.expire_all()
    row = session.get(OutboxMessage, m.id)
    assert row.status == "failed" and row.attempts == 3 and "ConnectError" in row.last_error


def test_sms_and_push_through_http_providers(session, db_url, webhook):
    settings = _settings(db_url, sms_provider_url=webhook.url + "/sms", sms_provider_token="sms-token",
                         push_provider_url=webhook.url + "/push")
    cid = _customer(session)
    bad = _customer(session, ext="c2", phone="0170 123")  # not E.164
    channels.enqueue(session=session, idempotency_key="s", customer_id=cid, channel="sms", template="cart_abandoned",
                     purpose="sms_marketing", payload={"links": {"cart": "https://shop.example/cart"}})
    channels.enqueue(session=session, idempotency_key="p", customer_id=cid, channel="push", template="cart_abandoned",
                     purpose="push", locale="en", payload={"cart": {"items": [{"name": "Schmortopf"},
                                                                               {"name": "Deckel"}]}})
    x = channels.enqueue(session=session, idempotency_key="x", customer_id=bad, channel="sms",
                         template="cart_abandoned", purpose="sms_marketing")
    session.commit()
    counts = jobs.deliver_due(sessions=make_sessionmaker(session.get_bind()), settings=settings)
    assert counts == {"sent": 2, "failed": 1}
    by_path = {r["path"]: r for r in webhook.requests}
    sms = by_path["/hook/sms"]
    assert sms["json"]["to"] == "+491701234567"
    assert sms["json"]["text"].startswith("Ben, Ihr Warenkorb wartet auf Sie.")
    assert "https://shop.example/cart" in sms["json"]["text"]
    assert {k.lower(): v for k, v in sms["headers"].items()}["authorization"] == "Bearer sms-token"
    push = by_path["/hook/push"]["json"]
    assert push == {**push, "external_user_id": "c1", "title": "Your cart is waiting",
                    "body": "Schmortopf and 1 more – order now."}
    session.expire_all()
    assert "E.164" in session.get(OutboxMessage, x.id).last_error

