"""`emma score` end to end on a database: a BG/NBD population with known behaviour, scored as of a cut-off."""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
from sqlalchemy import select
from typer.testing import CliRunner

from emma.config import get_settings
from emma.consent import service as consent
from emma.orders import service as orders
from emma.predict import service as predict
from emma.predict.backtest import auc
from emma.predict.export import COLUMNS
from emma.predict.models import ModelVersion, Prediction
from emma.profiles import service as profiles

START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
CUT = START + dt.timedelta(days=365)


def _population(session, n: int = 400, seed: int = 7) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Customers who buy at a gamma-distributed rate and drop out with beta-distributed probability."""
    rng = np.random.default_rng(seed)
    ext = [f"c{i}" for i in range(n)]
    ids = profiles.ensure_customers(session=session, external_ids=ext, at=START - dt.timedelta(days=1))
    lam = rng.gamma(1.5, 1 / 40.0, size=n)  # purchases per day
    p_drop = rng.beta(1.0, 6.0, size=n)
    future: dict[str, int] = {}
    rows = []
    for i, e in enumerate(ext):
        t = rng.uniform(0, 200)
        alive = True
        k = 0
        while alive and t < 365 + 90:
            when = START + dt.timedelta(days=float(t))
            if t >= 365:
                future[e] = future.get(e, 0) + 1
            else:
                rows.append({"order_id": f"{e}-{k}", "customer_id": ids[e], "ordered_at": when,
                             "lines": [{"sku": "A", "quantity": 1, "unit_price": float(rng.gamma(4, 10))}]})
            k += 1
            alive = rng.random() > p_drop[i]
            t += rng.exponential(1 / lam[i])
    orders.create_orders(session=session, orders=rows, source="import")
    for e in ext[: n // 2]:
        consent.record(session=session, customer_id=ids[e], purpose="personalization", status="granted",
                       source="test", recorded_at=START)
    session.commit()
    return {e: future.get(e, 0) for e in ext}


def test_score_predicts_the_future_and_respects_consent(session):
    future = _population(session)
    run = predict.score(session=session, as_of=CUT, horizon_days=90)
    session.commit()
    assert run.status == "done" and run.customers_done == 400
    preds = {p.customer_id: p for p in session.scalars(select(Prediction))}
    ids = profiles.ensure_customers(session=session, external_ids=list(future), at=CUT)
    personal = [e for e in list(future)[:200] if preds[ids[e]].churn_probability is not None]
    assert len(personal) > 150
    churn = np.array([preds[ids[e]].churn_probability for e in personal])
    did_not_buy = np.array([future[e] == 0 for e in personal])
    assert auc(churn, did_not_buy) > 0.75
    exp = np.array([preds[ids[e]].expected_orders for e in personal])
    act = np.array([future[e] for e in personal])
    assert abs(exp.sum() - act.sum()) / act.sum() < 0.35
    # no personalization consent: no individual predictions, and the row says why
    generic = preds[ids["c300"]]
    assert not generic.personalized and generic.churn_probability is None and generic.clv is None
    assert "personalization" in generic.reasons["personalized"]
    reason = next(preds[ids[e]].reasons["churn_probability"] for e in personal)
    assert reason.startswith("churn ") and "days ago" in reason
    stages = {preds[ids[e]].lifecycle_stage for e in personal}
    assert stages <= {"new", "active", "vip", "at_risk", "lapsed", "churned"} and len(stages) >= 3
    mv = session.scalar(select(ModelVersion))
    assert mv.chosen in ("bgnbd", "hybrid") and "rmse_bgnbd" in mv.metrics and mv.baseline


def test_score_uses_only_data_before_as_of(session):
    _population(session, n=120, seed=3)
    predict.score(session=session, as_of=CUT, horizon_days=90)
    first = {p.customer_id: p.expected_orders for p in session.scalars(select(Prediction))}
    # orders after the cut-off must not change a backtest as of the cut-off
    late = profiles.ensure_customers(session=session, external_ids=["c1"], at=CUT)["c1"]
    orders.create_orders(session=session, source="import", orders=[
        {"order_id": "late", "customer_id": late, "ordered_at": CUT + dt.timedelta(days=3),
         "lines": [{"sku": "A", "quantity": 1, "unit_price": 5.0}]}])
    predict.score(session=session, as_of=CUT, horizon_days=90)
    second = {p.customer_id: p.expected_orders for p in session.scalars(select(Prediction))}
    assert first == second


def test_cli_score_and_export(db_url, session_factory, tmp_path, monkeypatch):
    with session_factory() as s:
        _population(s, n=150, seed=5)
    monkeypatch.setenv("EMMA_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        from emma.cli.main import app

        runner = CliRunner()
        out = runner.invoke(app, ["score", "--as-of", CUT.date().isoformat(), "--horizon-days", "365"])
        assert out.exit_code == 0, out.output
        assert "scored 150 customers" in out.output
        path = tmp_path / "p.csv"
        assert runner.invoke(app, ["predictions", "export", str(path)]).exit_code == 0
        rows = list(csv.DictReader(path.open()))
        assert tuple(rows[0].keys()) == COLUMNS and len(rows) == 150
        assert {r["customer_id"] for r in rows} == {f"c{i}" for i in range(150)}
        assert runner.invoke(app, ["score", "--as-of", "yesterday"]).exit_code != 0
    finally:
        get_settings.cache_clear()
