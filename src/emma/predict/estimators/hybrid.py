"""A boosted repeat-purchase model on RFM features plus the BG/NBD outputs; the backtest decides whether it is used."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator

from emma.predict.estimators.bgnbd import BGNBD


class HybridRepeat(BaseEstimator):
    """Gradient boosting (Poisson loss) predicting purchases per week ahead.

    Trained on one window (features at a cut-off, purchases after it), applied at a later cut-off.
    """

    def __init__(self, *, random_state: int = 0, max_iter: int = 200, max_rows: int = 200_000) -> None:
        self.random_state = random_state
        self.max_iter = max_iter
        self.max_rows = max_rows

    @staticmethod
    def features(bg: BGNBD, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, monetary: ArrayLike,
                 horizon_weeks: float) -> np.ndarray:
        """The feature matrix: RFM, time since last purchase, BG/NBD's rate and P(alive)."""
        x, tx, TT, m = (np.asarray(a, dtype=np.float64) for a in (frequency, recency, T, monetary))
        rate = bg.expected_purchases(horizon_weeks, x, tx, TT) / horizon_weeks
        return np.column_stack([x, tx, TT, TT - tx, m, rate, bg.p_alive(x, tx, TT)])

    def fit(self, X: np.ndarray, purchases_per_week: np.ndarray) -> HybridRepeat:
        from sklearn.ensemble import HistGradientBoostingRegressor

        if len(X) > self.max_rows:  # a random subset learns the same curve in a fraction of the time
            keep = np.random.default_rng(self.random_state).choice(len(X), self.max_rows, replace=False)
            X, purchases_per_week = X[keep], np.asarray(purchases_per_week)[keep]
        self.model_ = HistGradientBoostingRegressor(loss="poisson", max_iter=self.max_iter, learning_rate=0.05,
                                                    max_leaf_nodes=15, min_samples_leaf=40,
                                                    random_state=self.random_state).fit(X, purchases_per_week)
        return self

    def predict_rate(self, X: np.ndarray) -> np.ndarray:
        """Purchases per week."""
        return np.maximum(self.model_.predict(X), 0.0)
