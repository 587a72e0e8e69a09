"""FastAPI dependencies: write key as HTTP Basic username (Segment), admin key as Bearer or Basic."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request
from sqlalchemy.orm import Session

from emma.auth import service as auth

_CACHE_SECONDS = 30.0


def key_from(authorization: str, write_key: str | None = None) -> str | None:
    """The API key of a request: its Authorization header (Basic username or Bearer), else X-Write-Key."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            user, _, _pw = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user or None
    if scheme.lower() == "bearer" and value:
        return value.strip()
    # Segment also accepts the write key in the body; our routers pass it on.
    return write_key


def check(app: Any, key: str | None, kinds: tuple[str, ...]) -> str:
    """The kind of key if it may do what needs one of kinds; HTTPException 401/403 otherwise.

    A known key is a dict look-up (cached for _CACHE_SECONDS): cheap enough for the event loop.
    """
    if key is None:
        raise HTTPException(401, detail=[{"field": "authorization",
                                          "reason": "missing API key (HTTP Basic username or Bearer)"}],
                            headers={"WWW-Authenticate": "Basic"})
    cache: dict[str, tuple[str, float]] = app.state.key_cache
    hit = cache.get(key)
    now = time.monotonic()
    if hit is None or now - hit[1] > _CACHE_SECONDS:
        session: Session = app.state.sessions()
        try:
            record = auth.verify(session=session, key=key, kinds=auth.KINDS)
        finally:
            session.close()
        if record is None:
            cache.pop(key, None)
            raise HTTPException(401, detail=[{"field": "authorization", "reason": "invalid or revoked API key"}])
        hit = (record.kind, now)
        cache[key] = hit
    if hit[0] not in kinds:
        raise HTTPException(403, detail=[{"field": "authorization",
                                          "reason": f"a {hit[0]} key may not do this; needs {'/'.join(kinds)}"}])
    return hit[0]


def require(*kinds: str) -> Callable[[Request], str]:
    """A dependency that lets a request through with a valid key of one of kinds."""

    def dependency(request: Request) -> str:
        key = key_from(request.headers.get("authorization", ""), request.headers.get("x-write-key"))
        return check(request.app, key, kinds)

    return dependency


write_or_admin = require("write", "admin")
admin_only = require("admin")
