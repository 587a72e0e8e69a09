"""The CDNOW sample (Fader, Hardie & Lee 2005) as shipped inside the `lifetimes` wheel, read without lifetimes.

2,357 customers who made their first purchase in the first 12 weeks of 1997, with all their purchases until
the end of June 1998. Time is in weeks; the calibration period is weeks 0-39 and the holdout weeks 40-78.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources as resources

import numpy as np

START = dt.date(1997, 1, 1)
CALIBRATION_DAYS = 273  # weeks 0-39: 1997-01-01 to 1997-09-30
HOLDOUT_DAYS = 273  # weeks 40-78: 1997-10-01 to 1998-06-30


def _path(name: str) -> str:
    return str(resources.files("lifetimes.datasets") / name)


def summary() -> dict[str, np.ndarray]:
    """The published calibration summary: frequency, recency, T (weeks), rows in customer id order 1..2357."""
    d = np.genfromtxt(_path("cdnow_customers_summary.csv"), delimiter=",", names=True)
    return {"id": d["ID"].astype(np.int64), "frequency": d["frequency"], "recency": d["recency"], "T": d["T"]}


def spend_summary() -> dict[str, np.ndarray]:
    """Repeat purchases and their mean value (the Gamma-Gamma data; means rounded to cents in the file)."""
    d = np.genfromtxt(_path("cdnow_customers_summary_with_transactions.csv"), delimiter=",", names=True)
    return {"id": d["ID"].astype(np.int64), "frequency": d["x"], "monetary": d["zbar"]}


def transactions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer id 1..2357, day since 1997-01-01, amount in USD) of every transaction in the sample.

    The ids are those of the summary files. A customer can have several transactions on one day.
    """
    raw = np.loadtxt(_path("CDNOW_sample.txt"), dtype=str)
    cust = raw[:, 1].astype(np.int64)
    dates = np.array([f"{s[:4]}-{s[4:6]}-{s[6:]}" for s in raw[:, 2]], dtype="datetime64[D]")
    day = (dates - np.datetime64(START.isoformat())).astype(np.int64).astype(np.float64)
    return cust, day, raw[:, 4].astype(np.float64)


def calibration_holdout(
    cust: np.ndarray,
    day: np.ndarray,
    amount: np.ndarray,
    *,
    calibration_days: int = CALIBRATION_DAYS,
    holdout_days: int = HOLDOUT_DAYS,
    period_days: float = 7.0,
) -> dict[str, np.ndarray]:
    """Per-customer calibration summary and holdout repeat purchases from a transaction log.

    A purchase is a customer-day (same-day transactions merge), as in the published CDNOW summary, which this
    reproduces exactly. Only customers whose first purchase falls in the calibration period are kept.
    Returns, in customer id order: ``id``; ``frequency`` (repeat purchase days), ``recency`` and ``T`` (in
    periods of ``period_days``, T measured to the last calibration day) and ``monetary`` (mean value of the
    repeat purchase days, 0 without any) for the calibration period; ``frequency_holdout`` (purchase days in
    the holdout) and ``duration_holdout`` (its length in periods).
    """
    cust = np.asarray(cust)
    day = np.asarray(day, dtype=np.float64)
    amount = np.asarray(amount, dtype=np.float64)
    ids, c = np.unique(cust, return_inverse=True)
    c = c.ravel()
    first = np.full(len(ids), np.inf)
    np.minimum.at(first, c, day)

    # merge same-day transactions into one purchase
    cd, inv = np.unique(np.column_stack([c, day]), axis=0, return_inverse=True)
    pc, pday = cd[:, 0].astype(np.int64), cd[:, 1]
    pamount = np.bincount(inv.ravel(), weights=amount, minlength=len(cd))

    end = calibration_days - 1  # last calibration day, inclusive
    cal = pday <= end
    repeat = cal & (pday > first[pc])
    n = len(ids)
    frequency = np.bincount(pc[repeat], minlength=n).astype(np.float64)
    last = first.copy()
    np.maximum.at(last, pc[cal], pday[cal])
    spend = np.bincount(pc[repeat], weights=pamount[repeat], minlength=n)
    hold = (pday > end) & (pday <= end + holdout_days)
    keep = first <= end
    out = {
        "id": ids,
        "frequency": frequency,
        "recency": (last - first) / period_days,
        "T": (end - first) / period_days,
        "monetary": np.divide(spend, frequency, out=np.zeros(n), where=frequency > 0),
        "frequency_holdout": np.bincount(pc[hold], minlength=n).astype(np.float64),
        "duration_holdout": np.full(n, holdout_days / period_days),
    }
    return {k: v[keep] for k, v in out.items()}
