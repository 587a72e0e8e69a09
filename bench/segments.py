"""Segment counts over a generated population (SQL), and real-time membership latency per customer.

    .venv/bin/python bench/segments.py                       # 200,000 customers on SQLite
    .venv/bin/python bench/segments.py --customers 20000 --samples 500
    .venv/bin/python bench/segments.py --url postgresql+psycopg://emma@127.0.0.1:5432/bench

The population is written straight into the tables (profiles, consents, predictions, ~3 events, ~1.5 orders
with lines, a cart for one in five customers, some wishlists), so the figures are about segments, not
ingestion. Printed: generation time; per segment the seconds of one COUNT; `refresh_all` (first run and a
day later); `refresh_membership` for a batch of 5,000 customers (customers/s); and the latency of the
real-time path for single customers as p50 / p99: `refresh_membership` against every segment (facts
loaded, all rules evaluated, memberships compared) and `matching` for one rule.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert, text

from emma.catalog.models import Product
from emma.consent.models import Consent
from emma.db import make_engine, make_sessionmaker, upgrade
from emma.ingest.models import Event
from emma.orders.models import Cart, CartItem, Order, OrderLine, WishlistItem
from emma.predict.models import Prediction, ScoreRun
from emma.profiles.models import Customer
from emma.segments import service

NOW = dt.datetime(2026, 5, 17, 10, 0, tzinfo=dt.UTC)
CATEGORIES = ["Garten", "Garten > Werkzeug", "Küche", "Küche > Töpfe", "Spielzeug", "Heimwerken"]
COUNTRIES = ["DE", "DE", "DE", "AT", "CH", "NL"]
ZONES = ["Europe/Berlin", "Europe/Vienna", "Europe/Zurich", None]
STAGES = ["new", "active", "loyal", "at_risk", "lapsed"]

SEGMENTS: dict[str, dict] = {  # type: ignore[type-arg]
    "dach-newsletter": {"all": [{"country": ["DE", "AT", "CH"]}, {"consent.email_marketing": "granted"}]},
    "warenkorb-abbrecher": {"cart": {"idle_minutes": {"gte": 60}, "value": {"gte": 30}}},
    "rueckgewinnung": {"all": [{"prediction.churn_probability": {"gte": 0.5}}, {"prediction.clv": {"gte": 300}},
                               {"last_order": {"older_than_days": 60}}]},
    "gartenstoeberer": {"event": "Product Viewed", "where": {"category": "Garten"}, "within_days": 30,
                        "count": {"gte": 2}},
    "geburtstag-heute": {"birthday": "today"},
    "inaktiv-90-tage": {"all": [{"orders": {"gte": 1}}, {"not": {"orders": {"gte": 1}, "within_days": 90}}]},
    "stammkunden-garten": {"all": [{"orders": {"gte": 3}, "within_days": 365}, {"bought": {"category": "Garten"}},
                                   {"attributes.kundenkarte": {"in": ["gold", "silber"]}}]},
}


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def populate(url: str, n: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    engine = make_engine(url)
    skus = [f"SKU-{i:04d}" for i in range(400)]
    sku_cat = [CATEGORIES[i % len(CATEGORIES)] for i in range(400)]
    chunk = 20_000
    with engine.begin() as c:
        c.execute(insert(Product), [{"sku": s, "name": s, "category": cat, "price": 10 + i % 90, "currency": "EUR",
                                     "attributes": {}, "active": True, "created_at": NOW, "updated_at": NOW}
                                    for i, (s, cat) in enumerate(zip(skus, sku_cat, strict=True))])
        c.execute(insert(ScoreRun), [{"id": 1, "as_of": NOW, "horizon_days": 365, "status": "done",
                                      "customers_done": n, "last_customer_id": n, "models": {}, "started_at": NOW}])
    ev = ordn = 0
    for start in range(1, n + 1, chunk):
        ids = list(range(start, min(start + chunk, n + 1)))
        k = len(ids)
        country = rng.choice(COUNTRIES, k)
        zone = rng.choice(len(ZONES), k)
        bday = rng.integers(0, 365 * 50, k)
        has_bday = rng.random(k) < 0.6
        created = rng.integers(0, 1500, k)
        tier = rng.choice(["gold", "silber", "bronze", ""], k)
        customers = [{"id": cid, "external_id": f"k-{cid}", "email": f"k{cid}@example.org", "country": str(country[i]),
                      "timezone": ZONES[zone[i]], "locale": "de-DE",
                      "birthday": dt.date(1950, 1, 1) + dt.timedelta(days=int(bday[i])) if has_bday[i] else None,
                      "attributes": {"kundenkarte": str(tier[i])} if tier[i] else {}, "is_anonymous": False,
                      "created_at": NOW - dt.timedelta(days=int(created[i]))} for i, cid in enumerate(ids)]
        consents = [{"customer_id": cid, "purpose": "email_marketing", "status": ("granted", "revoked", "pending")[j],
                     "source": "bench", "recorded_at": NOW}
                    for cid, j in zip(ids, rng.choice(3, k, p=[0.6, 0.3, 0.1]), strict=True)]
        predictions = [{"customer_id": cid, "run_id": 1, "as_of": NOW, "personalized": True,
                        "clv": float(rng.gamma(2, 150)), "churn_probability": float(rng.random()),
                        "p_alive": float(rng.random()), "lifecycle_stage": STAGES[int(rng.integers(0, 5))],
                        "top_affinities": [], "recommendations": [], "reasons": {}} for cid in ids]
        events, orders, lines, carts, items, wishes = [], [], [], [], [], []
        for cid in ids:
            for _ in range(int(rng.poisson(3))):
                ev += 1
                s = int(rng.integers(0, 400))
                ts = NOW - dt.timedelta(minutes=int(rng.integers(0, 60 * 24 * 120)))
                props = {"sku": skus[s], "category": sku_cat[s].split(" > ")[0]}
                events.append({"id": ev, "message_id": f"b-{ev}", "type": "track", "name": "Product Viewed",
                               "customer_id": cid, "properties": props, "context": {}, "timestamp": ts,
                               "received_at": ts})
            for _ in range(int(rng.poisson(1.5))):
                ordn += 1
                at = NOW - dt.timedelta(hours=int(rng.integers(0, 24 * 700)))
                orders.append({"id": ordn, "order_id": f"o-{ordn}", "customer_id": cid, "status": "completed",
                               "ordered_at": at, "currency": "EUR", "revenue": float(rng.integers(500, 30000)) / 100,
                               "source": "import", "updated_at": at})
                for line in range(int(rng.integers(1, 3))):
                    lines.append({"order_pk": ordn, "line_no": line, "sku": skus[int(rng.integers(0, 400))],
                                  "quantity": 1, "unit_price": 10})
            if rng.random() < 0.2:
                at = NOW - dt.timedelta(minutes=int(rng.integers(0, 60 * 48)))
                carts.append({"id": cid, "cart_id": f"cart-{cid}", "customer_id": cid, "status": "open",
                              "created_at": at, "updated_at": at})
                for s in rng.choice(400, int(rng.integers(1, 4)), replace=False):
                    items.append({"cart_pk": cid, "sku": skus[int(s)], "quantity": 1, "price": 10 + int(s) % 90,
                                  "added_at": at})
            if rng.random() < 0.1:
                wishes.append({"customer_id": cid, "sku": skus[int(rng.integers(0, 400))], "added_at": NOW})
        with engine.begin() as c:
            for model, rows in ((Customer, customers), (Consent, consents), (Prediction, predictions),
                                (Event, events), (Order, orders), (OrderLine, lines), (Cart, carts),
                                (CartItem, items), (WishlistItem, wishes)):
                if rows:
                    c.execute(insert(model), rows)
    if engine.dialect.name == "postgresql":  # the rows carry their ids: move the sequences past them
        with engine.begin() as c:
            for model in (ScoreRun, Customer, Event, Order, OrderLine, Cart):
                name = model.__tablename__
                c.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                               f"(SELECT coalesce(max(id), 0) + 1 FROM {name}), false)"))
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--samples", type=int, default=1000, help="customers timed on the real-time path")
    ap.add_argument("--url", help="an empty database to use instead of a temporary SQLite file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        print(f"machine: {_machine()}; database: {url.split(':')[0]}")
        started = time.perf_counter()
        populate(url, args.customers)
        print(f"generated {args.customers:,} customers in {time.perf_counter() - started:.1f} s")
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        with sessions() as s:
            for key, rule in SEGMENTS.items():
                service.create(session=s, key=key, rule=rule)
            s.commit()
            print(f"{'segment':<22} {'members':>9} {'count s':>8}")
            for key in SEGMENTS:
                t = time.perf_counter()
                n = service.count(session=s, segment=key, now=NOW)
                print(f"{key:<22} {n:>9,} {time.perf_counter() - t:>8.2f}")
            t = time.perf_counter()
            transitions = service.refresh_all(session=s, now=NOW)
            s.commit()
            print(f"refresh_all (first, {len(transitions):,} entries recorded): {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            again = service.refresh_all(session=s, now=NOW + dt.timedelta(days=1))
            s.commit()
            print(f"refresh_all (a day later, {len(again):,} transitions): {time.perf_counter() - t:.1f} s")
        rng = np.random.default_rng(1)
        sample = [int(x) for x in rng.integers(1, args.customers + 1, args.samples)]
        refresh_ms, match_ms = [], []
        with sessions() as s:
            rule = service.get(session=s, key="rueckgewinnung")
            for cid in sample:
                t = time.perf_counter()
                service.refresh_membership(session=s, customer_ids=[cid], now=NOW + dt.timedelta(days=1))
                refresh_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                service.matching(session=s, rule=rule, customer_ids=[cid], now=NOW)
                match_ms.append((time.perf_counter() - t) * 1000)
            s.rollback()
        with sessions() as s:
            batch = sample[:] + [int(x) for x in rng.integers(1, args.customers + 1, 5000 - len(sample))]
            t = time.perf_counter()
            service.refresh_membership(session=s, customer_ids=batch, now=NOW + dt.timedelta(days=1))
            secs = time.perf_counter() - t
            s.rollback()
        n_batch = len(set(batch))
        print(f"refresh_membership, batch of {n_batch:,} customers x {len(SEGMENTS)} segments: {secs:.2f} s, "
              f"{n_batch / secs:,.0f} customers/s")
        for name, xs in ((f"refresh_membership, 1 customer x {len(SEGMENTS)} segments", refresh_ms),
                         ("matching, 1 customer x 1 rule", match_ms)):
            q = statistics.quantiles(xs, n=100)
            print(f"{name}: p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms over {len(xs)} customers")
        engine.dispose()


if __name__ == "__main__":
    main()
