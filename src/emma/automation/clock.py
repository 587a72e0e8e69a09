"""Clocks: the engine asks one for the time, so a 30-day tactic can be played in milliseconds."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from emma.db import utcnow


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


class SystemClock:
    """The wall clock (UTC)."""

    def now(self) -> dt.datetime:
        return utcnow()


class VirtualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("the virtual clock needs a timezone-aware start")
        self._now = start

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        """Move forward by delta; returns the new time."""
        if delta < dt.timedelta(0):
            raise ValueError("time does not run backwards")
        self._now += delta
        return self._now

    def set(self, when: dt.datetime) -> dt.datetime:
        """Jump forward to when (never backwards)."""
        if when > self._now:
            self._now = when
        return self._now
