"""Segment-compatible HTTP Tracking API: /v1/track, identify, page, screen, alias, group, batch.

Each endpoint is a FastAPI route (so it is in the OpenAPI docs) whose work is done by `handle`. A shop sends
these by the hundred per second: `FastPath`, an ASGI middleware, answers POSTs to these paths with the same
`handle`, without FastAPI's routing, dependency solving and request objects (for a single /v1/track these
cost more CPU than validating and storing the event, measured).
"""

from __future__ import annotations

import json
from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring as _encode_basestring  # type: ignore[attr-defined]
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from emma.auth.dependencies import check, key_from
from emma.ingest.jobs import GroupWriter
from emma.ingest.schemas import MESSAGE_TYPES

# The key is checked in the event loop, as /v1/decide does: a cached key is a dict look-up, and FastAPI
# would run a (sync) dependency in a worker thread for every request.
router = APIRouter(prefix="/v1", tags=["ingest"])
ENDPOINTS = {f"/v1/{kind}": kind for kind in (*MESSAGE_TYPES, "batch")}
_KEY_KINDS = ("write", "admin")

# (status, JSON body, extra headers)
Answer = tuple[int, dict[str, Any], dict[str, str] | None]


def _error(status: int, field: str, reason: str) -> Answer:
    return status, {"success": False, "errors": [{"field": field, "reason": reason}]}, None


def _writer(app: Any) -> GroupWriter:
    # One per app: concurrent requests share its transactions (group commit).
    writer = getattr(app.state, "ingest_writer", None)
    if writer is None:
        writer = app.state.ingest_writer = GroupWriter(app)
    return writer


def _decode(body: bytes, size: int, limit: int) -> tuple[Any, Answer | None]:
    if size > limit:
        return None, _error(413, "body", f"payload of {size} bytes exceeds the limit of {limit} bytes")
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, _error(400, "body", f"malformed JSON: {exc}")


async def handle(app: Any, kind: str, *, authorization: str, write_key: str | None, body: bytes,
                 size: int) -> Answer:
    """Answer a POST to /v1/{kind}: the key check, the size limit, JSON, then the messages' ingestion.

    size is the body's length; a body over the limit need not be given (b"").
    """
    try:
        check(app, key_from(authorization, write_key), _KEY_KINDS)
    except HTTPException as exc:  # as FastAPI's own handler answers it
        return exc.status_code, {"detail": exc.detail}, exc.headers
    if kind == "batch":
        return await _batch(app, body, size)
    return await _single(app, kind, body, size)


async def _single(app: Any, kind: str, raw: bytes, size: int) -> Answer:
    body, error = _decode(raw, size, app.state.settings.max_message_bytes)
    if error is not None:
        return error
    if not isinstance(body, dict):
        return _error(400, "body", "must be a JSON object")
    body.setdefault("type", kind)
    if body["type"] != kind:
        return _error(400, "type", f"must be {kind!r} on /v1/{kind}")
    result = await _writer(app).submit([body])
    if result.rejected:
        return 400, {"success": False, "errors": [e.model_dump() for e in result.rejected[0].errors]}, None
    return 200, {"success": True, "duplicate": result.duplicates > 0, "warnings": result.warnings}, None


async def _batch(app: Any, raw: bytes, size: int) -> Answer:
    settings = app.state.settings
    body, error = _decode(raw, size, settings.max_batch_bytes)
    if error is not None:
        return error
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        return _error(400, "batch", "required: a list of messages")
    envelope_context = body.get("context") if isinstance(body.get("context"), dict) else {}
    messages: list[Any] = []
    oversized: dict[int, int] = {}
    # A body within the message limit cannot have carried an oversized message: measure only in larger ones.
    measure = size > settings.max_message_bytes
    for i, msg in enumerate(body["batch"]):
        if isinstance(msg, dict):
            n = _size(msg) if measure else 0
            if n > settings.max_message_bytes:
                oversized[i] = n
                messages.append(None)
                continue
            if envelope_context:
                msg = {**msg, "context": {**envelope_context, **(msg.get("context") or {})}}
            if "sentAt" in body and "sentAt" not in msg:
                msg = {**msg, "sentAt": body["sentAt"]}
        messages.append(msg)
    keep = [m for i, m in enumerate(messages) if i not in oversized]
    index_map = [i for i in range(len(messages)) if i not in oversized]
    result = await _writer(app).submit(keep)
    rejected = [{"index": index_map[r.index], "errors": [e.model_dump() for e in r.errors]} for r in result.rejected]
    rejected += [{"index": i, "errors": [{"field": "", "reason": f"message of {n} bytes exceeds the limit of "
                                                                 f"{settings.max_message_bytes} bytes"}]}
                 for i, n in oversized.items()]
    rejected.sort(key=lambda r: r["index"])
    return 200, {"success": not rejected, "accepted": result.accepted, "duplicates": result.duplicates,
                 "rejected": rejected, "warnings": result.warnings}, None


def _route(kind: str, doc: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> JSONResponse:
        body = await request.body()
        status, payload, headers = await handle(
            request.app, kind, authorization=request.headers.get("authorization", ""),
            write_key=request.headers.get("x-write-key"), body=body, size=len(body))
        return JSONResponse(payload, status_code=status, headers=headers)

    endpoint.__name__ = kind
    endpoint.__doc__ = doc
    return endpoint


for _kind in MESSAGE_TYPES:
    router.add_api_route(f"/{_kind}", _route(_kind, f"One Segment {_kind} message (at most 32 KB)."),
                         methods=["POST"], name=_kind)
router.add_api_route("/batch", _route("batch", "A batch envelope (at most 500 KB): valid messages land, invalid "
                                               "ones are listed by index."), methods=["POST"], name="batch")


# The size of a message as json.dumps(msg, separators=(",", ":"), ensure_ascii=False) gives it, with an encoder
# built once instead of per call (half the CPU; a 100-event batch is over the 32 KB at which sizes are measured).
_encode = _c_make_encoder(None, json.JSONEncoder().default, _encode_basestring, None, ":", ",", False, False,
                          True) if _c_make_encoder is not None else None


def _size(msg: dict[str, Any]) -> int:
    if _encode is None:  # pragma: no cover - Python without the C accelerator
        return len(json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode())
    return len("".join(_encode(msg, 0)).encode())


def _render(payload: dict[str, Any]) -> bytes:
    # The bytes JSONResponse renders.
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


class FastPath:
    """ASGI middleware: POSTs to the ingestion endpoints go straight to `handle`; everything else passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = ENDPOINTS.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        settings = app.state.settings
        limit = settings.max_batch_bytes if kind == "batch" else settings.max_message_bytes
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before its body arrived: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:  # an oversized body is counted, not kept
                chunks.append(chunk)
            more = message.get("more_body", False)
        authorization, write_key = "", None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-write-key":
                write_key = value.decode("latin-1")
        status, payload, headers = await handle(app, kind, authorization=authorization, write_key=write_key,
                                                body=b"".join(chunks) if size <= limit else b"", size=size)
        content = _render(payload)
        raw_headers = [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")]
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})
