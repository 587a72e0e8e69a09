"""Bulk import (`emma import`): every kind lands, bad rows are reported by line, re-imports change nothing."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from emma.catalog.models import PriceChange, Product, StockChange
from emma.config import get_settings
from emma.consent.models import Consent, ConsentLog
from emma.ingest import bulk, jobs
from emma.ingest import service as ingest
from emma.ingest.models import Event
from emma.orders.models import Cart, CartItem, Order, OrderLine
from emma.profiles.models import Customer, Identity, IdentityConflict, TraitChange

TABLES = (Customer, Identity, TraitChange, IdentityConflict, Order, OrderLine, Consent, ConsentLog, Product,
          PriceChange, StockChange, Event, Cart, CartItem)
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def counts(session_factory) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in TABLES}


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def run(session_factory, kind: str, path: Path, **kw):  # type: ignore[no-untyped-def]
    return jobs.run_import(sessions=session_factory, kind=kind, path=path, now=kw.pop("now", NOW), **kw)


def rejects_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


ORDER_HEADER = ["order_id", "customer_id", "ordered_at", "sku", "quantity", "unit_price", "currency", "status"]


def test_orders_land_unknown_customer_is_created_and_reimport_changes_nothing(session_factory, tmp_path):
    with session_factory() as s:
        s.add(Product(sku="K-1", name="Topf", price=Decimal("10.00")))
        s.commit()
    path = write_csv(tmp_path / "orders.csv", ORDER_HEADER, [
        ["o-1", "c-1", "2026-01-05T10:00:00Z", "K-1", 2, "9.90", "EUR", "completed"],
        ["o-1", "c-1", "2026-01-05T10:00:00Z", "X-404", 1, "19.90", "", ""],
        ["o-2", "c-new", "2026-02-01T08:30:00+01:00", "K-1", 1, "5", "", "delivered"],
    ])
    first = run(session_factory, "orders", path)
    assert (first.rows, first.landed, first.unchanged, first.rejected) == (3, 3, 0, 0)
    assert first.customers_created == 2
    assert first.unknown_skus == {"X-404"}
    assert any("X-404" in w for w in first.all_warnings())
    with session_factory() as s:
        o1 = s.scalar(select(Order).where(Order.order_id == "o-1"))
        assert o1.revenue == Decimal("39.70") and o1.source == "import" and o1.status == "completed"
        lines = s.execute(select(OrderLine.line_no, OrderLine.sku, OrderLine.quantity)
                          .where(OrderLine.order_pk == o1.id).order_by(OrderLine.line_no)).all()
        assert [tuple(x) for x in lines] == [(1, "K-1", 2), (2, "X-404", 1)]
        o2 = s.scalar(select(Order).where(Order.order_id == "o-2"))
        assert o2.ordered_at == dt.datetime(2026, 2, 1, 7, 30, tzinfo=dt.UTC)
        assert o2.status == "delivered" and o2.delivered_at == o2.ordered_at
        new = s.scalar(select(Customer).where(Customer.external_id == "c-new"))
        assert new is not None and not new.is_anonymous and new.created_at == o2.ordered_at
        assert s.scalar(select(Identity.customer_id).where(Identity.kind == "user_id",
                                                           Identity.value == "c-new")) == new.id
        assert o2.customer_id == new.id
    before = counts(session_factory)
    again = run(session_factory, "orders", path)
    assert (again.landed, again.unchanged, again.rejected, again.customers_created) == (0, 3, 0, 0)
    assert counts(session_factory) == before


def test_an_import_moves_an_order_forward_only(session_factory, tmp_path):
    def export(name: str, status: str) -> Path:
        return write_csv(tmp_path / f"{name}.csv", ORDER_HEADER, [
            ["o-1", "c-1", "2026-01-05T10:00:00Z", "K-1", 1, "9.90", "", status],
            ["o-2", "c-1", "2026-01-06T10:00:00Z", "K-1", 1, "9.90", "", "completed"]])

    run(session_factory, "orders", export("monday", "completed"))
    with session_factory() as s:  # the shop's events move o-1 on after Monday's export
        ingest.ingest(session=s, raw_messages=[
            {"type": "track", "userId": "c-1", "event": "Order Delivered", "messageId": "m-1",
             "properties": {"order_id": "o-1"}, "timestamp": "2026-01-08T10:00:00Z"}])
        s.commit()
    old = run(session_factory, "orders", export("monday", "shipped"))  # an older export, imported again
    assert old.details["order status kept (the stored one is further along)"] == 1
    assert old.details["orders updated"] == 0
    with session_factory() as s:
        assert dict(s.execute(select(Order.order_id, Order.status)).all()) == {"o-1": "delivered", "o-2": "completed"}
    later = run(session_factory, "orders", export("friday", "returned"))
    assert later.details["orders updated"] == 1
    with session_factory() as s:
        assert s.scalar(select(Order.status).where(Order.order_id == "o-1")) == "returned"


def test_bad_order_rows_go_to_the_rejects_file_and_good_rows_land(session_factory, tmp_path):
    path = write_csv(tmp_path / "orders.csv", ORDER_HEADER, [
        ["o-1", "c-1", "2026-01-05T10:00:00Z", "K-1", 1, "9.90", "", ""],        # line 2: fine
        ["o-2", "c-1", "2026-01-05T10:00:00Z", "", 1, "9.90", "", ""],           # line 3: no sku
        ["o-3", "c-1", "05.01.2026", "K-1", 1, "9.90", "", ""],                  # line 4: bad date
        ["o-4", "c-1", "2026-01-05T10:00:00Z", "K-1", -2, "9.90", "", ""],       # line 5: negative quantity
        ["o-5", "c-1", "2026-01-05T10:00:00Z", "K-1", 1, "9.90", "", "lost"],    # line 6: unknown status
        ["o-6", "c-1", "2999-01-05T10:00:00Z", "K-1", 1, "-1", "EURO", ""],      # line 7: three errors
        ["o-7", "c-2", "2026-01-06T10:00:00Z", "K-2", 3, "1.50", "", ""],        # line 8: fine
        ["o-7", "c-3", "2026-01-06T10:00:00Z", "K-3", 1, "1.50", "", ""],        # line 9: o-7 is c-2's
    ])
    rejects = tmp_path / "bad.csv"
    summary = run(session_factory, "orders", path, rejects=rejects)
    assert (summary.rows, summary.landed, summary.rejected) == (8, 2, 6)
    assert summary.rejects_path == str(rejects)
    got = {(int(r["line"]), r["field"]): r["reason"] for r in rejects_of(rejects)}
    assert got[(3, "sku")] == "is required"
    assert "ISO 8601" in got[(4, "ordered_at")]
    assert ">= 1" in got[(5, "quantity")]
    assert "unknown status 'lost'" in got[(6, "status")]
    assert {f for line, f in got if line == 7} == {"ordered_at", "unit_price", "currency"}
    assert "another customer" in got[(9, "customer_id")]
    assert rejects_of(rejects)[0]["row"].startswith("o-2,c-1,")  # the row as it was, to fix and re-import
    with session_factory() as s:
        assert sorted(s.scalars(select(Order.order_id))) == ["o-1", "o-7"]
        assert s.scalar(select(func.count()).select_from(OrderLine)) == 2
        assert s.scalar(select(Order.revenue).where(Order.order_id == "o-7")) == Decimal("4.50")


def test_crash_mid_file_loses_nothing_and_a_rerun_completes_it(session_factory, tmp_path):
    rows = []
    for n in range(1, 8):  # orders of 1..3 lines, so that chunks of 4 lines split some of them
        for k in range(1 + n % 3):
            rows.append([f"o-{n}", f"c-{n % 3}", f"2026-03-0{n}T12:00:00Z", f"K-{k}", k + 1, "2.00", "", ""])
    path = write_csv(tmp_path / "orders.csv", ORDER_HEADER, rows)
    partial = run(session_factory, "orders", path, chunk_rows=4, stop_after_chunks=2)
    assert partial.landed == 8
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(OrderLine)) == 8
    rest = run(session_factory, "orders", path, chunk_rows=4)
    assert (rest.landed, rest.unchanged) == (len(rows) - 8, 8)
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(OrderLine)) == len(rows)
        assert s.scalar(select(func.count()).select_from(Order)) == 7
        revenue = dict(s.execute(select(Order.order_id, Order.revenue)).all())
    for n in range(1, 8):
        expected = sum(Decimal("2.00") * (k + 1) for k in range(1 + n % 3))
        assert revenue[f"o-{n}"] == expected, n
    before = counts(session_factory)
    run(session_factory, "orders", path, chunk_rows=3)
    assert counts(session_factory) == before


def test_consent_migration_keeps_its_history_and_repeats_add_no_audit_entry(session_factory, tmp_path):
    path = write_jsonl(tmp_path / "consents.jsonl", [
        {"customer_id": "c-1", "purpose": "email_marketing", "status": "granted", "source": "old-crm",
         "recorded_at": "2024-03-01T09:00:00Z", "text_version": "v1"},
        {"customer_id": "c-1", "purpose": "email_marketing", "status": "revoked", "source": "old-crm",
         "recorded_at": "2024-06-01T09:00:00Z", "text_version": "v1"},
        {"customer_id": "c-1", "purpose": "email_marketing", "status": "revoked", "source": "old-crm",
         "recorded_at": "2024-07-01T09:00:00Z"},              # repeats the state: a dated decision all the same
        {"customer_id": 42, "purpose": "sms_marketing", "status": "granted"},   # numeric id, defaults
        {"customer_id": "c-1", "purpose": "telepathy", "status": "granted"},    # line 5: unknown purpose
        {"customer_id": "c-1", "purpose": "push", "status": "maybe"},           # line 6: unknown status
        '{"customer_id": "c-1", "purpose": ',                                   # line 7: malformed JSON
        "",
        {"purpose": "ads", "status": "granted", "recorded_at": "yesterday"},     # line 9: two errors
    ])
    summary = run(session_factory, "consents", path)
    assert (summary.rows, summary.landed, summary.unchanged, summary.rejected) == (8, 4, 0, 4)
    got = {(int(r["line"]), r["field"]): r["reason"] for r in rejects_of(Path(summary.rejects_path))}
    assert "unknown purpose 'telepathy'" in got[(5, "purpose")]
    assert "unknown status 'maybe'" in got[(6, "status")]
    assert got[(7, "")].startswith("malformed JSON")
    assert got[(9, "customer_id")] == "is required" and "ISO 8601" in got[(9, "recorded_at")]
    with session_factory() as s:
        c1 = s.scalar(select(Customer.id).where(Customer.external_id == "c-1"))
        log = s.execute(select(ConsentLog.status, ConsentLog.previous_status, ConsentLog.source,
                               ConsentLog.recorded_at, ConsentLog.text_version)
                        .where(ConsentLog.customer_id == c1).order_by(ConsentLog.recorded_at)).all()
        assert [tuple(x) for x in log] == [
            ("granted", None, "old-crm", dt.datetime(2024, 3, 1, 9, tzinfo=dt.UTC), "v1"),
            ("revoked", "granted", "old-crm", dt.datetime(2024, 6, 1, 9, tzinfo=dt.UTC), "v1"),
            ("revoked", "revoked", "old-crm", dt.datetime(2024, 7, 1, 9, tzinfo=dt.UTC), None)]
        current = s.scalar(select(Consent).where(Consent.customer_id == c1))
        # the current row holds the latest decision, and the text version in force
        assert (current.status, current.recorded_at, current.text_version) == (
            "revoked", dt.datetime(2024, 7, 1, 9, tzinfo=dt.UTC), "v1")
        sms = s.scalar(select(Consent).join(Customer, Customer.id == Consent.customer_id)
                       .where(Customer.external_id == "42"))
        assert (sms.status, sms.source, sms.recorded_at) == ("granted", "import", NOW)
    before = counts(session_factory)
    later = NOW + dt.timedelta(days=1)  # a row without recorded_at gets another default time: still no change
    again = run(session_factory, "consents", path, now=later)
    assert (again.landed, again.unchanged) == (0, 4)
    assert counts(session_factory) == before


def test_consent_records_older_than_the_current_decision_join_the_history(session_factory, tmp_path):
    def at(month: int) -> str:
        return f"2024-{month:02d}-01T09:00:00Z"

    def row(status: str, month: int, source: str = "old-crm", version: str | None = "v1") -> dict[str, object]:
        return {"customer_id": "c-1", "purpose": "email_marketing", "status": status, "source": source,
                "recorded_at": at(month), **({"text_version": version} if version else {})}

    live = write_jsonl(tmp_path / "live.jsonl", [row("granted", 10, source="shop", version="v2")])
    assert run(session_factory, "consents", live).landed == 1
    # A migration of the old system's records afterwards, out of time order and in chunks of two rows.
    migration = write_jsonl(tmp_path / "migration.jsonl", [
        row("revoked", 6), row("granted", 3),
        row("revoked", 7, version=None),     # repeats the status logged before it: a decision all the same
        row("granted", 8), row("revoked", 6),  # the last one: a line repeated in the file
    ])
    summary = run(session_factory, "consents", migration, chunk_rows=2)
    assert (summary.landed, summary.unchanged, summary.rejected) == (4, 1, 0)

    def state(s):  # type: ignore[no-untyped-def]
        log = s.execute(select(ConsentLog.recorded_at, ConsentLog.status, ConsentLog.previous_status,
                               ConsentLog.source).order_by(ConsentLog.recorded_at)).all()
        current = s.execute(select(Consent.status, Consent.source, Consent.recorded_at)).all()
        return [(r.month, st, prev, src) for r, st, prev, src in log], [tuple(c) for c in current]

    with session_factory() as s:
        log, current = state(s)
    assert log == [(3, "granted", None, "old-crm"), (6, "revoked", "granted", "old-crm"),
                   (7, "revoked", "revoked", "old-crm"), (8, "granted", "revoked", "old-crm"),
                   (10, "granted", None, "shop")]
    assert current == [("granted", "shop", dt.datetime(2024, 10, 1, 9, tzinfo=dt.UTC))]
    before = counts(session_factory)
    again = run(session_factory, "consents", migration, chunk_rows=3)
    assert (again.landed, again.unchanged) == (0, 5)
    assert counts(session_factory) == before


def test_consent_ends_at_the_latest_decision_whatever_order_the_records_come_in(session_factory, tmp_path):
    def row(status: str, month: int) -> dict[str, object]:
        return {"customer_id": "c-1", "purpose": "sms_marketing", "status": status, "source": f"crm-{month}",
                "recorded_at": f"2024-{month:02d}-01T09:00:00Z"}

    # Chunks of two: March and May (a repeat) first, then February and April.
    path = write_jsonl(tmp_path / "consents.jsonl", [row("revoked", 3), row("revoked", 5),
                                                     row("granted", 2), row("granted", 4)])
    summary = run(session_factory, "consents", path, chunk_rows=2)
    with session_factory() as s:
        current = s.execute(select(Consent.status, Consent.source, Consent.recorded_at)).one()
        log = s.execute(select(ConsentLog.recorded_at, ConsentLog.status, ConsentLog.source)
                        .order_by(ConsentLog.recorded_at)).all()
    assert tuple(current) == ("revoked", "crm-5", dt.datetime(2024, 5, 1, 9, tzinfo=dt.UTC))
    assert [(at.month, st, src) for at, st, src in log] == [
        (2, "granted", "crm-2"), (3, "revoked", "crm-3"), (4, "granted", "crm-4"), (5, "revoked", "crm-5")]
    assert (summary.landed, summary.unchanged) == (4, 0)
    before = counts(session_factory)
    assert run(session_factory, "consents", path, chunk_rows=2).landed == 0
    assert counts(session_factory) == before


def test_customers_csv_and_jsonl_with_attributes_and_trait_history(session_factory, tmp_path):
    path = write_csv(tmp_path / "customers.csv",
                     ["customer_id", "email", "first_name", "birthday", "locale", "timezone", "postal_code", "city",
                      "country", "loyalty_tier", "attributes"], [
                         ["c-1", "Anna@Example.com ", "Anna", "1990-04-01", "de", "Europe/Berlin", "10115", "Berlin",
                          "de", "gold", '{"newsletter_topics": ["kochen"]}'],
                         ["c-2", "not-an-email", "Jonas", "1990-13-01", "de", "Mars/Olympus", "", "", "Deutschland",
                          "", ""],
                     ])
    summary = run(session_factory, "customers", path)
    assert (summary.landed, summary.rejected, summary.customers_created) == (1, 1, 1)
    fields = {r["field"] for r in rejects_of(Path(summary.rejects_path))}
    assert fields == {"email", "birthday", "timezone", "country"}
    with session_factory() as s:
        c1 = s.scalar(select(Customer).where(Customer.external_id == "c-1"))
        assert (c1.email, c1.birthday, c1.country, c1.timezone) == ("anna@example.com", dt.date(1990, 4, 1), "DE",
                                                                     "Europe/Berlin")
        assert c1.attributes == {"loyalty_tier": "gold", "newsletter_topics": ["kochen"]}
        assert s.scalar(select(Identity.customer_id).where(Identity.kind == "email",
                                                           Identity.value == "anna@example.com")) == c1.id
        history = s.scalar(select(func.count()).select_from(TraitChange).where(TraitChange.customer_id == c1.id))
    assert history == 10  # 8 profile fields + 2 attributes
    before = counts(session_factory)
    again = run(session_factory, "customers", path)
    assert (again.landed, again.unchanged) == (0, 1)
    assert counts(session_factory) == before

    update = write_jsonl(tmp_path / "customers.jsonl", [
        {"customer_id": "c-1", "traits": {"firstName": "Anne", "address": {"city": "Hamburg"}},
         "attributes": {"loyalty_tier": "platinum"}},
        {"external_id": "c-3", "email": "anna@example.com", "lat": 52.5, "lon": 13.4},  # c-1's address
    ])
    res = run(session_factory, "customers", update)
    assert (res.landed, res.rejected, res.customers_created) == (2, 0, 1)
    with session_factory() as s:
        c1 = s.scalar(select(Customer).where(Customer.external_id == "c-1"))
        assert (c1.first_name, c1.city, c1.postal_code) == ("Anne", "Hamburg", "10115")
        assert c1.attributes["loyalty_tier"] == "platinum" and c1.attributes["newsletter_topics"] == ["kochen"]
        changes = s.execute(select(TraitChange.trait, TraitChange.value).where(
            TraitChange.customer_id == c1.id, TraitChange.trait.in_(["first_name", "city"]))
            .order_by(TraitChange.id)).all()
        assert [tuple(x) for x in changes] == [("first_name", "Anna"), ("city", "Berlin"), ("first_name", "Anne"),
                                               ("city", "Hamburg")]
        c3 = s.scalar(select(Customer).where(Customer.external_id == "c-3"))
        conflicts = s.scalars(select(IdentityConflict).where(IdentityConflict.customer_id == c3.id)).all()
        assert [(x.other_customer_id, x.value) for x in conflicts] == [(c1.id, "anna@example.com")]
    before = counts(session_factory)
    run(session_factory, "customers", update)
    assert counts(session_factory) == before  # the conflict is not recorded twice


def test_products_with_custom_attributes_and_price_history(session_factory, tmp_path):
    header = ["sku", "name", "category", "price", "currency", "stock", "url", "image", "brand", "sustainable",
              "warranty_months", "successor_sku", "accessory_skus", "material"]
    path = write_csv(tmp_path / "products.csv", header, [
        ["P-1", "Bräter", "Küche > Töpfe", "89.90", "EUR", 12, "https://shop.example/p/1", "https://img/1.jpg",
         "Fissler", "ja", 24, "P-2", "P-7|P-8", "Gusseisen"],
        ["P-2", "Bräter 2", "Küche > Töpfe", "99", "", "", "", "", "", "", "", "", "", ""],
        ["P-3", "", "", "abc", "", "-", "", "", "", "vielleicht", "x", "", "", ""],
    ])
    summary = run(session_factory, "products", path)
    assert (summary.landed, summary.rejected) == (2, 1)
    fields = {r["field"] for r in rejects_of(Path(summary.rejects_path))}
    assert fields == {"name", "price", "stock", "sustainable", "warranty_months"}
    with session_factory() as s:
        p1 = s.scalar(select(Product).where(Product.sku == "P-1"))
        assert (p1.price, p1.stock, p1.image_url, p1.category) == (Decimal("89.90"), 12, "https://img/1.jpg",
                                                                    "Küche > Töpfe")
        assert p1.attributes == {"sustainable": True, "warranty_months": 24, "successor_sku": "P-2",
                                 "accessory_skus": ["P-7", "P-8"], "material": "Gusseisen"}
    before = counts(session_factory)
    assert run(session_factory, "products", path).landed == 0
    assert counts(session_factory) == before
    cheaper = write_jsonl(tmp_path / "products.jsonl", [{"sku": "P-1", "name": "Bräter", "price": 79.9, "stock": 0,
                                                         "attributes": {"sustainable": False}}])
    assert run(session_factory, "products", cheaper).landed == 1
    with session_factory() as s:
        prices = s.execute(select(PriceChange.previous_price, PriceChange.price).where(PriceChange.sku == "P-1")
                           .order_by(PriceChange.id)).all()
        assert [tuple(x) for x in prices] == [(None, Decimal("89.90")), (Decimal("89.90"), Decimal("79.90"))]
        p1 = s.scalar(select(Product).where(Product.sku == "P-1"))
        assert p1.stock == 0 and p1.attributes["sustainable"] is False and p1.attributes["material"] == "Gusseisen"


def test_events_go_through_ingest_and_update_derived_state(session_factory, tmp_path):
    at = "2026-11-01T10:00:00Z"
    path = write_jsonl(tmp_path / "events.jsonl", [
        {"type": "track", "userId": "c-1", "event": "Product Added", "messageId": "m-1", "timestamp": at,
         "properties": {"sku": "K-1", "price": 9.9, "quantity": 2, "cart_id": "cart-1"}},
        {"type": "track", "userId": "c-1", "event": "Order Completed", "messageId": "m-2", "timestamp": at,
         "properties": {"order_id": "e-1", "cart_id": "cart-1", "revenue": 19.8,
                        "products": [{"sku": "K-1", "price": 9.9, "quantity": 2}]}},
        {"type": "identify", "userId": "c-1", "traits": {"email": "c1@example.com"}, "timestamp": at,
         "context": {"consent": {"categoryPreferences": {"analytics": True}}}},
        {"type": "track", "userId": "c-1", "messageId": "m-4", "timestamp": at},           # line 4: no event name
        "[1, 2",                                                                           # line 5: malformed
        {"type": "page", "anonymousId": "a-9", "name": "Home", "timestamp": at},
    ])
    summary = run(session_factory, "events", path, chunk_rows=2)
    assert (summary.rows, summary.landed, summary.rejected) == (6, 4, 2)
    got = {(int(r["line"]), r["field"]) for r in rejects_of(Path(summary.rejects_path))}
    assert got == {(4, "event"), (5, "")}
    with session_factory() as s:
        assert s.scalar(select(Order.source).where(Order.order_id == "e-1")) == "event"
        assert s.scalar(select(Cart.status).where(Cart.cart_id == "cart-1")) == "ordered"
        assert s.scalar(select(Customer.email).where(Customer.external_id == "c-1")) == "c1@example.com"
        assert s.scalar(select(Consent.status).where(Consent.purpose == "analytics")) == "granted"
    before = counts(session_factory)
    again = run(session_factory, "events", path)
    assert (again.landed, again.unchanged) == (0, 4)
    assert counts(session_factory) == before


def test_events_from_csv_with_dotted_property_columns(session_factory, tmp_path):
    path = write_csv(tmp_path / "events.csv", ["type", "event", "userId", "messageId", "timestamp",
                                               "properties.sku", "properties.quantity", "context"], [
        ["track", "Product Added", "c-1", "m-1", "2026-11-01T10:00:00Z", "K-1", "2", '{"locale": "de"}'],
    ])
    assert run(session_factory, "events", path).landed == 1
    with session_factory() as s:
        assert s.scalar(select(CartItem.quantity).where(CartItem.sku == "K-1")) == 2
        assert s.scalar(select(Event.context)) == {"locale": "de"}


def test_format_from_option_and_clear_errors_for_unreadable_files(session_factory, tmp_path):
    path = write_jsonl(tmp_path / "export.txt", [{"customer_id": "c-1", "purpose": "ads", "status": "revoked"}])
    with pytest.raises(bulk.ImportFileError, match="--format"):
        run(session_factory, "consents", path)
    assert run(session_factory, "consents", path, fmt="jsonl").landed == 1
    packed = tmp_path / "export.jsonl.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert (run(session_factory, "consents", packed).unchanged, run(session_factory, "consents", packed).landed) == (
        1, 0)
    with pytest.raises(bulk.ImportFileError, match="Parquet"):
        run(session_factory, "orders", tmp_path / "orders.parquet")
    dup = write_csv(tmp_path / "dup.csv", ["sku", "name", "sku"], [["a", "b", "c"]])
    with pytest.raises(bulk.ImportFileError, match="named twice: sku"):
        run(session_factory, "products", dup)
    short = write_csv(tmp_path / "short.csv", ["sku", "name"], [["a", "b", "c"], ["P-1", "Topf"]])
    res = run(session_factory, "products", short)
    assert (res.landed, res.rejected) == (1, 1)
    assert "has 3 fields, the header names 2" in rejects_of(Path(res.rejects_path))[0]["reason"]


def test_cli_import_prints_a_summary_and_writes_rejects(db_url, session_factory, tmp_path, monkeypatch):
    from emma.cli.main import app

    monkeypatch.setenv("EMMA_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        path = write_csv(tmp_path / "orders.csv", ORDER_HEADER, [
            ["o-1", "c-1", "2026-01-05T10:00:00Z", "K-1", 1, "9.90", "", ""],
            ["o-2", "c-1", "2026-01-05T10:00:00Z", "K-1", 0, "9.90", "", ""],
        ])
        rejects = tmp_path / "rejects.csv"
        result = CliRunner().invoke(app, ["import", "orders", str(path), "--rejects", str(rejects)])
        assert result.exit_code == 3, result.output
        assert "rows read" in result.output and "rejected" in result.output
        assert [(r["line"], r["field"]) for r in rejects_of(rejects)] == [("3", "quantity")]
        again = CliRunner().invoke(app, ["import", "orders", str(path), "--rejects", str(rejects)])
        assert again.exit_code == 3 and "unchanged" in again.output
        missing = CliRunner().invoke(app, ["import", "orders", str(tmp_path / "nope.csv")])
        assert missing.exit_code == 2
    finally:
        get_settings.cache_clear()
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(OrderLine)) == 1
