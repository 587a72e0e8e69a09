"""`emma segments` and /v1/segments, end to end against a real database."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from emma.app import create_app
from emma.auth import service as auth
from emma.cli import common
from emma.cli.main import app as cli
from emma.config import Settings, get_settings

RULE_YAML = """\
# Gartenfreunde aus Deutschland mit E-Mail-Einwilligung
all:
  - country: DE
  - consent.email_marketing: granted
  - bought: {category: Garten}
    within_days: 365
"""


def test_cli(shop, session, db_url, tmp_path, monkeypatch):
    shop.product("SPATEN", "Garten > Werkzeug")
    a, b = shop.customer(country="DE", external_id="kunde-a"), shop.customer(country="DE")
    shop.consent(a, "email_marketing", "granted")
    shop.consent(b, "email_marketing", "granted")
    now = dt.datetime.now(dt.UTC)
    shop.order(a, 0, "19.90", ("SPATEN",))
    session.commit()
    rule = tmp_path / "garten.yaml"
    rule.write_text(RULE_YAML, encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("all:\n  - country: DE\n  - event: Product Viewed\n    within_days: 0\n", encoding="utf-8")
    monkeypatch.setenv("EMMA_DATABASE_URL", db_url)
    monkeypatch.setattr(common.console, "width", 200)
    monkeypatch.setattr(common.err_console, "width", 200)
    get_settings.cache_clear()
    run = CliRunner().invoke
    try:
        out = run(cli, ["segments", "create", "gartenfreunde", "--file", str(rule), "--name", "Gartenfreunde"])
        assert out.exit_code == 0, out.output
        out = run(cli, ["segments", "create", "kaputt", "--file", str(bad)])
        assert out.exit_code == 1 and "rule.all[1].within_days: must be a positive integer" in out.output
        assert run(cli, ["segments", "create", "gartenfreunde", "--file", str(rule)]).exit_code == 1
        out = run(cli, ["segments", "create", "gartenfreunde", "--replace", "--file", str(bad)])
        assert out.exit_code == 1 and "rule.all[1].within_days: must be a positive integer" in out.output
        broken = tmp_path / "broken.yaml"
        broken.write_text("all:\n  - country: DE\n   - city: Köln\n", encoding="utf-8")
        out = run(cli, ["segments", "create", "kaputt", "--file", str(broken)])
        assert out.exit_code == 1 and f"{broken}:3:" in out.output and "not valid YAML" in out.output
        broken_json = tmp_path / "broken.json"
        broken_json.write_text('{"country": "DE",}', encoding="utf-8")
        out = run(cli, ["segments", "create", "kaputt", "--file", str(broken_json)])
        assert out.exit_code == 1 and "not valid JSON" in out.output
        at = (now + dt.timedelta(minutes=1)).isoformat()
        out = run(cli, ["segments", "count", "gartenfreunde", "--at", at])
        assert out.exit_code == 0 and out.output.strip() == "1"
        out = run(cli, ["segments", "members", "gartenfreunde", "--at", at])
        assert out.output.splitlines() == [f"{a}\tkunde-a"]
        out = run(cli, ["segments", "refresh", "--at", at])
        assert "gartenfreunde: 1 entered" in out.output
        out = run(cli, ["segments", "list"])
        assert "gartenfreunde" in out.output and "Gartenfreunde" in out.output
        out = run(cli, ["segments", "show", "gartenfreunde", "--json"])
        assert '"stored_members": 1' in out.output and '"version": 1' in out.output
        assert run(cli, ["segments", "count", "nichtda"]).exit_code == 1
    finally:
        get_settings.cache_clear()


def test_api(shop, session, db_url):
    a = shop.customer(country="DE")
    b = shop.customer(country="AT")
    admin, write = auth.create_key(session=session, kind="admin"), auth.create_key(session=session, kind="write")
    session.commit()
    client = TestClient(create_app(Settings(database_url=db_url)))
    h = {"Authorization": f"Bearer {admin}"}
    body = {"key": "dach", "name": "DACH", "rule": {"country": {"in": ["DE", "AT", "CH"]}}}
    assert client.post("/v1/segments", json=body, auth=(write, "")).status_code == 403
    r = client.post("/v1/segments", json=body, headers=h)
    assert r.status_code == 201 and r.json()["version"] == 1
    assert client.post("/v1/segments", json=body, headers=h).status_code == 409
    r = client.post("/v1/segments", json={"key": "x", "rule": {"any": [{"country": 1}, {"colour": "rot"}]}},
                    headers=h)
    assert r.status_code == 400
    assert r.json()["errors"] == [
        {"field": "rule.any[0].country.eq", "reason": "must be text, not number"},
        {"field": "rule.any[1].colour", "reason": r.json()["errors"][1]["reason"]}]
    assert r.json()["errors"][1]["reason"].startswith("unknown condition; expected all, any, not")
    r = client.post("/v1/segments", json={"key": "x", "rule": "country = DE"}, headers=h)
    assert r.status_code == 400 and r.json()["errors"] == [{"field": "rule", "reason": "must be a mapping, not text"}]
    r = client.patch("/v1/segments/dach", json={"rule": {"all": []}}, headers=h)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "rule.all"
    assert client.get("/v1/segments/dach", headers=h).json()["version"] == 1  # the bad rule changed nothing
    assert client.get("/v1/segments/dach/count", headers=h).json()["count"] == 2
    page = client.get("/v1/segments/dach/members", params={"limit": 1}, headers=h).json()
    assert page["customer_ids"] == [a] and page["next_after_id"] == a
    page = client.get("/v1/segments/dach/members", params={"limit": 1, "after_id": a}, headers=h).json()
    assert page["customer_ids"] == [b]
    r = client.patch("/v1/segments/dach", json={"rule": {"country": "DE"}}, headers=h)
    assert r.status_code == 200 and r.json()["version"] == 2
    assert client.get("/v1/segments/dach/count", headers=h).json()["count"] == 1
    assert [s["key"] for s in client.get("/v1/segments", headers=h).json()] == ["dach"]
    assert client.delete("/v1/segments/dach", headers=h).status_code == 204
    assert client.get("/v1/segments/dach", headers=h).status_code == 404
