"""Orders attributed to the message that led to them: a coupon first, else the last click (5 days), else the
last open or delivery (24 hours); once per order, however often its event arrives; the report reads it."""

from __future__ import annotations

import datetime as dt
import re

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from emma.app import create_app
from emma.automation.clock import VirtualClock
from emma.channels import jobs
from emma.channels import service as channels
from emma.channels.models import Conversion, DeliveryEvent
from emma.config import Settings
from emma.consent import service as consent
from emma.coupons import service as coupons
from emma.db import make_sessionmaker
from emma.ingest import service as ingest
from emma.profiles.models import Customer
from emma.reports import service as reports

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
BASE = "https://shop.example"
H = dt.timedelta(hours=1)


def _customer(session, ext: str) -> int:  # type: ignore[no-untyped-def]
    ingest.ingest(session=session, received_at=T0, raw_messages=[{
        "type": "identify", "userId": ext, "messageId": f"id-{ext}", "timestamp": T0.isoformat(),
        "traits": {"email": f"{ext}@example.org", "first_name": ext.title()}}])
    cid = session.scalar(select(Customer.id).where(Customer.external_id == ext))
    consent.record(session=session, customer_id=cid, purpose="email_marketing", status="granted", source="test",
                   recorded_at=T0)
    return cid


def _order(session, ext: str, order_id: str, at: dt.datetime, *, revenue: float = 80, coupon: str | None = None,
           key: str | None = None) -> None:  # type: ignore[no-untyped-def]
    props = {"order_id": order_id, "revenue": revenue, "products": [{"sku": "POT", "quantity": 1, "price": revenue}]}
    if coupon:
        props["coupon"] = coupon
    res = ingest.ingest(session=session, received_at=at, raw_messages=[{
        "type": "track", "userId": ext, "event": "Order Completed", "messageId": key or f"o-{order_id}",
        "timestamp": at.isoformat(), "properties": props}])
    assert res.accepted == 1


def _mail(session, key: str, cid: int, *, transactional: bool = False, coupon: bool = False):  # type: ignore[no-untyped-def]
    payload: dict = {"recommendations": [{"sku": "POT", "name": "Schmortopf", "price": 49.9, "currency": "EUR",
                                          "url": f"{BASE}/p/pot", "image_url": None}]}
    if coupon:
        payload["coupon"] = {"campaign": "spring", "valid_days": 14, "value": "10 %"}
    return channels.enqueue(session=session, idempotency_key=key, customer_id=cid, channel="email",
                            template="winback_coupon", purpose=None if transactional else "email_marketing",
                            transactional=transactional, payload=payload, tactic_id="winback", now=T0)


def _converted(session, message_id: int) -> list[DeliveryEvent]:  # type: ignore[no-untyped-def]
    return [e for e in channels.delivery_log(session=session, message_id=message_id) if e.status == "converted"]


def test_last_touch_attribution_coupon_click_open_delivery_and_windows(session, db_url, smtp):
    inbox, port = smtp
    settings = Settings(database_url=db_url, smtp_host="127.0.0.1", smtp_port=port, base_url=BASE,
                        secret_key="test-secret")
    sessions = make_sessionmaker(session.get_bind())
    anna, ben, cara = _customer(session, "anna"), _customer(session, "ben"), _customer(session, "cara")
    a_click, a_open = _mail(session, "a-click", anna), _mail(session, "a-open", anna)
    a_receipt = _mail(session, "a-receipt", anna, transactional=True)
    b_mail, c_coupon = _mail(session, "b", ben), _mail(session, "c-coupon", cara, coupon=True)
    c_click = _mail(session, "c-click", cara)
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=T0) == {"sent": 6}
    mails = {rcpts[0]: [] for rcpts, _ in inbox.messages}
    for rcpts, mail in inbox.messages:
        mails[rcpts[0]].append(mail)

    # Anna clicks a link in the first mail (through the app's redirect, on its clock) at 10:00 and opens the
    # second at 11:00; the transactional receipt is clicked last, but receipts earn no credit.
    clock = VirtualClock(T0 + H)
    client = TestClient(create_app(settings, clock=clock))

    def click(mail_id: int, at: dt.datetime) -> None:
        mail = next(m for ms in mails.values() for m in ms if m["X-Emma-Message"] == str(mail_id))
        link = re.search(rf'href="{re.escape(BASE)}(/t/c/[^"]+)"', mail.get_body(("html",)).get_content()).group(1)
        clock.set(at)
        assert client.get(link, follow_redirects=False).status_code == 302

    click(a_click.id, T0 + H)
    channels.track_open(session=session, token=channels.tracking_token(kind="open", message_id=a_open.id,
                                                                        settings=settings), settings=settings,
                        now=T0 + 2 * H)
    session.commit()
    click(a_receipt.id, T0 + 2.5 * H)
    _order(session, "anna", "A-1", T0 + 3 * H, revenue=80)
    # Ben only received his mail: an order 5 hours later is a view-through conversion of the delivery.
    _order(session, "ben", "B-1", T0 + 5 * H, revenue=30)
    # Cara clicked a later mail, but paid with the coupon of the first: the coupon is the stronger signal.
    code = coupons.find(session=session, code=re.search(r"EMMA-[A-Z0-9]{4}-[A-Z0-9]{4}", mails["cara@example.org"][0]
                                                        .get_body(("plain",)).get_content()).group(0))
    assert code is not None and code.message_id == c_coupon.id
    session.commit()
    click(c_click.id, T0 + 3 * H)
    _order(session, "cara", "C-1", T0 + 4 * H, revenue=50, coupon=code.code)
    session.commit()

    assert jobs.deliver_due(sessions=sessions, settings=settings, now=T0 + 6 * H) == {"converted": 3}
    session.expire_all()
    [a] = _converted(session, a_click.id)
    assert a.detail["order_id"] == "A-1" and a.detail["touch"] == "click" and a.detail["revenue"] == "80.00"
    assert _converted(session, a_open.id) == [] and _converted(session, a_receipt.id) == []
    [b] = _converted(session, b_mail.id)
    assert b.detail["order_id"] == "B-1" and b.detail["touch"] == "delivery"
    [c] = _converted(session, c_coupon.id)
    assert c.detail["touch"] == "coupon" and c.detail["coupon"] == code.code and _converted(session, c_click.id) == []

    # The same order event again (a shop's retry under a new message id) and later passes: nothing twice.
    _order(session, "anna", "A-1", T0 + 3 * H, revenue=80, key="o-A-1-retry")
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=T0 + 7 * H) == {}
    session.expire_all()
    assert len(_converted(session, a_click.id)) == 1
    assert session.scalar(select(func.count()).select_from(Conversion)) == 3

    # Windows: Anna's next order 4 days after her click still counts for the click (5 days); the open (24 h)
    # would have lost. Ben's order 30 hours after the delivery is past the 24 hours: nobody's conversion.
    _order(session, "anna", "A-2", T0 + 4 * 24 * H, revenue=20)
    _order(session, "ben", "B-2", T0 + 30 * H, revenue=10)
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=T0 + 4 * 24 * H + H) == {"converted": 1}
    session.expire_all()
    assert [e.detail["order_id"] for e in _converted(session, a_click.id)] == ["A-1", "A-2"]
    assert len(_converted(session, b_mail.id)) == 1
    # ... and 6 days after the click, nothing any more.
    _order(session, "anna", "A-3", T0 + 6 * 24 * H, revenue=20)
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=T0 + 6 * 24 * H + H) == {}

    # The report: per tactic and channel, converted messages and the revenue attributed to them.
    [row] = reports.channel_results(session=session)
    assert (row["delivered"], row["converted"], row["revenue"]) == (6, 3, 80 + 20 + 30 + 50)


def test_attribution_windows_come_from_the_settings(session, db_url, smtp):
    _, port = smtp
    settings = Settings(database_url=db_url, smtp_host="127.0.0.1", smtp_port=port, base_url=BASE,
                        secret_key="test-secret", attribution_view_hours=2)
    sessions = make_sessionmaker(session.get_bind())
    dora = _customer(session, "dora")
    m = _mail(session, "d", dora)
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=T0) == {"sent": 1}
    _order(session, "dora", "D-1", T0 + 3 * H)
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=T0 + 4 * H) == {}
    _order(session, "dora", "D-2", T0 + 1.5 * H)
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings, now=T0 + 4 * H) == {"converted": 1}
    session.expire_all()
    assert [e.detail["order_id"] for e in _converted(session, m.id)] == ["D-2"]
