"""The ingestion fast path (an ASGI middleware) answers exactly as the FastAPI routes in the OpenAPI docs do."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from emma.app import create_app
from emma.auth import service as auth
from emma.config import Settings
from emma.db import make_engine, make_sessionmaker, upgrade
from emma.ingest import router as ingest_router


def _app(tmp_path: Path, name: str, **settings: Any) -> tuple[Any, str, str]:
    url = f"sqlite:///{tmp_path / name}.db"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        write, admin = auth.create_key(session=s, kind="write"), auth.create_key(session=s, kind="admin")
        s.commit()
    engine.dispose()
    return create_app(Settings(database_url=url, **settings)), write, admin


def _requests(write: str, admin: str) -> list[dict[str, Any]]:
    track = {"userId": "u1", "event": "Product Viewed", "properties": {"sku": "A"}, "messageId": "m1"}
    big = {"userId": "u1", "event": "X", "properties": {"blob": "x" * 40_000}}
    batch = {"batch": [
        {"type": "track", "userId": "u2", "event": "Product Added", "properties": {"sku": "B", "quantity": 2},
         "messageId": "b1"},
        {"type": "track", "userId": "u2", "event": "Product Added", "properties": {"sku": "B", "quantity": 0}},
        {"type": "identify", "userId": "u2", "traits": {"email": "u2@example.com"}, "messageId": "b2"},
        "not an object",
        {"type": "page", "userId": "u3", "name": "Home", "properties": {"blob": "y" * 33_000}},
        {"type": "alias", "userId": "u2"},
    ], "context": {"library": {"name": "t"}}, "sentAt": "2025-01-01T00:00:00Z"}
    basic = (write, "")
    return [
        {"path": "/v1/track", "json": track, "auth": basic},
        {"path": "/v1/track", "json": track, "auth": basic},  # a resend: a duplicate
        {"path": "/v1/track", "json": {**track, "messageId": "m2"}, "headers": {"X-Write-Key": write}},
        {"path": "/v1/track", "json": {**track, "messageId": "m3"}, "headers": {"Authorization": f"Bearer {admin}"}},
        {"path": "/v1/track", "json": track},  # no key
        {"path": "/v1/track", "json": track, "auth": ("wrong", "")},
        {"path": "/v1/track", "content": b"{not json", "auth": basic},
        {"path": "/v1/track", "content": b"[1, 2]", "auth": basic},
        {"path": "/v1/track", "json": {"userId": "u1"}, "auth": basic},
        {"path": "/v1/track", "json": {"type": "page", "userId": "u1", "event": "X"}, "auth": basic},
        {"path": "/v1/track", "json": big, "auth": basic},
        {"path": "/v1/identify", "json": {"userId": "u1", "traits": {"email": "u1@example.com", "birthday": "x"}},
         "auth": basic},
        {"path": "/v1/identify", "json": {"anonymousId": "a1", "traits": {"firstName": "Anna"}, "messageId": "i1"},
         "auth": basic},
        {"path": "/v1/alias", "json": {"userId": "u1", "previousId": "a1", "messageId": "al1"}, "auth": basic},
        {"path": "/v1/page", "json": {"userId": "u1", "name": "Home", "messageId": "p1"}, "auth": basic},
        {"path": "/v1/screen", "json": {"userId": "u1", "name": "Home", "messageId": "s1"}, "auth": basic},
        {"path": "/v1/group", "json": {"userId": "u1", "groupId": "shop-1", "messageId": "g1"}, "auth": basic},
        {"path": "/v1/batch", "json": batch, "auth": basic},
        {"path": "/v1/batch", "json": batch, "auth": basic},  # resent: duplicates, the same rejects
        {"path": "/v1/batch", "json": {"nope": 1}, "auth": basic},
        {"path": "/v1/batch", "json": {"batch": [{"userId": "u", "event": "x" * 1000}] * 600}, "auth": basic},
    ]


async def _send_all(app: Any, cases: list[dict[str, Any]]) -> list[tuple[int, Any, str | None]]:
    out = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emma") as client:
        for case in cases:
            r = await client.post(case["path"], json=case.get("json"), content=case.get("content"),
                                  auth=case.get("auth"), headers=case.get("headers"))
            out.append((r.status_code, r.json(), r.headers.get("www-authenticate")))
    return out


def test_fast_path_and_the_routes_give_the_same_answers(tmp_path, monkeypatch):
    fast_app, write, admin = _app(tmp_path, "fast")
    routed_app, _, _ = _app(tmp_path, "routed")

    # The same app without the fast path (the middleware stack is built on the first request).
    routed_app.user_middleware = [m for m in routed_app.user_middleware if m.cls is not ingest_router.FastPath]
    # Each database made its own keys: the routed app knows the fast app's ones (a cache entry never expires).
    routed_app.state.key_cache = {write: ("write", float("inf")), admin: ("admin", float("inf"))}
    cases = _requests(write, admin)
    routed = asyncio.run(_send_all(routed_app, cases))

    def no_route(*_: Any, **__: Any) -> None:
        raise AssertionError("the fast path should have answered")

    monkeypatch.setattr(ingest_router, "JSONResponse", no_route)
    fast = asyncio.run(_send_all(fast_app, cases))
    assert fast == routed
    statuses = [status for status, _, _ in fast]
    assert statuses == [200, 200, 200, 200, 401, 401, 400, 400, 400, 400, 413, 400, 200, 200, 200, 200, 200,
                        200, 200, 400, 413]
    assert fast[1][1]["duplicate"] is True and fast[4][2] == "Basic"
    first, again = fast[17][1], fast[18][1]
    assert (first["accepted"], first["duplicates"], again["accepted"], again["duplicates"]) == (2, 0, 0, 2)
    assert [r["index"] for r in first["rejected"]] == [1, 3, 4, 5] == [r["index"] for r in again["rejected"]]
    assert "exceeds the limit of 32768 bytes" in json.dumps(first["rejected"][2])


def test_fast_path_answers_carry_the_cors_headers(tmp_path):
    app, write, _ = _app(tmp_path, "cors", cors_origins=["https://shop.example"])

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emma") as client:
            preflight = await client.options("/v1/track", headers={
                "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"})
            posted = await client.post("/v1/track", auth=(write, ""), headers={"Origin": "https://shop.example"},
                                       json={"userId": "u1", "event": "Newsletter Opened"})
            return preflight, posted

    preflight, posted = asyncio.run(run())
    assert preflight.status_code == 200
    assert posted.status_code == 200 and posted.json()["success"] is True
    assert posted.headers["access-control-allow-origin"] == "https://shop.example"


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_other_methods_still_reach_fastapi(tmp_path, path):
    app, _, _ = _app(tmp_path, "get")

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emma") as client:
            return await client.get(path)

    assert asyncio.run(run()).status_code == 405


def test_a_serving_process_collects_garbage_less_often(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from emma import app as app_module

    url = f"sqlite:///{tmp_path / 'gc.db'}"
    upgrade(url)
    monkeypatch.setattr(app_module, "_tuned", False)  # once per process: this test process may have been
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(700, 10, 10)
    try:
        with TestClient(create_app(Settings(database_url=url, worker_embedded=False))):
            assert gc.get_threshold() == app_module.GC_THRESHOLD
            assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*threshold)
        sys.setswitchinterval(interval)
