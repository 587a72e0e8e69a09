"""Segment-compatible HTTP Tracking API: /v1/track, identify, page, screen, alias, group, batch."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from emma.auth.dependencies import write_or_admin
from emma.ingest.jobs import GroupWriter

# The key is checked at the top of each endpoint, in the event loop, as /v1/decide does: a cached key is a
# dict look-up, and FastAPI would run the (sync) dependency in a worker thread for every request.
router = APIRouter(prefix="/v1", tags=["ingest"])


def _error(status: int, field: str, reason: str) -> JSONResponse:
    return JSONResponse({"success": False, "errors": [{"field": field, "reason": reason}]}, status_code=status)


def _writer(request: Request) -> GroupWriter:
    # One per app: concurrent requests share its transactions (group commit).
    app = request.app
    writer = getattr(app.state, "ingest_writer", None)
    if writer is None:
        writer = app.state.ingest_writer = GroupWriter(app)
    return writer


async def _body(request: Request, limit: int) -> Any | JSONResponse:
    raw = await request.body()
    if len(raw) > limit:
        return _error(413, "body", f"payload of {len(raw)} bytes exceeds the limit of {limit} bytes")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, "body", f"malformed JSON: {exc}")


def _single(kind: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> JSONResponse:
        write_or_admin(request)
        settings = request.app.state.settings
        body = await _body(request, settings.max_message_bytes)
        if isinstance(body, JSONResponse):
            return body
        if not isinstance(body, dict):
            return _error(400, "body", "must be a JSON object")
        body.setdefault("type", kind)
        if body["type"] != kind:
            return _error(400, "type", f"must be {kind!r} on /v1/{kind}")
        result = await _writer(request).submit([body])
        if result.rejected:
            return JSONResponse({"success": False, "errors": [e.model_dump() for e in result.rejected[0].errors]},
                                status_code=400)
        return JSONResponse({"success": True, "duplicate": result.duplicates > 0, "warnings": result.warnings})

    endpoint.__name__ = kind
    return endpoint


for _kind in ("track", "identify", "page", "screen", "alias", "group"):
    router.add_api_route(f"/{_kind}", _single(_kind), methods=["POST"], name=_kind)


@router.post("/batch", name="batch")
async def batch(request: Request) -> JSONResponse:
    """A batch envelope: valid messages land, invalid ones are listed by index."""
    write_or_admin(request)
    settings = request.app.state.settings
    body = await _body(request, settings.max_batch_bytes)
    if isinstance(body, JSONResponse):
        return body
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        return _error(400, "batch", "required: a list of messages")
    envelope_context = body.get("context") if isinstance(body.get("context"), dict) else {}
    messages: list[Any] = []
    oversized: dict[int, int] = {}
    # A body within the message limit cannot have carried an oversized message: measure only in larger ones.
    measure = len(await request.body()) > settings.max_message_bytes
    for i, msg in enumerate(body["batch"]):
        if isinstance(msg, dict):
            size = len(json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()) if measure else 0
            if size > settings.max_message_bytes:
                oversized[i] = size
                messages.append(None)
                continue
            if envelope_context:
                msg = {**msg, "context": {**envelope_context, **(msg.get("context") or {})}}
            if "sentAt" in body and "sentAt" not in msg:
                msg = {**msg, "sentAt": body["sentAt"]}
        messages.append(msg)
    keep = [m for i, m in enumerate(messages) if i not in oversized]
    index_map = [i for i in range(len(messages)) if i not in oversized]
    result = await _writer(request).submit(keep)
    rejected = [{"index": index_map[r.index], "errors": [e.model_dump() for e in r.errors]} for r in result.rejected]
    rejected += [{"index": i, "errors": [{"field": "", "reason": f"message of {n} bytes exceeds the limit of "
                                                                 f"{settings.max_message_bytes} bytes"}]}
                 for i, n in oversized.items()]
    rejected.sort(key=lambda r: r["index"])
    return JSONResponse({"success": not rejected, "accepted": result.accepted, "duplicates": result.duplicates,
                         "rejected": rejected, "warnings": result.warnings})
