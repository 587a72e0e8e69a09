"""Stores, their stock and scheduled events; who lives near a place (haversine over the customers' address
coordinates, postal-code prefix for customers without them)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from emma.config import Settings
from emma.profiles.models import Customer
from emma.stores.exceptions import StoreNotFound
from emma.stores.models import Store, StoreEvent, StoreStock
from emma.stores.schemas import EventIn, RowError, StockIn, StoreIn, UpsertResult

EARTH_KM = 6371.0088
STORE_FIELDS = ("name", "street", "postal_code", "city", "country", "lat", "lon", "opens_on", "active")
EVENT_FIELDS = ("name", "description", "starts_at", "ends_at", "location", "postal_code", "city", "country",
                "lat", "lon")


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle distance in km between points (degrees; arrays broadcast)."""
    p1, p2 = np.radians(np.asarray(lat1, float)), np.radians(np.asarray(lat2, float))
    dlat = p2 - p1
    dlon = np.radians(np.asarray(lon2, float)) - np.radians(np.asarray(lon1, float))
    a = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _validate(rows: Iterable[dict[str, Any]], model: type, result: UpsertResult) -> list[tuple[int, Any]]:
    good = []
    for i, row in enumerate(rows):
        try:
            good.append((i, model.model_validate(row)))
        except ValidationError as exc:
            for e in exc.errors():
                field = ".".join(str(p) for p in e["loc"]) or "row"
                result.rejected.append(RowError(index=i, field=field, reason=e["msg"].removeprefix("Value error, ")))
    return good


def _apply(obj: Any, values: dict[str, Any], fields: tuple[str, ...]) -> bool:
    changed = False
    for f in fields:
        if f in values and getattr(obj, f) != values[f]:
            setattr(obj, f, values[f])
            changed = True
    return changed


def upsert_stores(*, session: Session, rows: Iterable[dict[str, Any]], at: dt.datetime) -> UpsertResult:
    """Create or update stores (and the stock they list); bad rows are reported, good rows land."""
    result = UpsertResult()
    for _, row in _validate(rows, StoreIn, result):
        values = row.model_dump(exclude_unset=True, exclude={"store_id", "stock"})
        store = session.scalar(select(Store).where(Store.store_id == row.store_id))
        if store is None:
            store = Store(store_id=row.store_id, created_at=at, updated_at=at, **values)
            session.add(store)
            session.flush()
            result.created += 1
        elif _apply(store, values, STORE_FIELDS):
            store.updated_at = at
            result.updated += 1
        else:
            result.unchanged += 1
        if row.stock:
            _set_stock(session, store, row.stock, at)
    return result


def _set_stock(session: Session, store: Store, stock: dict[str, int], at: dt.datetime) -> None:
    have = {s.sku: s for s in session.scalars(select(StoreStock).where(StoreStock.store_pk == store.id,
                                                                      StoreStock.sku.in_(list(stock))))}
    for sku, qty in stock.items():
        row = have.get(sku)
        if row is None:
            session.add(StoreStock(store_pk=store.id, sku=sku, quantity=qty, updated_at=at))
        elif row.quantity != qty:
            row.quantity, row.updated_at = qty, at


def set_stock(*, session: Session, rows: Iterable[dict[str, Any]], at: dt.datetime) -> UpsertResult:
    """Stock rows (store_id, sku, quantity); a row naming an unknown store is rejected."""
    result = UpsertResult()
    by_store: dict[str, dict[str, int]] = {}
    index: dict[str, list[int]] = {}
    for i, row in _validate(rows, StockIn, result):
        by_store.setdefault(row.store_id, {})[row.sku] = row.quantity
        index.setdefault(row.store_id, []).append(i)
    for store_id, stock in by_store.items():
        store = session.scalar(select(Store).where(Store.store_id == store_id))
        if store is None:
            result.rejected.extend(RowError(index=i, field="store_id", reason=f"store {store_id!r} does not exist")
                                   for i in index[store_id])
            continue
        _set_stock(session, store, stock, at)
        result.updated += len(stock)
    result.rejected.sort(key=lambda e: e.index)
    return result


def upsert_events(*, session: Session, rows: Iterable[dict[str, Any]], at: dt.datetime) -> UpsertResult:
    """Create or update scheduled events; an event at a store takes the store's location."""
    result = UpsertResult()
    for i, row in _validate(rows, EventIn, result):
        values = row.model_dump(exclude_unset=True, exclude={"event_id", "store_id"})
        store_pk = None
        if row.store_id:
            store = session.scalar(select(Store).where(Store.store_id == row.store_id))
            if store is None:
                result.rejected.append(RowError(index=i, field="store_id",
                                                reason=f"store {row.store_id!r} does not exist"))
                continue
            store_pk = store.id
            if row.lat is None and row.postal_code is None:
                values.update(lat=store.lat, lon=store.lon, postal_code=store.postal_code)
            values.setdefault("city", store.city)
            values.setdefault("country", store.country)
            values.setdefault("location", ", ".join(x for x in (store.name, store.street, store.city) if x))
        ev = session.scalar(select(StoreEvent).where(StoreEvent.event_id == row.event_id))
        if ev is None:
            session.add(StoreEvent(event_id=row.event_id, store_pk=store_pk, created_at=at, updated_at=at, **values))
            result.created += 1
        elif _apply(ev, values, EVENT_FIELDS) or ev.store_pk != store_pk:
            ev.store_pk, ev.updated_at = store_pk, at
            result.updated += 1
        else:
            result.unchanged += 1
    session.flush()
    return result


def list_stores(*, session: Session) -> list[Store]:
    """Every store by id."""
    return list(session.scalars(select(Store).order_by(Store.store_id)))


def get_store(*, session: Session, store_id: str) -> Store:
    """One store; StoreNotFound otherwise."""
    store = session.scalar(select(Store).where(Store.store_id == store_id))
    if store is None:
        raise StoreNotFound(store_id)
    return store


def stock_of(*, session: Session, store_id: str) -> dict[str, int]:
    """sku -> quantity on the store's shelves."""
    store = get_store(session=session, store_id=store_id)
    return dict(session.execute(select(StoreStock.sku, StoreStock.quantity).where(StoreStock.store_pk == store.id)
                                .order_by(StoreStock.sku)).all())


def list_events(*, session: Session, since: dt.datetime | None = None) -> list[tuple[StoreEvent, str | None]]:
    """Scheduled events (those ending or starting after since), each with its store's id."""
    stmt = select(StoreEvent, Store.store_id).outerjoin(Store, Store.id == StoreEvent.store_pk)
    if since is not None:
        stmt = stmt.where(StoreEvent.starts_at >= since)
    return [(e, sid) for e, sid in session.execute(stmt.order_by(StoreEvent.starts_at, StoreEvent.event_id))]


def _prefix(code: str | None, n: int) -> str | None:
    code = (code or "").replace(" ", "").upper()
    return code[:n] if len(code) >= n else None


def customers_near(*, session: Session, lat: float | None, lon: float | None, postal_code: str | None,
                   country: str | None, radius_km: float, postal_prefix: int,
                   chunk: int = 200_000) -> dict[int, float | None]:
    """Known customers living within radius_km of the place -> distance in km; customers without coordinates
    whose postal code shares the place's first postal_prefix characters (same country) -> None."""
    out: dict[int, float | None] = {}
    known = select(Customer.id).where(Customer.is_anonymous.is_(False), Customer.merged_into_id.is_(None))
    if lat is not None and lon is not None:
        # A bounding box in SQL (an index-friendly range), the exact great-circle distance in numpy.
        dlat = radius_km / 111.2
        dlon = radius_km / max(111.2 * math.cos(math.radians(lat)), 1e-6)
        box = (select(Customer.id, Customer.lat, Customer.lon)
               .where(Customer.is_anonymous.is_(False), Customer.merged_into_id.is_(None),
                      Customer.lat.between(lat - dlat, lat + dlat))
               .order_by(Customer.id))
        if dlon < 180:
            box = box.where(Customer.lon.between(lon - dlon, lon + dlon))
        after = 0
        while True:
            rows = session.execute(box.where(Customer.id > after).limit(chunk)).all()
            if not rows:
                break
            arr = np.array([(r[0], r[1], r[2]) for r in rows], dtype=float)
            dist = haversine_km(lat, lon, arr[:, 1], arr[:, 2])
            for cid, d in zip(arr[:, 0][dist <= radius_km].astype(int).tolist(),
                              dist[dist <= radius_km].tolist(), strict=True):
                out[cid] = round(d, 1)
            after = rows[-1][0]
            if len(rows) < chunk:
                break
    prefix = _prefix(postal_code, postal_prefix)
    if prefix:
        stmt = known.where(Customer.lat.is_(None), Customer.postal_code.startswith(prefix))
        if country:
            stmt = stmt.where((Customer.country.is_(None)) | (Customer.country == country.upper()))
        for cid in session.scalars(stmt):
            out.setdefault(cid, None)
    return out


def _distance(customer: Customer, lat: float | None, lon: float | None, postal_code: str | None,
              country: str | None, settings: Settings) -> tuple[bool, float | None, str | None]:
    """(near, km or None, matched_by) of a place for one customer, by the same rules as customers_near."""
    if customer.lat is not None and customer.lon is not None and lat is not None and lon is not None:
        km = float(haversine_km(customer.lat, customer.lon, lat, lon))
        return km <= settings.store_radius_km, round(km, 1), "coordinates"
    if customer.lat is None:
        mine, theirs = (_prefix(customer.postal_code, settings.store_postal_prefix),
                        _prefix(postal_code, settings.store_postal_prefix))
        same_country = not (customer.country and country) or customer.country.upper() == country.upper()
        if mine and mine == theirs and same_country:
            return True, None, "postal_code"
    return False, None, None


def _store_data(store: Store, km: float | None, matched_by: str | None) -> dict[str, Any]:
    return {"store_id": store.store_id, "name": store.name, "street": store.street,
            "postal_code": store.postal_code, "city": store.city, "country": store.country,
            "opens_on": store.opens_on.isoformat() if store.opens_on else None,
            "distance_km": km, "matched_by": matched_by}


def store_for_customer(*, session: Session, store_id: str, customer: Customer,
                       settings: Settings) -> dict[str, Any] | None:
    """One store as template data, with its distance from the customer (None when the store is unknown)."""
    store = session.scalar(select(Store).where(Store.store_id == store_id))
    if store is None:
        return None
    _, km, how = _distance(customer, store.lat, store.lon, store.postal_code, store.country, settings)
    return _store_data(store, km, how)


def nearest_store(*, session: Session, customer: Customer, sku: str | None, settings: Settings,
                  now: dt.datetime, viewed_days: int = 7) -> dict[str, Any] | None:
    """The nearest open store within the radius (EMMA_STORE_RADIUS_KM; same postal area without coordinates)
    that has sku on its shelves, with its stock of it (`stock`) and of the other products the customer viewed
    in the last viewed_days (`products`); None when no such store exists."""
    stmt = select(Store).where(Store.active.is_(True))
    if sku:
        stmt = stmt.join(StoreStock, StoreStock.store_pk == Store.id).where(StoreStock.sku == sku,
                                                                           StoreStock.quantity > 0)
    best: tuple[float, str, Store, float | None, str | None] | None = None
    today = now.date()
    for store in session.scalars(stmt):
        if store.opens_on is not None and store.opens_on > today:
            continue
        near, km, how = _distance(customer, store.lat, store.lon, store.postal_code, store.country, settings)
        if not near:
            continue
        rank = (km if km is not None else settings.store_radius_km, store.store_id)
        if best is None or rank < best[:2]:
            best = (*rank, store, km, how)
    if best is None:
        return None
    store, km, how = best[2], best[3], best[4]
    data = _store_data(store, km, how)
    stock = dict(session.execute(select(StoreStock.sku, StoreStock.quantity)
                                 .where(StoreStock.store_pk == store.id, StoreStock.quantity > 0)).all())
    data["sku"], data["stock"] = sku, stock.get(sku) if sku else None
    data["products"] = _viewed_in_stock(session, customer.id, stock, sku, now - dt.timedelta(days=viewed_days))
    return data


def _viewed_in_stock(session: Session, customer_id: int, stock: dict[str, int], first: str | None,
                     since: dt.datetime) -> list[dict[str, Any]]:
    from emma.catalog.models import Product
    from emma.ingest.models import Event

    viewed = [first] if first else []
    for props in session.scalars(select(Event.properties).where(
            Event.customer_id == customer_id, Event.name == "Product Viewed", Event.timestamp >= since)
            .order_by(Event.timestamp.desc()).limit(200)):
        sku = str((props or {}).get("sku") or "")
        if sku and sku in stock and sku not in viewed:
            viewed.append(sku)
    viewed = [s for s in viewed if s in stock][:6]
    products = {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(viewed)))} if viewed else {}
    return [{"sku": s, "name": products[s].name if s in products else s, "store_stock": stock[s],
             "price": float(products[s].price) if s in products and products[s].price is not None else None,
             "currency": products[s].currency if s in products else "EUR",
             "url": products[s].url if s in products else None} for s in viewed]


def upcoming(*, session: Session, kind: str, now: dt.datetime, lead_days: int) -> list[dict[str, Any]]:
    """Openings (kind 'opening': stores opening today up to lead_days ahead) or events (kind 'event': starting
    after now, within lead_days) as trigger occurrences with their place."""
    if kind == "opening":
        today = now.astimezone(dt.UTC).date()
        rows = session.scalars(select(Store).where(Store.active.is_(True), Store.opens_on.is_not(None),
                                                   Store.opens_on >= today,
                                                   Store.opens_on <= today + dt.timedelta(days=lead_days))
                               .order_by(Store.id))
        return [{"id": s.id, "key": s.store_id, "lat": s.lat, "lon": s.lon, "postal_code": s.postal_code,
                 "country": s.country, "name": s.name,
                 "entry": {**_store_data(s, None, None), "store_name": s.name}} for s in rows]
    out = []
    for ev, store_id in session.execute(
            select(StoreEvent, Store.store_id).outerjoin(Store, Store.id == StoreEvent.store_pk)
            .where(StoreEvent.starts_at > now, StoreEvent.starts_at <= now + dt.timedelta(days=lead_days))
            .order_by(StoreEvent.id)):
        out.append({"id": ev.id, "key": ev.event_id, "lat": ev.lat, "lon": ev.lon, "postal_code": ev.postal_code,
                    "country": ev.country, "name": ev.name,
                    "entry": {"event_id": ev.event_id, "event_name": ev.name, "description": ev.description,
                              "starts_at": ev.starts_at.isoformat(),
                              "ends_at": ev.ends_at.isoformat() if ev.ends_at else None,
                              "location": ev.location, "city": ev.city, "store_id": store_id}})
    return out
