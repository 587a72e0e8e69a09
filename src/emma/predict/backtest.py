"""Backtests: fit on data before a cut-off, compare with what happened after it, choose the value model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from emma.predict import features as F
from emma.predict.estimators.bgnbd import BGNBD
from emma.predict.estimators.hybrid import HybridRepeat


@dataclass
class ValueChoice:
    """Which repeat-purchase model won the backtest, with the figures that decided it."""

    chosen: str
    metrics: dict[str, Any] = field(default_factory=dict)
    hybrid: HybridRepeat | None = None


def rmse(pred: np.ndarray, actual: np.ndarray) -> float:
    """Root mean squared error."""
    return float(np.sqrt(np.mean((pred - actual) ** 2)))


def _window(cust: np.ndarray, day: np.ndarray, rev: np.ndarray, start: float, end: float) -> tuple:  # type: ignore[type-arg]
    m = (day >= start) & (day < end)
    return cust[m], day[m], rev[m]


def _fit_hybrid(cust: np.ndarray, day: np.ndarray, rev: np.ndarray, cut: float, window: float) -> HybridRepeat | None:
    before = day < cut
    r = F.rfm(cust[before], day[before], rev[before], as_of_day=cut)
    if len(r) < 50:
        return None
    bg = fit_bgnbd(r)
    y, _ = F.future_purchase_days(*_window(cust, day, rev, cut, cut + window), customers=r.customer_id)
    X = HybridRepeat.features(bg, r.frequency, r.recency, r.T, r.monetary, window / 7.0)
    return HybridRepeat().fit(X, y / (window / 7.0))


def choose_value_model(cust: np.ndarray, day: np.ndarray, rev: np.ndarray, *, as_of_day: float,
                       window_days: float) -> ValueChoice:
    """Hybrid vs BG/NBD: train the hybrid on [t-2w, t-w), score both at t-w against [t-w, t); keep the better.

    The winner's hybrid is then retrained on the latest full window for use at as_of.
    """
    t1 = as_of_day - window_days
    t0 = t1 - window_days
    hybrid_old = _fit_hybrid(cust, day, rev, t0, window_days)
    before = day < t1
    r = F.rfm(cust[before], day[before], rev[before], as_of_day=t1)
    if hybrid_old is None or len(r) < 50:
        return ValueChoice("bgnbd", {"evaluation": "too little history: the backtest needs two windows"})
    bg = BGNBD().fit(r.frequency, r.recency, r.T)
    y, _ = F.future_purchase_days(*_window(cust, day, rev, t1, as_of_day), customers=r.customer_id)
    w = window_days / 7.0
    pred_bg = bg.expected_purchases(w, r.frequency, r.recency, r.T)
    pred_h = hybrid_old.predict_rate(HybridRepeat.features(bg, r.frequency, r.recency, r.T, r.monetary, w)) * w
    metrics = {"rmse_bgnbd": rmse(pred_bg, y), "rmse_hybrid": rmse(pred_h, y),
               "rmse_baseline_rate": rmse(r.frequency / np.maximum(r.T, 1 / 7) * w, y)}
    if metrics["rmse_hybrid"] < metrics["rmse_bgnbd"]:
        return ValueChoice("hybrid", metrics, _fit_hybrid(cust, day, rev, t1, window_days))
    return ValueChoice("bgnbd", metrics)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC, nan when only one class is present."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def customer_sample(cust: np.ndarray, max_customers: int, *, seed: int = 0) -> np.ndarray:
    """Mask of the order rows of at most max_customers customers, drawn stratified by their number of orders.

    The model choices and the trained classifiers learn curves that a hundred thousand customers pin down as
    well as a million: beyond that, more customers only cost time. Customers are ranked by order count (ties
    at random) and every k-th is taken, so each order-count stratum keeps its share.
    """
    ids, counts = np.unique(cust, return_counts=True)
    if len(ids) <= max_customers:
        return np.ones(len(cust), dtype=bool)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(ids)), counts))
    chosen = np.sort(ids[order[(np.arange(max_customers) * (len(ids) / max_customers)).astype(np.int64)]])
    pos = np.minimum(np.searchsorted(chosen, cust), len(chosen) - 1)
    return chosen[pos] == cust


# -- churn ------------------------------------------------------------------------------------------


FIT_ROWS = 300_000


def fit_bgnbd(r: F.RFM, *, max_rows: int = FIT_ROWS, seed: int = 0) -> BGNBD:
    """BG/NBD on at most max_rows customers drawn at random: the four parameters need no more (helper fits)."""
    idx = np.arange(len(r))
    if len(r) > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(len(r), max_rows, replace=False))
    return BGNBD().fit(r.frequency[idx], r.recency[idx], r.T[idx])


def churn_matrix(r: F.RFM, window_days: float, *, bg: BGNBD | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BG/NBD on an RFM summary (unless given one fitted on it), then the churn features and BG/NBD's own
    P(no purchase in the window)."""
    from emma.predict.estimators.churn import churn_features
    from emma.predict.lifecycle import bgnbd_no_purchase

    bg = bg if bg is not None else fit_bgnbd(r)
    w = window_days / 7.0
    pa = bg.p_alive(r.frequency, r.recency, r.T)
    rate = bg.expected_purchases(w, r.frequency, r.recency, r.T) / w
    nop = bgnbd_no_purchase(pa, bg.r_, bg.alpha_, r.frequency, r.T, w)
    return churn_features(rate, pa, r.frequency, r.recency, r.T, r.monetary, nop), nop


@dataclass
class ChurnChoice:
    """The churn model for as_of (trained on the latest full window) and its backtest."""

    model: object | None
    metrics: dict[str, float] = field(default_factory=dict)


Extra = Callable[[float, np.ndarray], np.ndarray]  # (cut-off day, customer ids) -> extra feature columns


def choose_churn_model(cust: np.ndarray, day: np.ndarray, rev: np.ndarray, *, as_of_day: float,
                       window_days: float, extra: Extra | None = None, origins: int = 3,
                       step_days: float = 30.0) -> ChurnChoice:
    """A classifier against BG/NBD's P(no purchase); kept if it ranks churners better.

    Training rows come from several cut-offs whose outcome windows are complete before as_of (t1 = as_of -
    window, t1 - 30 days, ...), so a short history still gives enough examples. The comparison is a temporal
    holdout (train on cut-offs up to t1 - window, test at t1) where the history allows, else 5-fold
    cross-validation grouped by customer.
    """
    from sklearn.model_selection import GroupKFold

    from emma.predict.estimators.churn import ChurnClassifier

    t1 = as_of_day - window_days

    def at(cut: float) -> tuple[F.RFM, np.ndarray, np.ndarray, np.ndarray] | None:
        before = day < cut
        r = F.rfm(cust[before], day[before], rev[before], as_of_day=cut)
        if len(r) < 50:
            return None
        X, nop = churn_matrix(r, window_days)
        if extra is not None:
            X = np.column_stack([X, extra(cut, r.customer_id)])
        y, _ = F.future_purchase_days(*_window(cust, day, rev, cut, cut + window_days), customers=r.customer_id)
        return r, X, nop, y == 0

    latest = at(t1)
    if latest is None or len(np.unique(latest[3])) < 2 or min(latest[3].sum(), (~latest[3]).sum()) < 10:
        return ChurnChoice(None, {})
    r1, X1, nop1, y1 = latest
    stacked = [(t1, latest)]
    for j in range(1, 2 * origins + 1):
        if len(stacked) >= origins and sum(c <= t1 - window_days for c, _ in stacked) >= origins:
            break  # enough cut-offs for training and for the holdout: more would only be computed, not used
        got = at(t1 - j * step_days)
        if got is None:
            break
        stacked.append((t1 - j * step_days, got))
    older = [(c, g) for c, g in stacked if c <= t1 - window_days][:origins]
    if older and sum(len(g[3]) for _, g in older) >= 100:
        Xo = np.vstack([g[1] for _, g in older])
        yo = np.concatenate([g[3] for _, g in older])
        p1 = ChurnClassifier().fit(Xo, yo).predict_proba(X1) if len(np.unique(yo)) == 2 else None
        how = "holdout"
    else:
        p1 = None
    train = stacked[:origins]
    X = np.vstack([g[1] for _, g in train])
    y = np.concatenate([g[3] for _, g in train])
    if p1 is None:
        groups = np.concatenate([g[0].customer_id for _, g in train])
        p = np.zeros(len(y))
        for tr, te in GroupKFold(5).split(X, y, groups):
            p[te] = ChurnClassifier().fit(X[tr], y[tr]).predict_proba(X[te])
        p1 = p[: len(y1)]  # the rows of the latest cut-off come first
        how = "cross_validation"
    metrics = {"auc_classifier": auc(p1, y1), "auc_bgnbd": auc(nop1, y1),
               "auc_baseline_recency": auc(r1.T - r1.recency, y1),
               "brier_classifier": float(np.mean((p1 - y1) ** 2)), "brier_bgnbd": float(np.mean((nop1 - y1) ** 2)),
               "mean_predicted": float(p1.mean()), "observed_rate": float(y1.mean()), "customers": float(len(y1)),
               "training_cutoffs": float(len(train)), "evaluation": how}
    if metrics["auc_classifier"] >= metrics["auc_bgnbd"]:
        return ChurnChoice(ChurnClassifier().fit(X, y), metrics)
    return ChurnChoice(None, metrics)


# -- recommendations --------------------------------------------------------------------------------


def hit_recall(recs: np.ndarray, truth: sp.csr_matrix) -> tuple[float, float]:
    """Hit rate (any recommended item bought) and recall (share of the bought items recommended)."""
    rows = np.repeat(np.arange(recs.shape[0]), recs.shape[1])
    cols = recs.ravel()
    ok = cols >= 0
    hit = np.zeros(len(cols))
    hit[ok] = np.asarray(truth[rows[ok], cols[ok]]).ravel() > 0
    per_row = hit.reshape(recs.shape).sum(axis=1)
    n_true = np.asarray((truth > 0).sum(axis=1)).ravel()
    return float(np.mean(per_row > 0)), float(np.mean(per_row / np.maximum(n_true, 1)))


def next_order_items(cust: np.ndarray, day: np.ndarray, item: np.ndarray, customers: np.ndarray,
                     *, n_items: int, start: float, end: float) -> sp.csr_matrix:
    """(customers x items) 1 where the item was in the customer's first order day in [start, end)."""
    m = (day >= start) & (day < end)
    c, d, i = cust[m], np.floor(day[m]), item[m]
    pos = np.searchsorted(customers, c)
    ok = (pos < len(customers)) & (customers[np.minimum(pos, len(customers) - 1)] == c)
    pos, d, i = pos[ok], d[ok], i[ok]
    first = np.full(len(customers), np.inf)
    np.minimum.at(first, pos, d)
    keep = d == first[pos]
    M = sp.csr_matrix((np.ones(int(keep.sum())), (pos[keep], i[keep])), shape=(len(customers), n_items))
    M.data[:] = 1.0
    return M
