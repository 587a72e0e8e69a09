"""The HTTP application: every domain's router, error handlers, health."""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from emma import __version__
from emma.automation.clock import Clock, SystemClock
from emma.config import Settings, get_settings
from emma.db import WalCheckpointer, make_engine, make_sessionmaker

_tuned = False
# Allocations between two young-generation collections. At Python's default of 700 a server ingesting
# batches collected every few requests: 519 collections, a fifth of its CPU in a 20,000-event run
# (measured). The requests' garbage holds few cycles, so collecting less often costs little memory.
GC_THRESHOLD = (50_000, 20, 20)
# SQLite: the server's commits leave copying the write-ahead log into the database file (and its fsync) to a
# thread (db.WalCheckpointer), at most every CHECKPOINT_SECONDS. A commit copies the log itself only once
# it holds WAL_AUTOCHECKPOINT pages (40 MB), if that thread falls behind; SQLite's default of 1,000 pages
# made every third /v1/batch group of 400 events wait for two fsyncs (measured).
CHECKPOINT_SECONDS = 0.2
WAL_AUTOCHECKPOINT = 10_000


def _tune_process() -> None:
    """Tune the serving process once: start-up objects out of the collector's reach, a shorter GIL switch interval."""
    # A full collection walks every tracked object: about 220,000 after start-up, 50 to 300 ms with the
    # event loop stopped. Frozen objects are never scanned
    # again (they are still freed by reference counting). Once per process: a test run creates many apps.
    global _tuned
    if not _tuned:
        _tuned = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLD)
        # The embedded worker and the impression writer are threads of this process. While one of them runs
        # Python, a request coming back from a database read waits for the GIL up to the switch interval:
        # 5 ms by default, several times per request. 1 ms bounds that wait at little cost.
        sys.setswitchinterval(0.001)


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """Build the app for the given settings (nothing is created at import time).

    clock stamps what the public links record (opens, clicks, unsubscribes, opt-ins); the demo passes its
    virtual clock so that the simulated customers' clicks land at simulated times.
    """
    settings = settings or get_settings()
    engine = make_engine(settings.database_url, echo=settings.echo_sql, wal_autocheckpoint=WAL_AUTOCHECKPOINT)
    checkpointer = WalCheckpointer(engine, every=CHECKPOINT_SECONDS, name="emma-wal-checkpoint-serve")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = None
        if settings.worker_embedded:
            from emma.automation import jobs as automation_jobs

            stop, threads = automation_jobs.start_background(sessions=app.state.sessions, settings=settings)
        from emma.onsite import jobs as onsite_jobs

        # The customer view and the engine read predictions: load numpy/scipy/sklearn before the first
        # request instead of during it (seconds on a busy machine).
        await asyncio.to_thread(importlib.import_module, "emma.predict.service")
        async with onsite_jobs.running(app):
            _tune_process()
            yield
        if stop is not None:
            stop.set()
            for t in threads:
                t.join(timeout=10)
        checkpointer.stop()
        engine.dispose()

    app = FastAPI(title="Tante Emma", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.clock = clock or SystemClock()
    app.state.engine = engine
    app.state.checkpointer = checkpointer
    app.state.sessions = make_sessionmaker(engine)
    app.state.key_cache = {}
    app.state.write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
    from emma.ingest.router import FastPath

    # Added before CORS, so CORS wraps it: the browser snippet's requests get its headers and preflights.
    app.add_middleware(FastPath)
    if settings.cors_origins:
        # The JS snippet calls the API from the shop's pages; the Basic auth header makes browsers preflight.
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"], max_age=600)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "web" / "static"), name="static")

    from emma.onsite import jobs as onsite_jobs
    from emma.onsite.router import router as onsite_router

    # First: routes are matched in order, and /v1/decide is the hottest path of a shop's traffic.
    app.state.onsite = onsite_jobs.Runtime(app)
    app.include_router(onsite_router)

    from emma.ingest.router import router as ingest_router
    from emma.profiles.router import router as customers_router

    app.include_router(ingest_router)
    app.include_router(customers_router)

    from emma.channels.router import router as tracking_router

    app.include_router(tracking_router)

    from emma.consent.router import router as consent_router

    app.include_router(consent_router)

    from emma.gdpr.router import router as gdpr_router

    app.include_router(gdpr_router)

    from emma.segments.router import router as segments_router

    app.include_router(segments_router)

    from emma.automation.router import router as automation_router

    app.include_router(automation_router)

    from emma.stores.router import router as stores_router

    app.include_router(stores_router)

    from emma.feedback.router import router as feedback_router

    app.include_router(feedback_router)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body"), "reason": e["msg"]}
                  for e in exc.errors()]
        return JSONResponse({"success": False, "errors": errors}, status_code=400)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
