"""The simulated shop without a database: determinism and the statistical properties the models rely on."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from emma.demo.catalog import CATEGORIES, generate_catalog
from emma.demo.simulate import DemoConfig, Simulation, simulate

END = dt.date(2025, 6, 1)


def _messages(config: DemoConfig, days: int) -> list[dict]:
    sim = Simulation(config)
    out: list[dict] = []
    for _ in range(days):
        out += sim.step().messages
    return out


def test_same_seed_same_shop_and_different_seed_different_shop() -> None:
    a = _messages(DemoConfig(customers=300, seed=7, days=40, end=END), 40)
    b = _messages(DemoConfig(customers=300, seed=7, days=40, end=END), 40)
    c = _messages(DemoConfig(customers=300, seed=8, days=40, end=END), 40)
    assert a == b
    assert len(a) > 500
    assert a != c


def test_replay_without_messages_gives_the_same_orders() -> None:
    config = DemoConfig(customers=400, seed=3, days=60, end=END)
    sim = Simulation(config)
    for _ in range(config.days):
        sim.step(emit=True)
    replay = simulate(config)
    assert [(o.order_id, o.customer, o.revenue_cents) for o in sim.orders] == [
        (o.order_id, o.customer, o.revenue_cents) for o in replay.orders]
    assert (sim.dropout_day == replay.dropout_day).all()


def test_messages_are_timestamped_in_the_past_with_unique_ids() -> None:
    config = DemoConfig(customers=300, seed=1, days=30, end=END)
    msgs = _messages(config, 30)
    ids = [m["messageId"] for m in msgs]
    assert len(set(ids)) == len(ids)
    end = dt.datetime.combine(END, dt.time(), tzinfo=dt.UTC)
    stamps = [dt.datetime.fromisoformat(m["timestamp"]) for m in msgs]
    assert max(stamps) < end
    assert min(stamps) >= end - dt.timedelta(days=30)
    kinds = {m.get("event") or m["type"] for m in msgs}
    assert {"page", "identify", "Product Viewed", "Products Searched", "Product Added", "Checkout Started",
            "Order Completed", "Order Shipped", "Order Delivered"} <= kinds
    # Scroll depth rides on page events; registrations follow anonymous browsing on the same device.
    assert all(0 <= m["properties"]["scroll_depth"] <= 100 for m in msgs if m["type"] == "page")
    first_anon = {}
    for m in msgs:
        if "anonymousId" in m:
            first_anon.setdefault(m["anonymousId"], m)
    assert any("userId" not in m for m in first_anon.values())
    assert any(m["type"] == "identify" and "anonymousId" in m for m in msgs)


@pytest.fixture(scope="module")
def year() -> Simulation:
    return simulate(DemoConfig(customers=3000, seed=11, days=365, end=END))


def test_purchase_counts_are_over_dispersed(year: Simulation) -> None:
    counts = np.bincount([o.customer for o in year.orders], minlength=len(year.population))
    assert counts.mean() > 0.5
    assert counts.var() > 1.5 * counts.mean()  # Poisson would give var == mean


def test_customers_buy_from_their_favourite_category(year: Simulation) -> None:
    top = year.population.top_category()
    cat = year.catalog.category
    hits = total = 0
    for o in year.orders:
        for p in o.skus:
            total += 1
            hits += cat[p] == top[o.customer]
    assert total > 1000
    assert hits / total > 3 / len(CATEGORIES)  # chance would be 1/7


def test_sustainability_minded_customers_buy_more_sustainable_products(year: Simulation) -> None:
    cares = year.population.cares_sustainability
    sust = year.catalog.sustainable
    share = [np.mean([sust[p] for o in year.orders if cares[o.customer] == flag for p in o.skus])
             for flag in (True, False)]
    assert share[0] > share[1] + 0.15


def test_most_carts_are_abandoned() -> None:
    sim = Simulation(DemoConfig(customers=2000, seed=5, days=200, end=END))
    carts = abandoned = 0
    for _ in range(200):
        out = sim.step(emit=False)
        carts += out.counts["carts"]
        abandoned += out.counts["abandoned_carts"]
    assert carts > 500
    assert 0.6 <= abandoned / carts <= 0.8


def test_dropouts_stop_buying(year: Simulation) -> None:
    last = {}
    for o in year.orders:
        last[o.customer] = o.day
    dropped = np.flatnonzero(year.dropout_day >= 0)
    assert len(dropped) > 100
    assert all(last[i] == year.dropout_day[i] for i in dropped)


def test_catalog_is_german_with_the_relations_the_tactics_need() -> None:
    cat = generate_catalog(np.random.default_rng(0), days=365)
    assert 250 <= len(cat) <= 600
    rows = [cat.row(i, day=365) for i in range(len(cat))]
    assert {r["category"].split(" > ")[0] for r in rows} == set(CATEGORIES)
    by_sku = {r["sku"]: r for r in rows}
    tools = [r for r in rows if r["category"].startswith(("Elektronik", "Werkzeug")) and
             r["attributes"].get("warranty_months")]
    assert len(tools) > 20
    toys = [r for r in rows if r["category"].startswith("Spielzeug") and r["attributes"].get("accessory_skus")]
    assert toys and all("Batterien" in by_sku[s]["name"] for r in toys for s in r["attributes"]["accessory_skus"])
    drills = [r for r in rows if "Bohrschrauber" in r["name"] and r["attributes"].get("accessory_skus")]
    assert drills
    assert any(r["attributes"].get("runout_days") for r in rows if r["category"].startswith("Drogerie"))
    successors = [r for r in rows if r["attributes"].get("successor_sku")]
    assert successors and all(by_sku[r["attributes"]["successor_sku"]]["attributes"]["predecessor_sku"] == r["sku"]
                              for r in successors)
    assert 0.15 < np.mean([r["attributes"]["sustainable"] for r in rows]) < 0.6


def test_catalog_changes_over_the_year() -> None:
    sim = Simulation(DemoConfig(customers=500, seed=2, days=120, end=END))
    created: set[str] = set()
    prices: dict[str, list[float]] = {}
    stocks: dict[str, list[int]] = {}
    store_opened = False
    for _ in range(120):
        out = sim.step()
        for r in out.catalog_rows:
            created.add(r["sku"])
            prices.setdefault(r["sku"], []).append(r["price"])
            stocks.setdefault(r["sku"], []).append(r["stock"])
        store_opened |= any(m.get("event") == "Store Opened" for m in out.messages)
    launched_later = {sim.catalog.sku[i] for i in np.flatnonzero(sim.catalog.launch_day > 0)
                      if sim.catalog.launch_day[i] < 120}
    assert launched_later and launched_later <= created
    assert sum(len(set(v)) > 1 for v in prices.values()) > 10  # price changes
    assert any(0 in v and v[-1] > 0 for v in stocks.values())  # stock-out and restock
    assert store_opened


def test_the_response_model_sees_who_is_still_a_customer(year: Simulation) -> None:
    from emma.demo.response import customer_of

    gone = int(np.flatnonzero(year.dropout_day >= 0)[0])
    stays = int(np.flatnonzero((year.dropout_day < 0) & (year.population.join_day < 300))[0])
    assert customer_of(year, year.population.user_id[gone]).alive is False
    assert customer_of(year, year.population.user_id[stays]).alive is True
    assert customer_of(year, year.population.user_id[gone], day=int(year.dropout_day[gone])).alive is True


def test_a_markdown_draws_price_sensitive_customers() -> None:
    sim = Simulation(DemoConfig(customers=400, seed=6, days=30, end=END))
    pop = sim.population
    thrifty = int(np.argmax(pop.price_sensitivity))
    carefree = int(np.argmin(pop.price_sensitivity))
    customers = np.array([thrifty, carefree])

    def share(p: int) -> np.ndarray:
        prods, cdf = sim._weights(customers, 0, buy=True, d=0)
        j = int(np.flatnonzero(prods == p)[0])
        return cdf[:, j] - (cdf[:, j - 1] if j else 0)

    p = int(np.flatnonzero(sim.catalog.category == 0)[0])
    before = share(p)
    sim.catalog.price_cents[p] = sim.catalog.price_cents[p] // 2
    after = share(p)
    assert after[0] > 1.5 * before[0]  # the thrifty customer jumps at it
    assert after[0] / before[0] > after[1] / before[1]
