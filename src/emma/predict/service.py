"""Scoring: fit the models on data strictly before as-of, predict for every customer, store with reasons."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from emma.consent.models import Consent
from emma.db import utcnow
from emma.predict import features as F
from emma.predict.backtest import choose_value_model
from emma.predict.estimators.bgnbd import BGNBD
from emma.predict.estimators.gammagamma import GammaGamma
from emma.predict.estimators.hybrid import HybridRepeat
from emma.predict.lifecycle import bgnbd_no_purchase, churn_reason, lifecycle_stage
from emma.predict.models import ModelVersion, Prediction, ScoreRun
from emma.profiles.models import Customer

CHURN_WINDOW_DAYS = 90
MODEL_VERSION = "1"
Progress = Callable[[int, int], None]


@dataclass
class Scores:
    """Arrays aligned to customer_id: what the value models predict as of one date."""

    customer_id: np.ndarray
    p_alive: np.ndarray
    expected_orders: np.ndarray
    expected_revenue: np.ndarray
    clv: np.ndarray
    churn: np.ndarray
    propensity_30d: np.ndarray
    next_order_days: np.ndarray  # nan where none is expected
    rfm: F.RFM
    params: dict[str, Any] = field(default_factory=dict)


def value_scores(*, rfm: F.RFM, horizon_days: int, discount_monthly: float = 0.01,
                 hybrid: HybridRepeat | None = None, hybrid_window_days: float = 90.0) -> Scores:
    """BG/NBD + Gamma-Gamma on an RFM summary: p_alive, expected orders/revenue, CLV, churn, propensity."""
    bg = BGNBD().fit(rfm.frequency, rfm.recency, rfm.T)
    h_weeks = horizon_days / 7.0
    p_alive = bg.p_alive(rfm.frequency, rfm.recency, rfm.T)
    exp_orders = bg.expected_purchases(h_weeks, rfm.frequency, rfm.recency, rfm.T)
    if hybrid is not None:  # the backtest preferred the boosted model for the purchase count
        X = HybridRepeat.features(bg, rfm.frequency, rfm.recency, rfm.T, rfm.monetary, hybrid_window_days / 7.0)
        exp_orders = hybrid.predict_rate(X) * h_weeks
    repeaters = rfm.frequency > 0
    gg = GammaGamma().fit(rfm.frequency[repeaters], rfm.monetary[repeaters])
    spend = gg.conditional_expected_average_profit(rfm.frequency, rfm.monetary)
    exp_revenue = exp_orders * spend
    # Residual value: monthly increments of expected purchases, discounted.
    months = max(1, round(horizon_days / 30.4375))
    clv = np.zeros(len(rfm))
    prev = np.zeros(len(rfm))
    for m in range(1, months + 1):
        cur = bg.expected_purchases(m * 30.4375 / 7.0, rfm.frequency, rfm.recency, rfm.T)
        clv += (cur - prev) * spend / (1 + discount_monthly) ** m
        prev = cur
    churn = bgnbd_no_purchase(p_alive, bg.r_, bg.alpha_, rfm.frequency, rfm.T, CHURN_WINDOW_DAYS / 7.0)
    propensity = 1.0 - bgnbd_no_purchase(p_alive, bg.r_, bg.alpha_, rfm.frequency, rfm.T, 30 / 7.0)
    rate = exp_orders / h_weeks  # purchases per week while the horizon lasts
    with np.errstate(divide="ignore", invalid="ignore"):
        next_days = np.where((p_alive >= 0.5) & (rate > 0), 7.0 / rate, np.nan)
    params = {"bgnbd": {"r": bg.r_, "alpha": bg.alpha_, "a": bg.a_, "b": bg.b_},
              "gammagamma": {"p": gg.p_, "q": gg.q_, "v": gg.v_}}
    return Scores(rfm.customer_id, p_alive, exp_orders, exp_revenue, clv, churn, propensity, next_days, rfm, params)


def _from_day(day: float) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day)


def _personalized(session: Session) -> set[int]:
    return set(session.scalars(select(Consent.customer_id).where(Consent.purpose == "personalization",
                                                                 Consent.status == "granted")))


def score(*, session: Session, as_of: dt.datetime, horizon_days: int = 365, chunk: int = 50_000,
          progress: Progress | None = None) -> ScoreRun:
    """Compute and store every prediction for every customer from data strictly before as_of."""
    run = ScoreRun(as_of=as_of, horizon_days=horizon_days, status="running", started_at=utcnow())
    session.add(run)
    session.flush()
    as_of_day = F.epoch_days(as_of)
    cids, days, revs = F.order_days(session=session, before=as_of)
    rfm = F.rfm(cids, days, revs, as_of_day=as_of_day)
    scores = None
    choice = None
    if len(rfm) >= 20:
        choice = choose_value_model(cids, days, revs, as_of_day=as_of_day, window_days=CHURN_WINDOW_DAYS)
        scores = value_scores(rfm=rfm, horizon_days=horizon_days, hybrid=choice.hybrid,
                              hybrid_window_days=CHURN_WINDOW_DAYS)
    stages = (lifecycle_stage(orders=rfm.orders, first_age_days=as_of_day - rfm.first_day, churn=scores.churn,
                              clv=scores.clv) if scores else None)
    chosen = choice.chosen if choice else "none"
    metrics = choice.metrics if choice else {}
    run.models = {"value": {"version": MODEL_VERSION, "chosen": chosen, **(scores.params if scores else {})}}
    session.add(ModelVersion(name="repeat_purchases", version=MODEL_VERSION, train_to=as_of,
                             train_from=_from_day(float(days.min())) if len(days) else None,
                             params=run.models["value"], chosen=chosen,
                             metrics={k: v for k, v in metrics.items() if k != "rmse_baseline_rate"},
                             baseline={"rmse_baseline_rate": metrics.get("rmse_baseline_rate")}))
    allowed = _personalized(session)
    customers = np.array(list(session.scalars(
        select(Customer.id).where(Customer.merged_into_id.is_(None), Customer.created_at < as_of)
        .order_by(Customer.id))), dtype=np.int64)
    session.execute(delete(Prediction))
    total = len(customers)
    index = {int(c): i for i, c in enumerate(rfm.customer_id)}
    done = 0
    for start in range(0, total, chunk):
        rows = [_row(int(cid), run, as_of, as_of_day, scores, stages, index.get(int(cid)), int(cid) in allowed)
                for cid in customers[start:start + chunk]]
        session.execute(insert(Prediction), rows)
        done += len(rows)
        run.customers_done, run.last_customer_id = done, int(customers[min(start + chunk, total) - 1])
        if progress:
            progress(done, total)
    run.status, run.finished_at = "done", utcnow()
    return run


def _row(cid: int, run: ScoreRun, as_of: dt.datetime, as_of_day: float, s: Scores | None,
         stages: np.ndarray | None, i: int | None, personal: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"customer_id": cid, "run_id": run.id, "as_of": as_of, "personalized": personal,
                           "top_affinities": [], "recommendations": [], "reasons": {}}
    if not personal:
        row["reasons"] = {"personalized": "no personalization consent: generic content only"}
        return row
    if s is None or i is None:  # never ordered before as_of: a lead
        row.update(p_alive=None, expected_orders=0.0, expected_revenue=0.0, clv=0.0, churn_probability=None,
                   lifecycle_stage="lead", reasons={"lifecycle_stage": "no order yet"})
        return row
    r = s.rfm
    days_since = as_of_day - r.last_day[i]
    gap = (r.last_day[i] - r.first_day[i]) / r.frequency[i] if r.frequency[i] > 0 else None
    nd = s.next_order_days[i]
    row.update(
        p_alive=float(s.p_alive[i]), expected_orders=float(s.expected_orders[i]),
        expected_revenue=float(s.expected_revenue[i]), clv=float(s.clv[i]), churn_probability=float(s.churn[i]),
        propensity_30d=float(s.propensity_30d[i]), lifecycle_stage=str(stages[i]) if stages is not None else None,
        next_order_date=None if np.isnan(nd) else (as_of + dt.timedelta(days=float(nd))).date(),
        reasons={"churn_probability": churn_reason(churn=float(s.churn[i]), days_since_last=float(days_since),
                                                   usual_gap_days=gap),
                 "clv": f"clv {s.clv[i]:.2f}: {int(r.orders[i])} purchase days, "
                        f"average repeat spend {r.monetary[i]:.2f}, p_alive {s.p_alive[i]:.2f}"},
    )
    return row
