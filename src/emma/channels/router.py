"""Public tracking endpoints: the open pixel, the click redirect, SMS short links and push taps (signed, no API
key)."""

from __future__ import annotations

import base64
import contextlib

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from emma.channels import service
from emma.ingest.jobs import run_with_retry
from emma.signing import InvalidToken

router = APIRouter(tags=["tracking"])

_PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_CACHE = {"Cache-Control": "no-store, max-age=0"}


@router.get("/t/o/{token}.gif", include_in_schema=False)
async def opened(token: str, request: Request) -> Response:
    """The open pixel: always a GIF (a forged token is simply not recorded)."""
    settings = request.app.state.settings
    with contextlib.suppress(InvalidToken):
        now = request.app.state.clock.now()
        await run_with_retry(request.app, lambda s: service.track_open(session=s, token=token, settings=settings,
                                                                        now=now))
    return Response(_PIXEL, media_type="image/gif", headers=_NO_CACHE)


@router.get("/t/c/{token}", include_in_schema=False)
async def clicked(token: str, request: Request) -> Response:
    """Record the click and redirect to the link's target, which only a genuine token can name."""
    settings = request.app.state.settings
    try:
        url = await run_with_retry(request.app, lambda s: service.track_click(
            session=s, token=token, settings=settings, now=request.app.state.clock.now()))
    except InvalidToken as exc:
        raise HTTPException(404, detail=[{"field": "token", "reason": str(exc)}]) from exc
    return RedirectResponse(url, status_code=302, headers=_NO_CACHE)


async def _short(kind: str, code: str, request: Request) -> str | None:
    settings = request.app.state.settings
    try:
        return await run_with_retry(request.app, lambda s: service.track_short(
            session=s, kind=kind, code=code, settings=settings, now=request.app.state.clock.now()))
    except InvalidToken as exc:
        raise HTTPException(404, detail=[{"field": "code", "reason": str(exc)}]) from exc


@router.get("/t/s/{code}", include_in_schema=False)
async def sms_link(code: str, request: Request) -> Response:
    """A short link in an SMS: record the click and redirect to the link's target."""
    url = await _short("sms", code, request)
    if url is None:
        raise HTTPException(404, detail=[{"field": "code", "reason": "no such link"}])
    return RedirectResponse(url, status_code=302, headers=_NO_CACHE)


@router.api_route("/t/p/{code}", methods=["GET", "POST"], include_in_schema=False)
async def push_tap(code: str, request: Request) -> Response:
    """A push message was tapped (the app opens or calls the message's tap_url): record it; a GET is
    redirected to the message's deep link when it has one."""
    url = await _short("push", code, request)
    if request.method == "GET" and url is not None:
        return RedirectResponse(url, status_code=302, headers=_NO_CACHE)
    return Response(status_code=204, headers=_NO_CACHE)
