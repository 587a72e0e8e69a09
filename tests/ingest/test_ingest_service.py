"""Ingestion service: validation, dedupe, derived state, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.orders.models import Cart, CartItem, Order, OrderLine, WishlistItem
from emma.profiles.models import Customer, Identity, IdentityConflict

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def ts(minutes: int = 0) -> str:
    return (T0 + dt.timedelta(minutes=minutes)).isoformat()


def count(session, model) -> int:  # type: ignore[no-untyped-def]
    return session.scalar(select(func.count()).select_from(model))


def test_track_stores_event_once_and_resend_is_noop(session):
    msg = {"type": "track", "userId": "c1", "event": "Product Viewed", "messageId": "m-1",
           "properties": {"sku": "K-1"}, "timestamp": ts()}
    first = ingest.ingest(session=session, raw_messages=[msg])
    session.commit()
    again = ingest.ingest(session=session, raw_messages=[msg, dict(msg)])
    session.commit()
    assert (first.accepted, first.duplicates) == (1, 0)
    assert (again.accepted, again.duplicates) == (0, 2)
    assert count(session, Event) == 1
    ev = session.scalar(select(Event))
    assert ev.timestamp == T0 and ev.name == "Product Viewed" and ev.properties == {"sku": "K-1"}


def test_message_without_id_is_deduplicated_by_content(session):
    msg = {"type": "track", "userId": "c1", "event": "Newsletter Opened", "timestamp": ts()}
    ingest.ingest(session=session, raw_messages=[msg])
    ingest.ingest(session=session, raw_messages=[msg])
    session.commit()
    assert count(session, Event) == 1


def test_batch_keeps_good_rows_and_reports_bad_ones_by_index(session):
    batch = [
        {"type": "track", "userId": "c1", "event": "A", "timestamp": ts(), "messageId": "ok-1"},
        {"type": "track", "userId": "c1", "timestamp": ts(), "messageId": "bad-1"},  # no event name
        {"type": "track", "event": "B", "messageId": "bad-2"},  # no user
        {"type": "identify", "userId": "c2", "traits": "not an object", "messageId": "bad-3"},
        {"type": "track", "userId": "c1", "event": "C", "timestamp": "not a date", "messageId": "bad-4"},
        {"type": "track", "userId": "c1", "event": "D", "timestamp": "2999-01-01T00:00:00Z", "messageId": "bad-5"},
        "just a string",
        {"type": "track", "userId": "c1", "event": "Order Completed", "messageId": "bad-6",
         "properties": {"products": [{"sku": "X", "quantity": 0, "price": 1}]}},
        {"type": "track", "userId": 42, "event": "E", "timestamp": ts(), "messageId": "ok-2"},
    ]
    res = ingest.ingest(session=session, raw_messages=batch)
    session.commit()
    assert res.accepted == 2
    by_index = {r.index: {e.field for e in r.errors} for r in res.rejected}
    assert by_index == {
        1: {"event"}, 2: {"userId"}, 3: {"traits"}, 4: {"timestamp"}, 5: {"timestamp"}, 6: {""},
        7: {"properties.order_id", "properties.products[0].quantity"},
    }
    reasons = {e.reason for r in res.rejected for e in r.errors}
    assert any("future" in r for r in reasons)
    assert set(session.scalars(select(Event.message_id))) == {"ok-1", "ok-2"}
    # numeric user ids are accepted as strings, as Segment libraries send them
    assert session.scalar(select(Customer.external_id).where(Customer.external_id == "42")) == "42"


def test_anonymous_activity_merges_into_known_customer_on_identify(session):
    ingest.ingest(session=session, raw_messages=[
        {"type": "page", "anonymousId": "anon-1", "name": "Home", "timestamp": ts(0), "messageId": "p1"},
        {"type": "track", "anonymousId": "anon-1", "event": "Product Added", "timestamp": ts(1), "messageId": "p2",
         "properties": {"sku": "K-1", "price": 10, "cart_id": "cart-1"}},
    ])
    session.commit()
    # the known customer existed before (e.g. from an order import) under another device
    ingest.ingest(session=session, raw_messages=[
        {"type": "identify", "userId": "u-1", "traits": {"email": "anna@example.de"}, "timestamp": ts(-100),
         "messageId": "i0"}])
    session.commit()
    ingest.ingest(session=session, raw_messages=[
        {"type": "identify", "userId": "u-1", "anonymousId": "anon-1", "timestamp": ts(2), "messageId": "i1"}])
    session.commit()
    known = session.scalar(select(Customer).where(Customer.external_id == "u-1"))
    assert {e.message_id for e in session.scalars(select(Event).where(Event.customer_id == known.id))} == {
        "p1", "p2", "i0", "i1"}
    cart = session.scalar(select(Cart).where(Cart.cart_id == "cart-1"))
    assert cart.customer_id == known.id
    anon = session.scalar(select(Customer).where(Customer.is_anonymous.is_(True)))
    assert anon.merged_into_id == known.id


def test_merge_keeps_the_known_customers_wishlist_entry_for_a_sku_both_have(session):
    wish = [{"type": "track", "userId": "u-1", "event": "Product Added to Wishlist", "timestamp": ts(0),
             "messageId": "w-known", "properties": {"sku": "K-1"}},
            {"type": "track", "anonymousId": "anon-1", "event": "Product Added to Wishlist", "timestamp": ts(1),
             "messageId": "w-anon-1", "properties": {"sku": "K-1"}},
            {"type": "track", "anonymousId": "anon-1", "event": "Product Added to Wishlist", "timestamp": ts(2),
             "messageId": "w-anon-2", "properties": {"sku": "K-2"}}]
    ingest.ingest(session=session, raw_messages=wish)
    session.commit()
    result = ingest.ingest(session=session, raw_messages=[
        {"type": "identify", "userId": "u-1", "anonymousId": "anon-1", "timestamp": ts(3), "messageId": "i1"},
        {"type": "track", "userId": "u-1", "event": "Product Viewed", "timestamp": ts(4), "messageId": "v1",
         "properties": {"sku": "K-3"}}])
    session.commit()
    assert result.accepted == 2 and not result.rejected
    known = session.scalar(select(Customer).where(Customer.external_id == "u-1"))
    anon = session.scalar(select(Customer).where(Customer.is_anonymous.is_(True)))
    assert anon.merged_into_id == known.id
    mine = session.execute(select(WishlistItem.sku, WishlistItem.added_at)
                           .where(WishlistItem.customer_id == known.id)).all()
    assert sorted(mine) == [("K-1", T0), ("K-2", T0 + dt.timedelta(minutes=2))]
    # the anonymous duplicate stays behind, so reverting the merge gives the visitor back both entries
    left = session.scalars(select(WishlistItem.sku).where(WishlistItem.customer_id == anon.id)).all()
    assert left == ["K-1"]


def test_two_known_customers_are_never_merged(session):
    ingest.ingest(session=session, raw_messages=[
        {"type": "identify", "userId": "u-1", "anonymousId": "dev-1", "traits": {"email": "a@x.de"},
         "timestamp": ts(0), "messageId": "a"},
        {"type": "identify", "userId": "u-2", "traits": {"email": "b@x.de"}, "timestamp": ts(1), "messageId": "b"},
    ])
    session.commit()
    res = ingest.ingest(session=session, raw_messages=[
        # same device, other known customer; and u-2 claims u-1's email
        {"type": "identify", "userId": "u-2", "anonymousId": "dev-1", "traits": {"email": "A@x.de"},
         "timestamp": ts(2), "messageId": "c"}])
    session.commit()
    assert res.accepted == 1 and any("conflict" in w for w in res.warnings)
    u1, u2 = (session.scalar(select(Customer).where(Customer.external_id == x)) for x in ("u-1", "u-2"))
    assert u1.merged_into_id is None and u2.merged_into_id is None
    assert session.scalar(select(Identity.customer_id).where(Identity.value == "dev-1")) == u1.id
    assert session.scalar(select(Identity.customer_id).where(Identity.value == "a@x.de")) == u1.id
    kinds = sorted(c.kind for c in session.scalars(select(IdentityConflict)))
    assert kinds == ["anonymous_id", "email"]


def test_cart_order_and_wishlist_follow_ecommerce_events(session):
    ingest.ingest(session=session, raw_messages=[
        {"type": "track", "userId": "u", "event": "Product Added", "timestamp": ts(0), "messageId": "1",
         "properties": {"sku": "A", "price": 5.5, "quantity": 2, "cart_id": "c-9"}},
        {"type": "track", "userId": "u", "event": "Product Added", "timestamp": ts(1), "messageId": "2",
         "properties": {"product_id": "B", "price": 3, "cart_id": "c-9"}},
        {"type": "track", "userId": "u", "event": "Product Removed", "timestamp": ts(2), "messageId": "3",
         "properties": {"sku": "A", "quantity": 1, "cart_id": "c-9"}},
        {"type": "track", "userId": "u", "event": "Product Added to Wishlist", "timestamp": ts(3), "messageId": "4",
         "properties": {"sku": "W"}},
    ])
    session.commit()
    items = {i.sku: i.quantity for i in session.scalars(select(CartItem))}
    assert items == {"A": 1, "B": 1}
    assert session.scalar(select(Cart.status)) == "open"
    ingest.ingest(session=session, raw_messages=[
        {"type": "track", "userId": "u", "event": "Checkout Started", "timestamp": ts(4), "messageId": "5",
         "properties": {"cart_id": "c-9"}},
        {"type": "track", "userId": "u", "event": "Order Completed", "timestamp": ts(5), "messageId": "6",
         "properties": {"order_id": "o-1", "cart_id": "c-9", "revenue": 8.5, "currency": "EUR", "coupon": "X10",
                        "products": [{"sku": "A", "price": 5.5, "quantity": 1}, {"sku": "B", "price": 3}]}},
        {"type": "track", "userId": "u", "event": "Order Delivered", "timestamp": ts(60 * 48), "messageId": "7",
         "properties": {"order_id": "o-1"}},
    ])
    session.commit()
    order = session.scalar(select(Order))
    assert (order.order_id, float(order.revenue), order.coupon, order.status) == ("o-1", 8.5, "X10", "delivered")
    assert order.delivered_at == T0 + dt.timedelta(minutes=60 * 48)
    assert [(ln.sku, ln.quantity) for ln in session.scalars(select(OrderLine).order_by(OrderLine.line_no))] == [
        ("A", 1), ("B", 1)]
    assert session.scalar(select(Cart.status)) == "ordered"
    assert session.scalar(select(WishlistItem.sku)) == "W"
    # a resent Order Completed does not duplicate the order
    ingest.ingest(session=session, raw_messages=[
        {"type": "track", "userId": "u", "event": "Order Completed", "timestamp": ts(5), "messageId": "6",
         "properties": {"order_id": "o-1", "products": []}}])
    session.commit()
    assert count(session, Order) == 1 and count(session, OrderLine) == 2


def test_unknown_sku_is_kept_with_a_warning(session):
    res = ingest.ingest(session=session, raw_messages=[
        {"type": "track", "userId": "u", "event": "Product Viewed", "timestamp": ts(), "properties": {"sku": "NOPE"}}])
    assert res.accepted == 1 and "NOPE" in res.warnings[0]


def test_order_for_unknown_customer_creates_the_customer(session):
    ingest.ingest(session=session, raw_messages=[
        {"type": "track", "userId": "new-1", "event": "Order Completed", "timestamp": ts(), "messageId": "o",
         "properties": {"order_id": "o-7", "products": [{"sku": "A", "price": 1}]}}])
    session.commit()
    cust = session.scalar(select(Customer).where(Customer.external_id == "new-1"))
    assert cust is not None and not cust.is_anonymous
    assert session.scalar(select(Order.customer_id)) == cust.id


def test_clock_skew_is_corrected_from_sent_at(session):
    received = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    # the device clock runs 2 hours ahead; the event happened 10 s before sending
    device = received + dt.timedelta(hours=2)
    ingest.ingest(session=session, received_at=received, raw_messages=[
        {"type": "track", "userId": "u", "event": "X", "messageId": "s",
         "originalTimestamp": (device - dt.timedelta(seconds=10)).isoformat(), "sentAt": device.isoformat()}])
    session.commit()
    assert session.scalar(select(Event.timestamp)) == received - dt.timedelta(seconds=10)


def test_ingest_many_answers_each_request_as_if_it_came_alone(session):
    from emma.ingest.service import ingest_many

    first = [{"type": "track", "userId": "m1", "event": "Product Viewed", "properties": {"sku": "NOPE-1"},
              "messageId": "im-1"},
             {"type": "track", "userId": "m1", "messageId": "im-bad"}]
    second = [{"type": "track", "userId": "m2", "event": "Product Viewed", "properties": {"sku": "NOPE-2"},
               "messageId": "im-2"},
              {"type": "track", "userId": "m2", "event": "Product Viewed", "properties": {"sku": "NOPE-1"},
               "messageId": "im-1"},  # sent by first
              {"type": "page", "anonymousId": "a-im", "name": "Home", "messageId": "im-3"}]
    a, b = ingest_many(session=session, requests=[first, second])
    session.commit()
    assert (a.accepted, a.duplicates, [r.index for r in a.rejected], a.success) == (1, 0, [1], False)
    assert (b.accepted, b.duplicates, b.rejected, b.success) == (2, 1, [], True)
    # each request hears only of its own unknown skus
    assert a.warnings == ["unknown skus kept (add them to the catalog): NOPE-1"]
    assert b.warnings == ["unknown skus kept (add them to the catalog): NOPE-2"]
    assert session.scalar(select(func.count()).select_from(Event)) == 3
    again = ingest_many(session=session, requests=[second])[0]
    assert (again.accepted, again.duplicates) == (0, 3)


def test_new_customers_of_a_chunk_are_created_together_and_resolve_as_one_by_one(session):
    # An anonymous visitor who identifies, a device shared with another known customer, and new users:
    # all new in one chunk, so the customers are written together after resolution.
    msgs = [{"type": "page", "anonymousId": "nc-a", "name": "Home", "messageId": "nc-1"},
            {"type": "identify", "anonymousId": "nc-a", "userId": "nc-u", "traits": {"email": "NC-U@x.de"},
             "messageId": "nc-2"},
            {"type": "track", "userId": "nc-w", "anonymousId": "nc-a", "event": "Signed Up", "messageId": "nc-3"},
            {"type": "track", "userId": "nc-v", "anonymousId": "nc-b", "event": "Signed Up", "messageId": "nc-4"},
            {"type": "page", "anonymousId": "nc-b", "name": "Home", "messageId": "nc-5"}]
    res = ingest.ingest(session=session, raw_messages=msgs)
    session.commit()
    assert res.accepted == 5 and any("conflict" in w for w in res.warnings)
    ids = dict(session.execute(select(Identity.value, Identity.customer_id)).all())
    events = dict(session.execute(select(Event.message_id, Event.customer_id)).all())
    u, w, v = ids["nc-u"], ids["nc-w"], ids["nc-v"]
    assert len({u, w, v}) == 3 and ids["nc-a"] == u and ids["nc-b"] == v and ids["nc-u@x.de"] == u
    assert [events[f"nc-{i}"] for i in range(1, 6)] == [u, u, w, v, v]
    customers = {c.id: c for c in session.scalars(select(Customer))}
    assert sorted(customers) == sorted({u, w, v})
    assert (customers[u].external_id, customers[u].is_anonymous, customers[u].email) == ("nc-u", False, "nc-u@x.de")
    conflict = session.scalars(select(IdentityConflict)).one()
    assert (conflict.customer_id, conflict.other_customer_id, conflict.value, conflict.message_id) == (
        w, u, "nc-a", "nc-3")
