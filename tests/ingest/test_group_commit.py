"""Group commit: concurrent ingestion requests share one transaction, each keeps its own answer."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from emma.config import Settings
from emma.ingest import service
from emma.ingest.jobs import GroupWriter
from emma.ingest.models import Event


def _writer(db_url, session_factory, opened: list[int], **kw) -> GroupWriter:  # type: ignore[no-untyped-def]
    def sessions():  # type: ignore[no-untyped-def]
        opened.append(1)
        return session_factory()

    lock = asyncio.Lock() if db_url.startswith("sqlite") else None
    app = SimpleNamespace(state=SimpleNamespace(settings=Settings(database_url=db_url), sessions=sessions,
                                                write_lock=lock))
    return GroupWriter(app, **kw)


def _track(i: int) -> dict[str, object]:
    return {"type": "track", "userId": f"u{i % 5}", "event": "Product Viewed", "properties": {"sku": "A"},
            "messageId": f"gw-{i}"}


def test_requests_waiting_together_share_one_transaction(db_url, session_factory):
    opened: list[int] = []

    async def run() -> list[object]:
        writer = _writer(db_url, session_factory, opened)
        return await asyncio.gather(*(writer.submit([_track(i)]) for i in range(30)))

    results = asyncio.run(run())
    assert [(r.accepted, r.duplicates) for r in results] == [(1, 0)] * 30  # type: ignore[attr-defined]
    # All 30 were waiting when the writer started: one transaction, one commit.
    assert len(opened) == 1
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 30


def test_a_group_is_split_by_its_message_limit(db_url, session_factory):
    opened: list[int] = []

    async def run() -> list[object]:
        writer = _writer(db_url, session_factory, opened, max_messages=10)
        return await asyncio.gather(*(writer.submit([_track(i * 4 + j) for j in range(4)]) for i in range(6)))

    results = asyncio.run(run())
    assert all(r.accepted == 4 for r in results)  # type: ignore[attr-defined]
    assert len(opened) == 3  # two requests (8 messages) per transaction


def test_a_failing_request_does_not_fail_the_others(db_url, session_factory, monkeypatch):
    store = service._store

    def failing(session, msgs, *args):  # type: ignore[no-untyped-def]
        if any(m.messageId == "gw-boom" for m in msgs):
            raise RuntimeError("boom")
        return store(session, msgs, *args)

    monkeypatch.setattr(service, "_store", failing)
    opened: list[int] = []

    async def run() -> list[object]:
        writer = _writer(db_url, session_factory, opened)
        boom = {**_track(99), "messageId": "gw-boom"}
        return await asyncio.gather(*(writer.submit([m]) for m in [_track(0), _track(1), boom, _track(2)]),
                                    return_exceptions=True)

    results = asyncio.run(run())
    assert isinstance(results[2], RuntimeError)
    assert [r.accepted for i, r in enumerate(results) if i != 2] == [1, 1, 1]  # type: ignore[attr-defined]
    with session_factory() as s:
        assert sorted(s.scalars(select(Event.message_id))) == ["gw-0", "gw-1", "gw-2"]


@pytest.mark.parametrize("resend", [1, 3])
def test_the_same_message_in_concurrent_requests_lands_once(db_url, session_factory, resend):
    opened: list[int] = []

    async def run() -> list[object]:
        writer = _writer(db_url, session_factory, opened)
        return await asyncio.gather(*(writer.submit([_track(7)]) for _ in range(resend + 1)))

    results = asyncio.run(run())
    assert sorted(r.duplicates for r in results) == [0] + [1] * resend  # type: ignore[attr-defined]
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 1


def test_concurrency_two_runs_two_groups_at_once_on_postgres_sqlite_one(db_url, session_factory, monkeypatch):
    ingest_many = service.ingest_many
    inflight, peak, lock = [0], [0], threading.Lock()

    def counting(**kw):  # type: ignore[no-untyped-def]
        with lock:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
        try:
            time.sleep(0.05)  # long enough for the next requests to arrive while this group runs
            return ingest_many(**kw)
        finally:
            with lock:
                inflight[0] -= 1

    monkeypatch.setattr(service, "ingest_many", counting)
    opened: list[int] = []

    async def run() -> list[object]:
        writer = _writer(db_url, session_factory, opened, concurrency=2)
        first = asyncio.ensure_future(writer.submit([_track(0)]))
        await asyncio.sleep(0.01)
        rest = asyncio.gather(*(writer.submit([_track(i)]) for i in (1, 2, 3, 4, 1)))  # gw-1 twice
        return [await first, *await rest]

    results = asyncio.run(run())
    assert peak[0] == (1 if db_url.startswith("sqlite") else 2)
    assert sum(r.accepted for r in results) == 5 and sum(r.duplicates for r in results) == 1  # type: ignore[attr-defined]
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 5


def test_on_sqlite_the_log_reaches_the_database_file_in_the_background_not_in_a_commit(tmp_path):
    import sqlite3

    from emma.app import WAL_AUTOCHECKPOINT, create_app
    from emma.db import WalCheckpointer, make_engine, make_sessionmaker, upgrade

    url = f"sqlite:///{tmp_path / 'serve.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url))  # the server's engine: its commits seldom copy the log
    with app.state.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == WAL_AUTOCHECKPOINT
    app.state.engine.dispose()

    engine = make_engine(url, wal_autocheckpoint=WAL_AUTOCHECKPOINT)
    checkpointer = WalCheckpointer(engine, every=0.05, name="emma-wal-checkpoint-serve")
    app = SimpleNamespace(state=SimpleNamespace(settings=Settings(database_url=url), write_lock=asyncio.Lock(),
                                                sessions=make_sessionmaker(engine), checkpointer=checkpointer))

    def in_file() -> int:  # immutable: the database file alone, without its log
        raw = sqlite3.connect(f"file:{tmp_path / 'serve.db'}?immutable=1", uri=True)
        try:
            return raw.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            raw.close()

    async def run() -> None:
        writer = GroupWriter(app)
        await asyncio.gather(*(writer.submit([_track(i)]) for i in range(20)))
        deadline = time.monotonic() + 10
        while in_file() < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    before = {t for t in threading.enumerate() if t.name == "emma-wal-checkpoint-serve"}
    asyncio.run(run())
    assert in_file() == 20  # the commits alone would have left them in the log (10,000 pages)
    started = {t for t in threading.enumerate() if t.name == "emma-wal-checkpoint-serve"} - before
    assert len(started) == 1
    checkpointer.stop()
    assert not started.pop().is_alive()
    engine.dispose()


def test_clients_that_come_back_after_their_answer_join_the_next_transaction(db_url, session_factory,
                                                                             monkeypatch):
    # Four clients, each sending its next request a moment after the answer to the last one (as over a
    # network). Without waiting for them, the requests that queued during a transaction start the next one
    # alone, and the clients that just got their answer the one after: two transactions per round.
    from emma.ingest import jobs

    monkeypatch.setattr(jobs, "LINGER_MAX", 0.5)  # the waiting itself, not its tuning, on a busy machine
    monkeypatch.setattr(jobs, "LINGER_SHARE", 20.0)
    opened: list[int] = []
    rounds = 8

    async def run() -> None:
        writer = _writer(db_url, session_factory, opened)
        await writer.submit([_track(999)])  # the first transaction: tables warm, a time to wait by

        async def client(c: int) -> None:
            await asyncio.sleep(0.005 if c else 0)  # the first client alone in the first transaction
            for r in range(rounds):
                result = await writer.submit([_track(c * 100 + r)])
                assert result.accepted == 1  # type: ignore[attr-defined]
                await asyncio.sleep(0.002)

        await asyncio.gather(*(client(c) for c in range(4)))

    asyncio.run(run())
    assert len(opened) <= rounds + 3  # about one transaction per round
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 4 * rounds + 1
