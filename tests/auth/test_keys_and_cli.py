"""API keys are stored hashed; the CLI creates keys and shows customers."""

from __future__ import annotations

import json

from sqlalchemy import select
from typer.testing import CliRunner

from emma.auth import service as auth
from emma.auth.models import ApiKey
from emma.cli.main import app
from emma.config import get_settings
from emma.ingest import service as ingest


def test_keys_are_hashed_and_revocable(session):
    key = auth.create_key(session=session, kind="write")
    session.commit()
    stored = session.scalar(select(ApiKey))
    assert key not in (stored.key_hash, stored.prefix) and len(stored.key_hash) == 64
    assert auth.verify(session=session, key=key, kinds=("write",)) is not None
    assert auth.verify(session=session, key=key, kinds=("admin",)) is None
    assert auth.verify(session=session, key=key + "x", kinds=("write",)) is None
    assert auth.revoke(session=session, prefix=stored.prefix) == 1
    assert auth.verify(session=session, key=key, kinds=("write",)) is None


def test_cli_keys_and_customers_show(db_url, session_factory, monkeypatch):
    monkeypatch.setenv("EMMA_DATABASE_URL", db_url)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        out = runner.invoke(app, ["keys", "create", "admin"])
        assert out.exit_code == 0, out.output
        key = out.output.strip().splitlines()[-1]
        with session_factory() as s:
            assert auth.verify(session=s, key=key, kinds=("admin",)) is not None
            ingest.ingest(session=s, raw_messages=[
                {"type": "identify", "userId": "k-1", "traits": {"email": "k@x.de", "firstName": "Karl"},
                 "messageId": "1", "timestamp": "2026-05-01T10:00:00Z"},
                {"type": "track", "userId": "k-1", "event": "Order Completed", "messageId": "2",
                 "timestamp": "2026-05-01T10:05:00Z",
                 "properties": {"order_id": "o1", "products": [{"sku": "A", "price": 2.5, "quantity": 2}]}},
            ])
            s.commit()
        shown = runner.invoke(app, ["customers", "show", "k@x.de", "--json"])
        assert shown.exit_code == 0, shown.output
        view = json.loads(shown.output)
        assert view["profile"]["first_name"] == "Karl"
        assert view["orders"][0]["lines"] == [{"sku": "A", "quantity": 2, "unit_price": 2.5}]
        assert {i["kind"] for i in view["identities"]} == {"user_id", "email"}
        pretty = runner.invoke(app, ["customers", "show", "k-1"])
        assert pretty.exit_code == 0 and "Karl" in pretty.output and "o1" in pretty.output
        missing = runner.invoke(app, ["customers", "show", "nobody"])
        assert missing.exit_code == 1 and "not found" in missing.output
        bad = runner.invoke(app, ["keys", "create", "root"])
        assert bad.exit_code == 2
    finally:
        get_settings.cache_clear()
