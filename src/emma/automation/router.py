"""Admin API: tactics, switching them on and off, a customer's runs and journal, sales tasks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from emma.auth.dependencies import admin_only
from emma.automation import service
from emma.automation.exceptions import TacticNotFound
from emma.ingest.jobs import run_with_retry
from emma.profiles import service as profiles
from emma.profiles.exceptions import CustomerNotFound

router = APIRouter(prefix="/v1/automation", tags=["automation"], dependencies=[Depends(admin_only)])


@router.get("/tactics")
def list_tactics(request: Request) -> list[dict[str, Any]]:
    """Every tactic with its state."""
    with request.app.state.sessions() as session:
        return [t.model_dump() for t in service.list_tactics(session=session)]


@router.get("/tactics/{tactic_id}")
def show_tactic(tactic_id: str, request: Request) -> dict[str, Any]:
    """One tactic's definition."""
    with request.app.state.sessions() as session:
        try:
            t, on, source = service.get_tactic(session=session, tactic_id=tactic_id)
        except TacticNotFound as exc:
            raise HTTPException(404, detail=[{"field": "tactic_id", "reason": str(exc)}]) from exc
    return {"enabled": on, "source": source, "definition": t.model_dump(mode="json", by_alias=True,
                                                                         exclude_none=True)}


async def _switch(tactic_id: str, request: Request, on: bool, force: bool) -> dict[str, Any]:
    try:
        missing = await run_with_retry(request.app, lambda s: service.set_enabled(
            session=s, tactic_id=tactic_id, enabled=on, force=force))
    except TacticNotFound as exc:
        raise HTTPException(404, detail=[{"field": "tactic_id", "reason": str(exc)}]) from exc
    if missing and not force:
        raise HTTPException(409, detail=[{"field": "tactic_id", "reason": "predictions missing: "
                                          + ", ".join(missing)}])
    return {"id": tactic_id, "enabled": on}


@router.post("/tactics/{tactic_id}/enable")
async def enable(tactic_id: str, request: Request, force: bool = False) -> dict[str, Any]:
    """Switch a tactic on (409 when the predictions it reads are missing, unless force)."""
    return await _switch(tactic_id, request, True, force)


@router.post("/tactics/{tactic_id}/disable")
async def disable(tactic_id: str, request: Request) -> dict[str, Any]:
    """Switch a tactic off."""
    return await _switch(tactic_id, request, False, False)


@router.get("/customers/{ref}/journal")
def customer_journal(ref: str, request: Request, limit: int = 200) -> dict[str, Any]:
    """The customer's runs and every step with its reason and inputs."""
    with request.app.state.sessions() as session:
        try:
            c = profiles.get_customer(session=session, ref=ref)
        except CustomerNotFound as exc:
            raise HTTPException(404, detail=[{"field": "ref", "reason": str(exc)}]) from exc
        return {"customer_id": c.id, **service.customer_automation(session=session, customer_id=c.id, limit=limit)}


@router.get("/tasks")
def sales_tasks(request: Request, status: str | None = "open") -> list[dict[str, Any]]:
    """Sales tasks created by tactics."""
    with request.app.state.sessions() as session:
        return [{"id": t.id, "customer_id": t.customer_id, "tactic_id": t.tactic_id, "title": t.title,
                 "detail": t.detail, "status": t.status, "due_at": t.due_at.isoformat()}
                for t in service.tasks(session=session, status=status)]
