"""The Segment-compatible HTTP API over real HTTP (uvicorn on 127.0.0.1), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from emma.app import create_app
from emma.auth import service as auth
from emma.config import Settings
from emma.ingest.models import Event
from emma.profiles.models import Customer, Identity


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(db_url, session_factory) -> Iterator[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        write, admin = auth.create_key(session=s, kind="write"), auth.create_key(session=s, kind="admin")
        s.commit()
    port = _free_port()
    config = uvicorn.Config(create_app(Settings(database_url=db_url)), host="127.0.0.1", port=port,
                            log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", write, admin
    srv.should_exit = True
    thread.join(5)


def test_track_with_write_key_as_basic_username(server, session_factory):
    base, write, _ = server
    r = httpx.post(f"{base}/v1/track", auth=(write, ""), json={
        "userId": "u1", "event": "Product Viewed", "properties": {"sku": "A"}, "messageId": "m1"})
    assert r.status_code == 200 and r.json()["success"] is True
    again = httpx.post(f"{base}/v1/track", auth=(write, ""), json={
        "userId": "u1", "event": "Product Viewed", "properties": {"sku": "A"}, "messageId": "m1"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 1


def test_auth_is_required_and_write_key_cannot_read(server):
    base, write, admin = server
    assert httpx.post(f"{base}/v1/track", json={"userId": "u", "event": "X"}).status_code == 401
    assert httpx.post(f"{base}/v1/track", auth=("wrong", ""), json={"userId": "u", "event": "X"}).status_code == 401
    httpx.post(f"{base}/v1/identify", auth=(write, ""), json={"userId": "u", "traits": {"email": "u@x.de"}})
    assert httpx.get(f"{base}/v1/customers/u", auth=(write, "")).status_code == 403
    r = httpx.get(f"{base}/v1/customers/u", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.json()["profile"]["email"] == "u@x.de"
    assert httpx.get(f"{base}/v1/customers/nobody", auth=(admin, "")).status_code == 404


def test_bad_input_gets_field_and_reason(server):
    base, write, _ = server
    r = httpx.post(f"{base}/v1/track", auth=(write, ""), content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "body"
    r = httpx.post(f"{base}/v1/track", auth=(write, ""), json={"userId": "u"})
    assert r.status_code == 400 and r.json()["errors"] == [
        {"field": "event", "reason": "required for track and must not be empty"}]
    r = httpx.post(f"{base}/v1/track", auth=(write, ""), json={"userId": "u", "event": "X", "properties": [1]})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "properties"
    big = {"userId": "u", "event": "X", "properties": {"blob": "x" * 40_000}}
    r = httpx.post(f"{base}/v1/track", auth=(write, ""), json=big)
    assert r.status_code == 413 and "32768" in r.json()["errors"][0]["reason"]


def test_batch_lands_valid_messages_and_lists_rejected(server, session_factory):
    base, write, _ = server
    batch = [{"type": "track", "userId": f"u{i}", "event": "Product Viewed", "properties": {"sku": "A"},
              "messageId": f"b{i}"} for i in range(5)]
    batch.insert(2, {"type": "track", "userId": "u", "event": "Order Completed", "properties": {}})
    batch.append({"type": "track", "userId": "u", "event": "Big", "properties": {"x": "y" * 33_000}})
    r = httpx.post(f"{base}/v1/batch", auth=(write, ""), json={"batch": batch, "context": {"library": {"name": "t"}}})
    body = r.json()
    assert r.status_code == 200 and body["accepted"] == 5
    assert [x["index"] for x in body["rejected"]] == [2, 6]
    assert body["rejected"][0]["errors"][0]["field"] == "properties.order_id"
    with session_factory() as s:
        ctx = s.scalar(select(Event.context).where(Event.message_id == "b0"))
        assert ctx["library"]["name"] == "t"  # envelope context is merged into each message
    huge = {"batch": [{"type": "track", "userId": "u", "event": "X", "properties": {"p": "z" * 30_000},
                       "messageId": str(i)} for i in range(20)]}
    assert httpx.post(f"{base}/v1/batch", auth=(write, ""), json=huge).status_code == 413
    assert httpx.post(f"{base}/v1/batch", auth=(write, ""), json={"nope": 1}).json()["errors"][0]["field"] == "batch"


def test_concurrent_identifies_of_one_anonymous_id_make_one_customer(server, session_factory):
    base, write, _ = server

    def send(i: int) -> int:
        with httpx.Client(auth=(write, "")) as c:
            c.post(f"{base}/v1/page", json={"anonymousId": "shared-anon", "name": "Home", "messageId": f"p{i}"})
            return c.post(f"{base}/v1/identify", json={"userId": "same-user", "anonymousId": "shared-anon",
                                                       "messageId": f"i{i}"}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(send, range(16)))
    assert codes == [200] * 16
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 32
        live = s.scalar(select(func.count()).select_from(Customer).where(Customer.merged_into_id.is_(None)))
        assert live == 1
        assert s.scalar(select(func.count()).select_from(Identity).where(Identity.value == "shared-anon")) == 1
        owner = s.scalar(select(Identity.customer_id).where(Identity.value == "shared-anon"))
        assert s.get(Customer, owner).external_id == "same-user"
    json.dumps(codes)
