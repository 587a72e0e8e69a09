"""A small shop for on-site decisions: catalog with accessories, orders with a clear co-purchase pattern,
customers with and without personalization consent and stored predictions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from emma.app import create_app
from emma.auth import service as auth
from emma.catalog import service as catalog
from emma.config import Settings
from emma.consent import service as consent
from emma.orders import service as orders
from emma.predict.models import Prediction, ScoreRun
from emma.profiles import service as profiles
from emma.profiles.models import Customer

NOW = dt.datetime.now(dt.UTC)

PRODUCTS = [
    {"sku": "PAN-1", "name": "Bratpfanne", "price": 39.9, "attributes": {"name_en": "Frying pan",
                                                                        "accessory_skus": ["LID-2", "OLD-9", "OIL-3"]}},
    {"sku": "LID-2", "name": "Glasdeckel", "price": 12.5, "attributes": {"name_en": "Glass lid"}},
    {"sku": "OIL-3", "name": "Olivenöl", "price": 8.0, "attributes": {"name_en": "Olive oil"}},
    {"sku": "SPA-4", "name": "Pfannenwender", "price": 6.0, "attributes": {"name_en": "Spatula"}},
    {"sku": "TEA-5", "name": "Teekanne", "price": 1234.5, "attributes": {"name_en": "Teapot"}},
    {"sku": "CUP-6", "name": "Tasse", "price": 4.0, "attributes": {"name_en": "Cup"}},
    {"sku": "BAG-7", "name": "Einkaufstasche", "price": 3.0, "attributes": {"name_en": "Shopping bag"}},
    {"sku": "SOLD-8", "name": "Ausverkauft", "price": 5.0, "stock": 0, "attributes": {}},
    {"sku": "OLD-9", "name": "Alter Deckel", "price": 5.0, "active": False, "attributes": {}},
]


@dataclass
class Shop:
    client: TestClient
    key: str
    ids: dict[str, int]
    session_factory: Any

    def decide(self, **body: Any) -> Any:
        return self.client.post("/v1/decide", json=body, auth=(self.key, ""))

    def flush(self) -> int:
        return self.client.portal.call(self.client.app.state.onsite.flush)  # type: ignore[union-attr]


def seed(session: Any) -> dict[str, int]:
    """The shop's data; returns customer ids by external id."""
    catalog.upsert_products(session=session, at=NOW - dt.timedelta(days=30), products=[
        {"currency": "EUR", "stock": 10, "active": True, **p} for p in PRODUCTS])
    people = [f"buyer-{i}" for i in range(12)] + ["c-consent", "c-noconsent", "c-lowuplift", "c-noprediction"]
    ids = profiles.ensure_customers(session=session, external_ids=people, at=NOW - dt.timedelta(days=60))
    lines: dict[str, list[str]] = {}
    for i in range(12):
        basket = ["TEA-5"]  # the most bought product
        if i < 6:
            basket += ["PAN-1", "SPA-4"]  # pan and spatula go together
        elif i < 9:
            basket += ["CUP-6"]
        lines[f"buyer-{i}"] = basket
    lines["c-consent"] = ["PAN-1", "BAG-7"]
    batch = [{"order_id": f"o-{cust}", "customer_id": ids[cust], "ordered_at": NOW - dt.timedelta(days=10),
              "status": "completed", "currency": "EUR", "revenue": None, "discount": None, "coupon": None,
              "cart_id": None, "lines": [{"sku": s, "quantity": 1, "unit_price": 1} for s in skus]}
             for cust, skus in lines.items()]
    orders.create_orders(session=session, source="import", orders=batch)
    for cust, locale in (("c-consent", "en-GB"), ("c-noconsent", "de-DE"), ("c-lowuplift", None),
                         ("c-noprediction", "de")):
        session.get(Customer, ids[cust]).locale = locale
    for cust in ("c-consent", "c-lowuplift", "c-noprediction"):
        consent.record(session=session, customer_id=ids[cust], purpose="personalization", status="granted",
                       source="test")
    consent.record(session=session, customer_id=ids["c-noconsent"], purpose="personalization", status="revoked",
                   source="test")
    run = ScoreRun(as_of=NOW, horizon_days=365, status="done")
    session.add(run)
    session.flush()
    preds = {"c-consent": ([{"sku": "CUP-6"}, {"sku": "OLD-9"}, "LID-2", {"sku": "BAG-7"}], 0.08, 0.10, True),
             "c-noconsent": ([], 0.30, 0.05, False),
             "c-lowuplift": ([], 0.01, 0.50, True)}
    for cust, (recs, uplift, propensity, personal) in preds.items():
        session.add(Prediction(customer_id=ids[cust], run_id=run.id, as_of=NOW, personalized=personal,
                               recommendations=recs, incentive_uplift=uplift, propensity_30d=propensity,
                               top_affinities=[], reasons={}))
    return ids


@pytest.fixture
def seed_shop() -> Any:
    """The seeding function and catalog, for tests that build their own servers."""
    return seed, PRODUCTS


@pytest.fixture
def shop(db_url: str, session_factory: Any) -> Iterator[Shop]:
    with session_factory() as s:
        ids = seed(s)
        key = auth.create_key(session=s, kind="write")
        s.commit()
    app = create_app(Settings(database_url=db_url, default_locale="de", onsite_flush_seconds=60))
    with TestClient(app) as client:
        yield Shop(client=client, key=key, ids=ids, session_factory=session_factory)
