"""Churn (no purchase in the next window) and lead propensity as calibrated classifiers; pure sklearn."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression


class ChurnClassifier(BaseEstimator):
    """Gradient boosting on RFM and BG/NBD features; log-loss training keeps the probabilities calibrated.

    Trained on features at one cut-off with the outcome in the window after it, applied at a later cut-off.
    """

    def __init__(self, *, random_state: int = 0, max_iter: int = 120, max_rows: int = 200_000) -> None:
        self.random_state = random_state
        self.max_iter = max_iter
        self.max_rows = max_rows

    def fit(self, X: np.ndarray, churned: np.ndarray) -> ChurnClassifier:
        y = np.asarray(churned).astype(int)
        if len(y) > self.max_rows:  # a random subset learns the same curve in a fraction of the time
            keep = np.random.default_rng(self.random_state).choice(len(y), self.max_rows, replace=False)
            X, y = X[keep], y[keep]
        if len(np.unique(y)) < 2:
            self.constant_ = float(y.mean()) if len(y) else 0.5
            return self
        self.constant_ = None
        self.model_ = HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=0.05, max_leaf_nodes=15,
                                                     min_samples_leaf=40, l2_regularization=1.0,
                                                     random_state=self.random_state).fit(X, y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(churn) per row."""
        if self.constant_ is not None:
            return np.full(len(X), self.constant_)
        return self.model_.predict_proba(X)[:, 1]


class LeadPropensity(BaseEstimator):
    """P(first order within the window) for customers without orders, from their recent activity."""

    def __init__(self, *, C: float = 1.0) -> None:
        self.C = C

    @staticmethod
    def features(events: np.ndarray, days_since_event: np.ndarray, age_days: np.ndarray,
                 known: np.ndarray) -> np.ndarray:
        """log events, recency of activity, account age, whether the lead is known (registered)."""
        return np.column_stack([np.log1p(events), np.log1p(np.minimum(days_since_event, 365)),
                                np.log1p(np.clip(age_days, 0, 3650)), known.astype(float)])

    def fit(self, X: np.ndarray, bought: np.ndarray) -> LeadPropensity:
        y = np.asarray(bought).astype(int)
        self.base_rate_ = float(y.mean()) if len(y) else 0.0
        self.model_ = LogisticRegression(C=self.C, max_iter=500).fit(X, y) if len(np.unique(y)) == 2 else None
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(first order in the window) per row."""
        if self.model_ is None:
            return np.full(len(X), self.base_rate_)
        return self.model_.predict_proba(X)[:, 1]


def churn_features(bg_rate: np.ndarray, p_alive: np.ndarray, frequency: np.ndarray, recency: np.ndarray,
                   T: np.ndarray, monetary: np.ndarray, no_purchase: np.ndarray) -> np.ndarray:
    """The churn feature matrix (weeks): RFM, silence, BG/NBD's rate, P(alive) and P(no purchase)."""
    gap = np.where(frequency > 0, recency / np.maximum(frequency, 1), T)
    return np.column_stack([frequency, recency, T, T - recency, monetary, bg_rate, p_alive, no_purchase,
                            (T - recency) / np.maximum(gap, 1 / 7)])
