"""One error tree for every channel: transient (retry later), permanent (never retry), rate limited."""

from __future__ import annotations


class ChannelError(Exception):
    """A delivery attempt did not succeed."""


class TransientError(ChannelError):
    """Worth retrying: connection refused, timeout, 4xx from SMTP, 5xx from HTTP."""


class RateLimited(TransientError):
    """The receiver asked us to slow down; retry after retry_after seconds without counting an attempt."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ChannelError):
    """Retrying cannot help: invalid or refused address, rejected content. bounced marks a refused recipient."""

    def __init__(self, message: str, *, bounced: bool = False) -> None:
        super().__init__(message)
        self.bounced = bounced


class RenderError(Exception):
    """A template could not be rendered; the message is held, never sent broken."""

