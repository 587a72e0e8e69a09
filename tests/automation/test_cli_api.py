"""emma tactics ... and emma customers show with the journal; the admin API."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from emma.app import create_app
from emma.auth import service as auth
from emma.cli.main import app as cli
from emma.config import Settings, get_settings
from emma.db import session_scope


def _cli(monkeypatch, db_url, *args):
    monkeypatch.setenv("EMMA_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        get_settings.cache_clear()


def test_tactics_commands(world, db_url, monkeypatch, tmp_path):
    out = _cli(monkeypatch, db_url, "tactics", "list", "--json")
    rows = {r["id"]: r for r in json.loads(out.output)}
    assert rows["abandoned_cart"]["enabled"] and not rows["win_back"]["enabled"]
    assert rows["win_back"]["missing"] == ["churn_probability"]
    refused = _cli(monkeypatch, db_url, "tactics", "enable", "win_back")
    assert refused.exit_code == 1 and "churn_probability" in refused.output
    assert _cli(monkeypatch, db_url, "tactics", "enable", "win_back", "--force").exit_code == 0
    assert _cli(monkeypatch, db_url, "tactics", "disable", "abandoned_cart").exit_code == 0
    shown = _cli(monkeypatch, db_url, "tactics", "show", "abandoned_cart")
    assert shown.exit_code == 0 and "wait_for_event" in shown.output
    # A copy with a shorter idle time; the original stays as it is.
    edited = shown.output.split("\n", 1)[1].replace("timeout: 1h", "timeout: 30m")
    (tmp_path / "mine.yaml").write_text(edited, encoding="utf-8")
    copied = _cli(monkeypatch, db_url, "tactics", "copy", "abandoned_cart", "my_cart", "--from",
                  str(tmp_path / "mine.yaml"))
    assert copied.exit_code == 0, copied.output
    rows = {r["id"]: r for r in json.loads(_cli(monkeypatch, db_url, "tactics", "list", "--json").output)}
    assert rows["my_cart"]["source"] == "copy" and not rows["my_cart"]["enabled"]
    assert rows["win_back"]["enabled"] and not rows["abandoned_cart"]["enabled"]
    assert _cli(monkeypatch, db_url, "tactics", "copy", "abandoned_cart", "my_cart").exit_code == 1
    # The copy's scenario now fails: its email comes after 30 minutes, the expectation says 1 h 20 min.
    tested = _cli(monkeypatch, db_url, "tactics", "test", "my_cart")
    assert tested.exit_code == 1 and "expected at +01:20" in tested.output
    ok = _cli(monkeypatch, db_url, "tactics", "test", "abandoned_cart")
    assert ok.exit_code == 0 and "cart_abandoned" in ok.output and "all expectations hold" in ok.output
    assert _cli(monkeypatch, db_url, "tactics", "show", "nope").exit_code == 1


def test_journal_in_customer_view_and_api(world, db_url, monkeypatch):
    world.tactic("abandoned_cart", holdout=0.0)
    cid = world.customer("c-1")
    world.track("c-1", "Product Added", cart_id="cart-9", sku="K-1")
    world.tick()
    shown = _cli(monkeypatch, db_url, "customers", "show", "c-1", "--json")
    view = json.loads(shown.output)
    assert view["automation"]["runs"][0]["key"] == "cart-9"
    assert any("entered abandoned_cart" in s["reason"] for s in view["automation"]["journal"])
    table = _cli(monkeypatch, db_url, "customers", "show", "c-1")
    assert "tactics (journal)" in table.output and "abandoned_cart" in table.output
    with session_scope(world.sessions) as s:
        admin = auth.create_key(session=s, kind="admin")
    client = TestClient(create_app(Settings(database_url=db_url, worker_embedded=False)))
    r = client.get("/v1/automation/customers/c-1/journal", auth=(admin, ""))
    assert r.status_code == 200 and r.json()["customer_id"] == cid
    assert r.json()["journal"][0]["inputs"]["event"] == "Product Added"
    assert client.get("/v1/automation/customers/nobody/journal", auth=(admin, "")).status_code == 404
    assert client.get("/v1/automation/tactics", auth=(admin, "")).status_code == 200
    assert client.post("/v1/automation/tactics/win_back/enable", auth=(admin, "")).status_code == 409
    assert client.post("/v1/automation/tactics/welcome/disable", auth=(admin, "")).json()["enabled"] is False
