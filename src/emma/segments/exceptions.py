"""Errors of the segments domain."""

from __future__ import annotations


class InvalidRule(ValueError):
    """A rule that does not validate; errors are (path, reason) pairs such as ("rule.all[2].within_days", ...)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {reason}" for path, reason in errors))
        self.errors = errors


class SegmentNotFound(LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"segment {key!r} does not exist")
        self.key = key


class SegmentExists(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"segment {key!r} exists already")
        self.key = key
