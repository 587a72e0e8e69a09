"""Full `emma score` on a large shop: 1,000,000 customers and about 10,000,000 order lines, on SQLite.

This benchmarks scoring, not ingestion: the shop is bulk-inserted straight into a fresh, migrated SQLite
file (customers, personalization consents, products, orders and lines drawn from a BG/NBD-like process
with category preferences). Prints the data generation time, then the scoring wall time, its CPU time (the
figure to trust on a shared machine), peak RSS and the load average before and after.

    .venv/bin/python bench/predict.py                          # 1,000,000 customers
    .venv/bin/python bench/predict.py --customers 100000       # a quicker look
    .venv/bin/python bench/predict.py --reuse /tmp/bench.db    # score an existing bench database again
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emma.db import make_engine, make_sessionmaker, session_scope, upgrade

END = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HISTORY_DAYS = 730
CATEGORIES = 30
PRODUCTS = 5000


def _ts(days: np.ndarray) -> np.ndarray:
    """Day offsets before END as the naive UTC text SQLAlchemy stores in SQLite."""
    base = np.datetime64(END.replace(tzinfo=None).isoformat(), "s")
    return np.datetime_as_string(base - (days * 86400).astype("timedelta64[s]"), unit="us").astype(object)


def generate(path: Path, customers: int, seed: int) -> tuple[int, int]:
    """Bulk-insert the shop; returns (orders, lines)."""
    rng = np.random.default_rng(seed)
    url = f"sqlite:///{path}"
    upgrade(url)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    now = END.replace(tzinfo=None).isoformat(sep=" ")

    # products: categories, Zipf popularity, a few consumables and accessories
    cat = rng.integers(0, CATEGORIES, PRODUCTS)
    price = np.round(rng.lognormal(3.2, 0.8, PRODUCTS), 2)
    sku = [f"P{i:06d}" for i in range(PRODUCTS)]
    attrs = []
    for _ in range(PRODUCTS):
        a: dict[str, object] = {"sustainable": bool(rng.random() < 0.2)}
        if rng.random() < 0.08:
            a["runout_days"] = int(rng.integers(20, 90))
        if rng.random() < 0.1:
            a["accessory_skus"] = [sku[int(j)] for j in rng.integers(0, PRODUCTS, 2)]
        attrs.append(json.dumps(a))
    con.executemany("INSERT INTO products (id, sku, name, category, price, currency, stock, attributes, active, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'EUR', ?, ?, 1, ?, ?)",
                    [(i + 1, sku[i], f"Produkt {i}", f"Kategorie {cat[i]} > Teil {i % 5}", float(price[i]),
                      int(rng.integers(0, 200)), attrs[i], "2023-01-01 00:00:00.000000", now)
                     for i in range(PRODUCTS)])
    pop = rng.zipf(1.6, PRODUCTS).astype(float)
    by_cat = [np.flatnonzero(cat == c) for c in range(CATEGORIES)]
    cdf_cat = [np.cumsum(pop[ix]) / pop[ix].sum() for ix in by_cat]

    # customers: first purchase over two years; purchases while alive (gamma rate, geometric dropout)
    first = rng.uniform(0, HISTORY_DAYS, customers)
    rate = rng.gamma(0.9, 1 / 45.0, customers)  # purchases per day
    p_drop = rng.beta(1.2, 5.0, customers)
    n_orders = np.minimum(1 + rng.geometric(p_drop) - 1, 1 + rng.poisson(rate * first))
    ids = np.arange(1, customers + 1)
    created = _ts(first + 1)
    con.executemany("INSERT INTO customers (id, external_id, attributes, is_anonymous, created_at) "
                    "VALUES (?, ?, '{}', 0, ?)", zip(ids.tolist(), (f"k{i}" for i in ids.tolist()), created,
                                                    strict=True))
    granted = ids[rng.random(customers) < 0.6]
    con.executemany("INSERT INTO consents (customer_id, purpose, status, source, recorded_at) "
                    "VALUES (?, 'personalization', 'granted', 'bench', ?)",
                    ((int(c), "2023-01-01 00:00:00.000000") for c in granted))

    # orders: the first at `first`, the rest uniform between it and the end while alive
    oc = np.repeat(ids - 1, n_orders)
    k = np.arange(len(oc)) - np.repeat(np.cumsum(n_orders) - n_orders, n_orders)
    alive_span = first[oc] * rng.random(len(oc))
    odays = np.where(k == 0, first[oc], alive_span)  # days before END
    pref = rng.integers(0, CATEGORIES, (customers, 2))
    n_lines = np.minimum(rng.geometric(0.38, len(oc)), 8)  # 2.6 lines an order: 10M lines at 1M customers
    lc = np.repeat(np.arange(len(oc)), n_lines)
    use = np.where(rng.random(len(lc)) < 0.75, pref[oc[lc], rng.integers(0, 2, len(lc))],
                   rng.integers(0, CATEGORIES, len(lc)))
    item = np.empty(len(lc), dtype=np.int64)
    u = rng.random(len(lc))
    for c in range(CATEGORIES):
        m = use == c
        item[m] = by_cat[c][np.minimum(np.searchsorted(cdf_cat[c], u[m]), len(by_cat[c]) - 1)]
    qty = 1 + (rng.random(len(lc)) < 0.15)
    line_rev = price[item] * qty
    revenue = np.round(np.bincount(lc, weights=line_rev, minlength=len(oc)), 2)
    ordered = _ts(odays)
    order_ids = np.arange(1, len(oc) + 1)
    con.executemany("INSERT INTO orders (id, order_id, customer_id, status, ordered_at, currency, revenue, source, "
                    "updated_at) VALUES (?, ?, ?, 'completed', ?, 'EUR', ?, 'import', ?)",
                    zip(order_ids.tolist(), (f"O{i}" for i in order_ids.tolist()), (oc + 1).tolist(), ordered,
                        revenue.tolist(), (now for _ in order_ids), strict=True))
    line_no = np.arange(len(lc)) - np.repeat(np.cumsum(n_lines) - n_lines, n_lines)
    sku_arr = np.array(sku, dtype=object)
    con.executemany("INSERT INTO order_lines (order_pk, line_no, sku, quantity, unit_price) VALUES (?, ?, ?, ?, ?)",
                    zip((lc + 1).tolist(), line_no.tolist(), sku_arr[item], qty.tolist(),
                        price[item].tolist(), strict=True))
    con.commit()
    con.close()
    return len(oc), len(lc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reuse", type=Path, help="an existing bench database: skip generation")
    parser.add_argument("--keep", type=Path, help="where to write the database (default: a temp dir)")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from emma.predict import service as predict

    tmp = tempfile.TemporaryDirectory()
    path = args.reuse or args.keep or Path(tmp.name) / "bench.db"
    if args.generate_only:
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        n_orders, n_lines = generate(path, args.customers, args.seed)
        print(f"generated {args.customers:,} customers, {n_orders:,} orders, {n_lines:,} order lines "
              f"by bulk insert in {time.perf_counter() - t0:.1f} s ({path})", flush=True)
        return
    if not args.reuse:
        # generate and score in two fresh processes of this small one: a child inherits its parent's peak RSS
        # (Linux keeps the high-water mark across fork and exec), so the scoring's figure is its own
        import subprocess

        gen = [sys.executable, __file__, "--generate-only", "--keep", str(path), "--customers", str(args.customers),
               "--seed", str(args.seed)]
        rc = subprocess.call(gen)
        sys.exit(rc or subprocess.call([sys.executable, __file__, "--reuse", str(path)]))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine = make_engine(f"sqlite:///{path}")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 10 or done == total:
            last[0] = time.perf_counter()
            print(f"  {done:,}/{total:,} customers written, {last[0] - t0:.1f} s", flush=True)

    with session_scope(make_sessionmaker(engine)) as session:
        run = predict.score(session=session, as_of=END, horizon_days=365, progress=progress)
        models = run.models
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    engine.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load_after = os.getloadavg()
    print(f"emma score: {run.customers_done:,} customers in {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS "
          f"{peak:,.0f} MB (before scoring {rss_before:,.0f} MB); models {models}")
    print(f"load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
          f"after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} on {os.cpu_count()} cores")
    tmp.cleanup()
    print("target (< 120 s, < 8 GB):", "met" if wall < 120 and peak < 8192 else "NOT met",
          f"by wall time; {'met' if cpu < 120 and peak < 8192 else 'NOT met'} by CPU time")
    sys.exit(0)


if __name__ == "__main__":
    main()
