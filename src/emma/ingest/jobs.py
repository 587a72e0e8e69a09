"""Running ingestion transactions at the edge: commit once, retry on races between writers."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import random
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, configure_mappers

from emma.config import get_settings
from emma.db import WalCheckpointer, utcnow
from emma.ingest import bulk
from emma.ingest import service as _service  # noqa: F401 - imported before the events reader process forks

T = TypeVar("T")
_ATTEMPTS = 5
# After a group committed, the writer waits up to this share of its transaction's time (at most LINGER_MAX
# seconds) for as many requests as it just answered: see GroupWriter._linger.
LINGER_SHARE = 0.25
LINGER_MAX = 0.005


def run_in_transaction(sessions: Callable[[], Session], work: Callable[[Session], T]) -> T:
    """Run work in a transaction and commit; a unique-key race or lock timeout rolls back and retries.

    Retrying is safe because messageIds make every write idempotent.
    """
    for attempt in range(_ATTEMPTS):
        session = sessions()
        try:
            if session.get_bind().dialect.name == "sqlite":
                # The driver begins a transaction only at the first write, so the reads before it would not
                # be isolated from another process's commits (two concurrent imports logged the same consent
                # decisions twice). The write lock first, then the reads: what work reads holds until commit.
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            result = work(session)
            session.commit()
            return result
        except (IntegrityError, OperationalError):
            session.rollback()
            if attempt == _ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        finally:
            session.close()
    raise AssertionError("unreachable")


async def run_with_retry(app: Any, work: Callable[[Session], T]) -> T:
    """Run a transaction for a request in a worker thread (the event loop stays free)."""
    lock = app.state.write_lock
    if lock is None:
        return await asyncio.to_thread(run_in_transaction, app.state.sessions, work)
    async with lock:  # SQLite has one writer: queue in the loop instead of spinning on busy_timeout
        return await asyncio.to_thread(run_in_transaction, app.state.sessions, work)


class GroupWriter:
    """Group commit for ingestion requests: what arrives while a transaction runs goes into the next one.

    Concurrent requests are coalesced into one ingest_many call and one commit. A request's future is
    resolved only after the transaction holding its messages committed, with the result the request
    would have had alone. If a group's transaction fails for good, each of its requests is retried in its
    own transaction, so one request's failure is never another's.

    One transaction runs at a time by default. On PostgreSQL, concurrency > 1 lets that many run at once
    (safe as it is for separate requests: messageIds are unique in the table, customers' keys are locked in
    order); on a 2-core machine two cost about a fifth more CPU per event and were not faster (measured), so
    the default stays 1. SQLite's write lock keeps its transactions one at a time whatever concurrency says.
    """

    def __init__(self, app: Any, *, max_messages: int = 2000, concurrency: int = 1) -> None:
        self.app = app
        self.max_messages = max_messages
        self.concurrency = concurrency
        self._queue: deque[tuple[list[Any], asyncio.Future[Any]]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._arrived: asyncio.Event | None = None

    async def submit(self, raw_messages: list[Any]) -> Any:
        """Ingest one request's messages with whatever else is waiting; its IngestResult after the commit."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((raw_messages, future))
        if self._arrived is not None:
            self._arrived.set()
        # A drainer that saw the queue empty has ended (done() at once): it is not counted.
        self._tasks = {t for t in self._tasks if not t.done()}
        if len(self._tasks) < self.concurrency:
            self._tasks.add(asyncio.create_task(self._drain()))
        # A client that goes away does not cancel the write: its messages still land.
        return await asyncio.shield(future)

    def _next_group(self) -> list[tuple[list[Any], asyncio.Future[Any]]]:
        group, size = [], 0
        while self._queue and (not group or size + len(self._queue[0][0]) <= self.max_messages):
            item = self._queue.popleft()
            group.append(item)
            size += len(item[0])
        return group

    async def _drain(self) -> None:
        from emma.ingest import service

        settings = self.app.state.settings
        while self._queue:
            group = self._next_group()
            started = time.perf_counter()
            try:
                results = await run_with_retry(self.app, lambda s, group=group: service.ingest_many(
                    session=s, requests=[messages for messages, _ in group], settings=settings))
                took = time.perf_counter() - started
            except Exception as exc:
                if len(group) == 1:
                    _resolve(group[0][1], exc)
                    continue
                for messages, future in group:
                    try:
                        result = await run_with_retry(self.app, lambda s, messages=messages: service.ingest(
                            session=s, raw_messages=messages, settings=settings))
                    except Exception as one:
                        _resolve(future, one)
                    else:
                        self._committed()
                        _resolve(future, result)
                continue
            except BaseException as exc:  # cancelled (shutdown): nobody may wait for an answer forever
                for _, future in (*group, *self._queue):
                    _resolve(future, exc)
                self._queue.clear()
                raise
            self._committed()
            for (_, future), result in zip(group, results, strict=True):
                _resolve(future, result)
            await self._linger(len(group), took)

    async def _linger(self, answered: int, took: float) -> None:
        # Clients that send a request, wait for its answer and send the next one come back right after
        # their group committed, while the requests that waited meanwhile would start the next transaction
        # alone: with 4 such clients, groups of 1 and 3 requests alternated instead of 4 (measured). Waiting
        # for them a little (a quarter of the transaction's time, at most LINGER_MAX) gives fewer,
        # larger transactions, which cost less per event.
        wait = min(LINGER_MAX, LINGER_SHARE * took)
        want = len(self._queue) + answered
        if wait <= 0 or sum(len(m) for m, _ in self._queue) >= self.max_messages:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        if self._arrived is None:
            self._arrived = asyncio.Event()
        while len(self._queue) < want and (left := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    def _committed(self) -> None:
        # The app's WAL checkpointer (SQLite) copies what the group wrote, off this path.
        checkpointer = getattr(self.app.state, "checkpointer", None)
        if checkpointer is not None:
            checkpointer.after_commit()


def _resolve(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def run_import(*, sessions: Callable[[], Session], kind: str, path: Path, fmt: str | None = None,
               rejects: Path | None = None, chunk_rows: int | None = None,
               progress: Callable[[int, int], None] | None = None, now: dt.datetime | None = None,
               stop_after_chunks: int | None = None, reader_process: bool | None = None) -> bulk.ImportSummary:
    """Import a file chunk by chunk, committing each chunk: a crash loses no committed chunk, a re-run completes it.

    progress(bytes read, file size) is called after each chunk. stop_after_chunks ends the import early
    (as a crash would), for tests and resumable runs. reader_process: see bulk.read_chunks (by default for
    large events files).
    """
    if kind not in bulk.KINDS:
        raise bulk.ImportFileError(f"kind: must be one of {', '.join(bulk.KINDS)}, not {kind!r}")
    started = time.perf_counter()
    fmt = bulk.detect_format(path, fmt)
    now = now or utcnow()
    rejects = rejects or bulk.default_rejects_path(path)
    summary = bulk.ImportSummary(kind=kind, path=str(path), format=fmt)
    state = bulk.ImportState(kind=kind, now=now)
    size = chunk_rows or bulk.CHUNK_ROWS[kind]
    source = bulk.Source(path, fmt)
    writer = bulk.RejectsWriter(rejects)
    # The collector would walk the growing heap of a chunk's rows many times over (half the CPU of
    # validation, measured); rows hold no cycles, so collect once per chunk instead.
    collecting = gc.isenabled()
    gc.disable()
    with sessions() as probe:
        checkpointer = WalCheckpointer(probe.get_bind())

    def _land(session: Session, rows: list[Any]) -> bulk.ChunkResult:
        checkpointer.start(session)
        return bulk.land(session=session, kind=kind, rows=rows, now=now)

    get_settings()  # read once, before the reader process is forked, which needs them too
    read = bulk.read_chunks(source, state, size, reader_process=reader_process)
    try:
        read.start()
        configure_mappers()  # what the first chunk would pay for once, done while the reader process reads it
        chunks = 0
        # Not a for loop over enumerate(read): its reused result tuple would keep the last chunk alive
        # through the collection below.
        while stop_after_chunks is None or chunks < stop_after_chunks:
            chunk = next(read, None)
            if chunk is None:
                break
            chunks += 1
            summary.rows += chunk.rows
            good, bad = chunk.good, chunk.bad
            result = run_in_transaction(sessions, lambda s, good=good: _land(s, good)) if good else bulk.ChunkResult()
            checkpointer.committed()
            result.rejected = bad + result.rejected
            writer.write(result.rejected)
            summary.add(result)
            if progress is not None:
                progress(chunk.position, source.size)
            # The chunk's rows are garbage by now: dropped first, the collector does not walk them.
            del chunk, good, bad, result
            gc.collect(2 if chunks % 50 == 0 else 1)  # now and then a full pass, so old garbage cannot pile up
    finally:
        read.close()
        if collecting:
            gc.enable()
        with sessions() as last:
            checkpointer.stop(last)
        writer.close()
        source.close()
    if writer.count:
        summary.rejects_path = str(rejects)
    elif rejects.exists() and rejects == bulk.default_rejects_path(path):
        rejects.unlink()  # left over from an earlier run of this file
    summary.seconds = time.perf_counter() - started
    return summary
