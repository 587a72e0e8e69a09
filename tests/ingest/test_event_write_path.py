"""The event write path of a chunk: last_seen_at only where it moves, a resend racing the look-up."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import event, select

from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.orders.models import CartItem
from emma.profiles.models import Customer

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


def msg(n: int, user: str, minutes: int, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Newsletter Opened", "userId": user, "messageId": f"m{n}",
            "timestamp": (T0 + dt.timedelta(minutes=minutes)).isoformat(), **fields}


def test_last_seen_at_is_written_only_where_it_moves_forward(session_factory):
    updates: list[int] = []
    engine = session_factory.kw["bind"]

    def seen(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.startswith("UPDATE customers"):  # the rows it names (PostgreSQL: arrays of them)
            arrays = not executemany and isinstance(parameters[0], list | tuple)
            updates.append(len(parameters[0]) if arrays else len(parameters) if executemany else 1)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with session_factory() as s:  # new customers: created with the time of their first message
            ingest.ingest(session=s, raw_messages=[msg(1, "u1", 60), msg(2, "u2", 60), msg(7, "u3", 5),
                                                   msg(8, "u3", 6)], received_at=T0)
            s.commit()
        assert updates == [1]  # u3's second message only
        updates.clear()
        with session_factory() as s:  # both earlier than what is stored: nothing to write
            result = ingest.ingest(session=s, raw_messages=[msg(3, "u1", 10), msg(4, "u2", 59)], received_at=T0)
            s.commit()
        assert result.accepted == 2 and updates == []
        with session_factory() as s:  # u2 later, u1 earlier: u2 moves, u1 stays
            ingest.ingest(session=s, raw_messages=[msg(5, "u1", 30), msg(6, "u2", 90)], received_at=T0)
            s.commit()
        assert updates == [1]
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    with session_factory() as s:
        seen_at = dict(s.execute(select(Customer.external_id, Customer.last_seen_at)).all())
    assert seen_at == {"u1": T0 + dt.timedelta(minutes=60), "u2": T0 + dt.timedelta(minutes=90),
                       "u3": T0 + dt.timedelta(minutes=6)}


def test_a_resend_stored_between_look_up_and_insert_lands_once(session_factory, monkeypatch):
    add = msg(1, "u1", 0, event="Product Added", properties={"sku": "S1", "price": 5, "quantity": 2, "cart_id": "c1"})
    with session_factory() as s:
        assert ingest.ingest(session=s, raw_messages=[add], received_at=T0).accepted == 1
        s.commit()
    # The look-up misses the stored messageId once, as when another writer stores it just after the look-up.
    lookups = []
    real = ingest.rows_among

    def racing(session, table, columns, key, values, **kw):  # type: ignore[no-untyped-def]
        rows = real(session, table, columns, key, values, **kw)
        if table is Event and not lookups:
            lookups.append(rows)
            return []
        return rows

    monkeypatch.setattr(ingest, "rows_among", racing)
    with session_factory() as s:  # in the caller's transaction, without a retry (as feedback and channels call it)
        result = ingest.ingest(session=s, raw_messages=[msg(2, "u1", 1), add, msg(3, "u1", 2)], received_at=T0)
        s.commit()
    assert lookups and (result.accepted, result.duplicates) == (2, 1)
    with session_factory() as s:
        assert sorted(s.scalars(select(Event.message_id))) == ["m1", "m2", "m3"]
        assert s.scalar(select(CartItem.quantity)) == 2  # the cart add is not applied twice
