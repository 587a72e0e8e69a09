"""Catalog: every price and stock change is kept."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from emma.catalog import service as catalog

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def test_price_and_stock_history(session):
    p = {"sku": "K-1", "name": "Bratpfanne 28 cm", "category": "Küche > Pfannen", "price": 39.90, "stock": 5,
         "attributes": {"sustainable": True}}
    assert catalog.upsert_products(session=session, products=[p], at=T0)["created"] == 1
    assert catalog.upsert_products(session=session, products=[p], at=T0 + dt.timedelta(days=1))["unchanged"] == 1
    catalog.upsert_products(session=session, products=[{**p, "price": 29.90, "stock": 0}],
                            at=T0 + dt.timedelta(days=2))
    catalog.upsert_products(session=session, products=[{**p, "price": 29.90, "stock": 12,
                                                        "attributes": {"warranty_months": 24}}],
                            at=T0 + dt.timedelta(days=3))
    session.commit()
    prices = [(h.previous_price, h.price) for h in catalog.price_history(session=session, sku="K-1")]
    assert prices == [(None, Decimal("39.90")), (Decimal("39.90"), Decimal("29.90"))]
    stocks = [(h.previous_stock, h.stock) for h in catalog.stock_history(session=session, sku="K-1")]
    assert stocks == [(None, 5), (5, 0), (0, 12)]
    prod = catalog.get_product(session=session, sku="K-1")
    assert prod.attributes == {"sustainable": True, "warranty_months": 24}
    assert prod.updated_at == T0 + dt.timedelta(days=3)
