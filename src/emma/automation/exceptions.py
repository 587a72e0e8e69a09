"""Errors of the automation domain."""

from __future__ import annotations


class AutomationError(Exception):
    """Base class."""


class TacticInvalid(AutomationError):
    """A tactic definition failed validation; errors are (file, path, reason) triples."""

    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source = source
        self.errors = errors
        lines = [f"{source}: {path or '(top level)'}: {reason}" for path, reason in errors]
        super().__init__("\n".join(lines))


class TacticNotFound(AutomationError):
    """No tactic with that id in the library or among the copies."""

    def __init__(self, tactic_id: str) -> None:
        self.tactic_id = tactic_id
        super().__init__(f"no tactic {tactic_id!r} (see `emma tactics list`)")


class TacticConflict(AutomationError):
    """The operation would clash with an existing tactic (copy onto an existing id)."""
