"""Catalog upserts that keep every price and stock change in the history tables."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from emma.catalog.models import PriceChange, Product, StockChange
from emma.db import among, rows_among, utcnow

PRODUCT_FIELDS = ("name", "category", "price", "currency", "stock", "url", "image_url", "brand", "attributes",
                  "active")


def upsert_products(*, session: Session, products: Iterable[dict[str, Any]],
                    at: dt.datetime | None = None) -> dict[str, int]:
    """Insert new products and update changed ones; returns counts of created / updated / unchanged."""
    at = at or utcnow()
    rows = {p["sku"]: p for p in products}
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    existing: dict[str, Product] = {}
    skus = list(rows)
    for i in range(0, len(skus), 900):
        for prod in session.scalars(select(Product).where(among(session, Product.sku, skus[i:i + 900]))):
            existing[prod.sku] = prod
    new_rows, price_rows, stock_rows = [], [], []
    for sku, row in rows.items():
        prod = existing.get(sku)
        if prod is None:
            new_rows.append({"sku": sku, "currency": "EUR", "attributes": {}, "active": True,
                             "created_at": at, "updated_at": at, **{k: v for k, v in row.items() if k != "sku"}})
            if row.get("price") is not None:
                price_rows.append({"sku": sku, "previous_price": None, "price": row["price"],
                                   "currency": row.get("currency") or "EUR", "changed_at": at})
            if row.get("stock") is not None:
                stock_rows.append({"sku": sku, "previous_stock": None, "stock": row["stock"], "changed_at": at})
            counts["created"] += 1
            continue
        changed = False
        for field in PRODUCT_FIELDS:
            if field not in row:
                continue
            new, old = row[field], getattr(prod, field)
            if field == "price" and new is not None:
                new = Decimal(str(new)).quantize(Decimal("0.01"))
            if field == "attributes":
                new = {**(old or {}), **(new or {})}
            if new == old:
                continue
            if field == "price":
                price_rows.append({"sku": sku, "previous_price": old, "price": new,
                                   "currency": row.get("currency") or prod.currency, "changed_at": at})
            if field == "stock":
                stock_rows.append({"sku": sku, "previous_stock": old, "stock": new, "changed_at": at})
            setattr(prod, field, new)
            changed = True
        if changed:
            prod.updated_at = at
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
    if new_rows:
        session.execute(insert(Product), new_rows)
    if price_rows:
        session.execute(insert(PriceChange), price_rows)
    if stock_rows:
        session.execute(insert(StockChange), stock_rows)
    return counts


def known_skus(*, session: Session, skus: Iterable[str]) -> set[str]:
    """The subset of skus that exist in the catalog."""
    return {sku for (sku,) in rows_among(session, Product, ["sku"], "sku", list(set(skus)))}


def get_product(*, session: Session, sku: str) -> Product | None:
    """One product by sku."""
    return session.scalar(select(Product).where(Product.sku == sku))


def price_history(*, session: Session, sku: str) -> list[PriceChange]:
    """Every price change of a product, oldest first."""
    return list(session.scalars(select(PriceChange).where(PriceChange.sku == sku)
                                .order_by(PriceChange.changed_at, PriceChange.id)))


def stock_history(*, session: Session, sku: str) -> list[StockChange]:
    """Every stock change of a product, oldest first."""
    return list(session.scalars(select(StockChange).where(StockChange.sku == sku)
                                .order_by(StockChange.changed_at, StockChange.id)))


def better_versions(*, session: Session, skus: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, Product]:
    """sku -> the better version of it on offer: the product its attribute upgrade_sku names, else the next step
    up in the same category (15 % to 150 % dearer, in stock, the cheapest such); skus in exclude are skipped."""
    wanted = list(dict.fromkeys(skus))
    skip = set(exclude) | set(wanted)
    base = {p.sku: p for p in session.scalars(select(Product).where(among(session, Product.sku, wanted)))}
    out: dict[str, Product] = {}
    for sku, p in base.items():
        named = (p.attributes or {}).get("upgrade_sku")
        if named and str(named) not in skip:
            up = session.scalar(select(Product).where(Product.sku == str(named), Product.active.is_(True)))
            if up is not None and (up.stock is None or up.stock > 0):
                out[sku] = up
                continue
        if p.price is None or not p.category:
            continue
        lo, hi = p.price * Decimal("1.15"), p.price * Decimal("2.5")
        for cand in session.scalars(select(Product).where(
                Product.category == p.category, Product.active.is_(True), Product.price >= lo, Product.price <= hi,
                (Product.stock.is_(None)) | (Product.stock > 0)).order_by(Product.price, Product.sku)):
            if cand.sku not in skip:
                out[sku] = cand
                break
    return out
