"""The demo shop through the public ingestion paths, on SQLite and PostgreSQL, and its truth export."""

from __future__ import annotations

import copy
import csv
import datetime as dt
from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from emma.catalog.models import PriceChange, Product
from emma.config import Settings
from emma.consent.models import Consent
from emma.db import make_engine, make_sessionmaker, session_scope
from emma.demo import service
from emma.demo.simulate import DemoConfig, Simulation, simulate
from emma.demo.truth import truth_rows
from emma.ingest.models import Event
from emma.orders.models import Order
from emma.profiles.models import Customer

END = dt.date(2025, 6, 1)


def _orders_per_customer(session) -> dict[str, tuple[int, float]]:  # noqa: ANN001
    # The simulation's own orders. Orders the customers place in reaction to messages in the live days ("M-...")
    # depend on what was delivered when, and the truth, recomputed from the seed, does not hold them.
    rows = session.execute(select(Customer.external_id, func.count(Order.id), func.sum(Order.revenue))
                           .join(Order, Order.customer_id == Customer.id).where(Order.order_id.not_like("M-%"))
                           .group_by(Customer.external_id)).all()
    return {uid: (n, round(float(rev), 2)) for uid, n, rev in rows}


def test_the_shop_enters_through_ingestion_and_matches_its_truth(db_url: str) -> None:
    config = DemoConfig(customers=250, seed=9, days=40, end=END, cutoff_days=15)
    engine = make_engine(db_url)
    try:
        factory = make_sessionmaker(engine)
        sim, run = service.populate(session_factory=factory, config=config, settings=Settings(database_url=db_url))
        assert run.rejected == []
        assert run.accepted == run.messages > 1000
        with session_scope(factory) as session:
            in_db = _orders_per_customer(session)
            figures = service.summary(session=session)
            assert session.scalar(select(func.count()).select_from(Event)) == run.messages
            assert session.scalar(select(func.count()).select_from(Product)) == sum(
                1 for d in sim.catalog.launch_day if d < config.days)
            assert session.scalar(select(func.count()).select_from(PriceChange)) > len(sim.catalog) * 0.8
            granted = session.scalar(select(func.count()).select_from(Consent).where(
                Consent.purpose == "email_marketing", Consent.status == "granted"))
    finally:
        engine.dispose()
    # The truth, recomputed from the seed alone, agrees with what the database holds.
    truth = {r["user_id"]: r for r in truth_rows(simulate(config)) if r["orders_total"]}
    assert truth and len(truth) == len(in_db)
    for uid, row in truth.items():
        assert in_db[uid] == (row["orders_total"], round(row["revenue_total"], 2)), uid
    assert figures["orders"] == len(sim.orders)
    assert figures["customers"]["merged"] >= 0 and figures["customers"]["known"] > 50
    assert 0.6 <= figures["abandoned_carts"] / figures["carts"] <= 0.85
    expected = sum(1 for r in truth_rows(sim) if r["email_consent"] == "granted")
    assert granted == expected


def test_a_bad_simulated_event_is_rejected_like_any_other(db_url: str) -> None:
    config = DemoConfig(customers=150, seed=4, days=10, end=END)
    sim = Simulation(config)
    engine = make_engine(db_url)
    try:
        factory = make_sessionmaker(engine)
        settings = Settings(database_url=db_url)
        out = None
        while sim.day < config.days:
            out = sim.step()
            if any(m.get("event") == "Order Completed" for m in out.messages):
                break
            with session_scope(factory) as session:
                service.ingest_day(session=session, out=out, settings=settings)
        assert out is not None
        k, order = next((k, m) for k, m in enumerate(out.messages) if m.get("event") == "Order Completed")
        bad = copy.deepcopy(order)
        del bad["properties"]["products"][0]["price"]
        out.messages[k] = bad
        with session_scope(factory) as session:
            accepted, rejected = service.ingest_day(session=session, out=out, settings=settings)
        assert accepted == len(out.messages) - 1
        assert rejected == [{"day": out.day, "index": k, "errors": [
            {"field": "properties.products[0].price", "reason": "is required for order lines"}]}]
        with session_scope(factory) as session:
            assert session.scalar(select(func.count()).select_from(Order).where(
                Order.order_id == order["properties"]["order_id"])) == 0
    finally:
        engine.dispose()


def test_identity_merging_is_exercised(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    config = DemoConfig(customers=600, seed=23, days=150, end=END)  # a seed whose shop has second-device merges
    sim, run = service.run_demo(database=url, config=config)
    assert run.rejected == []
    engine = make_engine(url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            merged = session.scalar(select(func.count()).select_from(Customer).where(
                Customer.merged_into_id.is_not(None)))
    finally:
        engine.dispose()
    # Logging in on a second device merges that device's anonymous history into the customer.
    assert merged == int(sim.merged.sum()) > 0
    assert sim.second_linked.sum() > sim.merged.sum()


def test_cli_builds_the_shop_and_exports_the_truth(tmp_path: Path) -> None:
    from emma.cli.main import app

    db = tmp_path / "demo.db"
    url = f"sqlite:///{db}"
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--database", url, "--customers", "200", "--days", "30", "--seed", "5",
                                 "--cutoff-days", "10", "--no-serve"])
    assert result.exit_code == 0, result.output
    assert "Bestellungen / orders" in result.output and "email_marketing" in result.output
    out = tmp_path / "truth.csv"
    result = runner.invoke(app, ["demo", "truth", "--database", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 200
    assert {"incentive_type", "true_uplift", "alive_at_cutoff", "orders_after_cutoff", "revenue_after_cutoff",
            "churned", "cutoff_date", "end_date"} <= set(rows[0])
    assert rows == list(csv.DictReader((tmp_path / "demo-truth.csv").open(encoding="utf-8")))
    engine = make_engine(url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            in_db = _orders_per_customer(session)
    finally:
        engine.dispose()
    assert sum(int(r["orders_total"]) for r in rows) == sum(n for n, _ in in_db.values()) > 0
