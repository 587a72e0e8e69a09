"""Admin API for customers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from emma.auth.dependencies import admin_only
from emma.profiles.exceptions import CustomerNotFound
from emma.profiles.views import customer_view

router = APIRouter(prefix="/v1/customers", tags=["customers"], dependencies=[Depends(admin_only)])


@router.get("/{ref}")
def show(ref: str, request: Request, events: int = 10) -> dict[str, Any]:
    """The customer by id, external id, email or anonymous id."""
    with request.app.state.sessions() as session:
        try:
            return customer_view(session=session, ref=ref, events=events)
        except CustomerNotFound as exc:
            raise HTTPException(404, detail=[{"field": "ref", "reason": str(exc)}]) from exc
