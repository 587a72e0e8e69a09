"""Issue coupons and attribute their redemption (a coupon in an Order Completed event) to the message."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from emma.coupons.models import Coupon
from emma.db import utcnow
from emma.orders.models import Order

# No 0/O, 1/I/L: codes are typed in by hand at checkout.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def new_code(prefix: str = "EMMA") -> str:
    """A random code such as EMMA-7QK2-XR9M (31^8, about 8.5e11 possibilities)."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(8))
    return f"{prefix}-{body[:4]}-{body[4:]}"


def issue(*, session: Session, customer_id: int, campaign: str, expires_at: dt.datetime, value: str | None = None,
          message_id: int | None = None, prefix: str = "EMMA", now: dt.datetime | None = None) -> Coupon:
    """The customer's coupon for the campaign, created once (a retry or second message reuses it)."""
    existing = session.scalar(select(Coupon).where(Coupon.customer_id == customer_id, Coupon.campaign == campaign))
    if existing is not None:
        if existing.message_id is None and message_id is not None:
            existing.message_id = message_id
        return existing
    for _ in range(5):
        coupon = Coupon(code=new_code(prefix), customer_id=customer_id, campaign=campaign, value=value,
                        message_id=message_id, issued_at=now or utcnow(), expires_at=expires_at)
        try:
            with session.begin_nested():
                session.add(coupon)
            return coupon
        except IntegrityError:  # a code collision, or a concurrent issue for the same customer and campaign
            found = session.scalar(select(Coupon).where(Coupon.customer_id == customer_id,
                                                        Coupon.campaign == campaign))
            if found is not None:
                return found
    raise RuntimeError("could not draw a unique coupon code")


def find(*, session: Session, code: str) -> Coupon | None:
    """A coupon by code (case and surrounding blanks do not matter)."""
    return session.scalar(select(Coupon).where(Coupon.code == code.strip().upper()))


def attribute_redemptions(*, session: Session, now: dt.datetime | None = None) -> int:
    """Mark coupons used in orders as redeemed and attribute the order to the message that carried them."""
    from emma.channels import service as channels

    now = now or utcnow()
    rows = session.execute(
        select(Coupon, Order).join(Order, func.upper(func.trim(Order.coupon)) == Coupon.code)
        .where(Coupon.redeemed_at.is_(None), Order.ordered_at >= Coupon.issued_at,
               Order.ordered_at <= Coupon.expires_at)
        .order_by(Order.ordered_at)).all()
    n = 0
    for coupon, order in rows:
        if coupon.redeemed_at is not None:  # two orders used the same code: the first one counts
            continue
        coupon.redeemed_at, coupon.order_id = order.ordered_at, order.order_id
        n += 1
        if coupon.message_id is not None:
            channels.convert(session=session, order=order, message_id=coupon.message_id, touch="coupon",
                             touched_at=coupon.issued_at, now=now, detail={
                                 "coupon": coupon.code, "campaign": coupon.campaign,
                                 "same_customer": order.customer_id == coupon.customer_id})
    return n
