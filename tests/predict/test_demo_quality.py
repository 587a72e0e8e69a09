"""The predictive layer on the demo shop, scored as of its cut-off and measured against its ground truth.

One small shop (1,000 customers, 300 days) is generated once per test session through the public ingestion
paths; the full figures on a larger shop are in `emma models report` and docs/performance.md.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from emma.catalog.models import Product
from emma.config import get_settings
from emma.db import make_engine, make_sessionmaker, session_scope
from emma.demo import service as demo
from emma.demo.simulate import DemoConfig, simulate
from emma.demo.truth import write_truth
from emma.predict import report
from emma.predict import service as predict
from emma.predict.estimators.recommend import NextOrderRecommender
from emma.predict.exceptions import InvalidContext
from emma.predict.models import ItemRelation, Prediction
from emma.profiles.models import Customer

CONFIG = DemoConfig(customers=1000, seed=5, days=300, end=dt.date(2026, 5, 1), cutoff_days=90)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    path = tmp_path_factory.mktemp("demo-shop")
    url = f"sqlite:///{path / 'shop.db'}"
    sim, run = demo.run_demo(database=url, config=CONFIG)
    assert not run.rejected
    truth = path / "truth.csv"
    write_truth(sim, truth)
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as s:
        predict.score(session=s, as_of=CONFIG.day_start(CONFIG.cutoff_day), horizon_days=365)
    engine.dispose()
    yield url, truth


@pytest.fixture
def shop_session(shop: tuple[str, Path]) -> Iterator[Session]:
    engine = make_engine(shop[0])
    s = make_sessionmaker(engine)()
    try:
        yield s
    finally:
        s.rollback()  # tests that change the shop leave no trace
        s.close()
        engine.dispose()


def test_predictions_match_what_happened_after_the_cut_off(shop: tuple[str, Path], shop_session: Session) -> None:
    f = report.truth_figures(session=shop_session, path=shop[1])
    assert f["as_of"] == f["truth_cutoff"]
    assert f["churn_customers"] > 150
    assert f["churn_auc"] > 0.72
    assert abs(f["churn_mean_predicted"] - f["churn_observed_rate"]) < 0.12  # calibrated in the large
    assert f["send_hour_within_1h"] > 0.8 and f["send_hour_customers"] > 50
    assert f["send_hour_exact"] > 0.45  # hour bins alone got about 40 %
    assert f["uplift_customers"] > 300  # its quality needs more customers than this shop has: test_incentive.py
    lc = f["lifecycle"]
    shares = lc["predicted_share"]
    assert max(shares.values()) < 0.6 and sum(v >= 0.03 for v in shares.values()) >= 4  # not degenerate
    assert lc["active_vip_truly_active"] > 0.7 and lc["lapsed_churned_truly_gone"] > 0.6
    held = report.held_out_recommendations(session=shop_session)
    assert held is not None and held["customers"]["n"] > 50
    assert held["model"]["hit_rate_at_10"] > held["own_most_frequent"]["hit_rate_at_10"]
    assert held["model"]["recall_at_10"] > held["own_most_frequent"]["recall_at_10"]


def test_every_model_is_registered_with_its_backtest(shop_session: Session) -> None:
    rows = {r["name"]: r for r in predict.models_report(session=shop_session)}
    assert {"repeat_purchases", "spend", "churn", "lifecycle", "recommendations", "send_hour", "lead_propensity",
            "incentive_uplift"} <= set(rows)
    lead = rows["lead_propensity"]
    assert lead["metrics"]["auc_held_out"] > 0.6 and "auc_held_out_recency" in lead["baseline"]
    up = rows["incentive_uplift"]
    assert up["chosen"] == "x_learner_opened" and up["params"]["exposure_balanced"] is True
    assert up["metrics"]["tests"] >= 20 and "uplift_at_30_random" in up["baseline"]
    assert {"exact", "within_1h", "baseline_population_hour_exact"} <= set(rows["send_hour"]["metrics"])
    churn = rows["churn"]
    assert churn["metrics"]["auc_classifier"] > 0.6 and "auc_baseline_recency" in churn["baseline"]
    rec = rows["recommendations"]
    assert {"popularity", "own_most_frequent"} <= set(rec["baseline"])
    assert rec["metrics"]["hit_rate_at_10"] > rec["baseline"]["own_most_frequent"]["hit_rate_at_10"]
    assert rows["send_hour"]["metrics"]["within_1h"] > rows["send_hour"]["metrics"][
        "baseline_population_hour_within_1h"]
    for r in rows.values():
        assert r["train_to"] == CONFIG.day_start(CONFIG.cutoff_day).date().isoformat() and r["train_from"]


def test_consent_decides_between_individual_and_generic(shop_session: Session) -> None:
    preds = list(shop_session.scalars(select(Prediction)))
    generic = [p for p in preds if not p.personalized]
    personal = [p for p in preds if p.personalized]
    assert generic and personal
    popular = generic[0].recommendations
    for p in generic:
        assert p.churn_probability is None and p.clv is None and p.best_send_hour is None and not p.top_affinities
        assert p.recommendations == popular and all(r["reason"] == "popular" for r in p.recommendations)
    buyers = [p for p in personal if p.churn_probability is not None]
    assert len(buyers) > 100
    assert {p.lifecycle_stage for p in buyers} <= {"new", "active", "vip", "at_risk", "lapsed", "churned"}
    leads = [p for p in personal if p.lifecycle_stage == "lead"]
    assert leads and all(p.propensity_30d is not None for p in leads)
    # leads who then bought had been given a higher propensity than those who did not
    assert sum(p.next_best_offer is not None for p in buyers) == len(buyers)
    some = buyers[0]
    assert some.reasons["churn_probability"].startswith("churn ")
    assert "next best offer" in some.reasons["next_best_offer"]


def test_recommend_service_rules(shop_session: Session) -> None:
    s = shop_session
    cid = next(p.customer_id for p in s.scalars(select(Prediction).where(Prediction.personalized.is_(True),
                                                                         Prediction.churn_probability.is_not(None))))
    recs = predict.recommend(session=s, customer_id=cid, k=10)
    assert len(recs) == 10 and all(r.sku and r.reason for r in recs)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    cats = [s.scalar(select(Product.category).where(Product.sku == r.sku)) for r in recs]
    assert max(cats.count(c) for c in cats) <= predict.MAX_PER_CATEGORY
    # out of stock now: gone from the list at once, without rescoring
    s.execute(update(Product).where(Product.sku == recs[0].sku).values(stock=0))
    assert recs[0].sku not in [r.sku for r in predict.recommend(session=s, customer_id=cid, k=10)]
    # in-session: the catalog's accessories of the product come first, and never the product itself
    acc = s.scalars(select(ItemRelation).where(ItemRelation.kind == "accessory")).first()
    assert acc is not None
    s.execute(update(Product).where(Product.sku == acc.related_sku).values(stock=5))
    ctx = predict.recommend(session=s, customer_id=cid, k=5, context=f"product:{acc.sku}")
    assert ctx[0].reason.startswith(("accessory:", "also_bought:")) and acc.sku not in [r.sku for r in ctx]
    assert acc.related_sku in [r.sku for r in ctx]
    # an unknown visitor gets the popular items; a bad context is refused by name
    anon = predict.recommend(session=s, customer_id=None, k=3)
    assert len(anon) == 3 and all(r.reason == "popular" for r in anon)
    with pytest.raises(InvalidContext, match="context"):
        predict.recommend(session=s, customer_id=cid, context="basket")


def test_cli_report_recommend_forecast_and_customer_view(shop: tuple[str, Path], shop_session: Session,
                                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMMA_DATABASE_URL", shop[0])
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    from emma.cli.main import app

    try:
        runner = CliRunner()
        out = runner.invoke(app, ["models", "report", "--truth", str(shop[1])])
        assert out.exit_code == 0, out.output
        assert "churn" in out.output and "recommendations" in out.output and "churn AUC" in out.output
        ext = shop_session.scalar(select(Customer.external_id).join(Prediction, Prediction.customer_id == Customer.id)
                                  .where(Prediction.personalized.is_(True), Prediction.clv.is_not(None)))
        out = runner.invoke(app, ["recommend", ext, "--k", "3", "--json"])
        assert out.exit_code == 0, out.output and out.output.count('"sku"') == 3
        assert runner.invoke(app, ["recommend", ext, "--context", "wishlist"]).exit_code != 0
        out = runner.invoke(app, ["customers", "show", ext])
        assert out.exit_code == 0 and "churn_probability" in out.output and "next_best_offer" in out.output
        ids = [str(c) for c in shop_session.scalars(select(Prediction.customer_id)
                                                    .where(Prediction.propensity_30d.is_not(None)).limit(40))]
        out = runner.invoke(app, ["forecast", *ids])
        assert out.exit_code == 0 and "expected responders" in out.output
        path = tmp_path / "p.csv"
        assert runner.invoke(app, ["predictions", "export", str(path)]).exit_code == 0
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
        personal = [r for r in rows if r["personalized"] == "true" and r["clv"]]
        assert personal and all(len(r["recommendations"].split("|")) == 10 for r in personal[:50])
    finally:
        get_settings.cache_clear()


def test_campaign_forecast_adds_up_the_predictions(shop_session: Session) -> None:
    preds = list(shop_session.scalars(select(Prediction).where(Prediction.propensity_30d.is_not(None)).limit(200)))
    f = predict.forecast_campaign(session=shop_session, customer_ids=[p.customer_id for p in preds])
    assert f.scored == len(preds)
    assert f.expected_responders == pytest.approx(sum(p.propensity_30d for p in preds), abs=1e-2)
    assert f.expected_revenue > 0
    with_coupon = predict.forecast_campaign(session=shop_session, customer_ids=[p.customer_id for p in preds],
                                            incentive=True)
    assert with_coupon.expected_incremental_responders is not None
    assert with_coupon.expected_incremental_responders == pytest.approx(
        sum(p.incentive_uplift or 0.0 for p in preds), abs=1e-2)


def test_next_order_recommender_beats_both_baselines_on_a_larger_shop() -> None:
    # the estimator is pure: the simulator's arrays go straight in (4,000 customers, no database)
    sim = simulate(DemoConfig(customers=4000, seed=7, days=365, end=dt.date(2026, 6, 1)))
    cut = sim.config.cutoff_day
    rows = [(o.customer, o.day, s) for o in sim.orders for s in o.skus]
    cust, day, item = (np.array(v) for v in zip(*rows, strict=True))
    before = day < cut
    nxt: dict[int, set[int]] = {}
    for o in sorted(sim.orders, key=lambda o: o.day):
        if o.day >= cut:
            nxt.setdefault(o.customer, set(o.skus))
    eval_c = np.array(sorted(c for c in nxt if c in set(cust[before].tolist())))
    cat = sim.catalog
    m = NextOrderRecommender(co_weight=0.0).fit(
        cust[before], day[before].astype(float), item[before], np.ones(int(before.sum())), n_customers=4000,
        category=cat.category, runout_days=cat.runout_days.astype(float), accessories=cat.accessories, as_of_day=cut)
    ours, _, reasons = m.recommend(eval_c, 10)

    def score(lists: list[np.ndarray] | np.ndarray) -> tuple[float, float]:
        got = [len(nxt[c] & {int(x) for x in r if x >= 0}) for c, r in zip(eval_c, lists, strict=True)]
        return float(np.mean([g > 0 for g in got])), float(np.mean([g / len(nxt[c]) for c, g in zip(eval_c, got,
                                                                                                 strict=True)]))

    own = []
    for c in eval_c:
        u, n = np.unique(item[before & (cust == c)], return_counts=True)
        own.append(u[np.argsort(-n, kind="stable")][:10])
    model, popular, mine = score(ours), score([m.popular(10)] * len(eval_c)), score(own)
    assert len(eval_c) > 400
    assert model[0] > popular[0] and model[1] > popular[1]
    assert model[0] > mine[0] and model[1] > mine[1]
    assert (reasons == 3).any()  # consumables that run out come back as replenishment
