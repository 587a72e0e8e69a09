"""Shared CLI plumbing: settings, sessions, the console."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from sqlalchemy.orm import Session

from emma.config import Settings, get_settings
from emma.db import make_engine, make_sessionmaker, session_scope

console = Console()
err_console = Console(stderr=True)


@contextmanager
def cli_session(settings: Settings | None = None) -> Iterator[Session]:
    """One committed transaction for a CLI command."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()
