"""Data a run reads beyond the profile: the keyed order (condition fields `order.*`, payload `$order`) and the
store near the customer (`store.*`, `$store`). Plain JSON values, so they go into the journal and templates."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from emma.automation.models import Run
from emma.catalog import service as catalog
from emma.catalog.models import Product
from emma.config import Settings
from emma.orders.models import Order, OrderLine
from emma.profiles.models import Customer


def plain(v: Any) -> Any:
    """A JSON-ready value: Decimal as float, dates as ISO text."""
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    return v


def product_data(p: Product) -> dict[str, Any]:
    """A catalog entry as template data (with its attributes)."""
    return {"sku": p.sku, "name": p.name, "price": plain(p.price), "currency": p.currency, "url": p.url,
            "image_url": p.image_url, "brand": p.brand, "category": p.category, "stock": p.stock,
            "attributes": dict(p.attributes or {})}


def _truthy(v: Any) -> bool:
    return v not in (None, False, 0, "", "0", "false", "no", [], {})


def order_data(*, session: Session, run: Run, customer: Customer | None, settings: Settings,
               now: dt.datetime) -> dict[str, Any] | None:
    """The run's order (its key, else the entry's order_id, else the customer's latest): lines with catalog
    details, count_with.<attribute> (lines whose product has it), and upgrades (better versions on offer)."""
    mine = select(Order).where(Order.customer_id == run.customer_id)
    order = None
    for order_id in (run.key, ((run.state or {}).get("entry") or {}).get("order_id")):
        if order_id:  # a run keyed by something else (a cart, a sku) falls through to the entry, then the latest
            order = session.scalar(mine.where(Order.order_id == str(order_id)))
            if order is not None:
                break
    if order is None:
        order = session.scalar(mine.order_by(Order.ordered_at.desc(), Order.id.desc()).limit(1))
    if order is None:
        return None
    lines = list(session.scalars(select(OrderLine).where(OrderLine.order_pk == order.id).order_by(OrderLine.line_no)))
    skus = [ln.sku for ln in lines]
    products = {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(skus)))} if skus else {}
    out_lines, counts = [], Counter()
    for ln in lines:
        p = products.get(ln.sku)
        data = product_data(p) if p is not None else {"sku": ln.sku, "name": ln.sku, "attributes": {}}
        data.update(quantity=ln.quantity, unit_price=plain(ln.unit_price))
        counts.update(k for k, v in data["attributes"].items() if _truthy(v))
        out_lines.append(data)
    bought = set(session.scalars(select(OrderLine.sku).join(Order, Order.id == OrderLine.order_pk)
                                 .where(Order.customer_id == run.customer_id)))
    ups = catalog.better_versions(session=session, skus=skus, exclude=bought)
    upgrades = [{**product_data(up), "for_sku": sku, "for_name": products[sku].name if sku in products else sku}
                for sku, up in ups.items()]
    return {"order_id": order.order_id, "status": order.status, "revenue": plain(order.revenue),
            "currency": order.currency, "ordered_at": plain(order.ordered_at),
            "delivered_at": plain(order.delivered_at), "item_count": sum(ln.quantity for ln in lines),
            "skus": skus, "lines": out_lines, "count_with": dict(counts), "upgrades": upgrades,
            "upgrade_count": len(upgrades)}


def store_data(*, session: Session, run: Run, customer: Customer | None, settings: Settings,
               now: dt.datetime) -> dict[str, Any] | None:
    """The store the run is about (the entry's store_id), else the nearest store within the radius that stocks
    the run's product (its key or the entry's sku), with its stock of the products the customer viewed lately."""
    from emma.stores import service as stores

    if customer is None:
        return None
    entry = (run.state or {}).get("entry") or {}
    if entry.get("store_id"):
        return stores.store_for_customer(session=session, store_id=str(entry["store_id"]), customer=customer,
                                         settings=settings)
    sku = run.key or entry.get("sku")
    return stores.nearest_store(session=session, customer=customer, sku=str(sku) if sku else None,
                                settings=settings, now=now)
