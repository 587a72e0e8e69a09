"""GDPR export and erasure: every table is scanned after erasure; aggregates stay correct."""

from __future__ import annotations

import datetime as dt
import json

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from emma.app import create_app
from emma.auth import service as auth
from emma.channels import service as channels
from emma.cli.main import app as cli
from emma.config import Settings, get_settings
from emma.consent import service as consent
from emma.db import Base, import_all_models
from emma.ingest import service as ingest
from emma.orders.models import Order
from emma.profiles.models import Customer

T = dt.datetime(2026, 2, 1, 10, 0, tzinfo=dt.UTC)
PII = ["erika.mustermann@example.org", "Erika", "Mustermann", "+491511234567", "ext-erika", "anon-erika-1",
       "anon-erika-2", "10115", "Musterstadt", "Hauptstr. 5", "1970-05-17"]


def _msg(kind: str, n: int, **kw) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return {"type": kind, "messageId": f"{kind}-{n}-{kw.get('userId') or kw.get('anonymousId')}",
            "timestamp": (T + dt.timedelta(minutes=n)).isoformat(), **kw}


def _populate(session) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Erika, with an anonymous past that was merged in, and Max, who must stay untouched."""
    first = [_msg("identify", 0, userId="ext-erika", traits={"first_name": "Erika"})]
    msgs = [
        _msg("page", 1, anonymousId="anon-erika-1", name="Home", properties={"url": "https://shop.example/"}),
        _msg("track", 2, anonymousId="anon-erika-1", event="Product Added",
             properties={"sku": "POT", "quantity": 1, "price": 40}),
        _msg("identify", 3, userId="ext-erika", anonymousId="anon-erika-1", traits={
            "email": "erika.mustermann@example.org", "first_name": "Erika", "last_name": "Mustermann",
            "phone": "+491511234567", "postal_code": "10115", "city": "Musterstadt", "birthday": "1970-05-17",
            "street": "Hauptstr. 5", "country": "DE"}),
        _msg("track", 4, userId="ext-erika", anonymousId="anon-erika-2", event="Order Completed", properties={
            "order_id": "O-1", "revenue": 40, "products": [{"sku": "POT", "quantity": 1, "price": 40}],
            "shipping_address": "Hauptstr. 5, 10115 Musterstadt"},
             context={"traits": {"email": "erika.mustermann@example.org"}}),
        _msg("track", 5, userId="ext-erika", event="Order Completed", properties={
            "order_id": "O-2", "revenue": 60.5, "products": [{"sku": "LID", "quantity": 2, "price": 30.25}]}),
        _msg("track", 6, userId="ext-erika", event="Product Added", properties={"sku": "LID", "quantity": 1}),
        _msg("identify", 7, userId="ext-max", traits={"email": "max@example.org", "first_name": "Max"}),
        _msg("track", 8, userId="ext-max", event="Order Completed", properties={
            "order_id": "O-3", "revenue": 15, "products": [{"sku": "POT", "quantity": 1, "price": 15}]}),
    ]
    # Erika is known before her anonymous visits are linked to her: the anonymous profile gets merged in.
    ingest.ingest(session=session, raw_messages=first, received_at=T)
    for batch in (msgs[:2], msgs[2:]):
        result = ingest.ingest(session=session, raw_messages=batch, received_at=T + dt.timedelta(hours=1))
        assert result.accepted == len(batch), result
    erika = session.scalar(select(Customer.id).where(Customer.external_id == "ext-erika"))
    max_ = session.scalar(select(Customer.id).where(Customer.external_id == "ext-max"))
    for cid in (erika, max_):
        consent.record(session=session, customer_id=cid, purpose="email_marketing", status="pending",
                       source="signup", recorded_at=T)
        consent.record(session=session, customer_id=cid, purpose="email_marketing", status="granted",
                       source="double_opt_in", recorded_at=T + dt.timedelta(hours=2))
    m = channels.enqueue(session=session, idempotency_key="nl-erika", customer_id=erika, channel="email",
                         template="winback_coupon", purpose="email_marketing",
                         payload={"greeting": "Liebe Erika Mustermann"})
    channels.log(session=session, message_id=m.id, status="bounced",
                 detail={"reason": "550 erika.mustermann@example.org unknown"})
    m.last_error = "550 erika.mustermann@example.org unknown"
    session.commit()
    return erika, max_


def _scan(session) -> list[str]:  # type: ignore[no-untyped-def]
    """Every value of every row of every table, as text."""
    import_all_models()
    texts = []
    for table in Base.metadata.sorted_tables:
        for row in session.execute(select(table)):
            texts.append(f"{table.name}: " + json.dumps([v for v in row], default=str, ensure_ascii=False))
    return texts


def _aggregates(session) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    n, total = session.execute(select(func.count(Order.id), func.sum(Order.revenue))).one()
    return n, f"{total:.2f}"


def test_export_holds_everything_about_the_customer(session):
    erika, _ = _populate(session)
    from emma.gdpr import service as gdpr

    data = gdpr.export(session=session, ref="erika.mustermann@example.org")
    as_json = json.dumps(data, ensure_ascii=False)  # plain JSON
    t = data["tables"]
    assert data["customer_id"] == erika and len(data["profiles"]) == 2  # the merged anonymous profile too
    assert {"customers", "identities", "events", "orders", "order_lines", "carts", "cart_items", "consents",
            "consent_log", "trait_history", "outbox", "delivery_log", "merge_log", "predictions"} <= set(t)
    assert {i["value"] for i in t["identities"]} >= {"ext-erika", "anon-erika-1", "erika.mustermann@example.org"}
    assert sorted(o["order_id"] for o in t["orders"]) == ["O-1", "O-2"]
    assert len(t["order_lines"]) == 2 and len(t["events"]) == 7
    assert [c["status"] for c in t["consent_log"]] == ["pending", "granted"]
    assert {h["trait"] for h in t["trait_history"]} >= {"email", "first_name", "city"}
    assert [d["status"] for d in t["delivery_log"]] == ["queued", "bounced"]
    assert any(c["sku"] == "LID" for c in t["cart_items"])
    assert "max@example.org" not in as_json and "ext-max" not in as_json


def test_erasure_leaves_no_personal_data_in_any_table_and_aggregates_intact(session):
    from emma.gdpr import service as gdpr

    erika, max_ = _populate(session)
    before = _aggregates(session)
    assert any("Musterstadt" in t for t in _scan(session))  # the scan does see the data before
    summary = gdpr.erase(session=session, ref="ext-erika")
    session.commit()
    leaks = [t for t in _scan(session) for p in PII if p.lower() in t.lower()]
    assert leaks == []
    assert _aggregates(session) == before == (3, "115.50")
    assert summary["events"] == {"deleted": 7} and summary["orders"] == {"kept": 2}
    # Max is untouched; Erika's outbox row survives for send statistics, without content.
    assert session.get(Customer, max_).email == "max@example.org"
    assert consent.allows(session=session, customer_id=max_, purpose="email_marketing")
    assert not consent.allows(session=session, customer_id=erika, purpose="email_marketing")
    assert session.get(Customer, erika).attributes.get("erased_at")
    again = gdpr.export(session=session, ref=str(erika))
    assert again["tables"]["identities"] == [] and again["tables"]["events"] == []


def test_admin_api_and_cli(session, db_url, monkeypatch):
    erika, max_ = _populate(session)
    admin, write = auth.create_key(session=session, kind="admin"), auth.create_key(session=session, kind="write")
    session.commit()
    client = TestClient(create_app(Settings(database_url=db_url)))
    assert client.get("/v1/gdpr/customers/ext-erika/export", auth=(write, "")).status_code == 403
    r = client.get("/v1/gdpr/customers/ext-erika/export", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.json()["customer_id"] == erika
    assert client.get("/v1/gdpr/customers/nobody/export", auth=(admin, "")).status_code == 404
    monkeypatch.setenv("EMMA_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(cli, ["gdpr", "export", "ext-max"])
        assert out.exit_code == 0 and json.loads(out.output)["customer_id"] == max_
        erased = CliRunner().invoke(cli, ["gdpr", "erase", "ext-max", "--yes"])
        assert erased.exit_code == 0 and "events: deleted 2" in erased.output
    finally:
        get_settings.cache_clear()
    r = client.post("/v1/gdpr/customers/ext-erika/erase", auth=(admin, ""))
    assert r.status_code == 200 and r.json()["tables"]["customers"] == {"anonymised": 2}
    session.expire_all()
    assert [t for t in _scan(session) for p in [*PII, "max@example.org", "ext-max"] if p.lower() in t.lower()] == []
    assert _aggregates(session) == (3, "115.50")
