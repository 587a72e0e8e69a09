"""Errors of the feedback domain."""

from __future__ import annotations


class UnknownSurvey(LookupError):
    """The reference names no survey message that was sent."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"no survey message {ref!r}")
        self.ref = ref


class BadScore(ValueError):
    def __init__(self, score: str) -> None:
        super().__init__(f"score must be a whole number from 0 to 10, not {score!r}")
        self.score = score
