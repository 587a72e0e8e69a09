"""Derived state when related messages arrive in one chunk: the same result as one by one, in message order."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from emma.ingest import service as ingest
from emma.orders.models import Cart, CartItem, Order, WishlistItem

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def track(n: int, event: str, user: str = "u", **props):  # type: ignore[no-untyped-def]
    return {"type": "track", "userId": user, "event": event, "messageId": f"m{n}",
            "timestamp": (T0 + dt.timedelta(minutes=n)).isoformat(), "properties": props}


def items(session, cart_id: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {i.sku: i.quantity for i in session.scalars(
        select(CartItem).join(Cart, Cart.id == CartItem.cart_pk).where(Cart.cart_id == cart_id))}


def test_add_and_remove_of_one_sku_in_one_chunk(session):
    ingest.ingest(session=session, raw_messages=[
        track(1, "Product Added", sku="A", price=2, quantity=3, cart_id="c"),
        track(2, "Product Removed", sku="A", quantity=1, cart_id="c"),
        track(3, "Product Added", sku="B", price=1, cart_id="c"),
        track(4, "Product Removed", sku="B", cart_id="c"),
        track(5, "Product Added", sku="B", price=4, cart_id="c"),
        track(6, "Product Removed", sku="X", cart_id="c"),  # not in the cart: nothing happens
    ])
    session.commit()
    assert items(session, "c") == {"A": 2, "B": 1}
    b = session.scalar(select(CartItem).where(CartItem.sku == "B"))
    assert float(b.price) == 4 and b.added_at == T0 + dt.timedelta(minutes=5)
    # a stored item removed and added again in a later chunk
    ingest.ingest(session=session, raw_messages=[
        track(7, "Product Removed", sku="A", cart_id="c"), track(8, "Product Added", sku="A", price=2, cart_id="c")])
    session.commit()
    assert items(session, "c") == {"A": 1, "B": 1}


def test_two_carts_of_one_customer_and_the_open_cart_without_id(session):
    ingest.ingest(session=session, raw_messages=[
        track(1, "Product Added", sku="A", price=1, cart_id="c1"),
        track(2, "Product Added", sku="B", price=1, cart_id="c2"),
        track(3, "Product Added", sku="C", price=1),  # no cart id: the most recently updated open cart
        track(4, "Product Added", sku="D", price=1, cart_id="c1"),
        track(5, "Checkout Started"),  # c1 now
        track(6, "Order Completed", order_id="o1", products=[{"sku": "A", "price": 1}, {"sku": "D", "price": 1}]),
        track(7, "Product Added", sku="E", price=1),  # c1 is ordered: c2 is the open one
    ])
    session.commit()
    assert items(session, "c2") == {"B": 1, "C": 1, "E": 1}
    assert items(session, "c1") == {"A": 1, "D": 1}
    statuses = dict(session.execute(select(Cart.cart_id, Cart.status)).all())
    assert statuses == {"c1": "ordered", "c2": "open"}
    assert session.scalar(select(Order.cart_id)) == "c1"
    # an ordered cart id used again starts afresh
    ingest.ingest(session=session, raw_messages=[track(8, "Product Added", sku="F", price=1, cart_id="c1")])
    session.commit()
    assert items(session, "c1") == {"F": 1}
    assert session.scalar(select(Cart.status).where(Cart.cart_id == "c1")) == "open"


def test_order_completed_and_updated_in_one_chunk(session):
    ingest.ingest(session=session, raw_messages=[
        track(1, "Order Shipped", order_id="o1"),  # before the order exists: changes nothing
        track(2, "Order Completed", order_id="o1", revenue=5, products=[{"sku": "A", "price": 5}]),
        track(3, "Order Completed", order_id="o1", revenue=99, products=[{"sku": "Z", "price": 99}]),  # same order
        track(4, "Order Shipped", order_id="o1"),
        track(5, "Order Updated", order_id="o1", status="processing"),
        track(6, "Order Delivered", order_id="o1"),
        track(7, "Order Delivered", order_id="unknown"),
    ])
    session.commit()
    order = session.scalar(select(Order))
    assert (order.status, float(order.revenue)) == ("delivered", 5)
    assert order.shipped_at == T0 + dt.timedelta(minutes=4)
    assert order.delivered_at == order.updated_at == T0 + dt.timedelta(minutes=6)
    assert session.scalar(select(Order).where(Order.order_id == "unknown")) is None


def test_wishlist_add_remove_add_in_one_chunk(session):
    ingest.ingest(session=session, raw_messages=[
        track(1, "Product Added to Wishlist", sku="W"), track(2, "Product Removed from Wishlist", sku="W"),
        track(3, "Product Added to Wishlist", sku="V"), track(4, "Product Removed from Wishlist", sku="V"),
        track(5, "Product Added to Wishlist", sku="V")])
    session.commit()
    rows = {w.sku: w.removed_at for w in session.scalars(select(WishlistItem))}
    assert rows == {"W": T0 + dt.timedelta(minutes=2), "V": None}


def test_consent_changes_in_one_chunk_keep_order_and_log(session):
    from emma.channels.models import DeliveryEvent, OutboxMessage
    from emma.consent.models import Consent, ConsentLog

    def prefs(n: int, **p):  # type: ignore[no-untyped-def]
        return {**track(n, "Page Viewed"), "context": {"consent": {"categoryPreferences": p}}}

    ingest.ingest(session=session, raw_messages=[
        prefs(1, ads=True, email_marketing=True), prefs(2, ads=False), prefs(3, email_marketing=True),
        prefs(4, ads=True), prefs(0, ads=False),  # older than what is recorded: history only
    ])
    session.commit()
    assert dict(session.execute(select(Consent.purpose, Consent.status)).all()) == {
        "ads": "granted", "email_marketing": "pending"}
    log = [(c.purpose, c.previous_status, c.status) for c in session.scalars(
        select(ConsentLog).order_by(ConsentLog.recorded_at, ConsentLog.id))]
    assert log == [("ads", None, "revoked"), ("ads", None, "granted"), ("email_marketing", None, "pending"),
                   ("ads", "granted", "revoked"), ("ads", "revoked", "granted")]
    # the second sign-up within the hour queues no second mail; the mail has its delivery log entry
    mail = session.scalars(select(OutboxMessage)).one()
    assert mail.template == "double_opt_in" and mail.transactional
    assert [e.status for e in session.scalars(select(DeliveryEvent).where(DeliveryEvent.message_id == mail.id))] == [
        "queued"]
