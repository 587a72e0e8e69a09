"""Admin API for data-protection requests."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from emma.auth.dependencies import admin_only
from emma.gdpr import service
from emma.ingest.jobs import run_with_retry
from emma.profiles.exceptions import CustomerNotFound

router = APIRouter(prefix="/v1/gdpr", tags=["gdpr"], dependencies=[Depends(admin_only)])


@router.get("/customers/{ref}/export")
def export(ref: str, request: Request) -> dict[str, Any]:
    """Everything held about the customer (Art. 15 / 20 GDPR)."""
    with request.app.state.sessions() as session:
        try:
            return service.export(session=session, ref=ref)
        except CustomerNotFound as exc:
            raise HTTPException(404, detail=[{"field": "ref", "reason": str(exc)}]) from exc


@router.post("/customers/{ref}/erase")
async def erase(ref: str, request: Request) -> dict[str, Any]:
    """Delete or anonymise everything about the customer (Art. 17 GDPR)."""
    try:
        summary = await run_with_retry(request.app, lambda s: service.erase(session=s, ref=ref))
    except CustomerNotFound as exc:
        raise HTTPException(404, detail=[{"field": "ref", "reason": str(exc)}]) from exc
    return {"success": True, "tables": summary}
