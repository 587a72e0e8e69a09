"""Incentive uplift from randomized history: who buys only with a coupon, who buys anyway (X-learner)."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor


class TwoModelUplift:
    """P(buy | treated, x) - P(buy | control, x), one classifier per arm."""

    def __init__(self, *, classifier=None, random_state: int = 0) -> None:  # type: ignore[no-untyped-def]
        self.classifier = classifier
        self.random_state = random_state

    def _base(self):  # type: ignore[no-untyped-def]
        # small, strongly regularised trees: outcomes are rare and effects small, so deep trees fit noise
        return clone(self.classifier) if self.classifier is not None else HistGradientBoostingClassifier(
            max_iter=100, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=100, l2_regularization=1.0,
            random_state=self.random_state)

    def fit(self, X: np.ndarray, treatment: np.ndarray, y: np.ndarray) -> TwoModelUplift:
        t = treatment.astype(bool)
        self.treated_ = self._base().fit(X[t], y[t])
        self.control_ = self._base().fit(X[~t], y[~t])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.treated_.predict_proba(X)[:, 1] - self.control_.predict_proba(X)[:, 1]


class XLearner:
    """Kuenzel et al. (2019): impute individual effects across arms, regress them, blend by propensity."""

    def __init__(self, *, random_state: int = 0) -> None:
        self.random_state = random_state

    def fit(self, X: np.ndarray, treatment: np.ndarray, y: np.ndarray) -> XLearner:
        t = treatment.astype(bool)
        base = TwoModelUplift(random_state=self.random_state).fit(X, treatment, y)
        mu1, mu0 = base.treated_, base.control_
        d1 = y[t] - mu0.predict_proba(X[t])[:, 1]  # treated: what happened minus what would have
        d0 = mu1.predict_proba(X[~t])[:, 1] - y[~t]
        reg = HistGradientBoostingRegressor(max_iter=100, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=100,
                                            l2_regularization=1.0, random_state=self.random_state)
        self.tau1_ = clone(reg).fit(X[t], d1)
        self.tau0_ = clone(reg).fit(X[~t], d0)
        self.propensity_ = float(t.mean())  # randomized history: constant propensity
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        g = self.propensity_
        return g * self.tau0_.predict(X) + (1 - g) * self.tau1_.predict(X)


class ExposureUplift:
    """Uplift = P(exposed | x) x uplift among the exposed, for an incentive only an exposed customer can see.

    A coupon inside a message works only on those who open it, and opening cannot depend on a variant the
    recipient has not seen yet; so among the openers the split is still random, the effect per unit is several
    times larger, and the inner learner sees far less noise. (Check that exposure is balanced across the arms
    before relying on it.)
    """

    def __init__(self, *, random_state: int = 0) -> None:
        self.random_state = random_state

    def fit(self, X: np.ndarray, treatment: np.ndarray, y: np.ndarray, exposed: np.ndarray) -> ExposureUplift:
        e = exposed.astype(bool)
        self.exposure_ = TwoModelUplift(random_state=self.random_state)._base().fit(X, e)
        self.effect_ = XLearner(random_state=self.random_state).fit(X[e], treatment[e], y[e])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.exposure_.predict_proba(X)[:, 1] * self.effect_.predict(X)


def exposure_balanced(treatment: np.ndarray, exposed: np.ndarray, z: float = 3.0) -> bool:
    """Whether the exposure rate is the same in both arms (within z standard errors)."""
    t, e = treatment.astype(bool), exposed.astype(float)
    if t.sum() < 2 or (~t).sum() < 2:
        return False
    p1, p0 = e[t].mean(), e[~t].mean()
    p = e.mean()
    se = np.sqrt(max(p * (1 - p), 1e-12) * (1 / t.sum() + 1 / (~t).sum()))
    return bool(abs(p1 - p0) <= z * se)


def uplift_at_k(scores: np.ndarray, true_uplift: np.ndarray, fraction: float) -> float:
    """Mean true uplift of the top fraction by score (the truth is known in the simulator)."""
    k = max(1, int(round(len(scores) * fraction)))
    top = np.argsort(-scores, kind="stable")[:k]
    return float(true_uplift[top].mean())


def observed_uplift_at_k(scores: np.ndarray, treatment: np.ndarray, y: np.ndarray, fraction: float) -> float:
    """On randomised data: outcome rate of the treated minus that of the controls among the top fraction by
    score (no ground truth needed; a random ranking gives the average effect)."""
    k = max(1, int(round(len(scores) * fraction)))
    top = np.zeros(len(scores), dtype=bool)
    top[np.argsort(-scores, kind="stable")[:k]] = True
    t = treatment.astype(bool)
    if not (top & t).any() or not (top & ~t).any():
        return float("nan")
    return float(y[top & t].mean() - y[top & ~t].mean())


def qini_coefficient(scores: np.ndarray, treatment: np.ndarray, y: np.ndarray) -> float:
    """Area between the Qini curve and the random line, normalised by the number of customers."""
    order = np.argsort(-scores, kind="stable")
    t, yy = treatment[order].astype(bool), y[order].astype(float)
    n_t, n_c = np.cumsum(t), np.cumsum(~t)
    y_t, y_c = np.cumsum(yy * t), np.cumsum(yy * ~t)
    with np.errstate(divide="ignore", invalid="ignore"):
        qini = y_t - np.where(n_c > 0, y_c * n_t / n_c, 0.0)
    random_line = np.linspace(0, qini[-1], len(qini))
    return float((qini - random_line).sum() / len(qini))
