"""Gamma-Gamma spend model (Fader, Hardie & Lee 2005b; Fader & Hardie 2013) and discounted customer lifetime value.

Units: ``frequency`` is the number of repeat purchases and ``monetary_value`` the mean value of those repeat
purchases, in currency. Spend predictions are per purchase, in the same currency.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from scipy.special import digamma, gammaln
from sklearn.base import BaseEstimator

from emma.predict.estimators.bgnbd import BGNBD, _converged

__all__ = ["PERIODS_PER_MONTH", "GammaGamma"]

# How many of the BG/NBD time unit make a month (the same factors as lifetimes, so results compare).
PERIODS_PER_MONTH = {"H": 30.0 * 24.0, "D": 30.0, "W": 4.345, "M": 1.0}


class GammaGamma(BaseEstimator):
    """Spend per purchase: gamma(p, nu) for each purchase (customer mean p / nu), nu gamma(q, v) across customers.

    Only customers with at least one repeat purchase inform the fit. ``v_`` is the paper's gamma. ``penalizer``
    adds ``penalizer * sum(params**2)`` to the mean negative log-likelihood, as lifetimes' ``penalizer_coef``.
    """

    def __init__(self, *, penalizer: float = 0.0, tol: float = 1e-8, max_iter: int = 1000) -> None:
        self.penalizer = penalizer
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, frequency: ArrayLike, monetary_value: ArrayLike, weights: ArrayLike | None = None) -> GammaGamma:
        """Fit p, q, v on the customers with frequency > 0."""
        x = np.asarray(frequency, dtype=np.float64)
        m = np.asarray(monetary_value, dtype=np.float64)
        w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
        if not (x.shape == m.shape == w.shape) or x.ndim != 1:
            raise ValueError("frequency, monetary_value and weights must be 1-d arrays of the same length")
        keep = x > 0
        if not np.any(keep):
            raise ValueError("no customer with a repeat purchase to fit on")
        if np.any(m[keep] <= 0):
            raise ValueError("monetary_value must be positive for customers with frequency > 0")
        rows, inverse = np.unique(np.column_stack([x[keep], m[keep]]), axis=0, return_inverse=True)
        ww = np.bincount(inverse.ravel(), weights=w[keep], minlength=len(rows))
        xx, mm = rows[:, 0], rows[:, 1]
        total = float(ww.sum())
        # terms that do not depend on the parameters
        log_m, log_x, xm = np.log(mm), np.log(xx), xx * mm

        def objective(logp: np.ndarray) -> tuple[float, np.ndarray]:
            p, q, v = params = np.exp(logp)
            px = p * xx
            log_vxm = np.log(v + xm)
            ll = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v)
                  + (px - 1.0) * log_m + px * log_x - (px + q) * log_vxm)
            dg = digamma(px + q)
            g = np.array([
                ww @ (xx * (dg - digamma(px) + log_m + log_x - log_vxm)),
                ww @ (dg - digamma(q) + np.log(v) - log_vxm),
                ww @ (q / v - (px + q) / (v + xm)),
            ])
            f = -float(ww @ ll) / total + self.penalizer * float(params @ params)
            return f, (-g / total + 2.0 * self.penalizer * params) * params

        # start from the population mean spend: E[M] = p v / (q - 1) with p = 1, q = 2
        x0 = np.log([1.0, 2.0, float(np.average(mm, weights=ww))])
        # BFGS on the gradient norm: the likelihood has a long flat ridge along which p, q and v trade off, where
        # a stop on the relative change of the objective ends too early.
        res = minimize(objective, x0, jac=True, method="BFGS", options={"maxiter": self.max_iter, "gtol": self.tol})
        params = np.exp(res.x)
        self.p_, self.q_, self.v_ = (float(v) for v in params)
        self.loglik_ = -(float(res.fun) - self.penalizer * float(params @ params)) * total  # without the penalty
        self.n_iter_ = int(res.nit)
        self.converged_ = _converged(res)
        return self

    @property
    def params_(self) -> dict[str, float]:
        return {"p": self.p_, "q": self.q_, "v": self.v_}

    def conditional_expected_average_profit(self, frequency: ArrayLike, monetary_value: ArrayLike) -> np.ndarray:
        """E[spend per purchase | x, mean spend]: the customer's mean shrunk to the population mean p v / (q - 1).

        Customers without repeat purchases get the population mean (their ``monetary_value`` is ignored).
        Needs q > 1, otherwise the population mean is infinite.
        """
        if not hasattr(self, "p_"):
            raise AttributeError("GammaGamma is not fitted yet: call fit() or set p_, q_, v_")
        p, q, v = self.p_, self.q_, self.v_
        x = np.asarray(frequency, dtype=np.float64)
        m = np.asarray(monetary_value, dtype=np.float64)
        population = p * v / (q - 1.0)
        weight_own = p * x / (p * x + q - 1.0)
        return np.where(x > 0, (1.0 - weight_own) * population + weight_own * np.where(x > 0, m, 0.0), population)

    def customer_lifetime_value(
        self,
        bgnbd: BGNBD,
        frequency: ArrayLike,
        recency: ArrayLike,
        T: ArrayLike,
        monetary_value: ArrayLike,
        *,
        time: int = 12,
        discount_rate: float = 0.01,
        freq: str = "W",
    ) -> np.ndarray:
        """Discounted value of the next ``time`` months of purchases, in the currency of ``monetary_value``.

        ``recency`` and ``T`` (and the BG/NBD fit) are in units of ``freq``: "W" weeks (a month is 4.345 weeks),
        "D" days (30 per month), "H" hours or "M" months. ``discount_rate`` is per month. Month k's expected
        purchases (the BG/NBD increase between months k - 1 and k) are valued at the expected spend per purchase
        and discounted by (1 + discount_rate)^k, as in lifetimes' ``customer_lifetime_value``.
        """
        if freq not in PERIODS_PER_MONTH:
            raise ValueError(f"freq must be one of {sorted(PERIODS_PER_MONTH)}")
        if time < 1:
            raise ValueError("time must be at least one month")
        spend = self.conditional_expected_average_profit(frequency, monetary_value)
        months = np.arange(time + 1, dtype=np.float64)
        x, tx, TT = (np.asarray(a, dtype=np.float64) for a in (frequency, recency, T))
        # all month boundaries at once: shape (time + 1, customers)
        t = (months * PERIODS_PER_MONTH[freq]).reshape((-1,) + (1,) * x.ndim)
        cumulative = bgnbd.expected_purchases(t, x, tx, TT)
        discount = (1.0 + discount_rate) ** -months[1:]
        return spend * np.tensordot(discount, np.diff(cumulative, axis=0), axes=1)
