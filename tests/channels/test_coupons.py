"""Coupons: a unique code per customer and campaign in the mail; its redemption converts the message."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select

from emma.channels import jobs
from emma.channels import service as channels
from emma.config import Settings
from emma.consent import service as consent
from emma.coupons import service as coupons
from emma.coupons.models import Coupon
from emma.db import make_sessionmaker
from emma.ingest import service as ingest
from emma.profiles.models import Customer

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SPEC = {"campaign": "winback-2026-03", "valid_days": 14, "value": "10 %"}


def _customer(session, ext: str) -> int:  # type: ignore[no-untyped-def]
    ingest.ingest(session=session, received_at=T0, raw_messages=[{
        "type": "identify", "userId": ext, "messageId": f"i-{ext}", "timestamp": T0.isoformat(),
        "traits": {"email": f"{ext}@example.org", "first_name": ext.title()}}])
    cid = session.scalar(select(Customer.id).where(Customer.external_id == ext))
    consent.record(session=session, customer_id=cid, purpose="email_marketing", status="granted", source="t",
                   recorded_at=T0)
    return cid


def _order(session, ext: str, order_id: str, coupon: str, at: dt.datetime) -> None:  # type: ignore[no-untyped-def]
    ingest.ingest(session=session, received_at=at, raw_messages=[{
        "type": "track", "userId": ext, "event": "Order Completed", "messageId": f"o-{order_id}",
        "timestamp": at.isoformat(), "properties": {"order_id": order_id, "revenue": 80, "coupon": coupon,
                                                    "products": [{"sku": "POT", "quantity": 1, "price": 80}]}}])


def test_codes_are_unique_per_customer_and_campaign_and_redemption_converts(session, db_url, smtp):
    inbox, port = smtp
    settings = Settings(database_url=db_url, smtp_port=port, base_url="https://e.example")
    sessions = make_sessionmaker(session.get_bind())
    anna, ben = _customer(session, "anna"), _customer(session, "ben")
    m1 = channels.enqueue(session=session, idempotency_key="a1", customer_id=anna, channel="email",
                          template="winback_coupon", purpose="email_marketing", payload={"coupon": SPEC})
    channels.enqueue(session=session, idempotency_key="a2", customer_id=anna, channel="email",
                     template="winback_coupon", purpose="email_marketing", payload={"coupon": SPEC}, locale="en")
    channels.enqueue(session=session, idempotency_key="b1", customer_id=ben, channel="email",
                     template="winback_coupon", purpose="email_marketing", payload={"coupon": SPEC})
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings) == {"sent": 3}
    codes = {}
    for rcpts, mail in inbox.messages:
        text = mail.get_body(("plain",)).get_content()
        codes.setdefault(rcpts[0], set()).update(re.findall(r"EMMA-[A-Z0-9]{4}-[A-Z0-9]{4}", text))
        assert "10 %" in text
    assert len(codes["anna@example.org"]) == 1 and len(codes["ben@example.org"]) == 1  # same code twice for Anna
    code = codes["anna@example.org"].pop()
    assert code != codes["ben@example.org"].pop()
    coupon = coupons.find(session=session, code=f" {code.lower()} ")
    assert coupon.customer_id == anna and coupon.message_id == m1.id

    # The order uses the code (typed in lower case): the first message that carried it is converted.
    _order(session, "anna", "O-1", code.lower(), dt.datetime.now(dt.UTC))
    session.commit()
    assert jobs.deliver_due(sessions=sessions, settings=settings) == {"converted": 1}
    assert jobs.deliver_due(sessions=sessions, settings=settings) == {}  # counted once
    session.expire_all()
    c = session.get(Coupon, coupon.id)
    assert c.order_id == "O-1" and c.redeemed_at is not None
    last = channels.delivery_log(session=session, message_id=m1.id)[-1]
    assert last.status == "converted" and last.detail["order_id"] == "O-1" and last.detail["revenue"] == "80.00"


def test_expired_coupon_does_not_convert(session):
    cid = _customer(session, "cara")
    c = coupons.issue(session=session, customer_id=cid, campaign="x", expires_at=dt.datetime.now(dt.UTC)
                      - dt.timedelta(days=1))
    c.issued_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    _order(session, "cara", "O-9", c.code, dt.datetime.now(dt.UTC))
    assert coupons.attribute_redemptions(session=session) == 0
    assert c.redeemed_at is None


def test_many_codes_are_distinct_and_readable():
    codes = {coupons.new_code() for _ in range(5000)}
    assert len(codes) == 5000
    assert all(re.fullmatch(r"EMMA-[A-HJKMNP-Z2-9]{4}-[A-HJKMNP-Z2-9]{4}", c) for c in codes)
