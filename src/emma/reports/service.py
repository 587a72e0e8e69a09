"""Results of the tactics read back from the database: entries, messages, goals, the holdout comparison,
and per tactic and channel the funnel delivered -> opened -> clicked -> converted."""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections import defaultdict
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from emma.automation.models import Run
from emma.channels.models import Conversion, DeliveryEvent, OutboxMessage

FUNNEL = ("opened", "clicked", "unsubscribed")
NO_TACTIC = "(no tactic)"  # e.g. double opt-in confirmations
# Channels that reach a customer who is not on the site; on-site content reaches whoever comes back.
REACHING = {"email": "email_marketing", "sms": "sms_marketing", "push": "push"}
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


def _compare(tc: int, t: int, hc: int, h: int) -> dict[str, Any]:
    rt, rh = _rate(tc, t), _rate(hc, h)
    ci = difference_ci(tc, t, hc, h)
    return {"treated_rate": rt, "holdout_rate": rh, "uplift": rt - rh if rt is not None and rh is not None else None,
            "uplift_ci": ci, "significant": None if ci is None else (ci[0] > 0 or ci[1] < 0),
            "p_value": two_proportion_p(tc, t, hc, h)}


def reachable_results(*, session: Session, since: dt.datetime | None = None) -> dict[str, dict[str, Any]]:
    """Per tactic, the holdout comparison (customers, as in tactic_results) among the customers who could be
    reached when their run began: consent granted then for a channel the tactic sends on (email, SMS, push).

    Holdout and treated runs are drawn at random, so both groups keep the same mix when this restriction (a
    fact from before the split) is applied to both; the runs nobody could have messaged, which dilute the
    comparison of all runs, drop out. Tactics without such a channel (on-site only) are left out.
    """
    from emma.automation import library
    from emma.consent.models import ConsentLog

    purposes = {tid: {REACHING[c] for c in t.channels if c in REACHING}
                for tid, (t, _, _) in library.all_tactics(session=session).items()}
    stmt = select(Run.tactic_id, Run.customer_id, Run.entered_at, Run.holdout, Run.status)
    if since is not None:
        stmt = stmt.where(Run.entered_at >= since)
    runs = [r for r in session.execute(stmt) if purposes.get(r.tactic_id)]
    history: dict[tuple[int, str], list[tuple[dt.datetime, str, str]]] = defaultdict(list)
    customers = sorted({r.customer_id for r in runs})
    wanted = sorted(set().union(*purposes.values()))
    for i in range(0, len(customers), 900):
        for cid, purpose, status, at, lid in session.execute(
                select(ConsentLog.customer_id, ConsentLog.purpose, ConsentLog.status, ConsentLog.recorded_at,
                       ConsentLog.id).where(ConsentLog.customer_id.in_(customers[i:i + 900]),
                                            ConsentLog.purpose.in_(wanted))):
            history[(cid, purpose)].append((at, f"{lid:012d}", status))
    for h in history.values():
        h.sort()

    def granted(cid: int, purpose: str, at: dt.datetime) -> bool:
        h = history.get((cid, purpose))
        if not h:
            return False
        k = bisect.bisect_right(h, (at, "~"))  # the last change at or before the run began
        return k > 0 and h[k - 1][-1] == "granted"

    # Per customer, as in tactic_results: reached by a run that began while they could be reached, converted
    # when such a run reached the goal.
    reached: dict[tuple[str, bool, int], bool] = {}
    for r in runs:
        if any(granted(r.customer_id, p, r.entered_at) for p in purposes[r.tactic_id]):
            k = (r.tactic_id, bool(r.holdout), r.customer_id)
            reached[k] = reached.get(k, False) or r.status == "converted"
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # treated, converted, holdout, converted
    for (tid, holdout, _), conv in reached.items():
        k = 2 if holdout else 0
        counts[tid][k] += 1
        counts[tid][k + 1] += conv
    return {tid: {"treated": t, "treated_converted": tc, "holdout": h, "holdout_converted": hc,
                  **_compare(tc, t, hc, h)} for tid, (t, tc, h, hc) in counts.items()}


def tactic_results(*, session: Session, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Per tactic: runs entered (treated / holdout), messages, goals reached, and the holdout comparison.

    The holdout is drawn per customer (a customer is in a tactic's control group for all of its runs), so the
    comparison counts customers, not runs: a frequent buyer with ten runs is one observation, not ten that
    would make the interval look narrower than it is. customers_* are the customers with a run, *_converted
    those with a run that reached the goal; treated_rate, holdout_rate, uplift, its 95 % interval (uplift_ci),
    significant (the interval excludes 0; None without a holdout group) and p_value are over customers.
    """
    converted = func.sum(case((Run.status == "converted", 1), else_=0))
    people = func.count(Run.customer_id.distinct())
    people_converted = func.count(case((Run.status == "converted", Run.customer_id)).distinct())
    stmt = (select(Run.tactic_id, Run.holdout, func.count(), converted, people, people_converted)
            .group_by(Run.tactic_id, Run.holdout))
    if since is not None:
        stmt = stmt.where(Run.entered_at >= since)
    empty = {"treated": 0, "holdout": 0, "treated_converted": 0, "holdout_converted": 0, "customers_treated": 0,
             "customers_holdout": 0, "customers_treated_converted": 0, "customers_holdout_converted": 0}
    runs: dict[str, dict[str, int]] = {}
    for tid, holdout, n, conv, who, who_conv in session.execute(stmt):
        r = runs.setdefault(tid, dict(empty))
        group = "holdout" if holdout else "treated"
        r[group] += n
        r[f"{group}_converted"] += int(conv or 0)
        r[f"customers_{group}"] += who
        r[f"customers_{group}_converted"] += int(who_conv or 0)
    sent = func.sum(case((OutboxMessage.status == "sent", 1), else_=0))
    mstmt = (select(OutboxMessage.tactic_id, func.count(), sent).where(OutboxMessage.tactic_id.is_not(None))
             .group_by(OutboxMessage.tactic_id))
    if since is not None:
        mstmt = mstmt.where(OutboxMessage.due_at >= since)
    messages = {tid: (n, int(s or 0)) for tid, n, s in session.execute(mstmt)}
    out = []
    for tid in sorted(set(runs) | set(messages)):
        r = runs.get(tid, dict(empty))
        n_msg, n_sent = messages.get(tid, (0, 0))
        out.append({"tactic_id": tid, "entered": r["treated"] + r["holdout"], **r, "messages": n_msg,
                    "sent": n_sent, "goals": r["treated_converted"] + r["holdout_converted"],
                    **_compare(r["customers_treated_converted"], r["customers_treated"],
                               r["customers_holdout_converted"], r["customers_holdout"])})
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
