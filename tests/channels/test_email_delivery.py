"""Email over real SMTP (aiosmtpd on 127.0.0.1): MIME parts, RFC 8058 headers, tracking, retries, consent."""

from __future__ import annotations

import datetime as dt
import re
import socket
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from emma.app import create_app
from emma.catalog import service as catalog
from emma.channels import jobs
from emma.channels import service as channels
from emma.channels.adapters import configured_adapters
from emma.channels.models import OutboxMessage
from emma.config import Settings
from emma.consent import service as consent
from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.profiles.models import Customer

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
BASE = "https://shop.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(db_url: str, port: int, **kw) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(database_url=db_url, smtp_host="127.0.0.1", smtp_port=port, base_url=BASE,
                    secret_key="test-secret", mail_from="Tante Emma <news@shop.example>",
                    delivery_backoff_seconds=60, delivery_max_attempts=3, **kw)


def _customer(session, ext="c1", email="anna@example.org", locale="de-DE", grant=True) -> int:  # type: ignore[no-untyped-def]
    ingest.ingest(session=session, received_at=T0, raw_messages=[{
        "type": "identify", "userId": ext, "messageId": f"id-{ext}", "timestamp": T0.isoformat(),
        "traits": {"email": email, "first_name": "Anna", "locale": locale}}])
    cid = session.scalar(select(Customer.id).where(Customer.external_id == ext))
    if grant:
        consent.record(session=session, customer_id=cid, purpose="email_marketing", status="granted",
                       source="test", recorded_at=T0)
    return cid


def _shop(session) -> None:  # type: ignore[no-untyped-def]
    catalog.upsert_products(session=session, products=[
        {"sku": "POT-1", "name": "Schmortopf", "price": Decimal("49.90"), "url": "https://shop.example/p/pot-1"},
        {"sku": "LID-1", "name": "Deckel <groß>", "price": Decimal("12.50"), "url": "https://shop.example/p/lid-1"},
    ], at=T0)


def _cart(session, ext="c1") -> None:  # type: ignore[no-untyped-def]
    ingest.ingest(session=session, received_at=T0, raw_messages=[{
        "type": "track", "userId": ext, "event": "Product Added", "messageId": f"add-{ext}",
        "timestamp": T0.isoformat(), "properties": {"sku": "POT-1", "quantity": 2, "price": 49.90}}])


def test_cart_email_arrives_with_both_parts_unsubscribe_headers_and_tracked_links(session, db_url, smtp):
    inbox, port = smtp
    settings = _settings(db_url, port)
    _shop(session)
    cid = _customer(session)
    _cart(session)
    m = channels.enqueue(session=session, idempotency_key="cart-1", customer_id=cid, channel="email",
                         template="cart_abandoned", purpose="email_marketing", tactic_id="cart")
    again = channels.enqueue(session=session, idempotency_key="cart-1", customer_id=cid, channel="email",
                             template="cart_abandoned", purpose="email_marketing")
    assert again.id == m.id
    session.commit()
    sessions = _factory(session)

    counts = jobs.deliver_due(sessions=sessions, settings=settings, adapters=configured_adapters(settings))
    assert counts == {"sent": 1}
    assert len(inbox.messages) == 1
    rcpts, mail = inbox.messages[0]
    assert rcpts == ["anna@example.org"]
    assert mail["Subject"] == "Sie haben noch etwas in Ihrem Warenkorb"
    assert mail["From"] == "Tante Emma <news@shop.example>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsub = re.fullmatch(r"<(https://shop\.example/u/[^>]+)>", str(mail["List-Unsubscribe"]))
    assert unsub, mail["List-Unsubscribe"]
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert "Hallo Anna," in text and "2 x Schmortopf" in text and "49,90 €" in text
    assert unsub.group(1) in text  # the footer links the same signed unsubscribe URL
    assert "Schmortopf" in html and "Ihr Warenkorb" in html
    # external links go through the click redirect; our own pages stay direct; one open pixel
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert any(h.startswith(f"{BASE}/t/c/") for h in hrefs)
    assert not any(h.startswith("https://shop.example/p/") for h in hrefs)
    assert unsub.group(1) in hrefs
    assert len(re.findall(rf'<img src="{re.escape(BASE)}/t/o/[^"]+\.gif"', html)) == 1

    session.expire_all()
    assert session.get(OutboxMessage, m.id).status == "sent"
    assert [e.status for e in channels.delivery_log(session=session, message_id=m.id)] == ["queued", "sent"]

    # opens and clicks come back through the HTTP endpoints as events and delivery log entries
    client = TestClient(create_app(settings))
    pixel = re.search(rf'{re.escape(BASE)}(/t/o/[^"]+)"', html).group(1)
    assert client.get(pixel).headers["content-type"] == "image/gif"
    assert client.get(pixel).status_code == 200  # a second open is not a second event
    click = next(h for h in hrefs if h.startswith(f"{BASE}/t/c/"))
    r = client.get(click[len(BASE):], follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example/p/pot-1"
    forged = click[len(BASE):-3] + ("AAA" if not click.endswith("AAA") else "BBB")
    assert client.get(forged, follow_redirects=False).status_code == 404
    session.expire_all()
    assert [e.status for e in channels.delivery_log(session=session, message_id=m.id)] == [
        "queued", "sent", "opened", "clicked"]
    names = session.scalars(select(Event.name).where(Event.customer_id == cid, Event.name.like("Email %"))).all()
    assert sorted(names) == ["Email Link Clicked", "Email Opened"]
    props = session.scalar(select(Event.properties).where(Event.name == "Email Link Clicked"))
    assert props["email_id"] == str(m.id) and props["link_url"] == "https://shop.example/p/pot-1"


def _last_error(session) -> str | None:  # type: ignore[no-untyped-def]
    session.expire_all()
    return session.scalar(select(OutboxMessage.last_error).order_by(OutboxMessage.id.desc()).limit(1))


def _factory(session):  # type: ignore[no-untyped-def]
    from emma.db import make_sessionmaker

    return make_sessionmaker(session.get_bind())


def test_english_customer_gets_english_mail_and_html_is_escaped(session, db_url, smtp):
    inbox, port = smtp
    settings = _settings(db_url, port)
    _shop(session)
    cid = _customer(session, locale="en-GB")
    channels.enqueue(session=session, idempotency_key="nbo", customer_id=cid, channel="email",
                     template="next_best_offer", purpose="email_marketing",
                     payload={"offer": {"product": {"name": "Deckel <groß>", "price": "12.50", "currency": "EUR",
                                                    "url": "https://shop.example/p/lid-1"},
                                        "reason": "bought POT-1 three weeks ago"}})
    session.commit()
    assert jobs.deliver_due(sessions=_factory(session), settings=settings) == {"sent": 1}, _last_error(session)
    _, mail = inbox.messages[0]
    assert mail["Subject"] == "Picked for you: Deckel <groß>"
    html = mail.get_body(("html",)).get_content()
    assert "Deckel &lt;groß&gt;" in html and "<groß>" not in html
    assert "€12.50" in html and "Why you receive this message: bought POT-1 three weeks ago" in html


def test_revoked_consent_suppresses_a_queued_message(session, db_url, smtp):
    inbox, port = smtp
    settings = _settings(db_url, port)
    cid = _customer(session)
    m = channels.enqueue(session=session, idempotency_key="k", customer_id=cid, channel="email",
                         template="winback_coupon", purpose="email_marketing")
    consent.record(session=session, customer_id=cid, purpose="email_marketing", status="revoked",
                   source="unsubscribe", recorded_at=T0 + dt.timedelta(hours=1))
    session.commit()
    assert jobs.deliver_due(sessions=_factory(session), settings=settings) == {"suppressed": 1}
    assert inbox.messages == []
    session.expire_all()
    log = channels.delivery_log(session=session, message_id=m.id)
    assert log[-1].status == "suppressed" and "email_marketing" in log[-1].detail["reason"]


def test_pending_consent_is_no_consent_but_transactional_mail_goes_out(session, db_url, smtp):
    inbox, port = smtp
    settings = _settings(db_url, port)
    cid = _customer(session, grant=False)
    consent.record(session=session, customer_id=cid, purpose="email_marketing", status="pending",
                   source="signup", recorded_at=T0)
    channels.enqueue(session=session, idempotency_key="mkt", customer_id=cid, channel="email",
                     template="winback_coupon", purpose="email_marketing")
    channels.enqueue(session=session, idempotency_key="tx", customer_id=cid, channel="email",
                     template="double_opt_in", transactional=True,
                     payload={"confirm_url": "https://shop.example/consent/confirm/x", "ttl_hours": 72})
    session.commit()
    assert jobs.deliver_due(sessions=_factory(session), settings=settings) == {"suppressed": 1, "sent": 1}
    [(_, mail)] = inbox.messages
    assert mail["Subject"] == "Bitte bestätigen Sie Ihre Anmeldung"
    assert mail["List-Unsubscribe"] is None  # transactional mail has no list to leave


def test_unreachable_smtp_retries_with_backoff_then_fails_and_nothing_is_lost(session, db_url, smtp):
    inbox, live_port = smtp
    settings = _settings(db_url, free_port())  # nothing listens there
    cid = _customer(session)
    m = channels.enqueue(session=session, idempotency_key="k", customer_id=cid, channel="email",
                         template="winback_coupon", purpose="email_marketing")
    session.commit()
    sessions = _factory(session)
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=now) == {"queued": 1}
    session.expire_all()
    row = session.get(OutboxMessage, m.id)
    assert row.attempts == 1 and row.due_at == now + dt.timedelta(seconds=60)
    assert "Connection refused" in row.last_error or "refused" in row.last_error.lower()
    # not due yet: nothing happens
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=now + dt.timedelta(seconds=59)) == {}
    now += dt.timedelta(seconds=60)
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=now) == {"queued": 1}
    session.expire_all()
    assert session.get(OutboxMessage, m.id).due_at == now + dt.timedelta(seconds=120)  # doubled
    now += dt.timedelta(seconds=120)
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=now) == {"failed": 1}
    session.expire_all()
    row = session.get(OutboxMessage, m.id)
    assert row.status == "failed" and row.attempts == 3
    assert [e.status for e in channels.delivery_log(session=session, message_id=m.id)] == [
        "queued", "deferred", "deferred", "failed"]
    # after the SMTP settings are fixed, a requeue delivers it
    assert channels.requeue(session=session, now=now) == 1
    session.commit()
    fixed = _settings(db_url, live_port)
    assert jobs.deliver_due(sessions=sessions, settings=fixed, now=now) == {"sent": 1}
    assert len(inbox.messages) == 1


def test_refused_recipient_bounces_without_retry_and_invalid_address_fails(session, db_url, smtp):
    inbox, port = smtp
    settings = _settings(db_url, port)
    a = _customer(session, ext="a", email="unknown.user@example.org")
    b = _customer(session, ext="b", email="not-an-address")
    ma = channels.enqueue(session=session, idempotency_key="a", customer_id=a, channel="email",
                          template="winback_coupon", purpose="email_marketing")
    mb = channels.enqueue(session=session, idempotency_key="b", customer_id=b, channel="email",
                          template="winback_coupon", purpose="email_marketing")
    session.commit()
    assert jobs.deliver_due(sessions=_factory(session), settings=settings) == {"bounced": 1, "failed": 1}
    session.expire_all()
    ra, rb = session.get(OutboxMessage, ma.id), session.get(OutboxMessage, mb.id)
    assert (ra.status, ra.attempts) == ("bounced", 1) and "550" in ra.last_error
    assert (rb.status, rb.attempts) == ("failed", 1) and "invalid email address" in rb.last_error
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    assert jobs.deliver_due(sessions=_factory(session), settings=settings, now=later) == {}
    assert inbox.messages == []


def test_render_error_holds_the_message_and_never_sends_it(session, db_url, smtp, tmp_path):
    inbox, port = smtp
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "broken.de.subject.txt").write_text("Hallo {{ customer.first_name }}")
    (tmp_path / "email" / "broken.de.txt").write_text("Preis: {{ product.price }}")  # no product in the data
    settings = _settings(db_url, port, template_dir=str(tmp_path))
    cid = _customer(session)
    m = channels.enqueue(session=session, idempotency_key="k", customer_id=cid, channel="email",
                         template="broken", purpose="email_marketing")
    missing = channels.enqueue(session=session, idempotency_key="k2", customer_id=cid, channel="email",
                               template="does_not_exist", purpose="email_marketing")
    session.commit()
    assert jobs.deliver_due(sessions=_factory(session), settings=settings) == {"held": 2}
    assert inbox.messages == []
    session.expire_all()
    assert "product" in session.get(OutboxMessage, m.id).last_error
    assert "does not exist" in session.get(OutboxMessage, missing.id).last_error


def test_rate_limit_per_channel(session, db_url, smtp):
    inbox, port = smtp
    settings = _settings(db_url, port, channel_rate_limits={"email": 2})
    cid = _customer(session)
    for i in range(5):
        channels.enqueue(session=session, idempotency_key=f"k{i}", customer_id=cid, channel="email",
                         template="winback_coupon", purpose="email_marketing")
    session.commit()
    sessions = _factory(session)
    now = dt.datetime.now(dt.UTC)
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=now) == {"sent": 2}
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=now + dt.timedelta(seconds=30)) == {}
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=now + dt.timedelta(seconds=61)) == {"sent": 2}
    assert len(inbox.messages) == 4


def test_concurrent_workers_claim_disjoint_messages(session, session_factory, db_url):
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("FOR UPDATE SKIP LOCKED is PostgreSQL's; SQLite has a single writer")
    cid = _customer(session)
    for i in range(6):
        channels.enqueue(session=session, idempotency_key=f"k{i}", customer_id=cid, channel="email",
                         template="winback_coupon", purpose="email_marketing")
    session.commit()
    now, lease = dt.datetime.now(dt.UTC), dt.timedelta(minutes=5)
    a, b = session_factory(), session_factory()
    try:
        first = channels.claim(session=a, channel="email", now=now, limit=4, lease=lease)  # a holds row locks
        second = channels.claim(session=b, channel="email", now=now, limit=4, lease=lease)
        assert len(first) == 4 and len(second) == 2 and not set(first) & set(second)
        a.commit()
        b.commit()
    finally:
        a.close()
        b.close()
    # an expired lease (a worker died mid-send) is claimed again: at least once, never lost
    with session_factory() as c:
        again = channels.claim(session=c, channel="email", now=now + dt.timedelta(minutes=6), limit=10, lease=lease)
    assert sorted(again) == sorted(first + second)
