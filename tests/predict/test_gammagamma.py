"""Gamma-Gamma estimator and discounted CLV: the published CDNOW fit and lifetimes' numbers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lifetimes.datasets", reason="the CDNOW sample ships inside the lifetimes wheel")

from emma.predict.estimators import cdnow  # noqa: E402
from emma.predict.estimators.bgnbd import BGNBD  # noqa: E402
from emma.predict.estimators.gammagamma import GammaGamma  # noqa: E402

X = np.array([0.0, 1.0, 2.0, 7.0, 40.0])
TX = np.array([0.0, 1.71, 30.43, 20.0, 38.0])
T = np.full(5, 38.86)
M = np.array([0.0, 11.77, 22.35, 40.0, 25.0])


def _gg(p: float = 6.25, q: float = 3.74, v: float = 15.44) -> GammaGamma:
    gg = GammaGamma()
    gg.p_, gg.q_, gg.v_ = p, q, v
    return gg


def _bg(alpha: float = 4.414) -> BGNBD:
    bg = BGNBD()
    bg.r_, bg.alpha_, bg.a_, bg.b_ = 0.243, alpha, 0.793, 2.426
    return bg


def test_reproduces_published_spend_model() -> None:
    # Fader & Hardie's spend means, recomputed unrounded from the transaction log
    data = cdnow.calibration_holdout(*cdnow.transactions())
    gg = GammaGamma().fit(data["frequency"], data["monetary"])
    assert gg.converged_
    assert abs(gg.p_ - 6.25) < 0.005 and abs(gg.q_ - 3.74) < 0.005 and abs(gg.v_ - 15.44) < 0.005
    # only the 946 customers with repeat purchases count
    assert GammaGamma().fit(data["frequency"], np.where(data["frequency"] > 0, data["monetary"], -1.0)).v_ == gg.v_


def test_matches_lifetimes_on_the_shipped_summary() -> None:
    # the shipped means are rounded to cents, which moves v to 15.448 (lifetimes 0.11.3: 6.248802, 3.744588, 15.447748)
    s = cdnow.spend_summary()
    gg = GammaGamma().fit(s["frequency"], s["monetary"])
    assert (gg.p_, gg.q_, gg.v_) == pytest.approx((6.248802, 3.744588, 15.447748), abs=1e-5)


def test_conditional_expected_average_profit() -> None:
    gg = _gg()
    spend = gg.conditional_expected_average_profit(X, M)
    np.testing.assert_allclose(spend, [35.21897810219, 18.916852057842, 24.663713910761, 39.718218971822,
                                       25.110785787766], rtol=1e-10)  # lifetimes 0.11.3
    population = gg.p_ * gg.v_ / (gg.q_ - 1)
    assert spend[0] == pytest.approx(population)
    # more repeat purchases: closer to the customer's own mean
    s = gg.conditional_expected_average_profit(np.array([1.0, 5.0, 50.0]), np.full(3, 100.0))
    assert population < s[0] < s[1] < s[2] < 100.0


def test_customer_lifetime_value_matches_lifetimes() -> None:
    gg = _gg()
    np.testing.assert_allclose(gg.customer_lifetime_value(_bg(), X, TX, T, M),
                               [8.36900435892, 4.637294659747, 36.2892111256, 35.351571798023, 794.564208930166],
                               rtol=1e-9)
    # days, 6 months, 2 % a month (alpha in days)
    clv = gg.customer_lifetime_value(_bg(4.414 * 7), X, TX * 7, T * 7, M, time=6, discount_rate=0.02, freq="D")
    np.testing.assert_allclose(clv, [4.38758163297, 2.485204347917, 19.691893493609, 19.623801474481,
                                     447.762112036658], rtol=1e-9)


def test_customer_lifetime_value_properties() -> None:
    gg, bg = _gg(), _bg()
    base = gg.customer_lifetime_value(bg, X, TX, T, M)
    assert np.all(base > 0)
    assert np.all(gg.customer_lifetime_value(bg, X, TX, T, M, time=24) > base)
    assert np.all(gg.customer_lifetime_value(bg, X, TX, T, M, discount_rate=0.05) < base)
    # no discounting: expected purchases over the horizon times expected spend
    flat = gg.customer_lifetime_value(bg, X, TX, T, M, discount_rate=0.0)
    expected = bg.expected_purchases(12 * 4.345, X, TX, T) * gg.conditional_expected_average_profit(X, M)
    np.testing.assert_allclose(flat, expected, rtol=1e-12)
    with pytest.raises(ValueError):
        gg.customer_lifetime_value(bg, X, TX, T, M, freq="Y")


def test_rejects_non_positive_spend() -> None:
    with pytest.raises(ValueError):
        GammaGamma().fit([1.0, 2.0], [10.0, 0.0])
    with pytest.raises(ValueError):
        GammaGamma().fit([0.0, 0.0], [0.0, 0.0])
