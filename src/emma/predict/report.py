"""Quality against what really happened: held-out next orders in the database, and the demo's ground truth."""

from __future__ import annotations

import csv
import datetime as dt
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


def held_out_leads(*, session: Session, days: int = 30) -> dict[str, float] | None:
    """propensity_30d of the leads (no order before the scoring date) against a first order in the 30 days
    after it: ROC AUC, mean predicted and observed rate."""
    from emma.orders.models import Order

    run = _latest_run(session)
    if run is None:
        return None
    end = run.as_of + dt.timedelta(days=days)
    if (session.scalar(select(func.max(Order.ordered_at))) or run.as_of).replace(tzinfo=None) < \
            end.replace(tzinfo=None) - dt.timedelta(days=1):
        return None  # the data do not reach far enough past the scoring date
    rows = session.execute(select(Prediction.customer_id, Prediction.propensity_30d)
                           .where(Prediction.lifecycle_stage == "lead", Prediction.propensity_30d.is_not(None))).all()
    if len(rows) < 30:
        return None
    bought = set(session.scalars(select(Order.customer_id).where(Order.ordered_at >= run.as_of, Order.ordered_at < end)
                                 .distinct()))
    p = np.array([r[1] for r in rows])
    y = np.array([r[0] in bought for r in rows])
    return {"auc": B.auc(p, y), "leads": float(len(y)), "mean_predicted": float(p.mean()),
            "observed_rate": float(y.mean())}


def _truth(path: Path) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return {r["user_id"]: r for r in csv.DictReader(fh) if r.get("user_id")}


def truth_figures(*, session: Session, path: Path) -> dict[str, Any]:
    """The predictions of the latest run against the demo's ground truth (matched by user id)."""
    truth = _truth(path)
    run = _latest_run(session)
    full = session.execute(select(Customer.id, Customer.external_id, Prediction.churn_probability,
                                  Prediction.best_send_hour, Prediction.incentive_uplift, Prediction.lifecycle_stage)
                           .join(Prediction, Prediction.customer_id == Customer.id)
                           .where(Customer.external_id.in_(list(truth)))).all()
    rows = [r[:5] for r in full]
    # engaged = at least 20 of the customer's own events (not the shop's status events or message reactions)
    own = (Event.timestamp < run.as_of) if run else None
    events = dict(session.execute(
        select(Event.customer_id, func.count())
        .where(own, Event.type.in_(("track", "page", "screen")),
               func.coalesce(Event.name, "").not_in(F.NOT_ENGAGEMENT + F.MESSAGE_REACTIONS))
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
    stages = [(st, truth[e]) for _, e, _, _, _, st in full if st is not None and st != "lead"]
    if stages:
        out["lifecycle"] = lifecycle_confusion([s for s, _ in stages], [t for _, t in stages])
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


TRUE_STAGES = ("active", "vip", "churned")


def true_stage(rows: list[dict[str, str]], *, vip_quantile: float = 0.95) -> list[str]:
    """The simulator's state at the cut-off: gone (churned), or active; vip = the top 5 % of the active buyers
    by true value (purchase rate x average order value so far)."""
    alive = np.array([r["alive_at_cutoff"] == "True" for r in rows])
    orders = np.array([max(int(r["orders_before_cutoff"]), 1) for r in rows])
    value = np.array([float(r["purchase_rate_per_year"]) * float(r["revenue_before_cutoff"]) for r in rows]) / orders
    cut = np.quantile(value[alive], vip_quantile) if alive.any() else np.inf
    return ["churned" if not a else ("vip" if v >= cut else "active") for a, v in zip(alive, value, strict=True)]


def lifecycle_confusion(predicted: list[str], truth_rows: list[dict[str, str]]) -> dict[str, Any]:
    """Predicted lifecycle stages of the buyers against the simulator's true states: counts, shares and how
    pure the clear-cut stages are (active/vip truly active, lapsed/churned truly gone)."""
    from emma.predict.lifecycle import STAGES

    true = true_stage(truth_rows)
    cols = [s for s in STAGES if s != "lead"]
    table = {t: {c: 0 for c in cols} for t in TRUE_STAGES}
    for p, t in zip(predicted, true, strict=True):
        table[t][p] = table[t].get(p, 0) + 1
    n = len(true)
    pred_share = {c: sum(table[t][c] for t in TRUE_STAGES) / n for c in cols}
    true_share = {t: sum(table[t].values()) / n for t in TRUE_STAGES}

    def purity(stages: tuple[str, ...], truths: tuple[str, ...]) -> float:
        tot = sum(table[t][s] for t in TRUE_STAGES for s in stages)
        return sum(table[t][s] for t in truths for s in stages) / tot if tot else float("nan")

    return {"table": table, "predicted_share": pred_share, "true_share": true_share, "buyers": n,
            "active_vip_truly_active": purity(("active", "vip"), ("active", "vip")),
            "lapsed_churned_truly_gone": purity(("lapsed", "churned"), ("churned",)),
            "at_risk_truly_gone": purity(("at_risk",), ("churned",)),
            "vip_truly_vip": purity(("vip",), ("vip",))}


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
    if "lifecycle" in f:
        lc = f["lifecycle"]
        rows.append(("lifecycle stages of buyers (predicted share)",
                     ", ".join(f"{k} {v:.0%}" for k, v in lc["predicted_share"].items()),
                     "not degenerate"))
        rows.append(("true states at the cut-off (share)",
                     ", ".join(f"{k} {v:.0%}" for k, v in lc["true_share"].items()), ""))
        for t, counts in lc["table"].items():
            rows.append((f"  truly {t}: predicted as", ", ".join(f"{k} {v:,}" for k, v in counts.items()), ""))
        rows.append(("active+vip truly active / lapsed+churned truly gone",
                     f"{lc['active_vip_truly_active']:.0%} / {lc['lapsed_churned_truly_gone']:.0%}", "high / high"))
        rows.append(("at_risk truly gone / vip truly top 5 %",
                     f"{lc['at_risk_truly_gone']:.0%} / {lc['vip_truly_vip']:.0%}", "in between / high"))
    leads = held_out_leads(session=session)
    if leads:
        rows.append(("lead propensity_30d: AUC on first orders in the 30 days after",
                     f"{leads['auc']:.3f} ({leads['leads']:,.0f} leads; predicted {leads['mean_predicted']:.3f}, "
                     f"observed {leads['observed_rate']:.3f})", "> 0.5 (random), the higher the better"))
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
