"""Webhook, SMS and push against a real local HTTP server: signature, retries, permanent errors, rate limits."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import socket

from sqlalchemy import func, select

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
    # The link is a short signed link to the app, which leads on to the cart.
    [short] = re.findall(r"https://shop\.example/t/s/\S+", sms["json"]["text"])
    assert "https://shop.example/cart" not in sms["json"]["text"] and len(short) < 50
    assert {k.lower(): v for k, v in sms["headers"].items()}["authorization"] == "Bearer sms-token"
    push = by_path["/hook/push"]["json"]
    assert push == {**push, "external_user_id": "c1", "title": "Your cart is waiting",
                    "body": "Schmortopf and 1 more – order now."}
    session.expire_all()
    assert "E.164" in session.get(OutboxMessage, x.id).last_error



def test_sms_link_clicks_and_push_taps_come_back_over_http(session, db_url, webhook):
    """The short SMS link and the push tap link, followed through the app on 127.0.0.1: 'clicked' on the
    message, an event for the channel model, a redirect to the target; forged links get nothing."""
    from fastapi.testclient import TestClient

    from emma.app import create_app
    from emma.automation.clock import VirtualClock
    from emma.ingest.models import Event
    from emma.predict import features

    settings = _settings(db_url, sms_provider_url=webhook.url + "/sms", push_provider_url=webhook.url + "/push")
    cid = _customer(session)
    s = channels.enqueue(session=session, idempotency_key="s", customer_id=cid, channel="sms",
                         template="cart_abandoned", purpose="sms_marketing",
                         payload={"links": {"cart": "https://shop.example/cart?x=1"}}, now=T0)
    p = channels.enqueue(session=session, idempotency_key="p", customer_id=cid, channel="push",
                         template="back_in_stock", purpose="push",
                         payload={"product": {"sku": "POT", "name": "Schmortopf", "url": "https://shop.example/p/pot"}},
                         now=T0)
    q = channels.enqueue(session=session, idempotency_key="q", customer_id=cid, channel="push",
                         template="consent_refresh", purpose="push", now=T0)
    session.commit()
    assert jobs.deliver_due(sessions=make_sessionmaker(session.get_bind()), settings=settings, now=T0) == {"sent": 3}
    by_id = {r["json"]["message_id"]: r["json"] for r in webhook.requests}
    [sms_link] = re.findall(r"https://shop\.example(/t/s/\S+)", by_id[s.id]["text"])
    tap, plain_tap = by_id[p.id]["url"], by_id[q.id]["data"]["tap_url"]
    assert tap == by_id[p.id]["data"]["tap_url"] and tap.startswith("https://shop.example/t/p/")

    clock = VirtualClock(T0 + dt.timedelta(minutes=5))
    client = TestClient(create_app(settings, clock=clock))
    r = client.get(sms_link, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (302, "https://shop.example/cart?x=1")
    r = client.get(tap.removeprefix("https://shop.example"), follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (302, "https://shop.example/p/pot")
    # An app that only reports the tap (POST), and a push without a deep link: recorded, nothing to open.
    assert client.post(plain_tap.removeprefix("https://shop.example")).status_code == 204
    assert client.get(plain_tap.removeprefix("https://shop.example")).status_code == 204
    # Forged or altered: 404, nothing recorded; an SMS code is no push code.
    mid36, idx, mac = sms_link.rsplit("/", 1)[1].split("-", 2)
    for bad in (f"/t/s/{mid36}-1-{mac}", f"/t/s/{mid36}-{idx}-{'A' * 11}", "/t/s/zz", f"/t/p/{mid36}-{idx}-{mac}"):
        assert client.get(bad, follow_redirects=False).status_code == 404, bad

    session.expire_all()
    clicked = {m.id: [e for e in channels.delivery_log(session=session, message_id=m.id) if e.status == "clicked"]
               for m in (s, p, q)}
    assert [e.detail["url"] for e in clicked[s.id]] == ["https://shop.example/cart?x=1"]
    assert len(clicked[p.id]) == 1 and len(clicked[q.id]) == 2 and clicked[s.id][0].at == clock.now()
    events = dict(session.execute(select(Event.name, func.count()).where(Event.customer_id == cid,
                                                                         Event.name.like("%Tapped%") |
                                                                         Event.name.like("SMS%"))
                                  .group_by(Event.name)).all())
    assert events == {"SMS Link Clicked": 1, "Push Notification Tapped": 2}  # a repeated tap is one event
    # The channel model's input counts them for this customer.
    seen = features.channel_engagement(session=session, before=T0 + dt.timedelta(days=1))
    assert seen[cid].get("sms") == 1 and seen[cid].get("push") == 2
