"""API keys: a write key (ingestion only) and an admin key (everything else), stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from emma.auth.models import ApiKey
from emma.db import utcnow

KINDS = ("write", "admin")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(*, session: Session, kind: str, name: str | None = None) -> str:
    """Create a key and return it in clear text; only its hash is stored."""
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {', '.join(KINDS)}")
    key = f"emma_{kind[0]}_" + secrets.token_urlsafe(24)
    session.add(ApiKey(kind=kind, name=name, prefix=key[:10], key_hash=_hash(key), created_at=utcnow()))
    return key


def verify(*, session: Session, key: str | None, kinds: tuple[str, ...]) -> ApiKey | None:
    """The active key record if key is valid for one of kinds (admin keys may also ingest)."""
    if not key:
        return None
    found = session.scalar(select(ApiKey).where(ApiKey.key_hash == _hash(key), ApiKey.revoked_at.is_(None)))
    if found is None or found.kind not in kinds:
        return None
    return found


def revoke(*, session: Session, prefix: str) -> int:
    """Revoke every key with this prefix; returns how many."""
    keys = list(session.scalars(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))))
    for k in keys:
        k.revoked_at = utcnow()
    return len(keys)


def list_keys(*, session: Session) -> list[ApiKey]:
    """All keys (hashes only)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
