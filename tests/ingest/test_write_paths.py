"""The set-based write paths give the rows the one-by-one paths give: merges of a chunk, raw inserts."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text

from emma.catalog.models import Product
from emma.db import Base, among, insert_columns, insert_rows, make_engine, make_sessionmaker
from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.profiles import service as profiles
from emma.profiles.models import Customer

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
RECEIVED = T0 + dt.timedelta(days=1)
_CUSTOMER_REFS = ("customer_id", "other_customer_id", "merged_into_id", "source_customer_id", "target_customer_id")
_TABLES = ("customers", "identities", "identity_conflicts", "events", "carts", "cart_items", "wishlist_items",
           "consents", "consent_log", "trait_history", "merge_log")


def msg(n: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": f"m{n}", "timestamp": (T0 + dt.timedelta(minutes=n)).isoformat(), **fields}


def wish(n: int, who: dict[str, str], sku: str) -> dict[str, Any]:
    return msg(n, "track", event="Product Added to Wishlist", properties={"sku": sku}, **who)


def scenario() -> list[list[dict[str, Any]]]:
    u1, u2 = {"userId": "u1"}, {"userId": "u2"}
    a1, a2, a3 = {"anonymousId": "a1"}, {"anonymousId": "a2"}, {"anonymousId": "a3"}
    first = [
        msg(1, "identify", traits={"email": "u1@example.com"}, **u1),
        wish(2, u1, "W1"),
        msg(3, "page", name="Home", context={"consent": {"categoryPreferences": {"analytics": False}}}, **u1),
        msg(4, "identify", traits={"firstName": "Jonas"}, **u2),
        msg(5, "track", event="Product Viewed", properties={"sku": "S1"}, **a1),
        msg(6, "track", event="Product Added", properties={"sku": "S1", "price": 9.5, "cart_id": "ca1"}, **a1),
        wish(7, a1, "W1"), wish(8, a1, "W3"),
        msg(9, "page", name="Home", context={"consent": {"categoryPreferences": {"analytics": True,
                                                                                  "personalization": True}}}, **a1),
        wish(10, a2, "W3"), wish(11, a2, "W4"),
        msg(12, "track", event="Product Added", properties={"sku": "S2", "price": 3}, **a2),
        msg(13, "identify", traits={"firstName": "Anon"}, **a3), wish(14, a3, "W5"),
    ]
    second = [  # one chunk with three merges: two into u1, one into u2, and a conflict
        msg(20, "identify", userId="u1", anonymousId="a1"),
        msg(21, "identify", userId="u1", anonymousId="a2"),
        msg(22, "alias", previousId="a3", userId="u2"),
        msg(23, "identify", userId="u2", anonymousId="a1"),
        msg(24, "track", event="Product Viewed", properties={"sku": "S9"}, **a2),  # resolves to u1 now
    ]
    return [first, second]


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows in id order, ids replaced by their rank (so two databases compare)."""
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            raw = {t: [dict(r._mapping) for r in c.execute(text(f"SELECT * FROM {t} ORDER BY id"))] for t in _TABLES}
    finally:
        engine.dispose()
    rank = {t: {r["id"]: i for i, r in enumerate(rows)} for t, rows in raw.items()}
    out = {}
    for t, rows in raw.items():
        norm = []
        for r in rows:
            r = dict(r)
            r.pop("id")
            r.pop("logged_at", None)  # the wall clock of the write
            for k in _CUSTOMER_REFS:
                if r.get(k) is not None:
                    r[k] = rank["customers"][r[k]]
            if "cart_pk" in r:
                r["cart_pk"] = rank["carts"][r["cart_pk"]]
            if t == "merge_log":
                moved = r["moved"] if isinstance(r["moved"], dict) else json.loads(r["moved"])
                r["moved"] = {name: [rank[name][i] for i in ids] for name, ids in moved.items()}
            norm.append(tuple(sorted((k, str(v)) for k, v in r.items())))
        out[t] = norm
    return out


def run(url: str) -> None:
    sessions = make_sessionmaker(make_engine(url))
    for batch in scenario():
        with sessions() as s:
            result = ingest.ingest(session=s, raw_messages=batch, received_at=RECEIVED)
            assert not result.rejected
            s.commit()
    sessions.kw["bind"].dispose()


def test_merges_of_a_chunk_in_one_go_equal_one_by_one(db_url, other_db_url, monkeypatch):
    calls = []
    many = profiles.Resolver._merge_many
    monkeypatch.setattr(profiles.Resolver, "_merge_many", lambda self, pending: calls.append(pending) or many(
        self, pending))
    run(db_url)
    assert [len(p) for p in calls] == [3]  # the set-based path ran, for all three merges
    monkeypatch.setattr(profiles.Resolver, "_merge_many", lambda self, pending: [
        self.merge(source_id=s, target_id=t, reason=r) for s, t, r in pending])
    run(other_db_url)
    together, one_by_one = snapshot(db_url), snapshot(other_db_url)
    for table in _TABLES:
        assert together[table] == one_by_one[table], table
    # what merging means here: u1 keeps its own W1, gains W3 from a1 (first) and W4 from a2; a2's W3 stays put
    engine = make_engine(db_url)
    with engine.connect() as c:
        ids = dict(c.execute(text("SELECT value, customer_id FROM identities WHERE kind = 'user_id'")).all())
        wished = c.execute(text("SELECT customer_id, sku FROM wishlist_items ORDER BY sku, id")).all()
        merges = c.execute(text("SELECT count(*) FROM merge_log")).scalar_one()
    engine.dispose()
    u1_skus = sorted(sku for cid, sku in wished if cid == ids["u1"])
    assert u1_skus == ["W1", "W3", "W4"] and merges == 3
    assert sum(1 for _, sku in wished if sku == "W3") == 2


def test_raw_event_insert_stores_what_the_orm_reads_back(session):
    props = {"sku": "A", "price": 9.99, "tags": ["x", "ü"], "nested": {"n": None, "ok": True}}
    rows = [{"message_id": f"r{i}", "type": "track", "name": "Product Viewed", "customer_id": None,
             "user_id": "u", "anonymous_id": None, "properties": p, "context": {} if i else {"locale": "de-DE"},
             "timestamp": T0 + dt.timedelta(seconds=i), "received_at": RECEIVED}
            for i, p in enumerate([props, {}, {"empty": {}}])]
    insert_rows(session, Event, rows)
    session.commit()
    got = {e.message_id: e for e in session.query(Event)}
    for row in rows:
        e = got[row["message_id"]]
        assert (e.properties, e.context, e.timestamp, e.received_at) == (
            row["properties"], row["context"], row["timestamp"], row["received_at"])
    # a value JSON cannot hold is an error, as with SQLAlchemy's own encoding
    try:
        insert_rows(session, Event, [{**rows[0], "message_id": "bad", "properties": {"d": object()}}])
    except TypeError:
        session.rollback()
    else:  # pragma: no cover
        raise AssertionError("object() was stored as JSON")
    assert Base.metadata.tables["events"] is Event.__table__


def test_an_import_on_sqlite_checkpoints_in_its_own_thread_and_hands_the_connection_back(tmp_path):
    import csv
    import sqlite3
    import threading

    from emma.db import upgrade
    from emma.ingest import jobs

    url = f"sqlite:///{tmp_path / 'wal.db'}"
    upgrade(url)
    path = tmp_path / "orders.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "customer_id", "ordered_at", "sku", "quantity", "unit_price"])
        w.writerows([f"o-{i // 3}", f"c-{i // 3 % 50}", "2026-01-02T03:04:05Z", f"S{i % 7}", 1, "2.50"]
                    for i in range(3000))
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    summary = jobs.run_import(sessions=sessions, kind="orders", path=path, chunk_rows=500)
    assert summary.landed == 3000
    assert not [t for t in threading.enumerate() if t.name == "emma-wal-checkpoint"]
    with engine.connect() as c:  # the writer's connection checkpoints by itself again
        assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 1000
    # everything committed reached the database file itself (immutable: read without the log)
    raw = sqlite3.connect(f"file:{tmp_path / 'wal.db'}?immutable=1", uri=True)
    assert raw.execute("SELECT count(*) FROM order_lines").fetchone()[0] == 3000
    raw.close()
    engine.dispose()


def test_column_wise_insert_keeps_awkward_values_and_returns_ids(session):
    """Quotes, backslashes, braces, umlauts, all-None and mixed-number columns survive the driver's fast path
    (binary arrays on PostgreSQL, where a numeric column mixing int, float and Decimal goes as text)."""
    names = ['Topf "Luise"', "C:\\Küche\\{neu}", "a,b{c}", "", "Ölkanne 🫒"]
    n = len(names)
    ids = insert_columns(session, Product, {
        "sku": [f"AW-{i}" for i in range(n)], "name": names, "price": [10, 9.5, None, Decimal("1.25"), 0],
        "stock": [None] * n, "brand": [None] * n, "attributes": [{"tags": ["ü", "x"]}, {}, {"n": None}, {}, {}],
        "active": [True, False, True, False, True]}, returning=("id",))
    session.commit()
    assert len(ids) == n and len({r[0] for r in ids}) == n
    got = {p.sku: p for p in session.query(Product).filter(Product.sku.like("AW-%"))}
    for i, name in enumerate(names):
        p = got[f"AW-{i}"]
        assert p.name == name and p.stock is None and p.brand is None
    assert [got[f"AW-{i}"].price for i in range(n)] == [Decimal("10"), Decimal("9.5"), None, Decimal("1.25"),
                                                        Decimal("0")]
    assert got["AW-0"].attributes == {"tags": ["ü", "x"]} and got["AW-2"].attributes == {"n": None}
    assert [got[f"AW-{i}"].active for i in range(n)] == [True, False, True, False, True]


def test_postgres_plans_every_execution_of_an_array_look_up_for_its_own_values(db_url):
    # A prepared statement's generic plan knows nothing of the array an IN (SELECT unnest(...)) look-up is
    # given; for an ingestion group's identity look-up it was 50 times slower than a custom plan. So array
    # look-ups are never prepared, while other statements are, as PostgreSQL and psycopg do by default.
    from emma.db import rows_among

    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        for i in range(8):  # psycopg prepares on the fifth execution; PostgreSQL tries a generic plan after five
            rows_among(s, "identities i JOIN customers c ON c.id = i.customer_id", ["i.value"], "i.value",
                       [f"u{i}", f"u{i + 1}"], where="i.kind = {p}", params=["user_id"])
            s.scalar(select(Customer.id).where(Customer.external_id == f"u{i}"))
            s.scalars(select(Customer.id).where(among(s, Customer.external_id, [f"u{i}", "x"]))).all()
        if engine.dialect.name == "postgresql":
            prepared = s.scalars(text("SELECT statement FROM pg_prepared_statements")).all()
            assert not [p for p in prepared if "unnest(" in p]
            assert [p for p in prepared if "customers.external_id = $1" in p]
            assert s.scalar(text("SHOW plan_cache_mode")) == "auto"
    engine.dispose()


def test_typed_look_ups_read_what_the_orm_reads(session):
    # Plain driver SQL with each column's own conversion: the values equal the ORM's, on both databases.
    from sqlalchemy import select

    from emma.db import read_datetime, rows_among, typed_rows_among
    from emma.orders.models import Cart
    from emma.profiles.models import Customer

    full = Customer(external_id="t1", first_name="Jürgen", birthday=dt.date(1990, 5, 17), lat=50.94, lon=6.96,
                    attributes={"plan": "gold", "n": [1, 2.5, None]}, is_anonymous=False, created_at=T0,
                    last_seen_at=RECEIVED)
    empty = Customer(external_id="t2", is_anonymous=True, created_at=T0)
    session.add_all([full, empty])
    session.flush()
    session.add(Cart(cart_id="c1", customer_id=full.id, status="open", created_at=T0, updated_at=RECEIVED))
    session.commit()
    cols = ["id", "birthday", "lat", "attributes", "is_anonymous", "created_at", "last_seen_at", "first_name"]
    got = {row[0]: row for row in typed_rows_among(session, Customer, cols, "external_id", ["t1", "t2", "t3"])}
    session.expire_all()
    for c in session.scalars(select(Customer)):
        assert got[c.id] == tuple(getattr(c, name) for name in cols)
    assert type(got[full.id][1]) is dt.date and got[full.id][5].tzinfo is not None
    ((created, updated),) = rows_among(session, Cart, ["created_at", "updated_at"], "cart_id", ["c1"])
    assert (read_datetime(created), read_datetime(updated), read_datetime(None)) == (T0, RECEIVED, None)
