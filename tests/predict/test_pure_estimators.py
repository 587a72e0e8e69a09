"""Recommendations, send hour, affinity and uplift estimators on synthetic data with a known answer."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from emma.predict.estimators.affinity import AffinityModel
from emma.predict.estimators.recommend import CoPurchaseRecommender, top_k
from emma.predict.estimators.sendtime import SendHourModel


@pytest.fixture(autouse=True)
def one_openmp_thread() -> Iterator[None]:
    # as in scoring: the boosted models' spinning OpenMP threads make fits many times slower on a busy machine
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def test_co_purchase_finds_items_bought_together():
    rng = np.random.default_rng(1)
    # items 0-9; pairs (2k, 2k+1) are bought together, plus noise
    cust, item = [], []
    for c in range(2000):
        a = rng.integers(0, 5) * 2
        cust += [c, c]
        item += [a, a + 1]
        if rng.random() < 0.3:
            cust.append(c)
            item.append(int(rng.integers(0, 10)))
    rec = CoPurchaseRecommender(neighbors=5).fit(np.array(cust), np.array(item), n_items=10)
    for a in range(0, 10, 2):
        assert rec.similar(a, k=1)[0][0] == a + 1
    scores = rec.score(np.array([4]))
    assert int(np.argmax(scores)) == 5
    many = rec.score_many(np.array([0, 1]), np.array([6, 8]), np.array([1.0, 1.0]), n_customers=2).toarray()
    assert np.argmax(many[0]) == 7 and np.argmax(many[1]) == 9


def test_top_k_applies_business_rules():
    scores = np.array([9.0, 8, 7, 6, 5, 4])
    category = np.array([0, 0, 0, 1, 1, 2])
    allowed = np.array([True, True, True, True, False, True])
    got = top_k(scores, 4, exclude=np.array([1]), category=category, max_per_category=1, allowed=allowed)
    assert got.tolist() == [0, 3, 5]


def test_send_hour_finds_the_preferred_hour_and_shrinks_sparse_customers():
    rng = np.random.default_rng(2)
    true_hour = rng.integers(0, 24, size=500)
    cust, times = [], []
    for c in range(500):
        n = 30 if c < 400 else 1  # 100 customers with a single observation
        # active around the full hour, as in the demo shop: hour bins 18 and 19 are equally full for a 19
        t = np.where(rng.random(n) < 0.9, true_hour[c] + rng.normal(0, 1.5, size=n), rng.uniform(0, 24, size=n))
        cust += [c] * n
        times += (t % 24).tolist()
    # the population engages a lot around 20:00
    cust += [500 + i // 10 for i in range(3000)]
    times += (20 + rng.normal(0, 1.5, size=3000)).tolist()
    m = SendHourModel().fit(np.array(cust), np.array(times), n_customers=800)
    best = m.best_hour()
    d = np.abs(best[:400] - true_hour[:400]) % 24
    d = np.minimum(d, 24 - d)
    assert (d == 0).mean() > 0.8 and (d <= 1).mean() > 0.97
    # hour bins alone get the exact hour only about half the time: the mode of floor(t) is a coin toss
    assert 1.2 < m.sigma_ < 1.8  # the spread is fitted to the population
    assert m.population_hour() == 20
    post = m.posterior()
    assert np.allclose(post.sum(axis=1), 1.0)
    assert post[450].max() < post[0].max()  # one observation says less than thirty
    far = [c for c in range(400, 500) if min(abs(true_hour[c] - 20), 24 - abs(true_hour[c] - 20)) >= 6]
    assert np.mean(best[far] == true_hour[far]) < 0.5  # a single far-off event does not override the population


def test_affinity_is_lift_over_population_and_needs_evidence():
    cust = np.array([0] * 20 + [1] * 2 + [2] * 20)
    grp = np.array([1] * 20 + [1] * 2 + [0] * 10 + [1] * 10)
    aff = AffinityModel(prior_strength=5).fit(cust, grp, np.ones(len(cust)), n_customers=3, n_groups=2).scores()
    assert aff[0, 1] > aff[1, 1] > 1.0  # 20 purchases in group 1 say more than 2
    assert aff[0, 0] < 1.0


def test_uplift_ranks_persuadables_first():
    from emma.predict.estimators.uplift import TwoModelUplift, XLearner, qini_coefficient, uplift_at_k

    rng = np.random.default_rng(3)
    n = 8000
    X = rng.normal(size=(n, 3))
    # persuadable where x0 > 0.5: buys only with a coupon; sure things where x1 > 1: buy anyway
    persuadable = X[:, 0] > 0.5
    sure = (X[:, 1] > 1.0) & ~persuadable
    t = rng.random(n) < 0.5
    p = np.where(sure, 0.8, 0.05) + np.where(persuadable & t, 0.5, 0.0)
    y = (rng.random(n) < p).astype(int)
    true = np.where(persuadable, 0.5, 0.0)
    for model in (TwoModelUplift(), XLearner()):
        s = model.fit(X, t, y).predict(X)
        assert uplift_at_k(s, true, 0.3) > 2 * true.mean()
        assert qini_coefficient(s, t, y) > qini_coefficient(rng.random(n), t, y)


def test_exposure_uplift_uses_the_openers_and_checks_the_balance():
    from emma.predict.estimators.uplift import ExposureUplift, XLearner, exposure_balanced, uplift_at_k

    rng = np.random.default_rng(4)
    n = 30_000
    X = rng.normal(size=(n, 3))
    persuadable = X[:, 0] > 0.6
    sure = X[:, 1] > 1.0
    t = rng.random(n) < 0.5
    opened = rng.random(n) < np.where(X[:, 2] > 0, 0.35, 0.1)  # the coupon is inside: opening ignores it
    p = 0.04 + opened * (0.25 * sure + 0.3 * (persuadable & t))
    y = rng.random(n) < p
    true = np.where(X[:, 2] > 0, 0.35, 0.1) * 0.3 * persuadable
    assert exposure_balanced(t, opened)
    assert not exposure_balanced(t, opened | (t & (rng.random(n) < 0.05)))  # a variant that changes opening
    exposed = ExposureUplift().fit(X, t, y, opened).predict(X)
    itt = XLearner().fit(X, t, y).predict(X)
    assert uplift_at_k(exposed, true, 0.3) > 2.5 * true.mean()
    # among the openers the effect is several times larger than in the whole list: the ranking is sharper
    assert uplift_at_k(exposed, true, 0.3) > uplift_at_k(itt, true, 0.3)
