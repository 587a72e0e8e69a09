"""Pure functions that turn model outputs into churn, next-order dates, stages and reasons."""

from __future__ import annotations

import numpy as np

STAGES = ("lead", "new", "active", "vip", "at_risk", "lapsed", "churned")


def bgnbd_no_purchase(p_alive: np.ndarray, r: float, alpha: float, frequency: np.ndarray, T: np.ndarray,
                      t: float) -> np.ndarray:
    """P(no purchase in the next t weeks): dead, or alive with a Poisson-gamma gap longer than t."""
    alive_none = ((alpha + T) / (alpha + T + t)) ** (r + frequency)
    return (1.0 - p_alive) + p_alive * alive_none


# P(still a customer) bounds of the stages: above 0.7 most likely active, 0.4-0.7 could go either way (at risk),
# 0.15-0.4 probably gone but worth a win-back (lapsed), below 0.15 gone (churned).
ACTIVE_FROM, AT_RISK_FROM, LAPSED_FROM = 0.7, 0.4, 0.15
VIP_QUANTILE = 0.95  # the top 5 % of the buyers by CLV, among the active
NEW_DAYS = 30


def buy_if_alive(*, r: float, alpha: float, frequency: np.ndarray, T: np.ndarray, t: float) -> np.ndarray:
    """BG/NBD: P(at least one purchase in the next t weeks | the customer is still active)."""
    return 1.0 - ((alpha + T) / (alpha + T + t)) ** (r + frequency)


def still_customer(*, churn: np.ndarray, buy_if_active: np.ndarray) -> np.ndarray:
    """P(still a customer) implied by a calibrated churn probability.

    churn = P(no order in the window) = (1 - P(active)) + P(active) * (1 - P(order | active)), so
    P(active) = (1 - churn) / P(order | active). This separates the customers who are gone from those who are
    active but rarely buy; a raw churn threshold cannot, which put most buyers of a shop with long purchase
    gaps into at_risk.
    """
    return np.clip((1.0 - churn) / np.maximum(buy_if_active, 1e-6), 0.0, 1.0)


def lifecycle_stage(*, orders: np.ndarray, first_age_days: np.ndarray, still: np.ndarray,
                    clv: np.ndarray, vip_quantile: float = VIP_QUANTILE) -> np.ndarray:
    """new / active / vip / at_risk / lapsed / churned from P(still a customer) and CLV ("lead": never ordered)."""
    stage = np.full(len(orders), "active", dtype=object)
    stage[still < ACTIVE_FROM] = "at_risk"
    stage[still < AT_RISK_FROM] = "lapsed"
    stage[still < LAPSED_FROM] = "churned"
    buyers = orders > 0
    if buyers.any():
        cut = np.quantile(clv[buyers], vip_quantile)
        stage[(clv >= cut) & (still >= ACTIVE_FROM) & (clv > 0) & buyers] = "vip"
    stage[(orders == 1) & (first_age_days <= NEW_DAYS)] = "new"
    stage[orders == 0] = "lead"
    return stage


def stage_reason(*, stage: str, still: float, churn: float, buy_if_active: float, clv: float) -> str:
    """The human reason shown next to a lifecycle stage."""
    if stage == "new":
        return f"new: first order within the last {NEW_DAYS} days"
    return (f"{stage}: P(still a customer) {still:.2f} (churn {churn:.2f}; if active, an order within 90 days "
            f"{buy_if_active:.2f}), clv {clv:.2f}")


def churn_reason(*, churn: float, days_since_last: float, usual_gap_days: float | None) -> str:
    """The human reason shown next to a churn probability."""
    if usual_gap_days is None:
        return f"churn {churn:.2f}: one order so far, {days_since_last:.0f} days ago"
    return f"churn {churn:.2f}: last order {days_since_last:.0f} days ago, usual gap {usual_gap_days:.0f} days"
