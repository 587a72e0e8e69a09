"""Who lives near a store: customers_near (bounding box in SQL, haversine in numpy) and nearest_store over a
generated population spread over Germany.

    .venv/bin/python bench/stores.py                         # 1,000,000 customers on SQLite
    .venv/bin/python bench/stores.py --customers 200000
    .venv/bin/python bench/stores.py --url postgresql+psycopg://emma@127.0.0.1:5432/bench

Customers get coordinates uniformly inside Germany's bounding box (one in ten has only a postal code); 50 stores
sit in random places with stock of 200 skus. Printed: generation time, then per radius the seconds of one
customers_near (as a store-opening trigger runs it) with the audience size, and the p50 / p99 latency of
nearest_store for single customers (as a search-online-buy-offline run reads it).
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
from sqlalchemy import insert, select

from emma.config import Settings
from emma.db import make_engine, make_sessionmaker, upgrade
from emma.profiles.models import Customer
from emma.stores import service
from emma.stores.models import Store, StoreStock

NOW = dt.datetime(2026, 5, 17, 10, 0, tzinfo=dt.UTC)
LAT, LON = (47.3, 55.0), (5.9, 15.0)


def _generate(sessions, n: int, rng: np.random.Generator) -> None:
    lat = rng.uniform(*LAT, n)
    lon = rng.uniform(*LON, n)
    plz = rng.integers(1000, 99999, n)
    no_coords = rng.random(n) < 0.1
    with sessions() as s:
        for start in range(0, n, 50_000):
            rows = [{"external_id": f"c{i}", "is_anonymous": False, "attributes": {}, "created_at": NOW,
                     "postal_code": f"{plz[i]:05d}", "country": "DE",
                     "lat": None if no_coords[i] else float(lat[i]), "lon": None if no_coords[i] else float(lon[i])}
                    for i in range(start, min(start + 50_000, n))]
            s.execute(insert(Customer), rows)
        s.commit()
        stores = [{"store_id": f"S{i}", "name": f"Store {i}", "postal_code": f"{rng.integers(1000, 99999):05d}",
                   "country": "DE", "lat": float(rng.uniform(*LAT)), "lon": float(rng.uniform(*LON)),
                   "active": True, "created_at": NOW, "updated_at": NOW} for i in range(50)]
        s.execute(insert(Store), stores)
        ids = list(s.scalars(select(Store.id)))
        s.execute(insert(StoreStock), [{"store_pk": sid, "sku": f"P{k}", "quantity": int(rng.integers(0, 5)),
                                        "updated_at": NOW} for sid in ids for k in range(200)])
        s.commit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--url")
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        eng = make_engine(url)
        sessions = make_sessionmaker(eng)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cpu, {eng.dialect.name}, "
              f"{args.customers:,} customers")
        t = time.perf_counter()
        _generate(sessions, args.customers, rng)
        print(f"generate: {time.perf_counter() - t:.1f} s")
        with sessions() as s:
            store = s.scalar(select(Store).where(Store.store_id == "S0"))
            for radius in (10, 25, 50):
                t = time.perf_counter()
                near = service.customers_near(session=s, lat=store.lat, lon=store.lon, postal_code=store.postal_code,
                                              country="DE", radius_km=radius, postal_prefix=2)
                took = time.perf_counter() - t
                by_coords = sum(1 for d in near.values() if d is not None)
                print(f"customers_near {radius:>3} km: {took:.2f} s, {len(near):,} customers "
                      f"({by_coords:,} by coordinates)")
            settings = Settings()
            ids = rng.integers(1, args.customers, args.samples).tolist()
            lat_ms = []
            for cid in ids:
                c = s.get(Customer, int(cid))
                t = time.perf_counter()
                service.nearest_store(session=s, customer=c, sku=f"P{int(rng.integers(0, 200))}", settings=settings,
                                      now=NOW)
                lat_ms.append((time.perf_counter() - t) * 1000)
            lat_ms.sort()
            print(f"nearest_store: p50 {statistics.median(lat_ms):.1f} ms, "
                  f"p99 {lat_ms[int(len(lat_ms) * 0.99) - 1]:.1f} ms over {len(lat_ms)} customers")
        eng.dispose()


if __name__ == "__main__":
    main()
