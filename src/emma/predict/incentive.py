"""Incentive uplift from randomised coupon tests in the history: who buys only with a coupon, who buys anyway.

A test is a send (one campaign id) in which a random part of the recipients got the message with a coupon and
the rest the same message without one (the shop's newsletter splits every send this way; a holdout of a coupon
tactic does the same). Every recipient is a unit: treatment = got the coupon variant, outcome = any order in the
7 days after the send, features = the customer as of the send. Because the split is random, a learner fitted on
these units estimates the causal effect of the coupon, and the last tests, held out, measure the ranking without
any ground truth: the uplift observed among the top 30 % (coupon buyers minus non-coupon buyers there) against
the average effect, and the Qini coefficient.

Site-wide coupon campaigns (everyone gets the code) are not randomised; how a customer bought in them is one of
the features (persuadables buy in them much more than usual and always with the code).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emma.predict.estimators.uplift import (
    ExposureUplift,
    TwoModelUplift,
    XLearner,
    exposure_balanced,
    observed_uplift_at_k,
    qini_coefficient,
)

MIN_COUPON_SHARE = 0.3  # a day with at least this share of orders using a coupon is a campaign day
MIN_ORDERS_PER_DAY = 3
OUTCOME_DAYS = 7.0
MIN_ARM = 30  # recipients per arm for a send to count as a randomised test
MAX_ROWS = 150_000  # training units drawn at random beyond this: the learners need no more
TOP = 0.3


@dataclass
class UpliftResult:
    uplift: np.ndarray
    chosen: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)


@dataclass
class Sends:
    """Deliveries of randomised tests: customer row, day, send number and whether the coupon variant went out."""

    customer: np.ndarray
    day: np.ndarray
    send: np.ndarray
    coupon: np.ndarray


def randomized_sends(customer: np.ndarray, day: np.ndarray, campaign: np.ndarray, coupon: np.ndarray) -> Sends:
    """Keep the deliveries of campaigns that split their recipients into a coupon and a no-coupon arm."""
    keys, send = np.unique(campaign, return_inverse=True)
    n_t = np.bincount(send, weights=coupon.astype(float), minlength=len(keys))
    n = np.bincount(send, minlength=len(keys))
    test = (n_t >= MIN_ARM) & (n - n_t >= MIN_ARM)
    keep = test[send]
    # renumber the tests by their first day, so that "the last tests" are the latest ones
    first = np.full(len(keys), np.inf)
    np.minimum.at(first, send, day)
    order = np.argsort(np.where(test, first, np.inf), kind="stable")
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys))
    return Sends(customer[keep], day[keep], rank[send[keep]], coupon[keep].astype(bool))


def campaign_windows(day: np.ndarray, coupon: np.ndarray) -> list[tuple[float, float]]:
    """[start, end) day ranges of consecutive site-wide campaign days, detected from coupon use."""
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


@dataclass
class History:
    """Everything the features are built from, as row-indexed arrays (rows = customers)."""

    n_customers: int
    order_customer: np.ndarray
    order_day: np.ndarray
    order_coupon: np.ndarray
    sends: Sends
    opens_customer: np.ndarray  # message opens and clicks: interest in the channel the tests use
    opens_day: np.ndarray
    extra: Callable[[float], np.ndarray] | None = None  # (cut-off day) -> extra columns for every customer

    def __post_init__(self) -> None:
        s = self.sends
        self.bought = any_within(self.order_customer, self.order_day, s.customer, s.day, OUTCOME_DAYS)
        # the coupon sits inside the message: whether it was opened does not depend on the variant, so among
        # the openers the split is still random and the evidence per customer far less diluted
        self.opened = any_within(self.opens_customer, self.opens_day, s.customer, s.day, OUTCOME_DAYS)


def features_at(h: History, at: float, windows: list[tuple[float, float]]) -> np.ndarray:
    """Per customer as of `at`: RFM, coupon habits, site-wide campaign vs normal buying, message engagement,
    and how they answered earlier tests whose outcome windows had closed."""
    n = h.n_customers
    m = h.order_day < at
    c, d, cp = h.order_customer[m], h.order_day[m], h.order_coupon[m]
    orders = np.bincount(c, minlength=n).astype(float)
    first = np.full(n, np.inf)
    last = np.full(n, -np.inf)
    np.minimum.at(first, c, d)
    np.maximum.at(last, c, d)
    in_camp = np.zeros(len(d), dtype=bool)
    camp_days = 0.0
    for s, e in windows:
        if s < at:
            in_camp |= (d >= s) & (d < min(e, at))
            camp_days += min(e, at) - s
    has = orders > 0
    span = np.where(has, at - first, 0.0)
    normal_days = np.maximum(span - camp_days, 1.0)
    camp_rate = np.bincount(c[in_camp], minlength=n) / max(camp_days, 1.0)
    normal_rate = np.bincount(c[~in_camp], minlength=n) / normal_days
    coupons = np.bincount(c, weights=cp.astype(float), minlength=n)
    s = h.sends
    before = s.day < at
    delivered = np.bincount(s.customer[before], minlength=n).astype(float)
    opens = np.bincount(h.opens_customer[h.opens_day < at], minlength=n).astype(float)
    closed = s.day + OUTCOME_DAYS <= at  # earlier tests whose outcome is known by now
    sc, t, y, o = s.customer[closed], s.coupon[closed], h.bought[closed], h.opened[closed]

    def count(mask: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(sc[mask], weights=None if w is None else w[mask].astype(float), minlength=n).astype(float)

    # earlier tests, opened ones only: buying after the coupon variant vs after the plain one, shrunk
    n_to, n_co = count(t & o), count(~t & o)
    y_to, y_co = count(t & o, y), count(~t & o, y)
    base = float(y[o].mean()) if o.any() else 0.1
    X = np.column_stack([
        np.log1p(orders), np.where(has, at - last, 999.0), span, coupons / np.maximum(orders, 1), coupons,
        camp_rate * 30, normal_rate * 30, np.log((camp_rate + 0.01) / (normal_rate + 0.01)),
        np.bincount(c[in_camp], weights=cp[in_camp].astype(float), minlength=n),
        delivered, (opens + 0.5) / (delivered + 2.0),
        (y_to + base) / (n_to + 1.0) - (y_co + base) / (n_co + 1.0), y_to, y_co, n_to, n_co])
    if h.extra is not None:
        X = np.column_stack([X, h.extra(at)])
    return X


def activity_at(customer: np.ndarray, day: np.ndarray, events: np.ndarray, *, n_customers: int
                ) -> Callable[[float], np.ndarray]:
    """(cut-off day) -> per customer: events in the 90 and 30 days before it, days since the last (capped at 120).

    Built from one read of daily event counts; visits are the sign of life that separates the customers a
    coupon can still move from those who have left."""

    def at(cut: float) -> np.ndarray:
        m = day + 1 <= cut  # whole days before the cut-off
        c, d, e = customer[m], day[m], events[m]
        last = np.full(n_customers, -np.inf)
        np.maximum.at(last, c, d + 1)
        n90 = np.bincount(c[d >= cut - 90], weights=e[d >= cut - 90], minlength=n_customers)
        n30 = np.bincount(c[d >= cut - 30], weights=e[d >= cut - 30], minlength=n_customers)
        return np.column_stack([n90, n30, np.minimum(cut - last, 120.0)])

    return at


def any_within(event_customer: np.ndarray, event_day: np.ndarray, customer: np.ndarray, day: np.ndarray,
               days: float) -> np.ndarray:
    """Whether each (customer, day) unit has an event of that customer in [day, day + days)."""
    if not len(customer):
        return np.zeros(0, dtype=bool)
    key = np.sort(event_customer * 1e6 + event_day)  # customers apart by far more than any day range
    lo = np.searchsorted(key, customer * 1e6 + day, side="left")
    hi = np.searchsorted(key, customer * 1e6 + day + days, side="left")
    return hi > lo


def units(h: History, windows: list[tuple[float, float]], *, as_of_day: float, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, treatment, outcome, opened, test number) of every delivery whose outcome window closed before as_of_day."""
    s = h.sends
    idx = np.flatnonzero(s.day + OUTCOME_DAYS <= as_of_day)
    if len(idx) > MAX_ROWS:
        idx = np.sort(np.random.default_rng(seed).choice(idx, MAX_ROWS, replace=False))
    parts_X, parts = [], []
    for k in np.unique(s.send[idx]).tolist():
        rows = idx[s.send[idx] == k]
        parts_X.append(features_at(h, float(s.day[rows].min()), windows)[s.customer[rows]])
        parts.append(rows)
    if not parts:
        e = np.empty(0, dtype=bool)
        return np.empty((0, 0)), e, e, e, np.empty(0, dtype=np.int64)
    rows = np.concatenate(parts)
    return np.vstack(parts_X), s.coupon[rows], h.bought[rows], h.opened[rows], s.send[rows]


def _fit(name: str, X: np.ndarray, t: np.ndarray, y: np.ndarray, o: np.ndarray) -> Any:
    if name == "x_learner_opened":
        return ExposureUplift().fit(X, t, y, o)
    return (XLearner() if name == "x_learner" else TwoModelUplift()).fit(X, t, y)


def fit_uplift(h: History, *, as_of_day: float, holdout_share: float = 0.25) -> UpliftResult | None:
    """Fit the uplift learner on every test, backtested on the latest tests held out; uplift per customer as of
    as_of_day. None when the history holds no randomised coupon test with outcomes on both arms.

    The learner is the X-learner among the openers times P(open) when opening is balanced across the arms (it
    should be: the coupon is inside), else the X-learner on all recipients; the backtest reports both the
    two-model learner and a random order, on the held-out tests.
    """
    windows = [w for w in campaign_windows(h.order_day, h.order_coupon) if w[1] <= as_of_day]
    X, t, y, o, send = units(h, windows, as_of_day=as_of_day)
    if not len(y) or y[t].sum() < 10 or y[~t].sum() < 10:
        return None
    balanced = bool(exposure_balanced(t, o) and y[o & t].sum() >= 10 and y[o & ~t].sum() >= 10)
    chosen = "x_learner_opened" if balanced else "x_learner"
    tests = np.unique(send)
    metrics: dict[str, float] = {"tests": float(len(tests)), "units": float(len(y)),
                                 "ate": float(y[t].mean() - y[~t].mean()),
                                 "open_rate_coupon": float(o[t].mean()), "open_rate_plain": float(o[~t].mean())}
    baseline: dict[str, float] = {}
    n_hold = max(1, int(round(len(tests) * holdout_share)))
    test = send >= tests[-n_hold]
    train = ~test
    if len(tests) >= 3 and y[train & t].sum() >= 10 and y[train & ~t].sum() >= 10:
        ate = float(y[test & t].mean() - y[test & ~t].mean())
        metrics.update(held_out_tests=float(n_hold), held_out_units=float(test.sum()))
        for name in ("x_learner_opened", "x_learner"):
            if name == "x_learner_opened" and not balanced:
                continue
            sc = _fit(name, X[train], t[train], y[train], o[train]).predict(X[test])
            target = metrics if name == chosen else baseline
            target[f"uplift_at_30_{name}"] = observed_uplift_at_k(sc, t[test], y[test], TOP)
            target[f"qini_{name}"] = qini_coefficient(sc, t[test], y[test])
        baseline["uplift_at_30_random"] = ate  # a random 30 % gains the average effect
        baseline["qini_random"] = qini_coefficient(np.random.default_rng(0).random(int(test.sum())), t[test], y[test])
        if ate > 0:
            metrics["uplift_at_30_over_random"] = metrics[f"uplift_at_30_{chosen}"] / ate
    model = _fit(chosen, X, t, y, o)
    uplift = model.predict(features_at(h, as_of_day, windows))
    params = {"campaign_windows": len(windows), "outcome_days": OUTCOME_DAYS, "learner": chosen,
              "exposure_balanced": balanced}
    return UpliftResult(uplift, chosen, params, metrics, baseline)
