"""Pure functions that turn model outputs into churn, next-order dates, stages and reasons."""

from __future__ import annotations

import numpy as np

STAGES = ("lead", "new", "active", "vip", "at_risk", "lapsed", "churned")


def bgnbd_no_purchase(p_alive: np.ndarray, r: float, alpha: float, frequency: np.ndarray, T: np.ndarray,
                      t: float) -> np.ndarray:
    """P(no purchase in the next t weeks): dead, or alive with a Poisson-gamma gap longer than t."""
    alive_none = ((alpha + T) / (alpha + T + t)) ** (r + frequency)
    return (1.0 - p_alive) + p_alive * alive_none


def lifecycle_stage(*, orders: np.ndarray, first_age_days: np.ndarray, churn: np.ndarray,
                    clv: np.ndarray, vip_quantile: float = 0.95) -> np.ndarray:
    """new / active / vip / at_risk / lapsed / churned from churn risk and value ("lead": never ordered)."""
    stage = np.full(len(orders), "active", dtype=object)
    stage[churn >= 0.6] = "at_risk"
    stage[churn >= 0.85] = "lapsed"
    stage[churn >= 0.97] = "churned"
    if len(clv):
        cut = np.quantile(clv, vip_quantile)
        stage[(clv >= cut) & (churn < 0.6) & (clv > 0)] = "vip"
    stage[(orders <= 1) & (first_age_days <= 30)] = "new"
    stage[orders == 0] = "lead"
    return stage


def churn_reason(*, churn: float, days_since_last: float, usual_gap_days: float | None) -> str:
    """The human reason shown next to a churn probability."""
    if usual_gap_days is None:
        return f"churn {churn:.2f}: one order so far, {days_since_last:.0f} days ago"
    return f"churn {churn:.2f}: last order {days_since_last:.0f} days ago, usual gap {usual_gap_days:.0f} days"
