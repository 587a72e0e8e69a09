"""Quality against what really happened: held-out next orders in the database, and the demo's ground truth."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from emma.ingest.models import Event
from emma.predict import backtest as B
from emma.predict import features as F
from emma.predict.estimators.recommend import sparse_top_k
from emma.predict.estimators.uplift import uplift_at_k
from emma.predict.models import Prediction, ScoreRun
from emma.profiles.models import Customer

ENGAGED_MIN_EVENTS = 20
UPLIFT_TOP = 0.3


def _latest_run(session: Session) -> ScoreRun | None:
    return session.scalar(select(ScoreRun).where(ScoreRun.status == "done").order_by(ScoreRun.id.desc()).limit(1))


def held_out_recommendations(*, session: Session) -> dict[str, dict[str, float]] | None:
    """Stored top-10 lists vs global popularity vs the customer's own most frequent items, on each personalised
    customer's first order after the scoring date (hit rate@10, recall@10)."""
    run = _latest_run(session)
    if run is None:
        return None
    it = F.items(session=session)
    as_of_day = F.epoch_days(run.as_of)
    cust, day, item, _ = F.order_lines(session=session, before=run.as_of.replace(year=run.as_of.year + 5), items=it)
    preds = session.execute(select(Prediction.customer_id, Prediction.recommendations)
                            .where(Prediction.personalized.is_(True))).all()
    with_history = np.unique(cust[day < as_of_day])
    later = np.unique(cust[day >= as_of_day])
    sample = np.intersect1d(np.intersect1d(with_history, later), np.array([p[0] for p in preds], dtype=np.int64))
    if len(sample) < 10:
        return None
    index = {s: i for i, s in enumerate(it.sku)}
    stored = dict(preds)
    recs = np.full((len(sample), 10), -1, dtype=np.int64)
    for r, cid in enumerate(sample.tolist()):
        row = [index.get(x["sku"], -1) for x in (stored.get(cid) or [])[:10]]
        recs[r, : len(row)] = row
    truth = B.next_order_items(cust, day, item, sample, n_items=len(it), start=as_of_day, end=np.inf)
    before = day < as_of_day
    buyers = np.unique(cust[before & (day >= as_of_day - 90)] * len(it) + item[before & (day >= as_of_day - 90)])
    popular = np.argsort(-np.bincount(buyers % len(it), minlength=len(it)), kind="stable")[:10]
    pos = np.searchsorted(sample, cust[before])
    ok = (pos < len(sample)) & (sample[np.minimum(pos, len(sample) - 1)] == cust[before])
    own_m = sp.csr_matrix((np.ones(int(ok.sum())), (pos[ok], item[before][ok])), shape=(len(sample), len(it)))
    own_m.sum_duplicates()
    own = sparse_top_k(own_m, 10)[0]
    out = {}
    for name, m in (("model", recs), ("popularity", np.tile(popular, (len(sample), 1))), ("own_most_frequent", own)):
        h, r = B.hit_recall(m, truth)
        out[name] = {"hit_rate_at_10": h, "recall_at_10": r}
    out["customers"] = {"n": float(len(sample))}
    return out


def _truth(path: Path) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return {r["user_id"]: r for r in csv.DictReader(fh) if r.get("user_id")}


def truth_figures(*, session: Session, path: Path) -> dict[str, Any]:
    """The predictions of the latest run against the demo's ground truth (matched by user id)."""
    truth = _truth(path)
    run = _latest_run(session)
    rows = session.execute(select(Customer.id, Customer.external_id, Prediction.churn_probability,
                                  Prediction.best_send_hour, Prediction.incentive_uplift)
                           .join(Prediction, Prediction.customer_id == Customer.id)
                           .where(Customer.external_id.in_(list(truth)))).all()
    events = dict(session.execute(select(Event.customer_id, func.count()).where(Event.timestamp < run.as_of)
                                  .group_by(Event.customer_id)).all()) if run else {}
    out: dict[str, Any] = {"customers_matched": len(rows)}
    if run is not None:
        cut = next(iter(truth.values()))["cutoff_date"] if truth else None
        out["as_of"], out["truth_cutoff"] = run.as_of.date().isoformat(), cut
    churn = [(p, truth[e]["churned"] == "True") for _, e, p, _, _ in rows if p is not None]
    if churn:
        out["churn_auc"] = B.auc(np.array([c[0] for c in churn]), np.array([c[1] for c in churn]))
        out["churn_customers"] = len(churn)
        out["churn_mean_predicted"] = float(np.mean([c[0] for c in churn]))
        out["churn_observed_rate"] = float(np.mean([c[1] for c in churn]))
    hours = [(h, int(truth[e]["preferred_hour"])) for cid, e, _, h, _ in rows
             if h is not None and events.get(cid, 0) >= ENGAGED_MIN_EVENTS]
    if hours:
        d = np.abs(np.array([a for a, _ in hours]) - np.array([b for _, b in hours])) % 24
        d = np.minimum(d, 24 - d)
        out["send_hour_exact"] = float(np.mean(d == 0))
        out["send_hour_within_1h"] = float(np.mean(d <= 1))
        out["send_hour_customers"] = len(hours)
    up = [(u, float(truth[e]["true_uplift"])) for _, e, _, _, u in rows if u is not None]
    if up:
        s, t = np.array([a for a, _ in up]), np.array([b for _, b in up])
        out["uplift_top30_true_mean"] = uplift_at_k(s, t, UPLIFT_TOP)
        out["uplift_random_true_mean"] = float(t.mean())
        out["uplift_customers"] = len(up)
    return out


def against_truth(*, session: Session, path: Path) -> list[tuple[str, str, str]]:
    """Rows (figure, value, bar) for `emma models report --truth`."""
    f = truth_figures(session=session, path=path)
    rows = [("customers matched", f"{f['customers_matched']:,}", ""),
            ("as of / truth cut-off", f"{f.get('as_of')} / {f.get('truth_cutoff')}", "equal")]
    if "churn_auc" in f:
        rows.append(("churn AUC (no order in 90 days)", f"{f['churn_auc']:.3f} ({f['churn_customers']:,} buyers)",
                     ">= 0.80"))
        rows.append(("churn mean predicted / observed", f"{f['churn_mean_predicted']:.3f} / "
                     f"{f['churn_observed_rate']:.3f}", "close (calibration)"))
    if "send_hour_within_1h" in f:
        rows.append((f"best_send_hour = true hour (>= {ENGAGED_MIN_EVENTS} events)",
                     f"exact {f['send_hour_exact']:.0%}, within 1 h {f['send_hour_within_1h']:.0%} "
                     f"({f['send_hour_customers']:,})", "most (> 50 %)"))
    if "uplift_top30_true_mean" in f:
        rows.append(("true uplift: top 30 % by model / random", f"{f['uplift_top30_true_mean']:.4f} / "
                     f"{f['uplift_random_true_mean']:.4f}", "clearly more"))
    rec = held_out_recommendations(session=session)
    if rec:
        for name in ("model", "popularity", "own_most_frequent"):
            rows.append((f"next order: {name} hit@10 / recall@10",
                         f"{rec[name]['hit_rate_at_10']:.3f} / {rec[name]['recall_at_10']:.3f}",
                         "model beats both" if name == "model" else ""))
    return rows


def cdnow_figures() -> dict[str, Any]:
    """The published CDNOW fits and the holdout (weeks 40-78) RMSE of BG/NBD, the hybrid and the backtest's choice.

    Needs the CDNOW sample inside the `lifetimes` wheel (a test dependency); raises ImportError without it.
    """
    from emma.predict.estimators import cdnow
    from emma.predict.estimators.bgnbd import BGNBD
    from emma.predict.estimators.gammagamma import GammaGamma
    from emma.predict.estimators.hybrid import HybridRepeat

    cust, day, amount = cdnow.transactions()
    cal = day < cdnow.CALIBRATION_DAYS
    hold = ~cal & (day < cdnow.CALIBRATION_DAYS + cdnow.HOLDOUT_DAYS)
    r = F.rfm(cust[cal], day[cal], amount[cal], as_of_day=cdnow.CALIBRATION_DAYS)
    actual, _ = F.future_purchase_days(cust[hold], day[hold], amount[hold], customers=r.customer_id)
    s = cdnow.summary()
    bg = BGNBD().fit(s["frequency"], s["recency"], s["T"])
    spend = cdnow.calibration_holdout(cust, day, amount)
    gg = GammaGamma().fit(spend["frequency"], spend["monetary"])
    weeks = cdnow.HOLDOUT_DAYS / 7.0
    bg_cal = BGNBD().fit(r.frequency, r.recency, r.T)
    pred_bg = bg_cal.expected_purchases(weeks, r.frequency, r.recency, r.T)
    choice = B.choose_value_model(cust[cal], day[cal], amount[cal], as_of_day=cdnow.CALIBRATION_DAYS, window_days=91)
    hybrid = B._fit_hybrid(cust[cal], day[cal], amount[cal], cdnow.CALIBRATION_DAYS - 91, 91)
    X = HybridRepeat.features(bg_cal, r.frequency, r.recency, r.T, r.monetary, 13.0)
    pred_h = hybrid.predict_rate(X) * weeks if hybrid is not None else pred_bg
    chosen = pred_h if choice.chosen == "hybrid" else pred_bg
    return {"bgnbd": bg.params_, "gammagamma": gg.params_, "chosen": choice.chosen,
            "rmse_bgnbd": B.rmse(pred_bg, actual), "rmse_hybrid": B.rmse(pred_h, actual),
            "rmse_chosen": B.rmse(chosen, actual), "backtest": choice.metrics}
