"""Incentive uplift from history: site-wide coupon campaigns are the treatment, the weeks before them the control.

The campaign calendar does not depend on the customer, so comparing each customer's buying in campaign
windows with equally long windows just before them is a randomised comparison across time. Units are
(customer, window) rows with features as of the window's start; the X-learner estimates who buys only
with a coupon (positive uplift), who buys anyway (about zero) and who is put off (negative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emma.predict.estimators.uplift import XLearner, qini_coefficient

MIN_COUPON_SHARE = 0.3  # a day with at least this share of orders using a coupon is a campaign day
MIN_ORDERS_PER_DAY = 3
CONTROL_GAP_DAYS = 7


@dataclass
class UpliftResult:
    uplift: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)


def campaign_windows(day: np.ndarray, coupon: np.ndarray) -> list[tuple[float, float]]:
    """[start, end) day ranges of consecutive campaign days, detected from coupon use."""
    d = np.floor(day).astype(np.int64)
    if not len(d):
        return []
    lo = int(d.min())
    orders = np.bincount(d - lo)
    with_coupon = np.bincount(d - lo, weights=coupon.astype(float), minlength=len(orders))
    camp = (orders >= MIN_ORDERS_PER_DAY) & (with_coupon >= MIN_COUPON_SHARE * np.maximum(orders, 1))
    out: list[tuple[float, float]] = []
    k = 0
    while k < len(camp):
        if camp[k]:
            j = k
            while j + 1 < len(camp) and camp[j + 1]:
                j += 1
            out.append((float(lo + k), float(lo + j + 1)))
            k = j + 1
        else:
            k += 1
    return out


def features_at(cust: np.ndarray, day: np.ndarray, coupon: np.ndarray, *, n_customers: int, at: float,
                windows: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(features, has history) per customer as of `at`: RFM, coupon share, campaign vs normal buying rates."""
    m = day < at
    c, d, cp = cust[m], day[m], coupon[m]
    n = np.bincount(c, minlength=n_customers).astype(float)
    first = np.full(n_customers, np.inf)
    last = np.full(n_customers, -np.inf)
    np.minimum.at(first, c, d)
    np.maximum.at(last, c, d)
    in_camp = np.zeros(len(d), dtype=bool)
    camp_days = 0.0
    for s, e in windows:
        if s < at:
            in_camp |= (d >= s) & (d < min(e, at))
            camp_days += min(e, at) - s
    has = n > 0
    span = np.where(has, at - first, 0.0)
    normal_days = np.maximum(span - camp_days, 1.0)
    camp_rate = np.bincount(c[in_camp], minlength=n_customers) / max(camp_days, 1.0)
    normal_rate = np.bincount(c[~in_camp], minlength=n_customers) / normal_days
    coupons = np.bincount(c, weights=cp.astype(float), minlength=n_customers)
    X = np.column_stack([np.log1p(n), np.where(has, at - last, 999.0), span, coupons / np.maximum(n, 1),
                         camp_rate * 30, normal_rate * 30, np.log((camp_rate + 0.01) / (normal_rate + 0.01))])
    return X, has


def fit_uplift(cust: np.ndarray, day: np.ndarray, coupon: np.ndarray, *, n_customers: int,
               as_of_day: float, extra: Callable[[float], np.ndarray] | None = None) -> UpliftResult | None:
    """Fit the X-learner on campaign vs control windows; uplift per customer as of as_of_day (None: no campaigns)."""
    windows = [w for w in campaign_windows(day, coupon) if w[1] <= as_of_day]
    rows_X, rows_t, rows_y, rows_w = [], [], [], []
    for k, (s, e) in enumerate(windows):
        length = e - s
        control = (s - CONTROL_GAP_DAYS - length, s - CONTROL_GAP_DAYS)
        for treated, (a, b) in ((1, (s, e)), (0, control)):
            X, has = features_at(cust, day, coupon, n_customers=n_customers, at=a, windows=windows)
            if extra is not None:
                X = np.column_stack([X, extra(a)])
            if not has.any():
                continue
            m = (day >= a) & (day < b)
            bought = np.zeros(n_customers, dtype=bool)
            bought[cust[m]] = True
            rows_X.append(X[has])
            rows_t.append(np.full(int(has.sum()), treated))
            rows_y.append(bought[has].astype(int))
            rows_w.append(np.full(int(has.sum()), k))
    if not rows_X:
        return None
    X, t, y, w = (np.concatenate(v) for v in (rows_X, rows_t, rows_y, rows_w))
    if len(np.unique(t)) < 2 or y[t == 1].sum() < 5 or y[t == 0].sum() < 5:
        return None
    metrics: dict[str, float] = {}
    baseline: dict[str, float] = {}
    if len(windows) >= 2:  # hold out the last campaign: fit on the earlier ones
        train, test = w < len(windows) - 1, w == len(windows) - 1
        if len(np.unique(t[train])) == 2 and len(np.unique(t[test])) == 2 and y[train].sum() >= 10:
            s_test = XLearner().fit(X[train], t[train], y[train]).predict(X[test])
            metrics["qini_last_campaign"] = qini_coefficient(s_test, t[test], y[test])
            rng = np.random.default_rng(0)
            baseline["qini_random"] = qini_coefficient(rng.random(int(test.sum())), t[test], y[test])
    model = XLearner().fit(X, t, y)
    Xnow, _ = features_at(cust, day, coupon, n_customers=n_customers, at=as_of_day, windows=windows)
    if extra is not None:
        Xnow = np.column_stack([Xnow, extra(as_of_day)])
    params = {"campaign_windows": len(windows), "rows": int(len(y))}
    return UpliftResult(model.predict(Xnow), params, metrics, baseline)
