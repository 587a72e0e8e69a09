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
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    assert srv.started, "server did not start within 60 s"
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


def test_more_bad_bodies_get_field_and_reason(server):
    base, write, _ = server
    post = lambda path, **kw: httpx.post(f"{base}{path}", auth=(write, ""), **kw)  # noqa: E731
    r = post("/v1/track", json=[{"userId": "u", "event": "X"}])
    assert r.status_code == 400 and r.json()["errors"] == [{"field": "body", "reason": "must be a JSON object"}]
    r = post("/v1/track", json={"type": "identify", "userId": "u"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "type"
    r = post("/v1/track", content=b'{"userId": "\xff"}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["errors"][0]["reason"]
    r = post("/v1/track", json={"userId": "u", "event": "X", "timestamp": "2999-01-01T00:00:00Z"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "timestamp"
    r = post("/v1/identify", json={"userId": "u", "traits": {"birthday": "31.02.1990"}})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "traits.birthday"
    r = post("/v1/batch", json={"batch": []})
    assert r.status_code == 200 and r.json()["accepted"] == 0
    r = post("/v1/batch", json={"batch": ["x", {"type": "nope", "userId": "u"}]})
    assert [x["index"] for x in r.json()["rejected"]] == [0, 1]


def test_identify_merge_and_track_in_one_batch(server, session_factory):
    base, write, _ = server
    from emma.orders.models import Cart, Order
    from emma.profiles.models import MergeLog

    batch = [
        {"type": "page", "anonymousId": "dev", "name": "Home", "messageId": "1"},
        {"type": "track", "anonymousId": "dev", "event": "Product Added", "messageId": "2",
         "properties": {"sku": "A", "price": 5, "cart_id": "c-dev"}},
        {"type": "identify", "userId": "known", "traits": {"email": "k@x.de"}, "messageId": "3"},
        {"type": "identify", "userId": "known", "anonymousId": "dev", "messageId": "4"},  # merges dev into known
        {"type": "track", "anonymousId": "dev", "event": "Order Completed", "messageId": "5",
         "properties": {"order_id": "o-1", "cart_id": "c-dev", "products": [{"sku": "A", "price": 5}]}},
    ]
    r = httpx.post(f"{base}/v1/batch", auth=(write, ""), json={"batch": batch})
    assert r.status_code == 200 and r.json()["accepted"] == 5
    with session_factory() as s:
        known = s.scalar(select(Customer).where(Customer.external_id == "known"))
        assert {e.message_id for e in s.scalars(select(Event).where(Event.customer_id == known.id))} == {
            "1", "2", "3", "4", "5"}
        assert s.scalar(select(Cart.customer_id)) == known.id and s.scalar(select(Cart.status)) == "ordered"
        assert s.scalar(select(Order.customer_id)) == known.id
        assert s.scalar(select(func.count()).select_from(MergeLog)) == 1
        live = s.scalar(select(func.count()).select_from(Customer).where(Customer.merged_into_id.is_(None)))
        assert live == 1


def test_concurrent_batches_with_overlapping_message_ids(server, session_factory):
    """Resends race each other (retrying clients): every message lands once, none is lost."""
    base, write, _ = server

    def batch(k: int) -> list[dict]:  # type: ignore[type-arg]
        # batches k and k+1 share half their messages; users overlap, so customers are created concurrently
        ids = range(k * 20, k * 20 + 40)
        return [{"type": "track", "userId": f"u{i % 13}", "anonymousId": f"a{i % 7}", "event": "Product Added",
                 "messageId": f"m{i}", "properties": {"sku": f"S{i % 5}", "price": 1, "cart_id": f"c{i % 13}"}}
                for i in ids]

    def send(k: int) -> tuple[int, int]:
        with httpx.Client(auth=(write, ""), timeout=60) as c:
            body = c.post(f"{base}/v1/batch", json={"batch": batch(k)}).json()
            return body["accepted"], body["duplicates"]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(send, [k for k in range(8) for _ in range(2)]))
    expected = {f"m{i}" for i in range(0, 8 * 20 + 20)}
    with session_factory() as s:
        stored = list(s.scalars(select(Event.message_id)))
        assert len(stored) == len(set(stored)) and set(stored) == expected
        assert sum(a for a, _ in results) == len(expected)
        assert sum(a + d for a, d in results) == 16 * 40
        known = s.scalar(select(func.count()).select_from(Customer).where(Customer.external_id.is_not(None)))
        assert known == 13
        from emma.orders.models import CartItem

        # every Product Added landed exactly once: the cart quantities add up to the number of messages
        assert s.scalar(select(func.sum(CartItem.quantity))) == len(expected)


def test_concurrent_single_tracks_are_committed_together_each_exactly_once(server, session_factory):
    # Many /v1/track requests at once share transactions (group commit); each is answered for itself.
    import asyncio

    base, write, _ = server
    good = [{"userId": f"g{i % 7}", "event": "Product Viewed", "properties": {"sku": f"S{i}"}, "messageId": f"gc-{i}"}
            for i in range(60)]
    resent = [dict(m) for m in good[:10]]  # the same messageIds again, in the same burst
    new_visitors = [{"anonymousId": f"anon-gc-{i}", "event": "Page Shown", "messageId": f"gc-anon-{i}"}
                    for i in range(20)]
    bad = [{"userId": "g1", "messageId": "gc-bad"}, {"userId": "g1", "event": "X", "timestamp": "3000-01-01T00:00:00Z",
                                                     "messageId": "gc-future"}]
    bodies = good + resent + new_visitors + bad

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, auth=(write, ""), timeout=30) as client:
            return await asyncio.gather(*(client.post("/v1/track", json=b) for b in bodies))

    answers = asyncio.run(send())
    by_id = {b["messageId"]: r for b, r in zip(bodies, answers, strict=True)}
    assert answers[-2].status_code == 400 and answers[-2].json()["errors"][0]["field"] == "event"
    assert answers[-1].status_code == 400 and answers[-1].json()["errors"][0]["field"] == "timestamp"
    assert all(r.status_code == 200 and r.json()["success"] for r in answers[:-2]), [r.text for r in answers]
    # Of each resent pair exactly one landed and the other was answered as a duplicate.
    for m in good[:10]:
        pair = [r.json()["duplicate"] for b, r in zip(bodies, answers, strict=True) if b["messageId"] == m["messageId"]]
        assert sorted(pair) == [False, True]
    assert all(by_id[m["messageId"]].json()["duplicate"] is False for m in good[10:] + new_visitors)
    with session_factory() as s:
        rows = s.execute(select(Event.message_id, Event.customer_id)).all()
        assert sorted(mid for mid, _ in rows) == sorted({b["messageId"] for b in good + new_visitors})
        # seven known customers and twenty new anonymous ones, each created once
        assert s.scalar(select(func.count()).select_from(Customer)) == 27
        assert len({cid for mid, cid in rows if mid.startswith("gc-anon-")}) == 20
        assert s.scalar(select(func.count()).select_from(Identity).where(Identity.kind == "anonymous_id")) == 20
    again = httpx.post(f"{base}/v1/track", auth=(write, ""), json=good[0])
    assert again.status_code == 200 and again.json()["duplicate"] is True
