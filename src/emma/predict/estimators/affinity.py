"""Category and attribute affinities: the customer's share over the population's, shrunk by evidence."""

from __future__ import annotations

import numpy as np


class AffinityModel:
    """Lift of a customer's interest in each group (category, or attribute such as sustainable) over the
    population, with additive smoothing so that three views do not make a passion."""

    def __init__(self, *, prior_strength: float = 5.0) -> None:
        self.prior_strength = prior_strength

    def fit(self, customers: np.ndarray, groups: np.ndarray, weights: np.ndarray, *, n_customers: int,
            n_groups: int) -> AffinityModel:
        m = np.zeros((n_customers, n_groups))
        np.add.at(m, (customers, groups), weights)
        pop = m.sum(axis=0) + 1e-9
        self.population_ = pop / pop.sum()
        self.counts_ = m
        return self

    def scores(self) -> np.ndarray:
        """Smoothed share / population share: > 1 means more interest than the average customer."""
        m = self.counts_
        share = (m + self.prior_strength * self.population_) / (m.sum(axis=1, keepdims=True) + self.prior_strength)
        return share / self.population_
