"""The backtest's choice between BG/NBD and the boosted hybrid on the CDNOW holdout (weeks 40-78)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lifetimes.datasets", reason="the CDNOW sample ships inside the lifetimes wheel")

from emma.predict.backtest import choose_value_model, rmse  # noqa: E402
from emma.predict.estimators import cdnow  # noqa: E402
from emma.predict.estimators.bgnbd import BGNBD  # noqa: E402
from emma.predict.estimators.hybrid import HybridRepeat  # noqa: E402
from emma.predict.features import future_purchase_days, rfm  # noqa: E402


def test_feature_summary_is_the_published_one():
    cust, day, amount = cdnow.transactions()
    cal = day < cdnow.CALIBRATION_DAYS
    r = rfm(cust[cal], day[cal], amount[cal], as_of_day=cdnow.CALIBRATION_DAYS - 1)
    s = cdnow.summary()
    assert np.array_equal(r.customer_id, s["id"])
    assert np.array_equal(r.frequency, s["frequency"])
    assert np.allclose(np.round(r.recency, 2), s["recency"]) and np.allclose(np.round(r.T, 2), s["T"])


def test_holdout_chosen_model_no_worse_than_bgnbd():
    cust, day, amount = cdnow.transactions()
    cal = day < cdnow.CALIBRATION_DAYS
    hold = ~cal & (day < cdnow.CALIBRATION_DAYS + cdnow.HOLDOUT_DAYS)
    r = rfm(cust[cal], day[cal], amount[cal], as_of_day=cdnow.CALIBRATION_DAYS)
    assert len(r) == 2357
    actual, _ = future_purchase_days(cust[hold], day[hold], amount[hold], customers=r.customer_id)
    bg = BGNBD().fit(r.frequency, r.recency, r.T)
    pred_bg = bg.expected_purchases(39, r.frequency, r.recency, r.T)
    choice = choose_value_model(cust[cal], day[cal], amount[cal], as_of_day=cdnow.CALIBRATION_DAYS, window_days=91)
    assert {"rmse_bgnbd", "rmse_hybrid", "rmse_baseline_rate"} <= set(choice.metrics)
    assert choice.metrics["rmse_bgnbd"] < choice.metrics["rmse_baseline_rate"]
    if choice.chosen == "hybrid":
        X = HybridRepeat.features(bg, r.frequency, r.recency, r.T, r.monetary, 13.0)
        pred = choice.hybrid.predict_rate(X) * 39
    else:
        pred = pred_bg
    assert rmse(pred, actual) <= rmse(pred_bg, actual) + 1e-9
    # BG/NBD predicts the holdout total within 15 % (aggregate fit on real data)
    assert abs(pred_bg.sum() - actual.sum()) / actual.sum() < 0.15
