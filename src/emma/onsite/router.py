"""POST /v1/decide: on-site content for a placement and a visitor (write key, like /v1/track)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from emma.auth.dependencies import write_or_admin
from emma.ingest.schemas import validation_errors
from emma.onsite.schemas import DecideRequest, DecideResponse

router = APIRouter(prefix="/v1", tags=["onsite"])


def _error(status: int, errors: list[dict[str, str]]) -> JSONResponse:
    return JSONResponse({"success": False, "errors": errors}, status_code=status)


@router.post("/decide", response_model=DecideResponse,
             responses={400: {"description": "invalid request: the field and the reason"},
                        401: {"description": "missing or invalid write key"}})
async def decide(request: Request) -> JSONResponse:
    """What to show on a placement (exit_intent, product_page, cart, home) to this visitor, and why."""
    # The same key check as /v1/track, called here in the event loop rather than as a dependency:
    # a cached key is a dict look-up, and FastAPI would run a sync dependency in a worker thread.
    write_or_admin(request)
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
