"""Stores, stock and scheduled events: validation, upserts, distances, the API and the CLI (SQLite and
PostgreSQL)."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from emma.app import create_app
from emma.auth import service as auth
from emma.cli import common
from emma.cli.main import app as cli
from emma.config import Settings, get_settings
from emma.profiles.models import Customer
from emma.stores import service as stores

NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
BERLIN_MITTE = {"store_id": "B-1", "name": "Mitte", "street": "Alexanderplatz 1", "postal_code": "10178",
                "city": "Berlin", "country": "DE", "lat": 52.5219, "lon": 13.4132}
MUNICH = {"store_id": "M-1", "name": "München", "postal_code": "80331", "city": "München", "country": "DE",
          "lat": 48.1374, "lon": 11.5755}


def _customer(session, ext, **fields):
    c = Customer(external_id=ext, email=f"{ext}@example.com", is_anonymous=fields.pop("anonymous", False),
                 attributes={}, created_at=NOW, **fields)
    session.add(c)
    session.flush()
    return c


def test_haversine_matches_known_distances():
    d = stores.haversine_km(52.5200, 13.4050, [48.1351, 53.5511, 52.5200], [11.5820, 9.9937, 13.4050])
    assert d[0] == pytest.approx(504, abs=3)  # Berlin - Munich
    assert d[1] == pytest.approx(255, abs=3)  # Berlin - Hamburg
    assert d[2] == 0


def test_upsert_rejects_bad_rows_and_lands_good_ones(session):
    res = stores.upsert_stores(session=session, at=NOW, rows=[
        {**BERLIN_MITTE, "stock": {"J-1": 3}},
        {"store_id": "X", "name": "No place"},
        {"store_id": "Y", "name": "Half", "lat": 52.1},
        {"store_id": "Z", "name": "Far", "lat": 95, "lon": 10},
        {**MUNICH, "stock": {"J-1": -1}},
        {"store_id": "W", "name": "Wrong", "postal_code": "1", "colour": "red"}])
    assert res.created == 1
    reasons = {(e.index, e.field): e.reason for e in res.rejected}
    assert "coordinates (lat, lon) or a postal_code" in reasons[(1, "row")]
    assert "lat and lon go together" in reasons[(2, "row")]
    assert (3, "lat") in reasons and (4, "stock") in reasons and "cannot be negative" in reasons[(4, "stock")]
    assert (5, "colour") in reasons
    session.commit()
    # A retry of the same batch creates nothing twice; a change updates.
    again = stores.upsert_stores(session=session, at=NOW, rows=[BERLIN_MITTE, {**MUNICH, "opens_on": "2026-04-01"}])
    assert (again.created, again.updated, again.unchanged) == (1, 0, 1)
    assert stores.stock_of(session=session, store_id="B-1") == {"J-1": 3}
    assert [s.store_id for s in stores.list_stores(session=session)] == ["B-1", "M-1"]
    res = stores.set_stock(session=session, at=NOW, rows=[
        {"store_id": "B-1", "sku": "J-1", "quantity": 0}, {"store_id": "B-1", "sku": "J-2", "quantity": 5},
        {"store_id": "NOPE", "sku": "J-1", "quantity": 1}, {"store_id": "B-1", "sku": "J-3", "quantity": "many"}])
    assert [(e.index, e.field) for e in res.rejected] == [(2, "store_id"), (3, "quantity")]
    assert stores.stock_of(session=session, store_id="B-1") == {"J-1": 0, "J-2": 5}


def test_events_take_their_store_location(session):
    stores.upsert_stores(session=session, at=NOW, rows=[BERLIN_MITTE])
    res = stores.upsert_events(session=session, at=NOW, rows=[
        {"event_id": "e-1", "name": "Weinabend", "store_id": "B-1", "starts_at": "2026-03-14T18:00:00+01:00"},
        {"event_id": "e-2", "name": "Nowhere", "starts_at": "2026-03-14T18:00:00"},
        {"event_id": "e-3", "name": "Backwards", "postal_code": "10115", "starts_at": "2026-03-14T18:00:00Z",
         "ends_at": "2026-03-14T17:00:00Z"},
        {"event_id": "e-4", "name": "Ghost", "store_id": "NOPE", "starts_at": "2026-03-14T18:00:00Z"}])
    assert res.created == 1
    assert [(e.index, e.field) for e in res.rejected] == [(1, "row"), (2, "row"), (3, "store_id")]
    assert "ends_at lies before starts_at" in res.rejected[1].reason
    [(ev, store_id)] = stores.list_events(session=session)
    assert store_id == "B-1" and (ev.lat, ev.lon, ev.postal_code) == (52.5219, 13.4132, "10178")
    assert ev.starts_at == dt.datetime(2026, 3, 14, 17, tzinfo=dt.UTC) and ev.location.startswith("Mitte")


def test_customers_near_by_coordinates_then_postal_code(session):
    near = _customer(session, "near", lat=52.5387, lon=13.4246)
    _customer(session, "far", lat=48.14, lon=11.58)
    plz = _customer(session, "plz", postal_code="10999", country="DE")
    _customer(session, "plz-at", postal_code="1010", country="AT")
    _customer(session, "other-plz", postal_code="80331")
    _customer(session, "anon", lat=52.52, lon=13.41, anonymous=True)
    got = stores.customers_near(session=session, lat=52.5219, lon=13.4132, postal_code="10178", country="DE",
                                radius_km=25, postal_prefix=2)
    assert got == {near.id: pytest.approx(2.0, abs=0.1), plz.id: None}
    small_chunks = stores.customers_near(session=session, lat=52.5219, lon=13.4132, postal_code=None, country=None,
                                         radius_km=25, postal_prefix=2, chunk=1)
    assert set(small_chunks) == {near.id}


def test_nearest_store_with_stock(session):
    settings = Settings()
    stores.upsert_stores(session=session, at=NOW, rows=[
        {**BERLIN_MITTE, "stock": {"J-1": 3, "J-3": 2}},
        {"store_id": "B-2", "name": "Prenzlauer Berg", "postal_code": "10435", "lat": 52.5380, "lon": 13.4090,
         "stock": {"J-1": 0, "J-3": 9}},
        {"store_id": "B-3", "name": "Soon", "postal_code": "10437", "lat": 52.5400, "lon": 13.4200,
         "opens_on": "2026-06-01", "stock": {"J-1": 50}},
        {**MUNICH, "stock": {"J-1": 10, "J-2": 4}}])
    c = _customer(session, "c", lat=52.5387, lon=13.4246)
    found = stores.nearest_store(session=session, customer=c, sku="J-1", settings=settings, now=NOW)
    assert (found["store_id"], found["stock"], found["matched_by"]) == ("B-1", 3, "coordinates")  # B-2 has none
    assert stores.nearest_store(session=session, customer=c, sku="J-3", settings=settings, now=NOW)["store_id"] == "B-2"
    assert stores.nearest_store(session=session, customer=c, sku="J-2", settings=settings, now=NOW) is None
    plz = _customer(session, "plz", postal_code="10115")
    found = stores.nearest_store(session=session, customer=plz, sku="J-1", settings=settings, now=NOW)
    assert (found["store_id"], found["distance_km"], found["matched_by"]) == ("B-1", None, "postal_code")
    nowhere = _customer(session, "nowhere")
    assert stores.nearest_store(session=session, customer=nowhere, sku="J-1", settings=settings, now=NOW) is None


def test_api(session, db_url):
    admin, write = auth.create_key(session=session, kind="admin"), auth.create_key(session=session, kind="write")
    session.commit()
    client = TestClient(create_app(Settings(database_url=db_url, worker_embedded=False)))
    h = {"Authorization": f"Bearer {admin}"}
    assert client.post("/v1/stores", json=[BERLIN_MITTE], auth=(write, "")).status_code == 403
    r = client.post("/v1/stores", json=[{**BERLIN_MITTE, "stock": {"J-1": 2}}, {"store_id": "X", "name": "?"}],
                    headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["created"] == 1 and body["rejected"][0]["index"] == 1 and body["rejected"][0]["field"] == "row"
    r = client.put("/v1/stores/stock", json=[{"store_id": "B-1", "sku": "J-2", "quantity": 7}], headers=h)
    assert r.json()["rejected"] == []
    detail = client.get("/v1/stores/B-1", headers=h).json()
    assert detail["stock"] == {"J-1": 2, "J-2": 7} and detail["city"] == "Berlin"
    assert client.get("/v1/stores/NOPE", headers=h).status_code == 404
    assert [s["store_id"] for s in client.get("/v1/stores", headers=h).json()] == ["B-1"]
    _customer(session, "near", lat=52.53, lon=13.42)
    _customer(session, "plz", postal_code="10999")
    session.commit()
    n = client.get("/v1/stores/B-1/nearby", headers=h).json()
    assert (n["customers"], n["by_coordinates"], n["by_postal_code"], n["radius_km"]) == (2, 1, 1, 25.0)
    r = client.post("/v1/store-events", headers=h, json=[
        {"event_id": "e-1", "name": "Weinabend", "store_id": "B-1", "starts_at": "2026-03-14T18:00:00+01:00"}])
    assert r.json()["created"] == 1
    [ev] = client.get("/v1/store-events", headers=h).json()
    assert ev["store_id"] == "B-1" and ev["starts_at"].startswith("2026-03-14T17:00")


def test_cli_import(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("EMMA_DATABASE_URL", db_url)
    monkeypatch.setattr(common.console, "width", 200)
    get_settings.cache_clear()
    csv = tmp_path / "stores.csv"
    csv.write_text("store_id,name,postal_code,city,lat,lon,opens_on\n"
                   "B-1,Mitte,10178,Berlin,52.5219,13.4132,\n"
                   "B-9,Kaputt,,Berlin,52.5,,\n"
                   "B-2,Prenzlauer Berg,10435,Berlin,52.5380,13.4090,2026-04-01\n", encoding="utf-8")
    stock = tmp_path / "stock.jsonl"
    stock.write_text('{"store_id": "B-1", "sku": "J-1", "quantity": 3}\n'
                     '{"store_id": "B-2", "sku": "J-1", "quantity": 1}\n', encoding="utf-8")
    events = tmp_path / "events.json"
    events.write_text('[{"event_id": "e-1", "name": "Eröffnung", "store_id": "B-2", '
                      '"starts_at": "2099-04-01T10:00:00+02:00"}]', encoding="utf-8")
    run = CliRunner().invoke
    try:
        out = run(cli, ["stores", "import", str(csv)])
        assert out.exit_code == 3, out.output
        assert "row 2: row: lat and lon go together" in out.output
        assert run(cli, ["stores", "stock", str(stock)]).exit_code == 0
        assert run(cli, ["stores", "events", str(events)]).exit_code == 0
        out = run(cli, ["stores", "list"])
        assert out.exit_code == 0 and "Prenzlauer Berg" in out.output and "2026-04-01" in out.output
        assert "Eröffnung" in out.output
        out = run(cli, ["stores", "nearby", "B-1", "--radius-km", "5"])
        assert out.exit_code == 0 and "0 customers within 5 km" in out.output
        assert run(cli, ["stores", "nearby", "NOPE"]).exit_code == 1
    finally:
        get_settings.cache_clear()
