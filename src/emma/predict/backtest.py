"""Backtests: fit on data before a cut-off, compare with what happened after it, choose the value model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score

from emma.predict import features as F
from emma.predict.estimators.bgnbd import BGNBD
from emma.predict.estimators.hybrid import HybridRepeat


@dataclass
class ValueChoice:
    """Which repeat-purchase model won the backtest, with the figures that decided it."""

    chosen: str
    metrics: dict[str, float] = field(default_factory=dict)
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
    bg = BGNBD().fit(r.frequency, r.recency, r.T)
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
        return ValueChoice("bgnbd", {"reason": float("nan")})
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
