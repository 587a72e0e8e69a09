"""Best send hour by empirical Bayes: each customer's engagement hours shrunk toward the population."""

from __future__ import annotations

import numpy as np


class SendHourModel:
    """Dirichlet-multinomial over 24 hours; the prior strength is fitted to the population's spread."""

    def __init__(self, *, prior_strength: float | None = None, bandwidth: float = 1.5) -> None:
        self.prior_strength = prior_strength
        self.bandwidth = bandwidth

    def fit(self, customers: np.ndarray, hours: np.ndarray, *, n_customers: int,
            weights: np.ndarray | None = None) -> SendHourModel:
        counts = np.zeros((n_customers, 24))
        np.add.at(counts, (customers, hours % 24), 1.0 if weights is None else weights)
        pop = counts.sum(axis=0) + 1.0
        self.population_ = pop / pop.sum()
        self.strength_ = self.prior_strength if self.prior_strength is not None else _moment_strength(counts)
        self.counts_ = counts
        return self

    def posterior(self) -> np.ndarray:
        """Posterior mean hour distribution per customer (rows sum to one)."""
        post = self.counts_ + self.strength_ * self.population_
        if self.bandwidth > 0:  # engagement at 19:00 says something about 18:00 and 20:00 too (circular kernel)
            offsets = np.arange(-6, 7)
            kernel = np.exp(-offsets ** 2 / (2 * self.bandwidth ** 2))
            post = sum(w * np.roll(post, int(o), axis=1) for o, w in zip(offsets, kernel / kernel.sum(), strict=True))
        return post / post.sum(axis=1, keepdims=True)

    def best_hour(self) -> np.ndarray:
        """The hour (0-23, in the time zone the hours were given in) with the highest posterior."""
        return np.argmax(self.posterior(), axis=1)


def _moment_strength(counts: np.ndarray) -> float:
    """Method-of-moments Dirichlet precision from customers with enough observations."""
    n = counts.sum(axis=1)
    ok = n >= 5
    if ok.sum() < 10:
        return 10.0
    p = counts[ok] / n[ok, None]
    mean = p.mean(axis=0)
    var = p.var(axis=0)
    # for a Dirichlet, var_k = m_k (1 - m_k) / (s + 1); average over hours with mass
    mask = mean > 1e-3
    ratio = (mean[mask] * (1 - mean[mask]) / np.maximum(var[mask], 1e-9)).mean() - 1.0
    return float(np.clip(ratio, 1.0, 200.0))
