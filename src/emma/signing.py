"""Signed, expiring tokens for links in messages (HMAC-SHA256 over the payload with settings.secret_key)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

from emma.db import utcnow


class InvalidToken(ValueError):
    """The token was forged, truncated or made for another purpose."""


class ExpiredToken(InvalidToken):
    """The token was genuine but is past its expiry."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, purpose: str, body: str) -> bytes:
    # The purpose is part of the MAC so an open-pixel token cannot be replayed as an unsubscribe token.
    return hmac.new(secret.encode(), f"{purpose}.{body}".encode(), hashlib.sha256).digest()


def sign(*, purpose: str, data: dict[str, Any], secret: str, ttl: dt.timedelta | None = None,
         now: dt.datetime | None = None) -> str:
    """A URL-safe token carrying data for one purpose, valid for ttl (forever when None)."""
    claims = dict(data)
    if ttl is not None:
        claims["exp"] = int(((now or utcnow()) + ttl).timestamp())
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_b64(_mac(secret, purpose, body))}"


def unsign(token: str, *, purpose: str, secret: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """The data of a genuine, unexpired token for purpose; InvalidToken / ExpiredToken otherwise."""
    body, _, sig = token.partition(".")
    try:
        given = _unb64(sig)
    except ValueError as exc:
        raise InvalidToken("malformed token") from exc
    if not body or not hmac.compare_digest(given, _mac(secret, purpose, body)):
        raise InvalidToken("invalid signature")
    try:
        claims = json.loads(_unb64(body))
    except ValueError as exc:
        raise InvalidToken("malformed token") from exc
    if not isinstance(claims, dict):
        raise InvalidToken("malformed token")
    exp = claims.pop("exp", None)
    if exp is not None and (now or utcnow()).timestamp() > exp:
        raise ExpiredToken("link has expired")
    return claims
