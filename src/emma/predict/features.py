"""Features built in SQL and numpy: purchase-day histories (RFM), outcomes after a cut-off."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Float, cast, func, select
from sqlalchemy.orm import Session

from emma.orders.models import Order

EXCLUDED_STATUSES = ("cancelled",)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def epoch_days(when: dt.datetime) -> float:
    """Days since 1970-01-01 UTC (the unit every feature array uses)."""
    return (when - _EPOCH).total_seconds() / 86400.0


def _day_expr(session: Session, column):  # type: ignore[no-untyped-def]
    # Compute the day number in the database: parsing millions of timestamps in Python costs seconds.
    if session.get_bind().dialect.name == "sqlite":
        return func.julianday(column) - 2440587.5
    return cast(func.extract("epoch", column), Float) / 86400.0


def order_days(*, session: Session, before: dt.datetime, since: dt.datetime | None = None,
               chunk: int = 200_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer_id, day number, revenue) of every non-cancelled order in [since, before)."""
    stmt = (select(Order.customer_id, _day_expr(session, Order.ordered_at), cast(Order.revenue, Float))
            .where(Order.ordered_at < before, Order.status.not_in(EXCLUDED_STATUSES)))
    if since is not None:
        stmt = stmt.where(Order.ordered_at >= since)
    cids: list[np.ndarray] = []
    days: list[np.ndarray] = []
    revs: list[np.ndarray] = []
    result = session.execute(stmt.execution_options(yield_per=chunk))
    for part in result.partitions(chunk):
        arr = np.array(part, dtype=np.float64) if part else np.empty((0, 3))
        cids.append(arr[:, 0].astype(np.int64))
        days.append(arr[:, 1])
        revs.append(np.nan_to_num(arr[:, 2]))
    if not cids:
        return np.empty(0, np.int64), np.empty(0), np.empty(0)
    return np.concatenate(cids), np.concatenate(days), np.concatenate(revs)


@dataclass(frozen=True)
class RFM:
    """Per-customer purchase summary in weeks, the BG/NBD convention (x repeat days, t_x, T)."""

    customer_id: np.ndarray
    frequency: np.ndarray  # repeat purchase days
    recency: np.ndarray  # weeks from first to last purchase day
    T: np.ndarray  # weeks from first purchase day to the cut-off
    monetary: np.ndarray  # mean revenue of the repeat purchase days (0 where none)
    first_day: np.ndarray
    last_day: np.ndarray
    total_revenue: np.ndarray
    orders: np.ndarray  # purchase days incl. the first

    def __len__(self) -> int:
        return len(self.customer_id)


def rfm(customer_id: np.ndarray, day: np.ndarray, revenue: np.ndarray, *, as_of_day: float) -> RFM:
    """Summarise order rows into one RFM row per customer; several orders on one day count once."""
    if len(customer_id) == 0:
        e = np.empty(0)
        return RFM(np.empty(0, np.int64), e, e, e, e, e, e, e, e)
    dayi = np.floor(day).astype(np.int64)
    key = np.stack([customer_id, dayi], axis=1)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    day_rev = np.bincount(inv, weights=revenue, minlength=len(uniq))
    cust, dayu = uniq[:, 0], uniq[:, 1].astype(np.float64)
    # uniq is sorted by (customer, day): group boundaries give first and last day per customer
    starts = np.flatnonzero(np.r_[True, cust[1:] != cust[:-1]])
    ends = np.r_[starts[1:], len(cust)] - 1
    n_days = ends - starts + 1
    first, last = dayu[starts], dayu[ends]
    total = np.add.reduceat(day_rev, starts)
    first_rev = day_rev[starts]
    freq = (n_days - 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(freq > 0, (total - first_rev) / np.maximum(freq, 1), 0.0)
    return RFM(customer_id=cust[starts], frequency=freq, recency=(last - first) / 7.0,
               T=(np.floor(as_of_day) - first) / 7.0, monetary=monetary, first_day=first, last_day=last,
               total_revenue=total, orders=n_days.astype(np.float64))


def future_purchase_days(customer_id: np.ndarray, day: np.ndarray, revenue: np.ndarray,
                         *, customers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Purchase days and revenue per customer (aligned to `customers`) from order rows of a later window."""
    if len(customer_id) == 0:
        return np.zeros(len(customers)), np.zeros(len(customers))
    key = np.stack([customer_id, np.floor(day).astype(np.int64)], axis=1)
    uniq = np.unique(key, axis=0)
    cust_days, counts = np.unique(uniq[:, 0], return_counts=True)
    rev_c, rev_inv = np.unique(customer_id, return_inverse=True)
    rev = np.bincount(rev_inv.ravel(), weights=revenue)
    pos = np.searchsorted(cust_days, customers)
    pos_ok = (pos < len(cust_days)) & (cust_days[np.minimum(pos, len(cust_days) - 1)] == customers)
    days_out = np.where(pos_ok, counts[np.minimum(pos, len(counts) - 1)], 0).astype(np.float64)
    rpos = np.searchsorted(rev_c, customers)
    rpos_ok = (rpos < len(rev_c)) & (rev_c[np.minimum(rpos, len(rev_c) - 1)] == customers)
    rev_out = np.where(rpos_ok, rev[np.minimum(rpos, len(rev) - 1)], 0.0)
    return days_out, rev_out
