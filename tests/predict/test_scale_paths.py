"""The shortcuts that make scoring a million customers fast give the same answers as the plain way."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sqlalchemy import select

from emma.predict import service as predict
from emma.predict.backtest import auc, customer_sample
from emma.predict.estimators.recommend import sparse_top_k
from emma.predict.models import ModelVersion, Prediction


def _reference_top_k(M: sp.csr_matrix, k: int, group: np.ndarray | None, cap: int | None) -> list[list[int]]:
    """Rank every positive entry of a row by (-value, group, column), skip a group once it has `cap` items."""
    out = []
    for r in range(M.shape[0]):
        lo, hi = M.indptr[r], M.indptr[r + 1]
        entries = [(float(v), int(c)) for c, v in zip(M.indices[lo:hi], M.data[lo:hi], strict=True) if v > 0]
        g = (lambda c: int(group[c])) if group is not None else (lambda c: 0)
        entries.sort(key=lambda e: (-e[0], g(e[1]), e[1]))
        taken: list[int] = []
        per: dict[int, int] = {}
        for _, c in entries:
            if cap is not None and per.get(g(c), 0) >= cap:
                continue
            per[g(c)] = per.get(g(c), 0) + 1
            taken.append(c)
            if len(taken) == k:
                break
        out.append(taken + [-1] * (k - len(taken)))
    return out


def test_sparse_top_k_shortlist_equals_ranking_everything():
    rng = np.random.default_rng(3)
    for trial in range(25):
        n, m = int(rng.integers(1, 120)), int(rng.integers(1, 150))
        M = sp.random(n, m, density=float(rng.uniform(0.05, 0.7)), format="csr", random_state=trial)
        M.data = np.round(M.data * 3, 1)  # coarse values: many ties, also at the shortlist's threshold
        M.eliminate_zeros()
        groups = rng.integers(0, int(rng.integers(1, 12)), m)  # few groups: the cap leaves rows short
        k, cap, short = int(rng.integers(1, 11)), int(rng.integers(1, 4)), int(rng.integers(1, 25))
        got, vals = sparse_top_k(M.copy(), k, group=groups, max_per_group=cap, shortlist=short)
        assert got.tolist() == _reference_top_k(M, k, groups, cap), trial
        dense = M.toarray()
        rows = np.repeat(np.arange(n), k).reshape(n, k)
        assert np.allclose(np.where(got >= 0, dense[rows, np.maximum(got, 0)], 0.0), vals)
        got, _ = sparse_top_k(M.copy(), k, shortlist=short)
        assert got.tolist() == _reference_top_k(M, k, None, None), trial


def test_customer_sample_keeps_whole_customers_and_the_order_count_mix():
    rng = np.random.default_rng(0)
    n_orders = np.where(rng.random(20_000) < 0.7, 1, rng.integers(2, 20, 20_000))
    cust = np.repeat(np.arange(20_000) * 3 + 5, n_orders)
    mask = customer_sample(cust, 2_000)
    chosen, counts = np.unique(cust[mask], return_counts=True)
    assert len(chosen) == 2_000
    all_counts = dict(zip(*np.unique(cust, return_counts=True), strict=True))
    assert all(all_counts[c] == n for c, n in zip(chosen.tolist(), counts.tolist(), strict=True))  # all orders
    assert abs(np.mean(counts == 1) - np.mean(n_orders == 1)) < 0.01  # the strata keep their shares
    assert customer_sample(cust, 50_000).all()


def test_score_on_a_sample_of_customers_still_predicts(session, monkeypatch):
    from tests.predict.test_scoring import CUT, _population

    future = _population(session, n=400)
    # as if the shop were large: the model choices see 150 of the buyers, the recommender backtest fits on 100
    monkeypatch.setattr(predict, "MODEL_SAMPLE_CUSTOMERS", 150)
    monkeypatch.setattr(predict, "REC_FIT_CUSTOMERS", 100)
    run = predict.score(session=session, as_of=CUT, horizon_days=90)
    session.commit()
    assert run.status == "done" and run.customers_done == 400
    churn_model = session.scalar(select(ModelVersion).where(ModelVersion.name == "churn"))
    assert 0 < churn_model.metrics["customers"] <= 150  # the backtest ran on the sample
    from emma.profiles import service as profiles

    ids = profiles.ensure_customers(session=session, external_ids=list(future), at=CUT)
    preds = {p.customer_id: p for p in session.scalars(select(Prediction))}
    scored = [e for e in future if preds[ids[e]].churn_probability is not None]
    assert len(scored) > 150  # every consenting buyer is scored, not only the sample
    churn = np.array([preds[ids[e]].churn_probability for e in scored])
    assert auc(churn, np.array([future[e] == 0 for e in scored])) > 0.75
