"""The on-site runtime of one server process: the catalog snapshot, refreshed in the background, and the
impression buffer, written in batches, so that a decision costs one indexed read and no write."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from emma.ingest.jobs import run_with_retry
from emma.onsite import service
from emma.onsite.schemas import DecideRequest

log = logging.getLogger(__name__)
_MAX_PENDING = 100_000  # impressions kept while the database refuses writes; older ones are dropped beyond


class Runtime:
    """Per-process state behind /v1/decide (kept on app.state.onsite)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings = app.state.settings
        self.snapshot: service.Snapshot | None = None
        self.pending: list[dict[str, Any]] = []
        self._build_lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None
        self.inline_reads = app.state.engine.dialect.name == "sqlite"
        # Enabled tactics that queue on-site content, read with each snapshot: (entry events, tactic ids).
        self.tactic_watch: tuple[list[str], list[str]] = ([], [])

    def _build(self) -> service.Snapshot:
        session = self.app.state.sessions()
        try:
            snap = service.build_snapshot(session=session, settings=self.settings, now=self._now())
            self.tactic_watch = _onsite_tactics(session)
            return snap
        finally:
            session.close()

    async def refresh(self) -> service.Snapshot:
        """Rebuild the catalog snapshot in a worker thread; requests keep using the old one meanwhile."""
        async with self._build_lock:
            self.snapshot = await asyncio.to_thread(self._build)
            return self.snapshot

    async def current(self) -> service.Snapshot:
        """The snapshot to decide with (the first request of a process waits for it to be built)."""
        snap = self.snapshot
        if snap is None:
            snap = await self.refresh()
        elif (time.monotonic() - snap.built_at > self.settings.onsite_cache_seconds
              and (self._refreshing is None or self._refreshing.done())):
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_quietly())
        return snap

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception:  # a failed rebuild keeps the old snapshot; the next request tries again
            log.exception("on-site catalog snapshot could not be rebuilt")

    def _now(self) -> Any:
        clock = getattr(self.app.state, "clock", None)
        return clock.now() if clock is not None else None

    def _decide(self, request: DecideRequest, snap: service.Snapshot) -> service.Outcome:
        # Reads only: a plain connection costs less than an ORM session (the coupon write uses one).
        with self.app.state.engine.connect() as conn:
            return service.decide(session=conn, request=request, snapshot=snap, settings=self.settings,
                                  now=self._now())

    def _pending(self, request: DecideRequest) -> bool:
        with self.app.state.engine.connect() as conn:
            return service.tactic_work_pending(session=conn, user_id=request.userId, anonymous_id=request.anonymousId,
                                               events=self.tactic_watch[0], tactic_ids=self.tactic_watch[1],
                                               now=self._now() or service.utcnow())

    async def settle(self, request: DecideRequest) -> float:
        """Wait (up to onsite_tactic_wait_ms) until the worker has handled the visitor's events of this page view
        and stepped the on-site tactic runs they started; returns the seconds waited."""
        limit = self.settings.onsite_tactic_wait_ms / 1000
        if limit <= 0 or request.placement not in ("product_page", "cart") or not any(self.tactic_watch):
            return 0.0
        t0 = time.monotonic()
        while True:
            pending = self._pending(request) if self.inline_reads else await asyncio.to_thread(self._pending, request)
            waited = time.monotonic() - t0
            if not pending or waited >= limit:
                return waited
            await asyncio.sleep(min(0.01, limit - waited))

    async def decide(self, request: DecideRequest) -> dict[str, Any]:
        """Decide, issue the coupon when one is due (a write, once per customer), queue the impression."""
        snap = await self.current()
        await self.settle(request)
        if self.inline_reads:
            # A few indexed SQLite reads take less time than handing the work to a thread and back.
            outcome = self._decide(request, snap)
        else:
            outcome = await asyncio.to_thread(self._decide, request, snap)
        if outcome.issue_coupon:
            cid = outcome.impression["customer_id"]
            now = self._now()
            coupon = await run_with_retry(self.app, lambda s: service.issue_coupon(
                session=s, customer_id=cid, settings=self.settings, spec=outcome.coupon_spec,
                served=outcome.served, now=now))
            service.attach_coupon(outcome=outcome, coupon=coupon, settings=self.settings)
        elif outcome.served:  # a tactic's upsell content was shown: its outbox row is marked once
            served = outcome.served
            now = self._now() or service.utcnow()
            await run_with_retry(self.app, lambda s: service.mark_served(session=s, message_ids=served, now=now))
        self.pending.append(service.impression_row(outcome.impression))
        return outcome.response

    async def flush(self) -> int:
        """Write the queued impressions in one transaction; on failure they stay queued."""
        rows, self.pending = self.pending, []
        if not rows:
            return 0
        try:
            await run_with_retry(self.app, lambda s: service.log_impressions(session=s, rows=rows))
        except Exception:
            log.exception("could not write %d on-site impressions; kept for the next attempt", len(rows))
            self.pending = (rows + self.pending)[-_MAX_PENDING:]
            return 0
        return len(rows)

    async def loop(self, stop: asyncio.Event) -> None:
        """Flush impressions every onsite_flush_seconds until stop is set (a flush under way completes)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.onsite_flush_seconds)
            await self.flush()


def _onsite_tactics(session: Any) -> tuple[list[str], list[str]]:
    """Entry events and ids of the enabled tactics with on-site content (e.g. in_session_upsell)."""
    from emma.automation import library
    from emma.automation import schemas as S

    events: set[str] = set()
    ids: list[str] = []
    try:
        tactics = library.enabled(session=session)
    except Exception:  # noqa: BLE001 - a database without the automation tables: nothing to wait for
        log.warning("enabled tactics could not be read; on-site decisions do not wait for them", exc_info=True)
        return [], []
    for t in tactics.values():
        if "onsite" in t.channels:
            ids.append(t.id)
            if isinstance(t.entry, S.EventEntry):
                events.update(t.entry.names)
    return sorted(events), sorted(ids)


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[Runtime]:
    """Build the catalog snapshot, run the impression writer for the app's lifetime, write the rest on shutdown."""
    runtime: Runtime = app.state.onsite
    # Built before the server takes traffic, so no request waits for it; a database that is not
    # migrated yet only delays this to the first request.
    await runtime._refresh_quietly()
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(runtime.loop(stop))
    try:
        yield runtime
    finally:
        stop.set()
        await task
        await runtime.flush()  # what came in while the last round was writing
