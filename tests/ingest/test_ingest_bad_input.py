"""Bad input: every message that cannot be stored as sent is rejected with its field and reason; the rest lands."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.orders.models import Cart, Order
from emma.profiles.models import Customer

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def msg(n: int, **fields):  # type: ignore[no-untyped-def]
    return {"type": "track", "userId": "u", "event": "Custom Thing", "messageId": f"m{n}",
            "timestamp": (T0 + dt.timedelta(minutes=n)).isoformat(), **fields}


def rejected(result) -> dict[int, set[tuple[str, str]]]:  # type: ignore[no-untyped-def]
    return {r.index: {e.field for e in r.errors} for r in result.rejected}


def test_values_the_database_cannot_hold_are_rejected_by_field(session):
    long = "x" * 200
    batch = [
        msg(0, event="Product Added", properties={"sku": long, "price": 1}),
        msg(1, event="Product Added", properties={"sku": "A", "price": 1, "cart_id": long}),
        msg(2, event="Order Completed", properties={"order_id": long, "products": []}),
        msg(3, event="Order Completed", properties={"order_id": "o", "currency": "EURO", "products": []}),
        msg(4, event="Order Completed", properties={"order_id": "o", "coupon": long, "products": []}),
        msg(5, event="Product Added", properties={"sku": "A", "price": 1e30}),
        msg(6, event="Product Added", properties={"sku": "A", "quantity": 2**40}),
        msg(7, event="Order Completed", properties={"order_id": "o", "revenue": 1e15, "products": []}),
        msg(8, event="Order Shipped", properties={"order_id": long}),
        msg(9, event="Product Added", properties={"sku": "A", "price": 2, "cart_id": "ok-cart"}),  # good
        msg(10, event="Order Updated", properties={"order_id": "o", "status": "s" * 40}),
    ]
    res = ingest.ingest(session=session, raw_messages=batch)
    session.commit()
    assert rejected(res) == {
        0: {"properties.sku"}, 1: {"properties.cart_id"}, 2: {"properties.order_id"}, 3: {"properties.currency"},
        4: {"properties.coupon"}, 5: {"properties.price"}, 6: {"properties.quantity"}, 7: {"properties.revenue"},
        8: {"properties.order_id"}, 10: {"properties.status"}}
    assert res.accepted == 1 and session.scalar(select(Cart.cart_id)) == "ok-cart"
    assert session.scalar(select(func.count()).select_from(Order)) == 0


def test_traits_of_the_wrong_type_or_size_are_rejected_by_field(session):
    def identify(n: int, traits, **extra):  # type: ignore[no-untyped-def]
        return {"type": "identify", "userId": f"u{n}", "messageId": f"i{n}", "timestamp": T0.isoformat(),
                "traits": traits, **extra}

    batch = [
        identify(0, {"birthday": "not a date"}),
        identify(1, {"email": "a" * 400 + "@x.de"}),
        identify(2, {"phone": "1" * 100}),
        identify(3, {"address": {"lat": "north", "postalCode": "9" * 40}}),
        identify(4, {"firstName": "A" * 300}),
        identify(5, {"locale": "de"}, context={"timezone": "Z" * 100}),
        identify(6, {"email": 42}),
        identify(7, {"firstName": "Anna", "birthday": "1990-02-03", "address": {"lat": 52.5, "city": "Berlin"},
                     "loyalty": {"tier": "gold"}}),  # good
    ]
    res = ingest.ingest(session=session, raw_messages=batch)
    session.commit()
    assert rejected(res) == {
        0: {"traits.birthday"}, 1: {"traits.email"}, 2: {"traits.phone"},
        3: {"traits.address.lat", "traits.address.postalCode"}, 4: {"traits.firstName"}, 5: {"context.timezone"},
        6: {"traits.email"}}
    good = session.scalar(select(Customer).where(Customer.external_id == "u7"))
    assert (good.first_name, good.birthday, good.lat, good.city) == ("Anna", dt.date(1990, 2, 3), 52.5, "Berlin")
    assert good.attributes == {"loyalty": {"tier": "gold"}}
    assert session.scalar(select(func.count()).select_from(Event)) == 1


def test_unknown_types_are_rejected_and_unknown_events_are_kept(session):
    res = ingest.ingest(session=session, raw_messages=[
        msg(0, type="purchase"),
        msg(1, event="Loyalty Points Earned", properties={"points": 30, "nested": {"a": [1, 2]}}),
        msg(2, type="screen", name="Checkout", properties={"step": 2}),
        msg(3, type="group", groupId="g-1", traits={"name": "Verein"}),
        msg(4, type="track", event="Product Added", properties={"sku": "A", "quantity": "2"}),
        msg(5, type="track", event="Product Viewed", properties={"sku": "A", "price": "cheap"}),
    ])
    session.commit()
    assert rejected(res) == {0: {"type"}, 4: {"properties.quantity"}, 5: {"properties.price"}}
    assert set(session.scalars(select(Event.name))) == {"Loyalty Points Earned", "Checkout", None}
    props = session.scalar(select(Event.properties).where(Event.message_id == "m1"))
    assert props == {"points": 30, "nested": {"a": [1, 2]}}


def test_duplicate_message_ids_within_and_across_batches(session):
    first = ingest.ingest(session=session, raw_messages=[msg(0), msg(0), msg(1)])
    session.commit()
    second = ingest.ingest(session=session, raw_messages=[msg(1), msg(2)])
    session.commit()
    assert (first.accepted, first.duplicates, second.accepted, second.duplicates) == (2, 1, 1, 1)
    assert session.scalar(select(func.count()).select_from(Event)) == 3
