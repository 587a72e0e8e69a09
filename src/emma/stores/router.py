"""Admin API: stores (with their stock) and scheduled events. Batches: bad rows come back with the field and the
reason, good rows land."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request

from emma.auth.dependencies import admin_only
from emma.db import utcnow
from emma.ingest.jobs import run_with_retry
from emma.stores import service
from emma.stores.exceptions import StoreNotFound
from emma.stores.schemas import EventOut, NearbyOut, StoreDetail, StoreOut, UpsertResult

router = APIRouter(prefix="/v1", tags=["stores"], dependencies=[Depends(admin_only)])
ROWS = Body(..., description="a list of rows; each is validated on its own")


def _not_found(exc: StoreNotFound) -> HTTPException:
    return HTTPException(404, detail=[{"field": "store_id", "reason": str(exc)}])


@router.get("/stores")
def list_stores(request: Request) -> list[StoreOut]:
    """Every store."""
    with request.app.state.sessions() as session:
        return [StoreOut.model_validate(s) for s in service.list_stores(session=session)]


@router.post("/stores")
async def upsert_stores(request: Request, rows: list[dict[str, Any]] = ROWS) -> UpsertResult:
    """Create or update stores (optionally with `stock`: {sku: quantity})."""
    return await run_with_retry(request.app, lambda s: service.upsert_stores(session=s, rows=rows, at=utcnow()))


@router.put("/stores/stock")
async def set_stock(request: Request, rows: list[dict[str, Any]] = ROWS) -> UpsertResult:
    """Stock rows: store_id, sku, quantity."""
    return await run_with_retry(request.app, lambda s: service.set_stock(session=s, rows=rows, at=utcnow()))


@router.get("/stores/{store_id}")
def show_store(store_id: str, request: Request) -> StoreDetail:
    """One store with its stock."""
    with request.app.state.sessions() as session:
        try:
            store = service.get_store(session=session, store_id=store_id)
            stock = service.stock_of(session=session, store_id=store_id)
        except StoreNotFound as exc:
            raise _not_found(exc) from exc
        return StoreDetail(**StoreOut.model_validate(store).model_dump(), stock=stock)


@router.get("/stores/{store_id}/nearby")
def nearby(store_id: str, request: Request,
           radius_km: float | None = Query(None, gt=0, le=1000, description="default: EMMA_STORE_RADIUS_KM")
           ) -> NearbyOut:
    """How many customers live near the store (those a store-opening tactic would invite)."""
    settings = request.app.state.settings
    radius = radius_km or settings.store_radius_km
    with request.app.state.sessions() as session:
        try:
            store = service.get_store(session=session, store_id=store_id)
        except StoreNotFound as exc:
            raise _not_found(exc) from exc
        near = service.customers_near(session=session, lat=store.lat, lon=store.lon, postal_code=store.postal_code,
                                      country=store.country, radius_km=radius,
                                      postal_prefix=settings.store_postal_prefix)
    by_coords = sum(1 for d in near.values() if d is not None)
    return NearbyOut(store_id=store_id, radius_km=radius, customers=len(near), by_coordinates=by_coords,
                     by_postal_code=len(near) - by_coords)


@router.get("/store-events")
def list_events(request: Request) -> list[EventOut]:
    """Scheduled events, by start."""
    with request.app.state.sessions() as session:
        return [_event_out(e, sid) for e, sid in service.list_events(session=session)]


@router.post("/store-events")
async def upsert_events(request: Request, rows: list[dict[str, Any]] = ROWS) -> UpsertResult:
    """Create or update scheduled events (at a store_id, or with their own location)."""
    return await run_with_retry(request.app, lambda s: service.upsert_events(session=s, rows=rows, at=utcnow()))


def _event_out(e: Any, store_id: str | None) -> EventOut:
    return EventOut(event_id=e.event_id, name=e.name, description=e.description, starts_at=e.starts_at,
                    ends_at=e.ends_at, store_id=store_id, location=e.location, postal_code=e.postal_code,
                    city=e.city, lat=e.lat, lon=e.lon)
