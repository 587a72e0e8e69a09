"""Scoring: fit the models on data strictly before as-of, predict for every customer, store with reasons.

Also the read side other parts call: recommend (the on-site decision API), campaign forecasts, the report.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from sqlalchemy import Integer, delete, select
from sqlalchemy.orm import Session

from emma.consent.models import Consent
from emma.db import insert_columns, utcnow
from emma.predict import backtest as B
from emma.predict import features as F
from emma.predict import rows
from emma.predict.estimators.bgnbd import BGNBD
from emma.predict.estimators.churn import LeadPropensity
from emma.predict.estimators.gammagamma import GammaGamma
from emma.predict.estimators.hybrid import HybridRepeat
from emma.predict.estimators.recommend import REASONS, NextOrderRecommender
from emma.predict.estimators.sendtime import SendHourModel
from emma.predict.exceptions import InvalidContext
from emma.predict.lifecycle import (
    ACTIVE_FROM,
    AT_RISK_FROM,
    LAPSED_FROM,
    NEW_DAYS,
    VIP_QUANTILE,
    bgnbd_no_purchase,
    buy_if_alive,
    lifecycle_stage,
    still_customer,
)
from emma.predict.models import ItemRelation, ModelVersion, Prediction, ScoreRun
from emma.predict.schemas import CampaignForecast, Recommendation
from emma.profiles.models import Customer

CHURN_WINDOW_DAYS = 90
LEAD_WINDOW_DAYS = 30
MODEL_VERSION = "2"
RECOMMENDATIONS_STORED = 10
MAX_PER_CATEGORY = 3
RELATED_PER_ITEM = 10
POPULAR_STORED = 50
BACKTEST_SAMPLE = 20_000
REC_FIT_CUSTOMERS = 200_000
MODEL_SAMPLE_CUSTOMERS = 100_000
Progress = Callable[[int, int], None]
CHANNEL_CONSENT = {"email_marketing": "email", "push": "push", "sms_marketing": "sms"}


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
    bg: BGNBD | None = None


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
    repeaters = (rfm.frequency > 0) & (rfm.monetary > 0)
    gg_params: dict[str, float] = {}
    if repeaters.sum() >= 10:
        gg = GammaGamma().fit(rfm.frequency[repeaters], rfm.monetary[repeaters])
        if gg.q_ > 1:
            gg_params = gg.params_
    if gg_params:
        spend = gg.conditional_expected_average_profit(rfm.frequency, rfm.monetary)
    else:  # too few repeat buyers for the spend model: the mean order value
        spend = np.full(len(rfm), float(np.sum(rfm.total_revenue) / max(np.sum(rfm.orders), 1)))
    exp_revenue = exp_orders * spend
    # Residual value: monthly increments of expected purchases, discounted.
    months = max(1, round(horizon_days / 30.4375))
    t = (np.arange(months + 1) * 30.4375 / 7.0)[:, None]
    cum = bg.expected_purchases(t, rfm.frequency, rfm.recency, rfm.T)
    disc = (1 + discount_monthly) ** -np.arange(1, months + 1)
    clv = spend * np.tensordot(disc, np.diff(cum, axis=0), axes=1)
    churn = bgnbd_no_purchase(p_alive, bg.r_, bg.alpha_, rfm.frequency, rfm.T, CHURN_WINDOW_DAYS / 7.0)
    propensity = 1.0 - bgnbd_no_purchase(p_alive, bg.r_, bg.alpha_, rfm.frequency, rfm.T, 30 / 7.0)
    # next order: the median waiting time while alive, 1/2 = ((alpha+T)/(alpha+T+t))^(r+x)
    wait_weeks = (bg.alpha_ + rfm.T) * (2.0 ** (1.0 / (bg.r_ + rfm.frequency)) - 1.0)
    next_days = np.where(p_alive >= 0.5, wait_weeks * 7.0, np.nan)
    params = {"bgnbd": bg.params_, "gammagamma": gg_params}
    return Scores(rfm.customer_id, p_alive, exp_orders, exp_revenue, clv, churn, propensity, next_days, rfm, params,
                  bg)


def _from_day(day: float) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=float(day))


def _granted(session: Session) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    stmt = select(Consent.customer_id, Consent.purpose).where(Consent.status == "granted")
    for cid, purpose in session.execute(stmt):
        out.setdefault(purpose, set()).add(int(cid))
    return out


def _align(keys: np.ndarray, customers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of keys in the sorted customers array, and which keys are there at all."""
    pos = np.searchsorted(customers, keys)
    ok = (pos < len(customers)) & (customers[np.minimum(pos, max(len(customers) - 1, 0))] == keys)
    return pos, ok


def _record(session: Session, name: str, *, as_of: dt.datetime, train_from: float | None, params: dict[str, Any],
            metrics: dict[str, Any], baseline: dict[str, Any], chosen: str | None = None) -> None:
    session.add(ModelVersion(name=name, version=MODEL_VERSION, train_to=as_of,
                             train_from=_from_day(train_from) if train_from is not None else None,
                             params=params, metrics=metrics, baseline=baseline, chosen=chosen))


@dataclass
class _Population:
    """Every customer scored, sorted by id, with what the models need about them."""

    ids: np.ndarray
    created_day: np.ndarray
    known: np.ndarray
    timezone: list[str | None]


def _population(session: Session, as_of: dt.datetime) -> _Population:
    rows = session.execute(select(Customer.id, F._day_expr(session, Customer.created_at), Customer.is_anonymous,
                                  Customer.timezone)
                           .where(Customer.merged_into_id.is_(None), Customer.created_at < as_of)
                           .order_by(Customer.id)).all()
    if not rows:
        return _Population(np.empty(0, np.int64), np.empty(0), np.empty(0, bool), [])
    ids, days, anonymous, tz = zip(*rows, strict=True)  # column-wise: one pass over a million rows
    return _Population(np.array(ids, dtype=np.int64), np.nan_to_num(np.array(days, dtype=np.float64)),
                       ~np.array(anonymous, dtype=bool), list(tz))


def score(*, session: Session, as_of: dt.datetime, horizon_days: int = 365, chunk: int = 50_000,
          progress: Progress | None = None) -> ScoreRun:
    """Compute and store every prediction for every customer from data strictly before as_of."""
    from threadpoolctl import threadpool_limits

    # One thread for the boosted models (OpenMP) and for BLAS: on a busy machine their spinning worker threads
    # made the fits 15x slower (66 s instead of 4 s for 100,000 rows), and a BLAS dot product in the BG/NBD
    # likelihood 40x slower (34 ms instead of 0.9 ms); scoring scales out by process, not by thread.
    with threadpool_limits(limits=1):
        return _score(session=session, as_of=as_of, horizon_days=horizon_days, chunk=chunk, progress=progress)


def _score(*, session: Session, as_of: dt.datetime, horizon_days: int, chunk: int,
           progress: Progress | None) -> ScoreRun:
    run = ScoreRun(as_of=as_of, horizon_days=horizon_days, status="running", started_at=utcnow())
    session.add(run)
    session.flush()
    as_of_day = F.epoch_days(as_of)
    pop = _population(session, as_of)
    n = len(pop.ids)
    orders = F.orders(session=session, before=as_of)
    cids, days, revs = orders.customer_id, orders.day, orders.revenue
    first_day = float(days.min()) if len(days) else None
    rfm = F.rfm(cids, days, revs, as_of_day=as_of_day)
    scores, stages, churn, still, buy_active = None, None, None, None, None
    models: dict[str, Any] = {"version": MODEL_VERSION}
    if len(rfm) >= 20:
        # model choice and training on a sample of the buyers; the chosen models then score every customer
        s = B.customer_sample(cids, MODEL_SAMPLE_CUSTOMERS)
        choice = B.choose_value_model(cids[s], days[s], revs[s], as_of_day=as_of_day, window_days=CHURN_WINDOW_DAYS)
        scores = value_scores(rfm=rfm, horizon_days=horizon_days, hybrid=choice.hybrid,
                              hybrid_window_days=CHURN_WINDOW_DAYS)
        extra = _activity_features(session)
        cc = B.choose_churn_model(cids[s], days[s], revs[s], as_of_day=as_of_day, window_days=CHURN_WINDOW_DAYS,
                                  extra=extra)
        churn = scores.churn
        if cc.model is not None:
            X, _ = B.churn_matrix(rfm, CHURN_WINDOW_DAYS, bg=scores.bg)
            X = np.column_stack([X, extra(as_of_day, rfm.customer_id)])
            churn = cc.model.predict_proba(X)  # type: ignore[attr-defined]
        bgp = scores.params["bgnbd"]
        buy_active = buy_if_alive(r=bgp["r"], alpha=bgp["alpha"], frequency=rfm.frequency, T=rfm.T,
                                  t=CHURN_WINDOW_DAYS / 7.0)
        still = still_customer(churn=churn, buy_if_active=buy_active)
        stages = lifecycle_stage(orders=rfm.orders, first_age_days=as_of_day - rfm.first_day, still=still,
                                 clv=scores.clv)
        models.update(value=choice.chosen, churn="classifier" if cc.model is not None else "bgnbd")
        _record(session, "repeat_purchases", as_of=as_of, train_from=first_day, params=scores.params["bgnbd"],
                metrics={k: v for k, v in choice.metrics.items() if k != "rmse_baseline_rate"},
                baseline={"rmse_baseline_rate": choice.metrics.get("rmse_baseline_rate")}, chosen=choice.chosen)
        _record(session, "spend", as_of=as_of, train_from=first_day, params=scores.params["gammagamma"],
                metrics={}, baseline={}, chosen="gammagamma" if scores.params["gammagamma"] else "mean_order_value")
        _record(session, "churn", as_of=as_of, train_from=first_day, params={"window_days": CHURN_WINDOW_DAYS},
                metrics={k: v for k, v in cc.metrics.items() if k != "auc_baseline_recency"},
                baseline={"auc_baseline_recency": cc.metrics.get("auc_baseline_recency")},
                chosen=models["churn"])
        _record(session, "lifecycle", as_of=as_of, train_from=first_day,
                params={"active_from": ACTIVE_FROM, "at_risk_from": AT_RISK_FROM, "lapsed_from": LAPSED_FROM,
                        "vip_quantile": VIP_QUANTILE, "new_days": NEW_DAYS},
                metrics={"mean_still_customer": float(still.mean()),
                         **{f"share_{k}": float(v) / len(stages)
                            for k, v in zip(*np.unique(stages.astype(str), return_counts=True), strict=True)}},
                baseline={}, chosen="churn_implied_p_active")
    granted = _granted(session)
    allowed = granted.get("personalization", set())
    personal = np.array([int(c) in allowed for c in pop.ids], dtype=bool)

    recs = _recommendations(session, run, as_of, as_of_day, pop, first_day, personal=personal, orders=orders)
    extras = _engagement(session, as_of, as_of_day, pop, granted, first_day)
    lead_p = _lead_propensity(session, as_of, as_of_day, pop, rfm, first_day)
    uplift = _uplift(session, as_of, as_of_day, pop, first_day, orders)
    models.update(recommendations=recs.get("chosen"))
    run.models = models

    session.execute(delete(Prediction))
    index = np.full(n, -1, dtype=np.int64)
    pos, ok = _align(rfm.customer_id, pop.ids)
    index[pos[ok]] = np.flatnonzero(ok)
    ctx = rows.RowContext(run=run, as_of=as_of, as_of_day=as_of_day, scores=scores, churn=churn, stages=stages,
                          still=still, buy_active=buy_active,
                          recs=recs, extras=extras, lead_p=lead_p, uplift=uplift)
    done = 0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        done += rows.write_chunk(session, ctx, pop.ids, np.arange(start, stop), index, personal)
        run.customers_done, run.last_customer_id = done, int(pop.ids[stop - 1])
        if progress:
            progress(done, n)
    run.status, run.finished_at = "done", utcnow()
    return run


def _activity_features(session: Session) -> B.Extra:
    """Browsing is a sign of life: events in the last 30 and 90 days and days since the last one, per customer."""

    def extra(cut_day: float, customers: np.ndarray) -> np.ndarray:
        cut = _from_day(cut_day)
        c, n90, last = F.activity(session=session, before=cut, since=cut - dt.timedelta(days=90))
        c30, n30, _ = F.activity(session=session, before=cut, since=cut - dt.timedelta(days=30))
        out = np.zeros((len(customers), 3))
        out[:, 2] = 120.0
        pos, ok = _align(c, customers)
        out[pos[ok], 0] = n90[ok]
        out[pos[ok], 2] = cut_day - last[ok]
        pos, ok = _align(c30, customers)
        out[pos[ok], 1] = n30[ok]
        return out

    return extra


# -- recommendations at score time ------------------------------------------------------------------


def _recommendations(session: Session, run: ScoreRun, as_of: dt.datetime, as_of_day: float, pop: _Population,
                     first_day: float | None, *, personal: np.ndarray,
                     orders: F.Orders | None = None) -> dict[str, Any]:
    """Fit the next-order recommender (the backtest picks the co-purchase weight), score everyone who consented
    to personalization, store the item relations."""
    it = F.items(session=session)
    session.execute(delete(ItemRelation))
    out: dict[str, Any] = {"items": it, "recs": None, "popular": np.empty(0, np.int64)}
    if not len(it):
        return out
    lc, lday, litem, lqty = F.order_lines(session=session, before=as_of, items=it, known=orders)
    pos, ok = _align(lc, pop.ids)
    cust, lday, litem, lqty = pos[ok], lday[ok], litem[ok], lqty[ok]
    n = len(pop.ids)
    t1 = as_of_day - CHURN_WINDOW_DAYS
    metrics: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    best = {"co_weight": 0.0}
    old = lday < t1
    if old.sum() >= 50:
        rng = np.random.default_rng(0)
        # distinct customer positions by counting (np.unique hashes: seconds at ten million lines)
        buyers_then = np.flatnonzero(np.bincount(cust[old], minlength=n))
        later = np.bincount(cust[lday >= t1], minlength=n) > 0
        sample = buyers_then[later[buyers_then]]
        if len(sample) > BACKTEST_SAMPLE:
            sample = np.sort(rng.choice(sample, BACKTEST_SAMPLE, replace=False))
        if len(sample) >= 20:
            truth = B.next_order_items(cust, lday, litem, sample, n_items=len(it), start=t1, end=as_of_day)
            # The backtest model learns from the histories of at most REC_FIT_CUSTOMERS customers (the evaluated
            # ones among them): popularity and co-purchase need no more, and fitting on all costs seconds a try.
            fit_set = np.zeros(n, dtype=bool)
            fit_set[buyers_then if len(buyers_then) <= REC_FIT_CUSTOMERS else
                    rng.choice(buyers_then, REC_FIT_CUSTOMERS - len(sample), replace=False)] = True
            fit_set[sample] = True
            m_fit = old & fit_set[cust]
            m = _fit_recommender(cust[m_fit], lday[m_fit], litem[m_fit], lqty[m_fit], n, it, t1, co_weight=0.0)
            # the stock of then is not known here: rules other than stock apply
            tried = {}
            for w in (0.0, 0.05, 0.15):  # the weight only enters scoring: one fit serves every try
                m.co_weight = w
                cols, _, _ = m.recommend(sample, 10, group=it.subcategory, max_per_group=MAX_PER_CATEGORY)
                tried[w] = B.hit_recall(cols, truth)
            w_best = max(tried, key=lambda w: tried[w])
            best["co_weight"] = w_best
            popular = np.tile(m.popular(10), (len(sample), 1))
            in_sample = np.zeros(n, dtype=bool)
            in_sample[sample] = True
            m_own = old & in_sample[cust]
            own = _own_most_frequent(cust[m_own], litem[m_own], sample, len(it))
            metrics = {"hit_rate_at_10": tried[w_best][0], "recall_at_10": tried[w_best][1],
                       "customers": float(len(sample)),
                       **{f"hit_rate_at_10_co_{w}": v[0] for w, v in tried.items()}}
            baseline = {"popularity": dict(zip(("hit_rate_at_10", "recall_at_10"), B.hit_recall(popular, truth),
                                               strict=True)),
                        "own_most_frequent": dict(zip(("hit_rate_at_10", "recall_at_10"), B.hit_recall(own, truth),
                                                      strict=True))}
    model = _fit_recommender(cust, lday, litem, lqty, n, it, as_of_day, **best)
    out["model"] = model
    out["chosen"] = f"next_order(co_weight={best['co_weight']})"
    allowed = it.in_stock
    out["popular"] = model.popular(POPULAR_STORED, allowed=allowed)
    has_history = np.zeros(n, dtype=bool)
    has_history[cust] = True
    out["has_history"] = has_history
    # only customers who consented get individual recommendations: the others see the popular items
    hist = np.flatnonzero(has_history & personal)
    cols = np.full((n, RECOMMENDATIONS_STORED), -1, dtype=np.int64)
    vals = np.zeros((n, RECOMMENDATIONS_STORED))
    reasons = np.full((n, RECOMMENDATIONS_STORED), -1, dtype=np.int64)
    for s in range(0, len(hist), 50_000):
        part = hist[s:s + 50_000]
        c, v, r = model.recommend(part, RECOMMENDATIONS_STORED, allowed=allowed, group=it.subcategory,
                                  max_per_group=MAX_PER_CATEGORY)
        cols[part], vals[part], reasons[part] = c, v, r
    out["recs"], out["scores"], out["reasons"] = cols, vals, reasons
    out["early"] = _early_adopter(model, it, first_day)
    _store_relations(session, run, model, it, out["popular"])
    _record(session, "recommendations", as_of=as_of, train_from=first_day,
            params={**best, "max_per_category": MAX_PER_CATEGORY, "items": len(it)}, metrics=metrics,
            baseline=baseline, chosen=out["chosen"])
    return out


def _fit_recommender(cust: np.ndarray, day: np.ndarray, item: np.ndarray, qty: np.ndarray, n: int, it: F.Items,
                     as_of_day: float, *, co_weight: float) -> NextOrderRecommender:
    return NextOrderRecommender(co_weight=co_weight).fit(
        cust, day, item, qty, n_customers=n, category=it.category, runout_days=it.runout_days,
        accessories=it.accessories, as_of_day=as_of_day)


def _own_most_frequent(cust: np.ndarray, item: np.ndarray, sample: np.ndarray, n_items: int) -> np.ndarray:
    import scipy.sparse as sp

    from emma.predict.estimators.recommend import sparse_top_k

    pos, ok = _align(cust, sample)
    M = sp.csr_matrix((np.ones(int(ok.sum())), (pos[ok], item[ok])), shape=(len(sample), n_items))
    M.sum_duplicates()
    return sparse_top_k(M, 10)[0]


def _store_relations(session: Session, run: ScoreRun, model: NextOrderRecommender, it: F.Items,
                     popular: np.ndarray) -> None:
    from emma.predict.estimators.recommend import sparse_top_k

    sku = np.array(it.sku, dtype=object)
    S = model.similarity_.tocsr()
    top, score = sparse_top_k(S.copy(), RELATED_PER_ITEM)
    item = np.repeat(np.arange(S.shape[0]), RELATED_PER_ITEM)
    rank = np.tile(np.arange(RELATED_PER_ITEM), S.shape[0])
    top, score = top.ravel(), score.ravel()
    ok = top >= 0
    item, rank, top, score = item[ok], rank[ok], top[ok], score[ok]
    acc = np.asarray(model.accessory_[item, top]).ravel() > 0 if len(item) else np.zeros(0, dtype=bool)
    kinds = np.where(acc, REASONS[4], REASONS[2])
    n_pop = len(popular)
    columns = {
        "sku": ["*"] * n_pop + sku[item].tolist(),
        "related_sku": sku[popular].tolist() + sku[top].tolist(),
        "kind": ["popular"] * n_pop + kinds.tolist(),
        "score": model.popularity_[popular].tolist() + score.tolist(),
        "rank": list(range(n_pop)) + rank.tolist(),
        "run_id": [run.id] * (n_pop + len(item)),
    }
    insert_columns(session, ItemRelation, columns)


# -- affinities, send hour, channel, leads, uplift ---------------------------------------------------


def _engagement(session: Session, as_of: dt.datetime, as_of_day: float, pop: _Population,
                granted: dict[str, set[int]], first_day: float | None) -> dict[str, Any]:
    """Best send hour (local time) and preferred channel per customer."""
    n = len(pop.ids)
    out: dict[str, Any] = {}
    cid_i, local = _local_engagement(session, pop, before=as_of)
    engaged = np.bincount(cid_i, minlength=n).astype(np.float64)
    if len(cid_i):
        model = SendHourModel().fit(cid_i, local, n_customers=n)
        out["best_hour"] = model.best_hour()
        _record(session, "send_hour", as_of=as_of, train_from=first_day,
                params={"sigma_hours": round(model.sigma_, 3),
                        "population_best_hour": model.population_hour()},
                metrics=_send_hour_backtest(session, as_of, pop), baseline={})
    out["engaged"] = engaged
    out["channel_counts"] = F.channel_engagement(session=session, before=as_of)
    out["consent_channels"] = {ch: granted.get(p, set()) for p, ch in CHANNEL_CONSENT.items()}
    return out


def _local_engagement(session: Session, pop: _Population, *, before: dt.datetime,
                      since: dt.datetime | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(customer row, local time of day in hours) of each quarter hour with engagement, in the customer's own
    time zone on that very day (daylight saving included)."""
    cid, quarter = F.engagement_slots(session=session, before=before, since=since)
    pos, ok = _align(cid, pop.ids)
    rows, quarter = pos[ok], quarter[ok]
    if not len(rows):
        return rows, np.empty(0)
    day = quarter // 96
    zones = np.array([t or "" for t in pop.timezone], dtype=object)
    zone_names, zone_of = np.unique(zones, return_inverse=True)
    key = zone_of[rows] * 1_000_000 + (day - day.min())
    uniq, inv = np.unique(key, return_inverse=True)
    offsets = np.zeros(len(uniq))
    for k, u in enumerate(uniq.tolist()):
        offsets[k] = _utc_offset_hours(str(zone_names[u // 1_000_000]), int(u % 1_000_000 + day.min()))
    return rows, ((quarter % 96 + 0.5) / 4.0 + offsets[inv]) % 24.0


def _utc_offset_hours(zone: str, epoch_day: int) -> float:
    if not zone:
        return 0.0
    try:
        off = _from_day(epoch_day + 0.5).astimezone(ZoneInfo(zone)).utcoffset()
    except Exception:  # unknown zone name: UTC
        return 0.0
    return off.total_seconds() / 3600.0 if off else 0.0


def _send_hour_backtest(session: Session, as_of: dt.datetime, pop: _Population) -> dict[str, float]:
    """Fit on engagement before as_of - 90 days; compare with the hour the 90 days after point to on their own
    (customers with at least 8 quarter hours of engagement in them): exact and within 1 h."""
    t1 = as_of - dt.timedelta(days=CHURN_WINDOW_DAYS)
    n = len(pop.ids)
    ca, la = _local_engagement(session, pop, before=t1)
    cb, lb = _local_engagement(session, pop, before=as_of, since=t1)
    if not len(ca) or not len(cb):
        return {}
    model = SendHourModel().fit(ca, la, n_customers=n)
    later = SendHourModel(sigma_hours=model.sigma_, prior_weight=0.0).fit(cb, lb, n_customers=n)
    have = (np.bincount(cb, minlength=n) >= 8) & (np.bincount(ca, minlength=n) > 0)
    if not have.any():
        return {}
    actual = later.best_hour()[have]
    pred = model.best_hour()[have]

    def dist(p: np.ndarray | int) -> np.ndarray:
        d = np.abs(p - actual) % 24
        return np.minimum(d, 24 - d)

    popular = model.population_hour()
    return {"exact": float(np.mean(dist(pred) == 0)), "within_1h": float(np.mean(dist(pred) <= 1)),
            "baseline_population_hour_exact": float(np.mean(dist(popular) == 0)),
            "baseline_population_hour_within_1h": float(np.mean(dist(popular) <= 1)),
            "customers": float(have.sum())}


def _lead_propensity(session: Session, as_of: dt.datetime, as_of_day: float, pop: _Population, rfm: F.RFM,
                     first_day: float | None) -> np.ndarray | None:
    """P(first order within 30 days) for customers without orders, trained on the leads of 30 days ago."""
    n = len(pop.ids)
    t = as_of - dt.timedelta(days=LEAD_WINDOW_DAYS)
    t_day = as_of_day - LEAD_WINDOW_DAYS

    def feats(cut: dt.datetime, cut_day: float) -> np.ndarray:
        c, events, last = F.activity(session=session, before=cut, since=cut - dt.timedelta(days=90))
        ev, since_ev = np.zeros(n), np.full(n, 365.0)
        pos, ok = _align(c, pop.ids)
        ev[pos[ok]] = events[ok]
        since_ev[pos[ok]] = cut_day - last[ok]
        return LeadPropensity.features(ev, since_ev, cut_day - pop.created_day, pop.known)

    has_order_now = np.zeros(n, dtype=bool)
    pos, ok = _align(rfm.customer_id, pop.ids)
    has_order_now[pos[ok]] = True
    first = np.full(n, np.inf)
    first[pos[ok]] = rfm.first_day[ok]
    leads_then = (first >= t_day) & (pop.created_day < t_day)
    if leads_then.sum() < 30:
        return None
    y = first[leads_then] < as_of_day
    X_then = feats(t, t_day)[leads_then]
    model = LeadPropensity().fit(X_then, y)
    metrics: dict[str, float] = {"auc_in_window": B.auc(model.predict_proba(X_then), y),
                                 "leads": float(leads_then.sum())}
    baseline: dict[str, float] = {"base_rate": float(np.mean(y))}
    # held out: a model fitted on the leads of 60 days ago (first orders in the 30 days after) scores the leads
    # of 30 days ago, whose first orders in the last 30 days it has not seen
    t0, t0_day = t - dt.timedelta(days=LEAD_WINDOW_DAYS), t_day - LEAD_WINDOW_DAYS
    leads_old = (first >= t0_day) & (pop.created_day < t0_day)
    y_old = first[leads_old] < t_day
    if leads_old.sum() >= 30 and len(np.unique(y_old)) == 2 and len(np.unique(y)) == 2:
        old = LeadPropensity().fit(feats(t0, t0_day)[leads_old], y_old)
        metrics.update(auc_held_out=B.auc(old.predict_proba(X_then), y), held_out_leads=float(leads_then.sum()),
                       held_out_first_orders=float(y.sum()))
        baseline["auc_held_out_recency"] = B.auc(-X_then[:, 1], y)  # recent activity alone
    _record(session, "lead_propensity", as_of=as_of, train_from=first_day, params={"window_days": LEAD_WINDOW_DAYS},
            metrics=metrics, baseline=baseline)
    return model.predict_proba(feats(as_of, as_of_day))


def _uplift(session: Session, as_of: dt.datetime, as_of_day: float, pop: _Population,
            first_day: float | None, orders: F.Orders | None = None) -> np.ndarray | None:
    """Incentive uplift per customer, learnt from the randomised coupon tests in the history."""
    from emma.predict import incentive

    c, d, campaign, variant = F.coupon_test_deliveries(session=session, before=as_of)
    pos, ok = _align(c, pop.ids)
    sends = incentive.randomized_sends(pos[ok], d[ok], campaign[ok], variant[ok])
    if not len(sends.day):
        _record(session, "incentive_uplift", as_of=as_of, train_from=first_day,
                params={"reason": "no randomised coupon test in the history: no uplift predictions"},
                metrics={}, baseline={}, chosen="none")
        return None
    if orders is not None:  # read once for all models
        oc, od, ocoupon = orders.customer_id, orders.day, orders.coupon
    else:
        oc, od, ocoupon = F.order_coupons(session=session, before=as_of)
    opos, ook = _align(oc, pop.ids)
    rc, rd = F.message_reactions(session=session, before=as_of)
    rpos, rok = _align(rc, pop.ids)
    ac, ad, an = F.activity_days(session=session, before=as_of)
    apos, aok = _align(ac, pop.ids)
    history = incentive.History(n_customers=len(pop.ids), order_customer=opos[ook], order_day=od[ook],
                                order_coupon=ocoupon[ook], sends=sends, opens_customer=rpos[rok], opens_day=rd[rok],
                                extra=incentive.activity_at(apos[aok], ad[aok], an[aok], n_customers=len(pop.ids)))
    result = incentive.fit_uplift(history, as_of_day=as_of_day)
    if result is None:
        return None
    _record(session, "incentive_uplift", as_of=as_of, train_from=float(sends.day.min()), params=result.params,
            metrics=result.metrics, baseline=result.baseline, chosen=result.chosen)
    return result.uplift


# -- affinities at score time ------------------------------------------------------------------------


def _early_adopter(model: NextOrderRecommender, it: F.Items, first_day: float | None,
                   window_days: float = 30.0, strength: float = 3.0) -> np.ndarray | None:
    """Share of a customer's buys of new products (launched after the history began) within 30 days of launch,
    shrunk, over the population's share: > 1 means an early adopter."""
    if first_day is None:
        return None
    B = model.last_day_.tocoo()
    launched = it.created_day[B.col]
    new = launched > first_day + 1
    if not new.any():
        return None
    early = new & ((B.data - 1.0) - launched <= window_days)
    n = np.bincount(B.row[new], minlength=B.shape[0]).astype(float)
    hits = np.bincount(B.row[early], minlength=B.shape[0]).astype(float)
    base = max(float(hits.sum() / n.sum()), 1e-6)
    return (hits + strength * base) / (n + strength) / base



# -- read side: recommendations for the decision API ------------------------------------------------


def recommend(*, session: Session, customer_id: int | None, k: int = 10,
              context: str | None = None) -> list[Recommendation]:
    """Top-k products for a customer now (precomputed at score time; rules re-checked against live stock)."""
    if context is not None and context != "cart" and not context.startswith("product:"):
        raise InvalidContext("context: expected 'cart' or 'product:SKU'")
    pred = session.get(Prediction, customer_id) if customer_id is not None else None
    personal = bool(pred and pred.personalized)
    context_skus: list[str] = []
    if context == "cart" and customer_id is not None:
        from emma.orders import service as orders

        cart_id = orders.open_cart_id(session=session, customer_id=customer_id)
        context_skus = [ci.sku for ci in orders.cart_items(session=session, cart_id=cart_id)]
    elif context and context.startswith("product:"):
        context_skus = [context.split(":", 1)[1]]
    keys = [*context_skus, "*"]
    rel = session.execute(select(ItemRelation.sku, ItemRelation.related_sku, ItemRelation.kind, ItemRelation.score)
                          .where(ItemRelation.sku.in_(keys)).order_by(ItemRelation.sku, ItemRelation.rank)).all()
    cands: dict[str, tuple[float, str]] = {}

    def offer(sku: str, score: float, reason: str) -> None:
        if sku not in cands or cands[sku][0] < score:
            cands[sku] = (score, reason)

    top_pop = max([s for key, _, _, s in rel if key == "*"] or [1.0])
    for key, sku, kind, s in rel:
        if key != "*":  # in-session relations first: accessories, then what others also bought
            offer(sku, 2.0 + s + (0.5 if kind == "accessory" else 0.0), f"{kind}:{key}")
    if personal and pred is not None:
        for r in pred.recommendations or []:
            offer(r["sku"], 1.0 + float(r["score"]), r["reason"])
    for key, sku, _, s in rel:
        if key == "*":
            offer(sku, 0.5 * s / top_pop if top_pop else 0.0, "popular")
    if not cands:
        return []
    bought_recently = _recently_bought(session, customer_id) if customer_id is not None else set()
    from emma.catalog.models import Product

    products = {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(list(cands))))}
    out: list[Recommendation] = []
    per_cat: dict[str, int] = {}
    for sku, (s, reason) in sorted(cands.items(), key=lambda kv: -kv[1][0]):
        p = products.get(sku)
        if p is None or not p.active or (p.stock is not None and p.stock <= 0) or sku in context_skus:
            continue
        consumable = bool((p.attributes or {}).get("runout_days"))
        if sku in bought_recently and not consumable:
            continue
        cat = p.category or ""
        if per_cat.get(cat, 0) >= MAX_PER_CATEGORY:
            continue
        per_cat[cat] = per_cat.get(cat, 0) + 1
        out.append(Recommendation(sku=sku, score=round(s, 5), reason=reason))
        if len(out) >= k:
            break
    return out


def _recently_bought(session: Session, customer_id: int, days: int = 30) -> set[str]:
    from emma.orders.models import Order, OrderLine

    since = utcnow() - dt.timedelta(days=days)
    return set(session.scalars(select(OrderLine.sku).join(Order, Order.id == OrderLine.order_pk)
                               .where(Order.customer_id == customer_id, Order.ordered_at >= since)))


# -- campaign forecast, report ----------------------------------------------------------------------


def forecast_campaign(*, session: Session, customer_ids: Sequence[int], incentive: bool = False) -> CampaignForecast:
    """Expected responders (an order within 30 days) and revenue for a list of customers, from their predictions."""
    ids = list(dict.fromkeys(int(c) for c in customer_ids))
    responders = revenue = incremental = 0.0
    scored = 0
    for start in range(0, len(ids), 5000):
        part = ids[start:start + 5000]
        for p in session.scalars(select(Prediction).where(Prediction.customer_id.in_(part))):
            if p.propensity_30d is None:
                continue
            scored += 1
            prob = float(p.propensity_30d)
            if incentive and p.incentive_uplift is not None:
                prob = min(1.0, max(0.0, prob + float(p.incentive_uplift)))
                incremental += float(p.incentive_uplift)
            responders += prob
            per_order = (p.expected_revenue / p.expected_orders) if p.expected_orders else 0.0
            revenue += prob * (per_order or _mean_order_value(session))
    return CampaignForecast(customers=len(ids), scored=scored, expected_responders=round(responders, 3),
                            expected_revenue=round(revenue, 2),
                            expected_incremental_responders=round(incremental, 3) if incentive else None)


def _mean_order_value(session: Session) -> float:
    from sqlalchemy import Float, cast, func

    from emma.orders.models import Order

    return float(session.scalar(select(func.avg(cast(Order.revenue, Float)))) or 0.0)


def models_report(*, session: Session) -> list[dict[str, Any]]:
    """The model versions of the latest scoring run: training window, backtest metrics, baseline."""
    run = session.scalar(select(ScoreRun).where(ScoreRun.status == "done").order_by(ScoreRun.id.desc()).limit(1))
    if run is None:
        return []
    rows = session.scalars(select(ModelVersion).where(ModelVersion.train_to == run.as_of,
                                                      ModelVersion.trained_at >= run.started_at)
                           .order_by(ModelVersion.id))
    return [{"name": m.name, "version": m.version, "chosen": m.chosen,
             "train_from": m.train_from.date().isoformat() if m.train_from else None,
             "train_to": m.train_to.date().isoformat() if m.train_to else None,
             "params": m.params, "metrics": m.metrics, "baseline": m.baseline} for m in rows]


def latest(*, session: Session, customer_id: int) -> Prediction | None:
    """The customer's stored predictions, if scored."""
    return session.get(Prediction, customer_id)


def summary(*, session: Session) -> dict[str, Any] | None:
    """Headline figures of the latest scoring run (None before the first): stages, churn, value, consent share."""
    from sqlalchemy import func

    run = session.scalar(select(ScoreRun).where(ScoreRun.status == "done").order_by(ScoreRun.id.desc()).limit(1))
    if run is None:
        return None
    stages = dict(session.execute(select(Prediction.lifecycle_stage, func.count())
                                  .where(Prediction.personalized.is_(True))
                                  .group_by(Prediction.lifecycle_stage)).all())
    n, personal, churn, clv = session.execute(select(
        func.count(), func.sum(func.cast(Prediction.personalized, Integer)), func.avg(Prediction.churn_probability),
        func.sum(Prediction.clv))).one()
    return {"as_of": run.as_of.date().isoformat(), "customers": n, "personalized": int(personal or 0),
            "stages": {str(k): v for k, v in stages.items() if k}, "mean_churn": churn, "total_clv": clv or 0.0,
            "models": run.models}


def affinity_index(*, session: Session, chunk: int = 50_000) -> dict[str, np.ndarray]:
    """Affinity name (top-level category, or an attribute such as sustainability) -> ids of the customers whose
    latest predictions name it; one pass over the predictions, for audiences of many products at once."""
    lists: dict[str, list[int]] = {}
    after = 0
    while True:
        rows = session.execute(select(Prediction.customer_id, Prediction.top_affinities)
                               .where(Prediction.customer_id > after).order_by(Prediction.customer_id)
                               .limit(chunk)).all()
        for cid, affinities in rows:
            for a in affinities or []:
                name = (a.get("name") or a.get("category")) if isinstance(a, dict) else a
                if isinstance(name, str) and name:
                    lists.setdefault(name, []).append(cid)
        if len(rows) < chunk:
            break
        after = rows[-1][0]
    return {name: np.array(ids, dtype=np.int64) for name, ids in lists.items()}


def early_adopters(*, session: Session, min_score: float) -> set[int]:
    """Customers whose early-adopter score (their share of new products bought within 30 days of launch over the
    population's; 1 = average) is at least min_score; empty before the first scoring run."""
    return set(session.scalars(select(Prediction.customer_id).where(Prediction.early_adopter >= min_score)))
