"""POST /v1/decide: on-site content for a placement and a visitor (write key, like /v1/track)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from emma.auth.dependencies import write_or_admin
from emma.ingest.schemas import validation_errors
from emma.onsite.schemas import DecideRequest, DecideResponse

router = APIRouter(prefix="/v1", tags=["onsite"])


async def _write_key(request: Request) -> str:
    # The same check as /v1/track, run in the event loop: a cached key is a dict look-up, and a
    # thread hop per request would cost more than the whole decision.
    return write_or_admin(request)


def _error(status: int, errors: list[dict[str, str]]) -> JSONResponse:
    return JSONResponse({"success": False, "errors": errors}, status_code=status)


@router.post("/decide", response_model=DecideResponse, dependencies=[Depends(_write_key)],
             responses={400: {"description": "invalid request: the field and the reason"}})
async def decide(request: Request) -> JSONResponse:
    """What to show on a placement (exit_intent, product_page, cart, home) to this visitor, and why."""
    raw = await request.body()
    limit = request.app.state.settings.max_message_bytes
    if len(raw) > limit:
        return _error(413, [{"field": "body", "reason": f"payload of {len(raw)} bytes exceeds {limit} bytes"}])
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, [{"field": "body", "reason": f"malformed JSON: {exc}"}])
    if not isinstance(body, dict):
        return _error(400, [{"field": "body", "reason": "must be a JSON object"}])
    try:
        req = DecideRequest.model_validate(body)
    except ValidationError as exc:
        return _error(400, [e.model_dump() for e in validation_errors(exc)])
    return JSONResponse(await request.app.state.onsite.decide(req))
