"""BG/NBD repeat-purchase model (Fader, Hardie & Lee 2005): vectorised maximum likelihood and predictions.

Units: ``frequency`` is the number of repeat purchases (purchase periods after the first one), ``recency`` the
time of the last repeat purchase since the first purchase and ``T`` the time since the first purchase, all in the
same time unit (weeks by convention). Predictions are in that unit too.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import OptimizeResult, minimize
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1
from sklearn.base import BaseEstimator

__all__ = ["BGNBD", "simulate_bgnbd"]


def _as_float(*arrays: ArrayLike) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


class _Data:
    """The fitting data, reduced twice.

    Identical (x, t_x, T) rows are fitted once with their count as weight. Each column is then factorised, so
    the transcendental functions run on the distinct values of x, t_x and T only (a few hundred each when time is
    recorded by day, however many customers) and the per-row work is gathers, a log-sum-exp and weighted sums.
    """

    def __init__(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray, w: np.ndarray) -> None:
        # Factorise each column, then find the distinct rows through one integer key per row: several times
        # faster than np.unique(axis=0), which sorts the rows as records.
        self.ux, cx = np.unique(x, return_inverse=True)
        self.utx, ctx = np.unique(tx, return_inverse=True)
        self.uT, cT = np.unique(T, return_inverse=True)
        ntx, nT = len(self.utx), len(self.uT)
        if len(self.ux) * ntx * nT < 2**62:
            keys, inverse = np.unique((cx * ntx + ctx) * nT + cT, return_inverse=True)
            self.ix, rest = np.divmod(keys, ntx * nT)
            self.itx, self.iT = np.divmod(rest, nT)
        else:  # too many distinct values for one int64 key
            rows, inverse = np.unique(np.column_stack([cx, ctx, cT]), axis=0, return_inverse=True)
            self.ix, self.itx, self.iT = rows.T
        self.w = np.bincount(inverse.ravel(), weights=w, minlength=len(self.ix))
        self.total = float(self.w.sum())
        self.x = self.ux[self.ix]
        self.wx = np.bincount(self.ix, weights=self.w, minlength=len(self.ux))  # total weight per distinct x
        self.pos = self.ux > 0


def _loglik(
    params: np.ndarray, d: _Data, *, grad: bool = True
) -> tuple[float, np.ndarray | None]:
    """Total weighted log-likelihood and its gradient with respect to (r, alpha, a, b)."""
    r, alpha, a, b = params
    ux, pos = d.ux, d.pos
    # per distinct x: A1 + A2 of FHL (2005) and the constant part of A4 (only defined for x > 0)
    a12 = gammaln(r + ux) - gammaln(r) + r * np.log(alpha) + betaln(a, b + ux) - betaln(a, b)
    inv_bx1 = np.zeros_like(ux)
    inv_bx1[pos] = 1.0 / (b + ux[pos] - 1.0)
    c4 = np.full_like(ux, -np.inf)
    c4[pos] = np.log(a) + np.log(inv_bx1[pos])

    lT = np.log(alpha + d.uT)[d.iT]
    ltx = np.log(alpha + d.utx)[d.itx]
    rx = r + d.x
    a3 = -rx * lT
    a4 = c4[d.ix] - rx * ltx  # -inf for x = 0, so the second term vanishes there
    l34 = np.logaddexp(a3, a4)
    ll = float(d.wx @ a12 + d.w @ l34)
    if not grad:
        return ll, None

    w4 = np.exp(a4 - l34)  # share of the "dropped out after the last purchase" term
    w3 = 1.0 - w4
    ww3, ww4 = d.w * w3, d.w * w4
    ww4_x = np.bincount(d.ix, weights=ww4, minlength=len(ux))
    g_r = d.wx @ (digamma(r + ux) - digamma(r) + np.log(alpha)) - ww3 @ lT - ww4 @ ltx
    g_alpha = (d.total * r / alpha - (ww3 * rx) @ (1.0 / (alpha + d.uT))[d.iT]
               - (ww4 * rx) @ (1.0 / (alpha + d.utx))[d.itx])
    dab = digamma(a + b) - digamma(a + b + ux)
    g_a = d.wx @ dab + ww4_x.sum() / a
    g_b = d.wx @ (dab + digamma(b + ux) - digamma(b)) - ww4_x @ inv_bx1
    return ll, np.array([g_r, g_alpha, g_a, g_b])


def _converged(res: OptimizeResult) -> bool:
    """Success, or BFGS stopped by precision loss (status 2) with a gradient already near zero: the objective can
    no longer decrease in floating point, which happens on flat likelihoods with a very small ``tol``."""
    return bool(res.success or (res.status == 2 and np.max(np.abs(res.jac)) < 1e-6))


class BGNBD(BaseEstimator):
    """Beta-geometric / negative binomial model of repeat purchasing, fitted by maximum likelihood.

    ``penalizer`` adds ``penalizer * sum(params**2)`` to the mean negative log-likelihood, with alpha measured in
    units of the largest T (as lifetimes' ``penalizer_coef`` does, so the same values carry over).
    """

    def __init__(self, *, penalizer: float = 0.0, tol: float = 1e-8, max_iter: int = 1000) -> None:
        self.penalizer = penalizer
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, weights: ArrayLike | None = None) -> BGNBD:
        """Fit r, alpha, a, b. ``weights`` counts customers per row (for data already grouped by pattern)."""
        x, tx, TT = _as_float(frequency, recency, T)
        if not (x.shape == tx.shape == TT.shape) or x.ndim != 1 or len(x) == 0:
            raise ValueError("frequency, recency and T must be non-empty 1-d arrays of the same length")
        if np.any(x < 0) or np.any(tx < 0) or np.any(tx > TT) or np.any((x == 0) & (tx != 0)):
            raise ValueError("need frequency >= 0, 0 <= recency <= T, and recency 0 when frequency is 0")
        w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != x.shape or np.any(w < 0) or not w.sum() > 0:
            raise ValueError("weights must be non-negative, not all zero, and match frequency")
        if not TT.max() > 0:
            raise ValueError("need at least one customer with T > 0")

        # Time is rescaled so that the largest T is 1: alpha then starts near its optimum whatever the time unit.
        scale = 1.0 / float(TT.max())
        d = _Data(x, tx * scale, TT * scale, w)

        def objective(logp: np.ndarray) -> tuple[float, np.ndarray]:
            p = np.exp(logp)
            ll, g = _loglik(p, d)
            assert g is not None
            f = -ll / d.total + self.penalizer * float(p @ p)
            # chain rule for the log-parameters: d/dlog(p) = p * d/dp
            return f, (-g / d.total + 2.0 * self.penalizer * p) * p

        # BFGS: with four parameters its dense update costs nothing, and it stops on the gradient norm (``tol``)
        res = minimize(objective, np.zeros(4), jac=True, method="BFGS",
                       options={"maxiter": self.max_iter, "gtol": self.tol})
        r, alpha_s, a, b = np.exp(res.x)
        self.r_, self.alpha_, self.a_, self.b_ = float(r), float(alpha_s / scale), float(a), float(b)
        # In the original time unit: rescaling time shifts the log-likelihood by sum(w * x) * log(scale).
        ll_scaled, _ = _loglik(np.exp(res.x), d, grad=False)
        self.loglik_ = ll_scaled + float(d.w @ d.x) * np.log(scale)
        self.n_iter_ = int(res.nit)
        self.converged_ = _converged(res)
        self.n_patterns_ = len(d.w)
        return self

    @property
    def params_(self) -> dict[str, float]:
        return {"r": self.r_, "alpha": self.alpha_, "a": self.a_, "b": self.b_}

    def _params(self) -> tuple[float, float, float, float]:
        if not hasattr(self, "r_"):
            raise AttributeError("BGNBD is not fitted yet: call fit() or set r_, alpha_, a_, b_")
        return self.r_, self.alpha_, self.a_, self.b_

    def p_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """P(still active at T | x, t_x, T). Exactly 1 without repeat purchases: BG/NBD drops out only after one."""
        r, alpha, a, b = self._params()
        x, tx, TT = _as_float(frequency, recency, T)
        log_odds_dead = (np.log(a) - np.log(b + np.maximum(x, 1.0) - 1.0)
                         + (r + x) * (np.log(alpha + TT) - np.log(alpha + tx)))
        return np.where(x > 0, expit(-log_odds_dead), 1.0)

    def expected_purchases(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """E[purchases in (T, T + t] | x, t_x, T] (FHL 2005, eq. 10); ``t`` broadcasts against the customers."""
        r, alpha, a, b = self._params()
        t, x, tx, TT = _as_float(t, frequency, recency, T)
        if x.ndim == 1 and x.shape == TT.shape and len(x) > 10_000 and t.ndim <= 2 and t.shape[-1:] in ((), (1,)):
            # The Gauss hypergeometric part depends on (x, T) only, which take far fewer distinct values than
            # there are customers: evaluate it once per distinct pair (one call per customer costs seconds).
            keys, inv = np.unique(np.column_stack([x, TT]).view(np.complex128).ravel(), return_inverse=True)
            term = self._term(t, keys.real, keys.imag)[..., inv.ravel()]
        else:
            term = self._term(t, x, TT)
        first = (a + b + x - 1.0) / (a - 1.0)
        odds_dead = np.where(x > 0, a / (b + np.maximum(x, 1.0) - 1.0) * ((alpha + TT) / (alpha + tx)) ** (r + x), 0.0)
        return first * (1.0 - term) / (1.0 + odds_dead)

    def _term(self, t: np.ndarray, x: np.ndarray, TT: np.ndarray) -> np.ndarray:
        """((alpha + T) / (alpha + T + t))^(r + x) 2F1(r + x, b + x; a + b + x - 1; t / (alpha + T + t))."""
        r, alpha, a, b = self._params()
        c = a + b + x - 1.0
        z = t / (alpha + TT + t)
        ratio = (alpha + TT) / (alpha + TT + t)
        with np.errstate(over="ignore", invalid="ignore"):
            term = ratio ** (r + x) * hyp2f1(r + x, b + x, c, z)
            # Where 2F1 overflows (many purchases, long horizons) use Euler's transformation,
            # 2F1(a', b'; c; z) = (1 - z)^(c - a' - b') 2F1(c - a', c - b'; c; z), with 1 - z = ratio.
            bad = ~np.isfinite(term)
            if np.any(bad):
                alt = ratio ** (a - 1.0) * hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)
                term = np.where(bad, alt, term)
        return term

    def expected_purchases_new(self, t: ArrayLike) -> np.ndarray:
        """E[X(t)]: expected repeat purchases within t of the first purchase, for a new customer (FHL 2005, eq. 9)."""
        r, alpha, a, b = self._params()
        (t,) = _as_float(t)
        hyp = hyp2f1(r, b, a + b - 1.0, t / (alpha + t))
        return (a + b - 1.0) / (a - 1.0) * (1.0 - (alpha / (alpha + t)) ** r * hyp)


def simulate_bgnbd(
    T: ArrayLike, r: float, alpha: float, a: float, b: float, *, seed: int | np.random.Generator = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw (frequency, recency) for customers observed for ``T`` after their first purchase.

    Vectorised: with K ~ Poisson(lambda T) purchase opportunities and dropout after the N-th repeat purchase
    (N geometric), x = min(K, N); given K = k the purchase times are k sorted uniforms on (0, T], so the x-th
    one is T * Beta(x, k - x + 1).
    """
    rng = np.random.default_rng(seed)
    (TT,) = _as_float(T)
    n = TT.shape[0]
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    k = rng.poisson(lam * TT)
    x = np.minimum(k, rng.geometric(p))
    tx = np.zeros(n)
    pos = x > 0
    tx[pos] = TT[pos] * rng.beta(x[pos], k[pos] - x[pos] + 1)
    return x.astype(np.float64), tx
