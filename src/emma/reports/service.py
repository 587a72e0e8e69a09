"""Results of the tactics read back from the database: entries, messages, goals, the holdout comparison,
and per tactic and channel the funnel delivered -> opened -> clicked -> converted."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from emma.automation.models import Run
from emma.channels.models import Conversion, DeliveryEvent, OutboxMessage

FUNNEL = ("opened", "clicked", "unsubscribed")
NO_TACTIC = "(no tactic)"  # e.g. double opt-in confirmations
Z95 = 1.959963984540054


def _rate(n: int, d: int) -> float | None:
    return n / d if d else None


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Two-sided p-value of the difference of two conversion rates (pooled z-test); None without data."""
    if not n1 or not n2:
        return None
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return None
    z = (x1 / n1 - x2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion x / n."""
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_ci(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float] | None:
    """95 % interval of p1 - p2 (Newcombe's hybrid score method: sound for small groups and rare events,
    where the plain Wald interval is far too narrow); None without data."""
    if not n1 or not n2:
        return None
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def tactic_results(*, session: Session, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Per tactic: runs entered (treated / holdout), messages, goals reached, conversion and uplift with its 95 %
    interval; significant is True when the interval excludes 0 (None without a holdout group)."""
    converted = func.sum(case((Run.status == "converted", 1), else_=0))
    stmt = select(Run.tactic_id, Run.holdout, func.count(), converted).group_by(Run.tactic_id, Run.holdout)
    if since is not None:
        stmt = stmt.where(Run.entered_at >= since)
    runs: dict[str, dict[str, int]] = {}
    for tid, holdout, n, conv in session.execute(stmt):
        r = runs.setdefault(tid, {"treated": 0, "holdout": 0, "treated_converted": 0, "holdout_converted": 0})
        group = "holdout" if holdout else "treated"
        r[group] += n
        r[f"{group}_converted"] += int(conv or 0)
    sent = func.sum(case((OutboxMessage.status == "sent", 1), else_=0))
    mstmt = (select(OutboxMessage.tactic_id, func.count(), sent).where(OutboxMessage.tactic_id.is_not(None))
             .group_by(OutboxMessage.tactic_id))
    if since is not None:
        mstmt = mstmt.where(OutboxMessage.due_at >= since)
    messages = {tid: (n, int(s or 0)) for tid, n, s in session.execute(mstmt)}
    out = []
    for tid in sorted(set(runs) | set(messages)):
        r = runs.get(tid, {"treated": 0, "holdout": 0, "treated_converted": 0, "holdout_converted": 0})
        n_msg, n_sent = messages.get(tid, (0, 0))
        rt, rh = _rate(r["treated_converted"], r["treated"]), _rate(r["holdout_converted"], r["holdout"])
        ci = difference_ci(r["treated_converted"], r["treated"], r["holdout_converted"], r["holdout"])
        out.append({"tactic_id": tid, "entered": r["treated"] + r["holdout"], **r, "messages": n_msg,
                    "sent": n_sent, "goals": r["treated_converted"] + r["holdout_converted"],
                    "treated_rate": rt, "holdout_rate": rh,
                    "uplift": rt - rh if rt is not None and rh is not None else None,
                    "uplift_ci": ci, "significant": None if ci is None else (ci[0] > 0 or ci[1] < 0),
                    "p_value": two_proportion_p(r["treated_converted"], r["treated"], r["holdout_converted"],
                                                r["holdout"])})
    return out


def channel_results(*, session: Session, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Per tactic and channel: messages delivered, opened, clicked, unsubscribed, converted (distinct messages)
    and the revenue of the orders attributed to them.

    A message is converted when an order was attributed to it (channels.attribute_orders: the coupon it
    carried, else the last click, open or delivery before the order, within the attribution windows).
    """
    base = [OutboxMessage.status == "sent"]
    if since is not None:
        base.append(OutboxMessage.due_at >= since)
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(tid: str | None, channel: str) -> dict[str, Any]:
        tid = tid or NO_TACTIC
        return rows.setdefault((tid, channel), {"tactic_id": tid, "channel": channel, "delivered": 0,
                                                **{k: 0 for k in FUNNEL}, "converted": 0, "revenue": 0.0})

    for tid, channel, n in session.execute(select(OutboxMessage.tactic_id, OutboxMessage.channel, func.count())
                                           .where(*base).group_by(OutboxMessage.tactic_id, OutboxMessage.channel)):
        row(tid, channel)["delivered"] = n
    for tid, channel, status, n in session.execute(
            select(OutboxMessage.tactic_id, OutboxMessage.channel, DeliveryEvent.status,
                   func.count(DeliveryEvent.message_id.distinct()))
            .join(DeliveryEvent, DeliveryEvent.message_id == OutboxMessage.id)
            .where(*base, DeliveryEvent.status.in_(FUNNEL))
            .group_by(OutboxMessage.tactic_id, OutboxMessage.channel, DeliveryEvent.status)):
        row(tid, channel)[status] = n
    for tid, channel, n, revenue in session.execute(
            select(OutboxMessage.tactic_id, OutboxMessage.channel, func.count(Conversion.message_id.distinct()),
                   func.coalesce(func.sum(Conversion.revenue), 0))
            .join(Conversion, Conversion.message_id == OutboxMessage.id)
            .where(*base).group_by(OutboxMessage.tactic_id, OutboxMessage.channel)):
        r = row(tid, channel)
        r["converted"], r["revenue"] = n, float(revenue)
    return [rows[k] for k in sorted(rows)]
