"""Running ingestion transactions at the edge: commit once, retry on races between writers."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

T = TypeVar("T")
_ATTEMPTS = 5


def run_in_transaction(sessions: Callable[[], Session], work: Callable[[Session], T]) -> T:
    """Run work in a transaction and commit; a unique-key race or lock timeout rolls back and retries.

    Retrying is safe because messageIds make every write idempotent.
    """
    for attempt in range(_ATTEMPTS):
        session = sessions()
        try:
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
