"""Admin API: segments (CRUD), their live count and member lists."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from emma.auth.dependencies import admin_only
from emma.db import utcnow
from emma.ingest.jobs import run_with_retry
from emma.segments import service
from emma.segments.exceptions import InvalidRule, SegmentExists, SegmentNotFound
from emma.segments.schemas import CountOut, MembersOut, SegmentIn, SegmentOut, SegmentPatch

router = APIRouter(prefix="/v1/segments", tags=["segments"], dependencies=[Depends(admin_only)])


def _not_found(exc: SegmentNotFound) -> HTTPException:
    return HTTPException(404, detail=[{"field": "key", "reason": str(exc)}])


def _invalid(exc: InvalidRule) -> JSONResponse:
    # The same shape as every other 400 (request validation, /v1/track): one entry per error, named by its path.
    errors = [{"field": path, "reason": reason} for path, reason in exc.errors]
    return JSONResponse({"success": False, "errors": errors}, status_code=400)


def _at(at: dt.datetime | None) -> dt.datetime:
    if at is None:
        return utcnow()
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


@router.get("")
def list_(request: Request) -> list[SegmentOut]:
    """Every segment."""
    with request.app.state.sessions() as session:
        return [SegmentOut.model_validate(s) for s in service.list_segments(session=session)]


@router.post("", status_code=201, responses={400: {"description": "invalid rule: every error with its path"}})
async def create(body: SegmentIn, request: Request) -> SegmentOut:
    """Create a segment; 409 if the key exists."""
    try:
        seg = await run_with_retry(request.app, lambda s: service.create(
            session=s, key=body.key, rule=body.rule, name=body.name, description=body.description, active=body.active))
    except SegmentExists as exc:
        raise HTTPException(409, detail=[{"field": "key", "reason": str(exc)}]) from exc
    except InvalidRule as exc:
        return _invalid(exc)  # type: ignore[return-value]
    return SegmentOut.model_validate(seg)


@router.get("/{key}")
def show(key: str, request: Request) -> SegmentOut:
    """One segment."""
    with request.app.state.sessions() as session:
        try:
            return SegmentOut.model_validate(service.get(session=session, key=key))
        except SegmentNotFound as exc:
            raise _not_found(exc) from exc


@router.patch("/{key}", responses={400: {"description": "invalid rule: every error with its path"}})
async def patch(key: str, body: SegmentPatch, request: Request) -> SegmentOut:
    """Change name, description, rule (raises the version) or active."""
    try:
        seg = await run_with_retry(request.app, lambda s: service.update_segment(
            session=s, key=key, rule=body.rule, name=body.name, description=body.description, active=body.active))
    except SegmentNotFound as exc:
        raise _not_found(exc) from exc
    except InvalidRule as exc:
        return _invalid(exc)  # type: ignore[return-value]
    return SegmentOut.model_validate(seg)


@router.delete("/{key}", status_code=204)
async def delete(key: str, request: Request) -> None:
    """Delete a segment and its memberships."""
    try:
        await run_with_retry(request.app, lambda s: service.delete(session=s, key=key))
    except SegmentNotFound as exc:
        raise _not_found(exc) from exc


@router.get("/{key}/count")
def count(key: str, request: Request, at: dt.datetime | None = None) -> CountOut:
    """How many customers match now (or at `at`)."""
    when = _at(at)
    with request.app.state.sessions() as session:
        try:
            return CountOut(key=key, count=service.count(session=session, segment=key, now=when), at=when)
        except SegmentNotFound as exc:
            raise _not_found(exc) from exc


@router.get("/{key}/members")
def members(key: str, request: Request, at: dt.datetime | None = None,
            limit: int = Query(1000, ge=1, le=100_000), after_id: int | None = None) -> MembersOut:
    """Matching customer ids in ascending order; pass next_after_id as after_id for the next page."""
    when = _at(at)
    with request.app.state.sessions() as session:
        try:
            ids = service.members(session=session, segment=key, now=when, limit=limit, after_id=after_id)
        except SegmentNotFound as exc:
            raise _not_found(exc) from exc
    return MembersOut(key=key, at=when, customer_ids=ids, next_after_id=ids[-1] if len(ids) == limit else None)
