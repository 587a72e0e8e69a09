"""Best send hour by empirical Bayes: each customer's preferred time of day, shrunk toward the population.

Model: a customer has a preferred local time c; their engagement happens around it (a wrapped normal with spread
sigma, plus a small uniform share of stray events). The prior over c is the population's engagement by time of
day, sigma is fitted to the population, and the posterior over c is computed on a quarter-hour grid. The best
send hour is the full hour nearest the posterior mode: a customer active around 18:50 gets 19, not 18.

Hour bins alone cannot say that: with activity centred on 19:00, the bins 18 and 19 hold equal shares and the
modal bin is a coin toss, which is why times are taken to the quarter hour.
"""

from __future__ import annotations

import numpy as np

SLOTS = 96  # quarter hours per day
CHUNK = 50_000  # customers per block: (block x 96) arrays keep memory flat at a million customers


class SendHourModel:
    """Posterior over each customer's preferred time of day; `best_hour` is the nearest full hour to its mode."""

    def __init__(self, *, sigma_hours: float | None = None, stray: float = 0.05, prior_weight: float = 1.0) -> None:
        self.sigma_hours = sigma_hours
        self.stray = stray
        self.prior_weight = prior_weight

    def fit(self, customers: np.ndarray, hours: np.ndarray, *, n_customers: int,
            weights: np.ndarray | None = None) -> SendHourModel:
        """customers: row index per observation; hours: local time of day as a fraction (19.75 = 19:45)."""
        customers = np.asarray(customers, dtype=np.int64)
        slot = np.floor((np.asarray(hours, dtype=np.float64) % 24.0) * (SLOTS / 24.0)).astype(np.int64) % SLOTS
        w = np.ones(len(slot)) if weights is None else np.asarray(weights, dtype=np.float64)
        self.n_customers_ = n_customers
        self.observed_, inv = np.unique(customers, return_inverse=True)
        counts = np.zeros((len(self.observed_), SLOTS), dtype=np.float32)
        np.add.at(counts, (inv, slot), w)
        self.counts_ = counts
        pop = counts.sum(axis=0, dtype=np.float64) + 1.0
        # the prior over preferred times: the population's engagement, smoothed by one hour
        self.prior_ = _circular_smooth(pop[None, :], 4.0)[0]
        self.prior_ /= self.prior_.sum()
        self.sigma_ = self.sigma_hours if self.sigma_hours is not None else self._fit_sigma()
        return self

    def _log_kernel(self, sigma: float) -> np.ndarray:
        d = np.arange(SLOTS) * (24.0 / SLOTS)
        d = np.minimum(d, 24.0 - d)
        f = (1 - self.stray) * np.exp(-d ** 2 / (2 * sigma ** 2)) / np.sqrt(2 * np.pi * sigma ** 2) + self.stray / 24
        return np.log(f * 24.0 / SLOTS)

    def _log_posterior(self, counts: np.ndarray, sigma: float) -> np.ndarray:
        # log-likelihood of each candidate time c = sum over slots b of counts[b] * log f(b - c): a circular
        # cross-correlation, done by FFT for all customers of the block at once
        lk = np.conj(np.fft.rfft(self._log_kernel(sigma)))
        ll = np.fft.irfft(np.fft.rfft(counts, axis=1) * lk[None, :], n=SLOTS, axis=1)
        return ll + self.prior_weight * np.log(self.prior_)[None, :]

    def _fit_sigma(self, start: float = 1.5) -> float:
        """The spread of engagement around each customer's own mode, over customers with enough of it."""
        n = self.counts_.sum(axis=1)
        rich = np.flatnonzero(n >= 10)[:CHUNK]
        if len(rich) < 20:
            return start
        c = self.counts_[rich].astype(np.float64)
        mode = np.argmax(self._log_posterior(c, start), axis=1)
        d = (np.arange(SLOTS)[None, :] - mode[:, None]) % SLOTS
        d = np.minimum(d, SLOTS - d) * (24.0 / SLOTS)
        # robust spread (stray events aside): the weighted median absolute deviation, scaled to a normal's sigma
        order = np.argsort(d.ravel())
        cw = np.cumsum(c.ravel()[order])
        mad = d.ravel()[order][np.searchsorted(cw, cw[-1] / 2)]
        return float(np.clip(1.4826 * mad, 0.5, 4.0))

    def _slot_posterior(self, counts: np.ndarray) -> np.ndarray:
        lp = self._log_posterior(counts.astype(np.float64), self.sigma_)
        p = np.exp(lp - lp.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def posterior(self) -> np.ndarray:
        """P(best hour = h) per customer (rows sum to one); customers without engagement get the prior's."""
        out = np.empty((self.n_customers_, 24))
        prior = _to_hours(self.prior_[None, :])[0]
        out[:] = prior
        for s in range(0, len(self.observed_), CHUNK):
            out[self.observed_[s:s + CHUNK]] = _to_hours(self._slot_posterior(self.counts_[s:s + CHUNK]))
        return out

    def population_hour(self) -> int:
        """The prior's best hour: what a customer without any engagement gets."""
        return int(np.argmax(_to_hours(self.prior_[None, :])[0]))

    def best_hour(self) -> np.ndarray:
        """The full hour (0-23, in the time zone the times were given in) nearest the posterior mode."""
        out = np.full(self.n_customers_, self.population_hour(), dtype=np.int64)
        for s in range(0, len(self.observed_), CHUNK):
            lp = self._log_posterior(self.counts_[s:s + CHUNK].astype(np.float64), self.sigma_)
            mode = np.argmax(lp, axis=1)
            out[self.observed_[s:s + CHUNK]] = _slot_hour(mode)
        return out


def _slot_hour(slot: np.ndarray) -> np.ndarray:
    """The full hour nearest the middle of each quarter-hour slot (slot 75 = 18:45-19:00 -> 19)."""
    return np.floor((slot + 0.5) * (24.0 / SLOTS) + 0.5).astype(np.int64) % 24


def _to_hours(p: np.ndarray) -> np.ndarray:
    out = np.zeros((p.shape[0], 24))
    np.add.at(out.T, _slot_hour(np.arange(SLOTS)), p.T)
    return out


def _circular_smooth(x: np.ndarray, width_slots: float) -> np.ndarray:
    offsets = np.arange(-int(3 * width_slots), int(3 * width_slots) + 1)
    kernel = np.exp(-offsets ** 2 / (2 * width_slots ** 2))
    kernel /= kernel.sum()
    return sum(w * np.roll(x, int(o), axis=1) for o, w in zip(offsets, kernel, strict=True))
