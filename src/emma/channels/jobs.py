"""The delivery loop: claim due outbox messages per channel, send each outside any transaction, record it."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping

from sqlalchemy.orm import Session, sessionmaker

from emma.channels import service
from emma.channels.adapters import Adapter, DeliveryResult, configured_adapters
from emma.channels.exceptions import ChannelError, TransientError
from emma.config import Settings
from emma.db import session_scope, utcnow

log = logging.getLogger(__name__)
ATTRIBUTE_EVERY_SECONDS = 60.0

def deliver_due(*, sessions: sessionmaker[Session], settings: Settings, adapters: Mapping[str, Adapter] | None = None,
                now: dt.datetime | None = None, attribute: bool = True) -> Counter[str]:
    """One pass: every configured channel sends what is due, within its rate limit; then (attribute) recent
    orders are attributed to the messages that led to them. Returns status counts."""
    adapters = configured_adapters(settings) if adapters is None else adapters
    now = now or utcnow()
    counts: Counter[str] = Counter()
    lease = dt.timedelta(seconds=settings.delivery_lease_seconds)
    for channel, adapter in adapters.items():
        with session_scope(sessions) as s:
            limit = settings.delivery_batch_size
            per_minute = settings.channel_rate_limits.get(channel)
            if per_minute is not None:
                limit = min(limit, per_minute - service.in_flight(session=s, channel=channel, now=now))
            ids = service.claim(session=s, channel=channel, now=now, limit=limit, lease=lease)
        try:
            for mid in ids:
                counts[_deliver_one(sessions, settings, adapter, mid, now)] += 1
        finally:
            close = getattr(adapter, "close", None)
            if close is not None:
                close()  # e.g. the SMTP connection kept for this pass
    if attribute:
        with session_scope(sessions) as s:
            converted = service.attribute_orders(session=s, settings=settings, now=now)
        if converted:
            counts["converted"] += converted
    return counts


def _deliver_one(sessions: sessionmaker[Session], settings: Settings, adapter: Adapter, mid: int,
                 now: dt.datetime) -> str:
    with session_scope(sessions) as s:
        envelope = service.prepare(session=s, message_id=mid, settings=settings, now=now)
        if envelope is None:
            m = s.get(service.OutboxMessage, mid)
            return m.status if m else "missing"
    # No transaction is open while we talk to the SMTP server or provider.
    outcome: DeliveryResult | ChannelError
    try:
        outcome = adapter.send(envelope)
    except ChannelError as exc:
        outcome = exc
    except Exception as exc:  # noqa: BLE001 - an adapter bug must not lose the message: retry it later
        log.exception("adapter %s failed on message %s", adapter.channel, mid)
        outcome = TransientError(f"{exc.__class__.__name__}: {exc}")
    with session_scope(sessions) as s:
        return service.record(session=s, message_id=mid, outcome=outcome, settings=settings, now=now)


def run(*, sessions: sessionmaker[Session], settings: Settings, interval: float = 2.0,
        stop: threading.Event | None = None) -> None:
    """Deliver until stopped (the worker's loop); a failing pass is logged and the loop goes on."""
    stop = stop or threading.Event()
    adapters = configured_adapters(settings)
    attributed = 0.0
    while not stop.is_set():
        try:
            # Attribution reads the last days' orders: once a minute is plenty, not every idle pass.
            attribute = time.monotonic() - attributed >= ATTRIBUTE_EVERY_SECONDS
            counts = deliver_due(sessions=sessions, settings=settings, adapters=adapters, attribute=attribute)
            if attribute:
                attributed = time.monotonic()
        except Exception:  # noqa: BLE001 - e.g. the database restarting; try again next tick
            log.exception("delivery pass failed")
            counts = Counter()
        if not sum(counts.values()):
            stop.wait(interval)
